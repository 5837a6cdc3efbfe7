"""Identifiers inside kept free text (URL paths and referrers, event names, content ids, catalog text) are
redacted before the consented tier; URL stripping removes matrix parameters and user info; spreadsheet
formulas coming from the CRM and the catalog are neutralised; counts (never values) are in the metadata.

Built to break the previous behaviour: only `?`/`#` parts were stripped from URLs and every kept column
was copied as it came, so `/users/jane.doe@example.com/profile;jsessionid=...` of a consenting user reached
consented/events, the features and the warehouse."""

from __future__ import annotations

import csv
import io
import json

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from personalization_assets.csv_safety import is_formula, neutralize_cell, write_csv
from personalization_assets.privacy.pii import PREFILTER, luhn_ok, redact, redact_columns
from personalization_assets.core.policies import PolicyError, load_policy
from personalization_assets.privacy.transforms import strip_url_sql
from tests.helpers import PIPELINE, check_results, defs_for_env, generate, materialize, materializations, string_leaves
from tests.privacy.test_policies import MODELS, edit, policy_dir  # noqa: F401  (fixture)

# ------------------------------------------------------------------------------------------------ unit

POSITIVE = [
    ("/users/jane.doe@example.com/profile", "/users/[redacted:email]/profile", "email"),
    ("/u/jane.doe%40example.com/x", "/u/[redacted:email]/x", "email"),
    ("Signed up JANE_DOE+news@Mail.Example.co.uk", "Signed up [redacted:email]", "email"),
    ("/call/+4915112345678", "/call/[redacted:phone]", "phone"),
    ("/call/+49 151 1234 5678/x", "/call/[redacted:phone]/x", "phone"),
    ("tel:+1 (555) 123-4567", "tel:[redacted:phone]", "phone"),
    ("call 555-123-4567 now", "call [redacted:phone] now", "phone"),
    ("(555) 123-4567", "[redacted:phone]", "phone"),
    ("030 12345678", "[redacted:phone]", "phone"),
    ("0171-1234567", "[redacted:phone]", "phone"),
    ("0044 20 7946 0958", "[redacted:phone]", "phone"),
    ("Login from 198.51.100.23", "Login from [redacted:ip]", "ip"),
    ("http://203.0.113.99/admin", "http://[redacted:ip]/admin", "ip"),
    ("https://[2001:db8::42]/x", "https://[[redacted:ip]]/x", "ip"),
    ("fe80::1ff:fe23:4567:890a", "[redacted:ip]", "ip"),
    ("card 4111 1111 1111 1111", "card [redacted:card]", "card"),
    ("4111-1111-1111-1111", "[redacted:card]", "card"),
    ("article-4111111111111111", "article-[redacted:card]", "card"),
    ("amex 378282246310005", "amex [redacted:card]", "card"),
    ("mc 5555555555554444.", "mc [redacted:card].", "card"),
]

# values that look numeric or structured but are not personal data: they must pass unchanged
NEGATIVE = [
    "article-12345", "c-1", "news", "Content Viewed", "Order Completed",
    "2026-11-28", "2026-11-28T13:05:00Z", "2026-11-28 13:05:00", "13:05:00", "1764335100000", "1764335100",
    "SKU-1234-5678", "ABC-2024-000123", "prod_20261128", "v1.2.3", "1.2.3.4.5", "9.99", "1234.56",
    "4111111111111112",  # 16 digits, fails Luhn
    "1234567812345670",  # passes Luhn, no card issuer starts with 1
    "order 1234567890123", "usr_ec7d67cc479aa841", "/p/12345678", "/2026/11/28/story-123",
    "https://news.example/a/b", "Foo::Bar", "a::b", "isbn 978-3-16-148410-0", "mailto-less text with @ sign",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301",  # uuid
]


@pytest.mark.parametrize("value, expected, kind", POSITIVE)
def test_each_identifier_kind_is_redacted_in_place(value, expected, kind):
    out, counts = redact(value)
    assert out == expected
    assert counts == {kind: 1}


@pytest.mark.parametrize("value", NEGATIVE)
def test_ordinary_ids_dates_and_numbers_are_kept(value):
    assert redact(value) == (value, {})


