"""The development key is created once, whatever the number of processes that start at once on a fresh data
directory (xdist workers importing the definitions, two CLI runs): each gets the same key, and exactly one
reports it created. Creating the file in place with O_EXCL failed here (FileExistsError in the loser, or a
half-written file read), which broke a clean-clone `make test` at collection."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from personalization_assets.core.pseudonym_keys import DEV_KEY_FILE, ensure_dev_keys

pytestmark = pytest.mark.unit


def _race(data_dir, barrier, out):
    barrier.wait()
    try:
        out.put(ensure_dev_keys(data_dir))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(("error", repr(exc)))


@pytest.mark.parametrize("round_", range(5))
def test_processes_creating_the_dev_key_at_once_all_get_the_one_key(tmp_path, round_):
    ctx = mp.get_context("fork")
    n = 8
    barrier, out = ctx.Barrier(n), ctx.Queue()
    data_dir = tmp_path / "fresh"
    procs = [ctx.Process(target=_race, args=(data_dir, barrier, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert not [r for r in results if r[0] == "error"], results
    assert len({raw for raw, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    stored = (data_dir / DEV_KEY_FILE).read_text()
    assert stored == results[0][0] and len(json.loads(stored)["1"]) == 64
    assert sorted(p.name for p in data_dir.iterdir()) == [DEV_KEY_FILE], "no temporary file is left behind"
