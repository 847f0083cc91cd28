"""Counters of one ingress replica, safe to bump from all of its threads.

The network thread counts frames received and acknowledged, the batch workers
count verdicts, errors, retries and failed model calls. ``Counter[key] += 1``
is a read and then a write: two threads that interleave between them lose an
update (CPython switches threads inside ``Counter.__missing__`` the first time
a key is counted; free-threaded Python anywhere). So every update takes one
lock, which costs far less than the frame it counts.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping


class Counts(Mapping[str, int]):
    """Read like a ``Counter`` (a missing key is 0); written only through ``add``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        """Count ``n`` more of ``key``."""
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        """Every counter at one instant, for reports."""
        with self._lock:
            return dict(self._counts)

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._counts

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def __repr__(self) -> str:
        return f"Counts({self.snapshot()})"
