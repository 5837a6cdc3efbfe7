"""The plan lease of a plain `personalization materialize` (cli.plan_lease), on a local lake and on S3 (moto on
loopback): a second holder waits for the first, says so once, and enters only after the first left; a third, arriving
while the second waits, does not queue behind it (the second already brings in what landed). The lock and the
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


def test_a_second_plain_materialize_waits_for_the_first_and_a_third_does_not_queue(settings):
    said: list[str] = []
    told = threading.Event()
    inside = threading.Event()
    leave = threading.Event()
    second_in: list[float] = []

    def echo(msg: str) -> None:
        said.append(msg)
        told.set()

    def first() -> None:
        with cli.plan_lease(settings, echo=echo) as held:
            assert held
            inside.set()
            leave.wait(60)

    def second() -> None:
        with cli.plan_lease(settings, echo=echo) as held:
            second_in.append((held, time.monotonic()))

    a = threading.Thread(target=first)
    a.start()
    assert inside.wait(60)
    b = threading.Thread(target=second)
    b.start()
    assert told.wait(60), "the second never said it waits"
    assert not second_in, "the second entered while the first held the lease"
    assert len(said) == 1 and said[0].startswith("Waiting for another `personalization materialize`"), said
    # a third, while the second waits: nothing to add (the second runs after the first), so it does not wait
    started = time.monotonic()
    with cli.plan_lease(settings, echo=said.append) as held:
        assert held is False
    assert time.monotonic() - started < 30 and said[-1].startswith("Another `personalization materialize` is already waiting"), said
    left = time.monotonic()
    leave.set()
    a.join(60)
    b.join(60)
    assert second_in and second_in[0][0] is True and second_in[0][1] >= left, "the second never entered, or before the first left"
    assert len(said) == 2, said  # the wait said once, not on every poll
    # nobody holds or waits now: the next one holds at once, and so does one after it (the queue was released)
    for _ in range(2):
        with cli.plan_lease(settings, echo=said.append) as held:
            assert held is True
    assert len(said) == 2, said
