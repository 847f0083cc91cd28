"""Slice telemetry: histogram buckets that add up, windows per line, failed parts with thumbnails."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from contracts import wire
from edge_node.telemetry import TelemetryWindow, thumbnail
from tests.conftest import encode


def _robot(line: str, robot: str) -> wire.RobotTopic:
    return wire.parse_topic(wire.topic("acme", line, robot, wire.TopicKind.FRAMES))


def test_latency_buckets_and_quantiles() -> None:
    assert wire.latency_bucket(0.2) == 0
    assert wire.latency_bucket(5) == 0 and wire.latency_bucket(5.01) == 1
    assert wire.latency_bucket(99_999) == len(wire.LATENCY_BUCKETS_MS)
    counts = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    counts[wire.latency_bucket(12)] = 98  # 10-20 ms
    counts[wire.latency_bucket(400)] = 2  # 300-500 ms
    assert wire.histogram_quantile(counts, 0.5) == 20
    assert wire.histogram_quantile(counts, 0.98) == 20
    assert wire.histogram_quantile(counts, 0.99) == 500
    assert wire.histogram_quantile([0] * len(counts), 0.5) is None


def test_window_counts_per_line_and_keeps_the_newest_failures() -> None:
    window = TelemetryWindow("ingress-0", max_failed_parts=3)
    frame = encode(np.full((300, 200, 3), 90, dtype=np.uint8))
    for k in range(10):
        failed = k >= 4
        window.observe_verdict(
            _robot("line-1", f"cam-{k % 2}"), frame_id=f"f{k}", verdict="fail" if failed else "pass",
            defect_class="crack" if failed else None, score=0.8, total_ms=12, payload=frame,
        )  # fmt: skip
    window.observe_error(_robot("line-2", "cam-9"), wire.ErrorCode.BAD_IMAGE)
    drained = window.drain()
    assert set(drained) == {"line-1", "line-2"}
    line1 = drained["line-1"]
    assert (line1.frames, line1.fails, line1.errors) == (10, 6, 0)
    assert line1.latency_ms_histogram[wire.latency_bucket(12)] == 10
    assert [p.frame_id for p in line1.failed_parts] == ["f7", "f8", "f9"]
    assert line1.robots["cam-0"].frames == 5 and line1.robots["cam-1"].frames == 5
    image = Image.open(io.BytesIO(base64.b64decode(line1.failed_parts[0].thumbnail_jpeg_b64)))
    assert image.format == "JPEG" and max(image.size) <= wire.THUMBNAIL_SIDE
    assert drained["line-2"].errors == 1 and drained["line-2"].frames == 0
    assert drained["line-2"].error_codes == {wire.ErrorCode.BAD_IMAGE: 1} and line1.error_codes == {}
    assert window.drain() == {}  # a drain starts a new window
    wire.Telemetry.model_validate_json(line1.model_dump_json())  # what the control plane parses


def test_thumbnail_of_an_undecodable_payload_is_empty() -> None:
    assert thumbnail(b"\xff\xd8 not really a jpeg") == ""
    assert thumbnail(b"") == ""