def test_prefilter_is_a_necessary_condition_of_every_match():
    """Values the RE2 prefilter lets through unchanged are never inspected: every positive must pass it."""
    import re

    pat = re.compile(PREFILTER)
    assert all(pat.search(v) for v, _, _ in POSITIVE)
    assert not pat.search("article-12345") and not pat.search("https://news.example/a/b")


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and not luhn_ok("4111111111111112")


URLS = [
    ("https://user:secret@news.example/a;jsessionid=ABC123/b;v=1?email=x#frag", "https://news.example/a/b"),
    ("https://u:p;x@host.example/a", "https://host.example/a"),  # a ';' in the password is not a matrix parameter
    ("http://a@b@c.example/x", "http://c.example/x"),
    ("//bob@cdn.example/x;jsessionid=1", "//cdn.example/x"),
    ("https://news.example/article;jsessionid=0A1B2C", "https://news.example/article"),
    ("https://h.example:8080/a/b", "https://h.example:8080/a/b"),
    ("/relative/path;v=2", "/relative/path"),
    ("?only=query", None),
]


@pytest.mark.parametrize("url, expected", URLS)
def test_url_stripping_removes_query_fragment_matrix_parameters_and_user_info(url, expected):
    con = duckdb.connect()
    assert con.execute(f"select {strip_url_sql('$1::varchar')}", [url]).fetchall()[0][0] == expected


def test_redact_columns_counts_per_column_and_kind_over_rows():
    con = duckdb.connect()
    t = pa.table({
        "page_url": ["/u/a@x.example/p", "/u/a@x.example/p", "/ok", None, "/ip/10.1.2.3 and b@y.example"],
        "event": ["Viewed", "card 4111111111111111", "Viewed", "Call +4915112345678", "Viewed"],
    })
    con.register("src", t)
    con.execute("create temp table t as select * from src")
    counts = redact_columns(con, "t", ["page_url", "event"])
    assert counts["page_url"] == {"email": 3, "card": 0, "ip": 1, "phone": 0}
    assert counts["event"] == {"email": 0, "card": 1, "ip": 0, "phone": 1}
    rows = con.execute("select page_url, event from t").fetchall()
    assert rows[0] == ("/u/[redacted:email]/p", "Viewed")
    assert rows[3] == (None, "Call [redacted:phone]")
    assert rows[4][0] == "/ip/[redacted:ip] and [redacted:email]"


def test_counts_per_group_add_up_to_the_totals():
    """Per landing hour (a batch holds several): the same value in two hours counts in each; groups sum to the totals."""
    from personalization_assets.csv_safety import neutralize_columns_by
    from personalization_assets.privacy.pii import redact_columns_by

    con = duckdb.connect()
    t = pa.table({"h": [1, 1, 2, 2, 3], "page_url": ["/u/a@x.example", "/ok", "/u/a@x.example", "/u/a@x.example", "/ok"],
                  "event": ["=SUM(A1)", "Viewed", "Viewed", "@cmd", "Viewed"]})
    con.register("src", t)
    con.execute("create temp table t as select * from src")
    totals, by_hour = redact_columns_by(con, "t", ["page_url"], "h")
    assert totals["page_url"]["email"] == 3
    assert {h: c["page_url"]["email"] for h, c in by_hour.items()} == {1: 1, 2: 2}  # hour 3: nothing redacted, absent
    f_totals, f_by_hour = neutralize_columns_by(con, "t", ["event"], "h")
    assert f_totals == {"event": 2} and f_by_hour == {1: {"event": 1}, 2: {"event": 1}}
    assert con.execute("select count(*) from t where page_url like '%[redacted:email]%'").fetchall() == [(3,)]


# ---------------------------------------------------------------------------------------- formulas / CSV

