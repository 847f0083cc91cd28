"""Per-robot frame rate limits of the ingress: one token bucket per robot.

A robot may send ``max_fps`` frames per second on average and a burst of
``BURST_S`` seconds' worth (network jitter bunches frames up); a frame beyond
that is answered ``rate_limited`` instead of being judged, so one robot cannot
take a line's model capacity (or, with big frames, its memory) from the others. Answering costs a small JSON message,
never a model call; nothing is dropped without an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    refilled_at: float


BURST_S = 2.0
"""Seconds of frames a robot may send at once."""


class RobotRateLimiter:
    """Thread-safe token buckets keyed by robot topic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, robot: str, max_fps: float) -> bool:
        """Take one token from ``robot``'s bucket; False when it is empty."""
        now = self._clock()
        burst = max(1.0, max_fps * BURST_S)
        with self._lock:
            bucket = self._buckets.get(robot)
            if bucket is None:
                bucket = self._buckets[robot] = _Bucket(burst, now)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.refilled_at) * max_fps)
            bucket.refilled_at = now
            if bucket.tokens < 1.0:
                return False
            bucket.tokens -= 1.0
            return True
