"""Batching on the way to the model: batches that grow with the load, and model calls with retries.

The model is reached through an ``InferFn`` (a Serve handle in production, an
in-process model or a fake in tests); this is the seam where the ingress meets
it, so nothing here needs Ray or a broker.

* ``Batcher`` forms a batch only once one of ``ingress_concurrency`` model-call
  slots is free. While every slot is busy, frames accumulate in the queue and
  go out together as soon as one frees up; at light load a frame goes out
  alone, after ``ingress_wait_ms`` at most.
* ``judge`` calls the model up to ``INFER_ATTEMPTS`` times; if every attempt
  raises, each frame gets an ``internal`` error rather than no answer at all.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from contracts import wire
from contracts.slice_spec import BatchSpec
from edge_node.ingress.frames import Frame
from edge_node.ingress.replies import MODEL_UNREACHABLE

log = logging.getLogger(__name__)

InferFn = Callable[[list[bytes]], list[dict[str, Any]]]
"""Judges encoded frames; one dict per frame: a verdict, or ``code``/``detail`` for an error."""

INFER_ATTEMPTS = 3
"""Model calls tried per batch before the frames are answered with ``internal``."""

POLL_S = 0.2
"""How often the batcher looks up from an empty queue or busy slots to see whether it should stop."""


def judge(
    infer: InferFn,
    payloads: list[bytes],
    *,
    attempts: int = INFER_ATTEMPTS,
    on_failure: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """One outcome per payload: the model's, or ``internal`` errors once ``attempts`` calls have raised.

    ``on_failure`` is told of every failed call; the pause between calls grows by half a second
    each time, to give a restarting model replica a moment.
    """
    for attempt in range(1, attempts + 1):
        try:
            return infer(payloads)
        except Exception as e:
            log.warning("model call failed (attempt %d/%d): %s", attempt, attempts, e)
            on_failure()
            sleep(0.5 * attempt)
    return [{"code": wire.ErrorCode.INTERNAL.value, "detail": MODEL_UNREACHABLE}] * len(payloads)


def fill(frames: queue.Queue[Frame], first: Frame, size: int, wait_s: float) -> list[Frame]:
    """``first`` and whatever else arrives within ``wait_s``, up to ``size`` frames."""
    batch = [first]
    deadline = time.monotonic() + wait_s
    while len(batch) < size:
        try:
            batch.append(frames.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            break
    return batch


class Batcher:
    """A thread that forms batches from ``frames`` and hands each to ``handle`` on a worker pool.

    ``handle`` publishes the batch's answers; it runs on one of ``ingress_concurrency`` workers,
    and its slot frees when it returns (or raises) so that the next batch can form.
    """

    def __init__(
        self,
        frames: queue.Queue[Frame],
        handle: Callable[[list[Frame]], None],
        spec: BatchSpec,
        *,
        stop: threading.Event,
        name: str,
    ) -> None:
        self._frames = frames
        self._handle = handle
        self._size, self._wait_s = spec.ingress_batch, spec.ingress_wait_ms / 1000
        self._slots = threading.Semaphore(spec.ingress_concurrency)
        self._pool = ThreadPoolExecutor(spec.ingress_concurrency, thread_name_prefix=f"{name}-batch")
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name=f"{name}-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        """After ``stop`` is set: wait for the batcher, then for every batch already handed out."""
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=POLL_S):
                continue
            try:
                first = self._frames.get(timeout=POLL_S)
            except queue.Empty:
                self._slots.release()
                continue
            self._pool.submit(self._run, fill(self._frames, first, self._size, self._wait_s))

    def _run(self, batch: list[Frame]) -> None:
        try:
            self._handle(batch)
        finally:
            self._slots.release()
