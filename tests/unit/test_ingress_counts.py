"""The ingress's counters are bumped from its network thread and its batch workers at once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from contracts import wire
from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.ingress import FrameIngress
from edge_node.ingress.counts import Counts
from edge_node.ingress.frames import Frame


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


def test_error_answers_are_counted_per_code_in_the_lines_telemetry() -> None:
    """Usage products bill the robot's bad input but not ``internal``: telemetry must say which was which."""
    outcomes = [{"code": "bad_image", "detail": "not an image"}, {"code": "internal", "detail": "model failed"}]
    spec = SliceSpec(name="s1", tenant="acme", lines=["line-1"], broker=BrokerSpec(port=1), telemetry_period_s=5)
    ingress = FrameIngress(spec, lambda payloads: outcomes[: len(payloads)], client_id="ingress-0", node="n",
                           model="stand-in:1")  # fmt: skip
    robot = wire.parse_topic(wire.topic("acme", "line-1", "cam-1", wire.TopicKind.FRAMES))
    payloads = [b"", b"\xff\xd8 one", b"\xff\xd8 two"]
    frames = [Frame(mid=k, qos=1, generation=0, robot=robot, payload=payload, frame_id=f"f{k}", correlation=None,
                    user_properties={}) for k, payload in enumerate(payloads)]  # fmt: skip
    ingress._answers(frames)  # an empty payload is refused; the model answers the other two with errors
    assert ingress.telemetry is not None
    report = ingress.telemetry.drain()["line-1"]
    assert report.errors == 3
    assert report.error_codes == {wire.ErrorCode.BAD_IMAGE: 2, wire.ErrorCode.INTERNAL: 1}
    assert ingress.counts["error_bad_image"] == 2 and ingress.counts["error_internal"] == 1
