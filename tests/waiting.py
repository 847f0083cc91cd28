"""Waiting in tests: on the condition a test needs, never for a fixed time.

A fixed ``time.sleep`` is either too short on a loaded CI machine (the test flakes) or
longer than needed everywhere else (the suite crawls), and when it is too short the
failure points at the wrong line. ``wait_until`` polls the condition, returns as soon
as it holds, and when the time is up fails with what the test was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Fails the test with ``AssertionError("waited {timeout} s for {what}")`` when ``timeout``
    seconds pass first. The predicate is tried once more at the deadline, so a slow poll
    never turns a condition that did come true into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
