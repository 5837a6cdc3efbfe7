"""The plan lease of a plain `personalization materialize` (cli.plan_lease), on a local lake and on S3 (moto on
loopback): a second holder waits for the first, says so once, and enters only after the first left. The lock and the
lease are the logs' writer lock (core/hash_chain.py): a lease whose holder died is taken over once it expired
(tests/privacy/test_concurrency.py). The CLI-level attack (two commands at once: one does the work, the other then
finds nothing stale) is tests/incremental/test_stale_only_platform.py."""

from __future__ import annotations

import threading
import time

import pytest

from personalization_assets import cli
from personalization_assets.settings import load_settings


@pytest.fixture(params=["local", "s3"])
def settings(request, data_dir):
    if request.param == "s3":
        request.getfixturevalue("s3_env")
    return load_settings()


def test_a_second_plain_materialize_waits_for_the_first(settings):
    said: list[str] = []
    inside = threading.Event()
    leave = threading.Event()
    second_in: list[float] = []

    def first() -> None:
        with cli.plan_lease(settings, echo=said.append):
            inside.set()
            leave.wait(30)

    def second() -> None:
        with cli.plan_lease(settings, echo=said.append):
            second_in.append(time.monotonic())

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(30)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(1.5)
    assert not second_in, "the second entered while the first held the lease"
    assert len(said) == 1 and said[0].startswith("Waiting for another `personalization materialize`"), said
    left = time.monotonic()
    leave.set()
    a.join(30)
    b.join(30)
    assert second_in and second_in[0] >= left, "the second never entered, or entered before the first left"
    assert len(said) == 1, said  # said once, not on every poll

