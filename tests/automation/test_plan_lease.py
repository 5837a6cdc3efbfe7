"""The plan lease of a plain `personalization materialize` (cli.plan_lease), on a local lake and on S3 (moto on
loopback): a second holder waits for the first, says so once, and enters only after the first left; a third, arriving
while the second waits, does not queue behind it (the second already brings in what landed); a fourth, arriving
once the second runs, waits for it. The lock and the
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


class Command(threading.Thread):
    """A plain `personalization materialize` in a thread: takes the plan lease, keeps what it said and whether (and when)
    it held the lease, and holds it until released."""

    def __init__(self, settings):
        super().__init__(daemon=True)
        self.settings, self.said = settings, []
        self.spoke, self.entered, self.release = threading.Event(), threading.Event(), threading.Event()
        self.held, self.at = None, None

    def echo(self, msg: str) -> None:
        self.said.append(msg)
        self.spoke.set()

    def run(self) -> None:
        with cli.plan_lease(self.settings, echo=self.echo) as held:
            self.held, self.at = held, time.monotonic()
            self.entered.set()
            if held:
                self.release.wait(60)


WAITING = "Waiting for another `personalization materialize`"
QUEUED = "Another `personalization materialize` is already waiting"


def test_a_second_plain_materialize_waits_for_the_first_and_a_third_does_not_queue(settings):
    first = Command(settings)
    first.start()
    assert first.entered.wait(60) and first.held is True and not first.said
    second = Command(settings)
    second.start()
    assert second.spoke.wait(60), "the second never said it waits"
    assert not second.entered.is_set(), "the second entered while the first held the lease"
    assert len(second.said) == 1 and second.said[0].startswith(WAITING), second.said
    # a third, while the second waits: nothing to add (the second runs after the first), so it does not wait
    third = Command(settings)
    third.start()
    assert third.entered.wait(30) and third.held is False and third.said[0].startswith(QUEUED), third.said
    left = time.monotonic()
    first.release.set()
    assert second.entered.wait(60) and second.held is True and second.at >= left, "the second never entered, or before the first left"
    # the second runs now and nobody waits: a fourth must wait for it (the queue went with the second's wait)
    fourth = Command(settings)
    fourth.start()
    assert fourth.spoke.wait(60) and fourth.said[0].startswith(WAITING) and not fourth.entered.is_set(), fourth.said
    left = time.monotonic()
    second.release.set()
    assert fourth.entered.wait(60) and fourth.held is True and fourth.at >= left
    fourth.release.set()
    for command in (first, second, third, fourth):
        command.join(60)
    assert len(second.said) == 1 and len(fourth.said) == 1, (second.said, fourth.said)  # said once, not on every poll
    # nobody holds or waits now: the next one holds at once
    alone = Command(settings)
    alone.start()
    assert alone.entered.wait(60) and alone.held is True and not alone.said
    alone.release.set()
    alone.join(60)