@pytest.mark.parametrize("value", ['=HYPERLINK("http://evil.example","x")', "+cmd|' /C calc'!A0", "-2+3+cmd|x", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_cells_are_neutralised(value):
    assert is_formula(value) and neutralize_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["-12", "+3.5", "42", "plain text", "", "a=b", None, 7])
def test_plain_values_are_not_formulas(value):
    assert not is_formula(value) and neutralize_cell(value) == value


def test_the_platform_csv_writer_neutralises_every_cell():
    data = write_csv([['=HYPERLINK("http://evil.example")', "-5", "@x", "ok"]], header=["a", "b", "c", "d"])
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert rows == [["a", "b", "c", "d"], ['\'=HYPERLINK("http://evil.example")', "-5", "'@x", "ok"]]


# ---------------------------------------------------------------------------------------- policy loader

def test_shipped_policy_scans_every_kept_free_text_column(policy_dir):  # noqa: F811
    policy = load_policy(policy_dir, MODELS)
    ev = policy.columns["events"]
    assert all(ev[c].scans_pii for c in ("page_url", "page_referrer", "event", "content_id", "category"))
    assert all(policy.columns["content_catalog"][c].detect_pii and policy.columns["content_catalog"][c].neutralize_formulas
               for c in ("title", "author", "tags", "category"))
    assert policy.columns["crm_profiles"]["plan"].neutralize_formulas


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["sources"]["events"]["user_id"].update(detect_pii=True), r"sources.events.user_id.detect_pii: only applies to a column that is kept"),
        (lambda d: d["sources"]["events"]["price"].update(detect_pii=True), r"sources.events.price.detect_pii: the raw column is Float64, not text"),
        (lambda d: d["sources"]["events"]["event"].update(detect_pii="yes"), r"sources.events.event.detect_pii: must be true or false"),
        (lambda d: d["sources"]["crm_profiles"]["birth_date"].update(neutralize_formulas=True), r"neutralize_formulas: only applies"),
    ],
)
def test_flags_are_validated(policy_dir, mutate, message):  # noqa: F811
    edit(policy_dir, "classification.yaml", mutate)
    with pytest.raises(PolicyError, match=message):
        load_policy(policy_dir, MODELS)


# ------------------------------------------------------------------------------------------ end to end

HOUR_DIR = "events/date=2026-11-28/hour=12"
USER, ANON = "pii-user-0001", "pii-anon-0001"
NEEDLES = ["jane.doe@example.com", "jane.doe%40example.com", "4915112345678", "151 1234 5678", "4111 1111 1111 1111",
           "4111111111111111", "198.51.100.23", "2001:db8::42", "secret", "jsessionid", "SESSION123", "evil@example.org", "555 0100"]


def _message(i: int, ts: str, **kw) -> dict:
    m = {"messageId": f"pii-{i}", "type": "page", "anonymousId": ANON, "userId": USER, "timestamp": ts, "sentAt": ts, "receivedAt": ts,
         "context": {"ip": "192.0.2.10", "locale": "de-DE", "location": {"country": "DE"},
                     "page": {"url": "https://news.example/", "referrer": "https://search.example/"}},
         "properties": {}}
    m.update(kw)
    return m


