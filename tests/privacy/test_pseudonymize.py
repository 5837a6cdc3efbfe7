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
