"""Waiting for an `flock` with a deadline: the one polling loop of the platform's file locks (the logs' writer lock,
the local warehouse file's lock)."""

from __future__ import annotations

import fcntl
import random
import time
from collections.abc import Callable
from typing import IO


def flock_within(fh: IO, timeout: float, *, shared: bool = False, on_wait: Callable[[], None] | None = None) -> bool:
    """Take `fh`'s `flock` (shared or exclusive), polling, within `timeout` seconds: True once held, False when the
    deadline passed first. `on_wait` is called once, when the lock is first found held by someone else."""
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if time.monotonic() > deadline:
                return False
            time.sleep(random.uniform(0.005, 0.05))
