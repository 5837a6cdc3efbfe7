"""Keyed, versioned pseudonyms: normalization, HMAC correctness, rotation keeps joins."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from personalization_assets.core.pseudonym_keys import KeyConfigError, parse_key_map
from personalization_assets.core.pseudonymize import KeyChain, Pseudonymizer, normalize
from hypothesis import given, settings
from hypothesis import strategies as st

from personalization_assets.privacy.transforms import truncate_ip, truncate_ips

pytestmark = pytest.mark.unit

K1, K2 = "11" * 32, "22" * 32


def test_normalization():
    assert normalize("  Ann.Smith@Example.COM ", "email") == "ann.smith@example.com"
    assert normalize("+49 (30) 1234-567", "phone") == "+49301234567"
    assert normalize("0049 30 1234567", "phone") == "+49301234567"
    assert normalize(" user-42 ", "id") == "user-42"
    assert normalize("   ", "id") is None and normalize(None, "email") is None


def test_pseudonym_is_hmac_sha256_with_version_prefix():
    pz = Pseudonymizer(keys_json=json.dumps({"1": K1}))
    expected = hmac.new(bytes.fromhex(K1), b"ann@example.com", hashlib.sha256).hexdigest()
    assert pz.pseudonymize_values([" ANN@example.com"], "email") == [f"v1:{expected}"]


def test_rotation_rekeys_existing_pseudonyms_to_what_new_data_produces():
    old = Pseudonymizer(keys_json=json.dumps({"1": K1}))
    new = Pseudonymizer(keys_json=json.dumps({"1": K1, "2": K2}), active_version="2")
    stored = old.pseudonymize_values(["user-1", "user-2"], "id")
    rekeyed = [new.chain().rekey(p) for p in stored]
    fresh = new.pseudonymize_values(["user-1", "user-2"], "id")
    assert rekeyed == fresh and all(p.startswith("v2:") for p in fresh)
    assert rekeyed[0] != stored[0].replace("v1:", "v2:")


def test_key_map_errors_name_the_setting_and_never_echo_keys():
    with pytest.raises(KeyConfigError, match="PERSONALIZATION_PSEUDONYM_KEYS"):
        parse_key_map("not json")
    with pytest.raises(KeyConfigError, match="at least 32") as e:
        parse_key_map(json.dumps({"1": "abcd"}))
    assert "abcd" not in str(e.value)
    with pytest.raises(KeyConfigError, match="ACTIVE_VERSION=3"):
        parse_key_map(json.dumps({"1": K1}), "3")


def test_ip_truncation():
    assert truncate_ip("203.0.113.77") == "203.0.113.0/24"
    assert truncate_ip("2001:db8:abcd:12::1") == "2001:db8:abcd::/48"
    assert truncate_ip("::ffff:198.51.100.9") == "198.51.100.0/24"
    assert truncate_ip("not an ip") is None and truncate_ip(None) is None


_octets = st.one_of(st.integers(0, 255).map(str), st.sampled_from(["00", "01", "256", "999", "-1", "", " 7", "1e2"]))
_ips = st.one_of(
    st.none(),
    st.tuples(_octets, _octets, _octets, _octets).map(".".join),
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=4).map(lambda ip: f"::ffff:{ip}"), st.ip_addresses(v=4).map(lambda ip: f" {ip} "),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_ips, max_size=30))
def test_vectorized_ip_truncation_agrees_with_the_scalar_one(values):
    """The regex fast path for canonical IPv4 must never disagree with ipaddress (leading zeros, octets
    over 255, padding, IPv6, mapped IPv4, garbage)."""
    assert truncate_ips(values) == [truncate_ip(v) for v in values]


def test_keychain_refuses_downgrade():
    chain = KeyChain({"1": bytes.fromhex(K1), "2": bytes.fromhex(K2)}, "1")
    with pytest.raises(ValueError):
        chain.rekey("v2:" + "0" * 64)


@pytest.mark.integration
def test_a_key_replaced_under_its_version_is_refused_with_the_fix(data_dir, monkeypatch):
    """A key swapped under the same version (a secret rotated without a new version; another data dir's development
    key over the same lake) made pseudonyms that match nothing stored: the suppression list stopped catching an erased
    subject's new events, and nothing said so. Each version's key id is recorded on first use; another key under it is
    refused, naming the fix; a new version next to the old key is what rotation means, and goes through."""
    from tests.helpers import defs_for_env, generate, materialize

    generate(data_dir / "landing", users=20, events=300, days=1, bad_fraction=0.0)
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": K1}))
    assert materialize(defs_for_env(), "key:raw/crm_profiles").success

    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": K2}))
    result = materialize(defs_for_env(), "key:raw/crm_profiles", raise_on_error=False)
    assert not result.success
    failure = "".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)
    assert "key version 1 from PERSONALIZATION_PSEUDONYM_KEYS is not the key" in failure and "rotate_pseudonym_keys" in failure
    assert K2 not in failure and K1 not in failure

    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_KEYS", json.dumps({"1": K1, "2": K2}))
    monkeypatch.setenv("PERSONALIZATION_PSEUDONYM_ACTIVE_VERSION", "2")
    assert materialize(defs_for_env(), "key:raw/crm_profiles").success