def _plant(landing):
    """A consenting user whose page URLs, referrers, event names and content ids carry identifiers; a CRM row
    and a catalog entry with formula cells and an email."""
    consent = _message(0, "2026-11-28T12:00:00.000Z", type="track", event="Segment Consent Preference Updated")
    consent["context"]["consent"] = {"categoryPreferences": {c: True for c in (
        "functional", "analytics", "performance", "personalization", "advertising", "marketing", "data_sharing")}}
    msgs = [consent]
    ctx = lambda url, ref: {**consent["context"], "consent": None, "page": {"url": url, "referrer": ref}}  # noqa: E731
    msgs.append(_message(1, "2026-11-28T12:10:00.000Z", context=ctx(
        "https://user:secret@news.example/users/jane.doe@example.com/profile;jsessionid=SESSION123?email=jane.doe@example.com#x",
        "https://search.example/call/+49 151 1234 5678")))
    msgs.append(_message(2, "2026-11-28T12:11:00.000Z", context=ctx("https://news.example/u/jane.doe%40example.com", "https://[2001:db8::42]/r")))
    msgs.append(_message(3, "2026-11-28T12:12:00.000Z", type="track", event="Login from 198.51.100.23 by jane.doe@example.com",
                         properties={"content_id": "article-4111111111111111", "category": "card 4111 1111 1111 1111"}))
    msgs.append(_message(4, "2026-11-28T12:13:00.000Z", type="track", event="Content Viewed", properties={"content_id": "article-12345"}))
    msgs.append(_message(5, "2026-11-28T12:14:00.000Z", type="track", event='=HYPERLINK("http://evil.example","x")',
                         properties={"content_id": "article-12345"}))
    folder = landing / HOUR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zz-pii.jsonl").write_text("".join(json.dumps(m) + "\n" for m in msgs))
    header = "user_id,email,phone,first_name,last_name,country,birth_date,signup_at,plan,updated_at\n"
    row = f'{USER},jane.doe@example.com,+49 151 1234 5678,Jane,Doe,DE,1990-01-01,2025-01-01T00:00:00Z,"=HYPERLINK(""http://evil.example"",""x"")",2026-11-28T12:00:00Z\n'
    (landing / "crm" / "zz-pii.csv").write_text(header + row)
    item = {"content_id": "article-12345", "title": '=HYPERLINK("http://evil.example","click")', "category": "news",
            "tags": ["call +1 555 0100 555", "-x"], "author": "Write to evil@example.org", "published_at": "2026-11-01T00:00:00Z", "premium": False, "price": 1.0}
    catalog = next((landing / "catalog").glob("*.jsonl"))
    catalog.write_text(catalog.read_text() + json.dumps(item) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory, clean_env_module):
    mp = clean_env_module
    root = tmp_path_factory.mktemp("pii")
    mp.setenv("PERSONALIZATION_DATA_DIR", str(root / "data"))
    mp.setenv("PERSONALIZATION_EVENTS_START", "2026-01-01")
    landing = root / "data" / "landing"
    generate(landing, users=120, events=3000, days=1, bad_fraction=0.0)
    _plant(landing)
    defs = defs_for_env()
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, PIPELINE, ("2026-11-28-00:00", "2026-11-28-23:00"), instance=instance)
    yield {"defs": defs, "result": result, "root": root, "instance": instance}
    instance.dispose()


def _read(world, layer, table):
    lake = world["defs"].resources["lake"]
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    lake.register(con, "t", layer, table)
    return con


def test_the_pipeline_passes_its_checks(world):
    checks = check_results(world["result"])
    assert checks and all(checks.values()), {k: v for k, v in checks.items() if not v}


def test_consented_events_keep_the_rows_but_not_the_identifiers(world):
    pz = world["defs"].resources["pseudonymizer"].pseudonymize_values([USER], "id")[0]
    con = _read(world, "consented", "events")
    rows = {r[0]: r[1:] for r in con.execute(
        "select message_id, page_url, page_referrer, event, content_id, category from t where user_pseudonym = ?", [pz]).fetchall()}
    assert set(rows) >= {"pii-1", "pii-2", "pii-3", "pii-4", "pii-5"}, "the consenting user's events must be kept (redacted, not dropped)"
    assert rows["pii-1"][:2] == ("https://news.example/users/[redacted:email]/profile", "https://search.example/call/[redacted:phone]")
    assert rows["pii-2"][:2] == ("https://news.example/u/[redacted:email]", "https://[[redacted:ip]]/r")
    assert rows["pii-3"][2:] == ("Login from [redacted:ip] by [redacted:email]", "article-[redacted:card]", "card [redacted:card]")
    assert rows["pii-4"][2:4] == ("Content Viewed", "article-12345")
    assert rows["pii-5"][2] == '\'=HYPERLINK("http://evil.example","x")'


def test_counts_per_column_are_in_the_metadata(world):
    md = materializations(world["result"])
    ev = md["consented/events_state"]  # the run's totals (each hour's own counts: next test)
    pii = ev["pii_redacted"]
    assert pii["page_url"]["email"] >= 2 and pii["page_referrer"]["phone"] >= 1 and pii["page_referrer"]["ip"] >= 1
    assert pii["event"]["ip"] >= 1 and pii["event"]["email"] >= 1 and pii["content_id"]["card"] >= 1 and pii["category"]["card"] >= 1
    assert ev["pii_redacted_total"] >= 8
    assert ev["formulas_neutralized"]["event"] >= 1
    cat = md["consented/content_catalog"]
    assert cat["formulas_neutralized"]["title"] == 1 and cat["pii_redacted"]["author"]["email"] == 1 and cat["pii_redacted"]["tags"]["phone"] == 1
    crm = md["consented/crm_profiles"]
    assert crm["formulas_neutralized"]["plan"] == 1
    text = json.dumps({k: md[k] for k in ("consented/events", "consented/content_catalog", "consented/crm_profiles")}, default=str)
    assert "jane" not in text and "evil" not in text, "metadata holds counts, never values"


