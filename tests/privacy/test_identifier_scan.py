"""The identifier scan of the end-to-end privacy tests (`tests.helpers.first_contained`) finds exactly what a
brute-force substring search finds: a needle anywhere inside a string (start, middle, end, whole), in nested
leaves, across multi-byte characters, and nothing where a string only shares a needle's prefix."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from tests.helpers import first_contained

pytestmark = pytest.mark.unit

ALPHABET = "ab01-_@.é☃"


def _brute(needles, leaves):
    return {(name, h) for name, col in leaves for h in col.to_pylist() if h is not None and any(v in h for v in needles)}


@pytest.mark.parametrize("seed", range(40))
def test_it_finds_a_needle_exactly_when_brute_force_does(seed):
    rng = random.Random(seed)
    needles = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(6, 12))) for _ in range(rng.randint(1, 30))]
    leaves = []
    for c in range(rng.randint(1, 4)):
        values = []
        for _ in range(rng.randint(0, 40)):
            kind = rng.random()
            noise = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 20)))
            if kind < 0.05:
                v = rng.choice(needles)
                cut = rng.randint(0, len(noise))
                values.append(noise[:cut] + v + noise[cut:])
            elif kind < 0.15:
                v = rng.choice(needles)
                values.append(noise + v[: rng.randint(1, len(v) - 1)])  # a needle's prefix only: no hit
            elif kind < 0.2:
                values.append(None)
            else:
                values.append(noise)
        leaves.append((f"f{c}.col", pa.array(values, pa.string())))
    expected = _brute(needles, leaves)
    hit = first_contained(needles, leaves)
    if expected:
        assert hit is not None and (hit[0], hit[1]) in {(n, h) for n, h in expected} and hit[2] in hit[1]
    else:
        assert hit is None


def test_each_position_and_the_whole_string_are_found():
    needle = "user-00042"
    for s in (needle, "x" + needle, needle + "x", "ab" + needle + "cd", "☃" + needle + "é"):
        assert first_contained([needle, "zzzzzz"], [("t.c", pa.array(["nothing here", s]))])[1] == s
    assert first_contained([needle], [("t.c", pa.array(["user-0004", "ser-00042", "USER-00042", None]))]) is None


def test_the_leaf_named_is_the_one_holding_the_string():
    leaves = [("a.x", pa.array(["clean", "clean2"])), ("b.y", pa.array(["mail: jane@example.com"])), ("c.z", pa.array([]))]
    assert first_contained(["jane@example.com"], leaves) == ("b.y", "mail: jane@example.com", "jane@example.com")
