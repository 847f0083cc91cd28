"""The ingress's counters are bumped from its network thread and its batch workers at once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.ingress import FrameIngress
from edge_node.ingress.counts import Counts


@pytest.fixture
def eager_thread_switches() -> Iterator[None]:
    """Switch threads as often as CPython allows, so that a read-then-write race shows within a second."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_thread_switches")
def test_no_count_is_lost_when_threads_count_at_once() -> None:
    """Each thread counts every key once, the first time it is counted at all: where a plain
    ``Counter[key] += 1`` loses a dozen of these 80,000 updates, none may be lost."""
    ingress = FrameIngress(
        SliceSpec(name="s1", tenant="acme", lines=["line-1"], broker=BrokerSpec(port=1)),
        lambda frames: [],
        client_id="ingress-0",
        node="test-node",
        model="stand-in:1",
    )  # built, never started: no network
    threads, keys = 4, 20_000
    together = threading.Barrier(threads)

    def count() -> None:
        together.wait()
        for k in range(keys):
            ingress.counts.add(f"error_{k}")

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counted = ingress.counts.snapshot()
    assert sum(counted.values()) == threads * keys
    assert set(counted.values()) == {threads}


def test_counts_read_like_a_counter() -> None:
    counts = Counts()
    counts.add("frames_received")
    counts.add("frames_received", 2)
    assert counts["frames_received"] == 3
    assert counts["verdict_fail"] == 0
    assert "verdict_fail" not in counts
    assert dict(counts) == counts.snapshot() == {"frames_received": 3}
    assert len(counts) == 1