def test_pii_counts_are_per_hour_and_add_up_to_the_run_totals(world):
    """Each hour of consented/events records its own redaction counts (not the run's totals repeated on every
    hour); the hours add up to the run's totals (consented/events_state and the run tags)."""
    result = world["result"]
    hours = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            m = e.event_specific_data.materialization
            if m.asset_key.to_user_string() == "consented/events" and m.partition:
                hours[m.partition] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
    assert len(hours) > 1 and all("pii_redacted" in md for md in hours.values()), sorted(hours)
    totals = materializations(result)["consented/events_state"]
    summed: dict = {}
    for md in hours.values():
        for col, kinds in md["pii_redacted"].items():
            for kind, n in kinds.items():
                summed.setdefault(col, {}).setdefault(kind, 0)
                summed[col][kind] += n
        assert md["pii_redacted_total"] == sum(n for kinds in md["pii_redacted"].values() for n in kinds.values())
    assert summed == totals["pii_redacted"]
    formulas = {col: sum(md["formulas_neutralized"].get(col, 0) for md in hours.values()) for col in totals["formulas_neutralized"]}
    assert formulas == totals["formulas_neutralized"]
    assert sum(md["pii_redacted_total"] for md in hours.values()) == totals["pii_redacted_total"] >= 8
    tags = world["instance"].get_run_by_id(result.run_id).tags
    assert int(tags["personalization/totals/consented/events/pii_redacted"]) == totals["pii_redacted_total"]
    assert int(tags["personalization/totals/consented/events/formulas_neutralized"]) == sum(formulas.values())
    # the planted identifiers are counted on their own hour
    planted = hours["2026-11-28-12:00"]
    assert planted["pii_redacted"]["page_url"]["email"] >= 2 and planted["pii_redacted"]["content_id"]["card"] >= 1
    assert planted["formulas_neutralized"]["event"] >= 1
    assert planted["pii_redacted_total"] > max(md["pii_redacted_total"] for pk, md in hours.items() if pk != "2026-11-28-12:00")


def test_formula_cells_from_crm_and_catalog_are_neutralised(world):
    con = _read(world, "consented", "content_catalog")
    title, author, tags = con.execute("select title, author, tags from t where content_id = 'article-12345'").fetchall()[0]
    assert title == '\'=HYPERLINK("http://evil.example","click")'
    assert author == "Write to [redacted:email]" and "[redacted:phone]" in tags
    pz = world["defs"].resources["pseudonymizer"].pseudonymize_values([USER], "id")[0]
    con = _read(world, "consented", "crm_profiles")
    assert con.execute("select plan from t where user_pseudonym = ?", [pz]).fetchall() == [('\'=HYPERLINK("http://evil.example","x")',)]


def test_no_planted_identifier_reaches_consented_features_or_the_warehouse(world):
    lake = world["defs"].resources["lake"]
    needles = duckdb.connect()
    needles.register("needles", pa.table({"v": NEEDLES}))
    scanned = set()

    def scan(where: str, table: pa.Table):
        for field in table.schema:
            for name, col in string_leaves(field.name, table[field.name]):
                needles.register("hay", pa.table({"h": col}))
                hit = needles.execute("select h, v from hay join needles on contains(h, v) limit 1").fetchall()
                assert not hit, f"{where}.{name} holds {hit[0][1]!r}"
                scanned.add(where.split(":")[0])

    for layer in ("consented", "features", "exports"):
        for f in lake.list_files(layer):
            parts = [p for p in f.path.split("/")[2:-1] if "=" in p]
            scan(f"{layer}:{f.path}", lake.read_table(layer, f.path.split("/")[1], dict(p.split("=", 1) for p in parts) or None))
    wh = duckdb.connect(str(world["root"] / "data" / "warehouse.duckdb"), read_only=True)
    tables = wh.execute("select table_schema, table_name from information_schema.tables").fetchall()
    assert tables
    for schema, name in tables:
        scan(f"warehouse:{schema}.{name}", wh.sql(f'select * from "{schema}"."{name}"').arrow().read_all())
    assert {"consented", "features", "warehouse"} <= scanned
