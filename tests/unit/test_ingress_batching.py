"""Batching with a fake model at the ``InferFn`` seam: retries, and batches that grow with the load."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from contracts import wire
from contracts.slice_spec import BatchSpec
from edge_node.ingress import Frame
from edge_node.ingress.batching import INFER_ATTEMPTS, Batcher, judge
from tests.unit.ingress_frames import make_frame


class FlakyModel:
    """Raises on the first ``failures`` calls, then judges every frame ``pass``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("model replica restarting")
        return [{"verdict": "pass"} for _ in payloads]


def test_a_model_call_that_fails_is_retried_with_growing_pauses() -> None:
    model, failures, pauses = FlakyModel(failures=2), list[int](), list[float]()
    outcomes = judge(model, [b"a", b"b"], on_failure=lambda: failures.append(1), sleep=pauses.append)
    assert outcomes == [{"verdict": "pass"}, {"verdict": "pass"}]
    assert (model.calls, len(failures), pauses) == (3, 2, [0.5, 1.0])


def test_a_model_that_never_answers_gives_every_frame_an_internal_error() -> None:
    model, pauses = FlakyModel(failures=INFER_ATTEMPTS), list[float]()
    outcomes = judge(model, [b"a", b"b", b"c"], sleep=pauses.append)
    assert model.calls == INFER_ATTEMPTS
    assert [o["code"] for o in outcomes] == [wire.ErrorCode.INTERNAL.value] * 3
    assert all("retry the frame" in o["detail"] for o in outcomes)


class Batches:
    """The sizes of the batches handled so far, and a way to wait for the ones a test expects."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.mids: list[int] = []
        self._changed = threading.Condition()

    def record(self, batch: list[Frame]) -> None:
        with self._changed:
            self.sizes.append(len(batch))
            self.mids.extend(f.mid for f in batch)
            self._changed.notify_all()

    def wait_for_frames(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: sum(self.sizes) >= count, 5), f"{self.sizes} after 5 s"


@pytest.fixture
def run_batcher() -> Iterator[Callable[..., queue.Queue[Frame]]]:
    """Start a batcher whose batches go to ``handle``; stopped (and its batches finished) after the test."""
    stop = threading.Event()
    batchers: list[Batcher] = []

    def start(handle: Callable[[list[Frame]], None], **batch: Any) -> queue.Queue[Frame]:
        frames: queue.Queue[Frame] = queue.Queue()
        batcher = Batcher(frames, handle, BatchSpec(**batch), stop=stop, name="test")
        batcher.start()
        batchers.append(batcher)
        return frames

    yield start
    stop.set()
    for batcher in batchers:
        batcher.join()


def test_batches_grow_while_every_model_call_slot_is_busy(run_batcher: Callable[..., queue.Queue[Frame]]) -> None:
    release = threading.Event()
    batches = Batches()

    def handle(batch: list[Frame]) -> None:
        batches.record(batch)
        assert release.wait(5)

    frames = run_batcher(handle, ingress_batch=8, ingress_wait_ms=0, ingress_concurrency=1)
    frames.put(make_frame(mid=0))
    batches.wait_for_frames(1)
    for mid in range(1, 6):
        frames.put(make_frame(mid=mid))
    release.set()
    batches.wait_for_frames(6)
    assert batches.sizes == [1, 5], "a lone frame goes alone; frames queued behind a busy slot go together"


def test_a_batch_is_never_larger_than_ingress_batch(run_batcher: Callable[..., queue.Queue[Frame]]) -> None:
    batches = Batches()
    frames = run_batcher(batches.record, ingress_batch=4, ingress_wait_ms=50)
    for mid in range(10):
        frames.put(make_frame(mid=mid))
    batches.wait_for_frames(10)
    assert max(batches.sizes) <= 4
    assert sorted(batches.mids) == list(range(10))


def test_a_batch_that_raises_frees_its_slot(run_batcher: Callable[..., queue.Queue[Frame]]) -> None:
    batches = Batches()

    def handle(batch: list[Frame]) -> None:
        batches.record(batch)
        raise RuntimeError("publisher gone")

    frames = run_batcher(handle, ingress_batch=1, ingress_wait_ms=0, ingress_concurrency=1)
    for mid in range(3):
        frames.put(make_frame(mid=mid))
    batches.wait_for_frames(3)
    assert batches.mids == [0, 1, 2], "the one slot kept serving after failures"
