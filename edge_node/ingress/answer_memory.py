"""What an ingress replica remembers about frame ids, so that a retry never costs a second inference.

A robot that hears no answer in time sends the same frame id again. Two cases:

* the frame was already answered: the retry gets the same answer, from memory;
* the frame is being judged now: the retry joins it and is acknowledged with
  it, so that retries under load cannot snowball into more model calls.

Only frames that carry a frame id (MQTT 5 correlation data) take part: a frame
without one cannot be retried under the same id. The memory is bounded; the
oldest answers are forgotten first, and a retry that comes after its answer
was forgotten is judged again (the verdict is the same, it only costs time).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from edge_node.ingress.frames import Frame

ANSWERED_MEMORY = 20_000
"""Recently answered frame ids remembered per replica, to answer retries without re-inference."""

Answer = tuple[str, bytes]
"""Topic and payload of a published answer."""


class AnswerMemory:
    """Answers by frame key, and the frames in progress with the retries that joined them. Thread-safe."""

    def __init__(self, capacity: int = ANSWERED_MEMORY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple[str, str], Answer] = OrderedDict()
        self._answered_at: dict[tuple[str, str], float] = {}
        self._in_progress: dict[tuple[str, str], list[Frame]] = {}

    def begin(self, frame: Frame) -> bool:
        """Mark ``frame`` as in progress; False when its id already is: then ``frame`` has joined
        that one and is acknowledged with it, and must not be judged."""
        if frame.correlation is None:
            return True
        with self._lock:
            joined = self._in_progress.get(frame.key)
            if joined is not None:
                joined.append(frame)
                return False
            self._in_progress[frame.key] = []
            return True

    def release(self, frame: Frame) -> list[Frame]:
        """End ``frame``'s time in progress; returns the retries of it that joined meanwhile."""
        if frame.correlation is None:
            return []
        with self._lock:
            return self._in_progress.pop(frame.key, [])

    def answer(self, frame: Frame) -> Answer | None:
        """The answer already published for ``frame``'s id, if it is still remembered."""
        if frame.correlation is None:
            return None
        with self._lock:
            return self._answers.get(frame.key)

    def answered_within(self, frame: Frame, seconds: float) -> bool:
        """Was ``frame``'s id answered less than ``seconds`` ago? (That answer is still on its way.)"""
        if frame.correlation is None:
            return False
        with self._lock:
            at = self._answered_at.get(frame.key)
        return at is not None and time.monotonic() - at < seconds

    def remember(self, frame: Frame, topic: str, payload: bytes) -> None:
        """Keep the final answer to ``frame``, forgetting the oldest beyond ``capacity``."""
        if frame.correlation is None:
            return
        with self._lock:
            self._answers[frame.key] = (topic, payload)
            self._answers.move_to_end(frame.key)
            self._answered_at[frame.key] = time.monotonic()
            while len(self._answers) > self.capacity:
                forgotten, _ = self._answers.popitem(last=False)
                self._answered_at.pop(forgotten, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)
