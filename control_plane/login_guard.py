"""Brakes on password guessing that live in the control-plane process (no FastAPI, no database).

Two brakes work together with the per-account lockout kept in the database
(``User.failed_logins`` / ``User.locked_until``, shared by every control-plane
instance):

- ``SlidingWindow``: at most N login attempts per client address per minute,
  whatever the account, so one address cannot spray guesses over many accounts.
- ``Lockouts`` for e-mails that have no account: they are locked after the same
  number of wrong passwords as real accounts, so a lockout does not reveal
  whether an account exists.

Both are per process: with several instances behind a balancer an address gets
N attempts per instance. Both hold a bounded number of keys (the oldest are
forgotten first), so a flood of addresses cannot grow the process without limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` seconds for each key."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.limit, self.window_s, self.max_keys, self.clock = limit, window_s, max_keys, clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one event for ``key``: 0 if allowed, else the seconds until the next one is (not counted)."""
        now = self.clock()
        with self._lock:
            events = self._events.pop(key, None) or deque()
            while events and events[0] <= now - self.window_s:
                events.popleft()
            wait = 0.0
            if len(events) >= self.limit:
                wait = events[0] + self.window_s - now
            else:
                events.append(now)
            self._events[key] = events  # most recently used last
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
            return wait


class Lockouts:
    """Keys locked for ``lockout_s`` after ``max_failures`` failures in a row (the database's rule, in memory)."""

    def __init__(self, max_failures: int, lockout_s: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.max_failures, self.lockout_s, self.max_keys, self.clock = max_failures, lockout_s, max_keys, clock
        self._state: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (failures, locked until)
        self._lock = threading.Lock()

    def locked_for(self, key: str) -> float:
        """Seconds ``key`` stays locked (0: not locked)."""
        with self._lock:
            _, until = self._state.get(key, (0, 0.0))
            return max(0.0, until - self.clock())

    def failed(self, key: str) -> None:
        with self._lock:
            failures, until = self._state.pop(key, (0, 0.0))
            failures += 1
            if failures >= self.max_failures:
                failures, until = 0, self.clock() + self.lockout_s
            self._state[key] = (failures, until)
            while len(self._state) > self.max_keys:
                self._state.popitem(last=False)


class LoginGuard:
    """The process's brakes on logins, built from the control plane's settings."""

    def __init__(self, attempts_per_minute: int, max_failures: int, lockout_s: float) -> None:
        self.per_address = SlidingWindow(attempts_per_minute, 60.0)
        self.unknown_emails = Lockouts(max_failures, lockout_s)


def retry_after(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
