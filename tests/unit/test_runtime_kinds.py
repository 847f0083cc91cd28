"""Verdict rules of anomaly models and detectors, frame fitting, and the wire fields they fill (no ONNX Runtime)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from contracts import wire
from contracts.manifest import ModelManifest
from edge_node.imaging import FrameLimits, Placement, decode_rgb, fit_into
from edge_node.verdicts import Detections, judge_anomaly, judge_detections, nms, post_nms_detections, raw_detections
from tests import byo_models as byo
from tests.conftest import encode

LIMITS = FrameLimits(max_bytes=4 << 20, max_pixels=16_000_000, max_side=8192)
SQUARE = Placement(0, 0, 64, 64)  # a 64 x 64 input filled by a stretched frame


def _anomaly(threshold: float = 5.0) -> ModelManifest:
    return ModelManifest.model_validate(byo.anomaly_manifest(b"", threshold=threshold))


def _detector() -> ModelManifest:
    return ModelManifest.model_validate(byo.detector_manifest(b"", raw=True))


def _frame(width: int, height: int) -> bytes:
    return encode(np.full((height, width, 3), 200, np.uint8), "PNG")


@pytest.mark.parametrize(
    ("fit", "frame", "shape"), [("letterbox", (200, 100), (32, 64)), ("center_crop", (200, 100), (64, 128))]
)
def test_fitting_keeps_the_frames_aspect_ratio(fit: Any, frame: tuple[int, int], shape: tuple[int, int]) -> None:
    resized = decode_rgb(_frame(*frame), LIMITS, (64, 64), fit)
    assert resized.shape[:2] == shape
    fitted, placement = fit_into(resized, (64, 64), pad_value=0)
    assert fitted.shape == (64, 64, 3)
    assert placement.box(0, 0, 64, 64) == ([0.0, 0.0, 1.0, 1.0] if fit == "letterbox" else [0.25, 0.0, 0.75, 1.0])


def test_letterbox_padding_is_outside_the_frame() -> None:
    fitted, placement = fit_into(decode_rgb(_frame(200, 100), LIMITS, (64, 64), "letterbox"), (64, 64), pad_value=7)
    assert (fitted[:16] == 7).all() and (fitted[48:] == 7).all() and (fitted[16:48] == 200).all()
    assert placement.point(32, 16) == (0.5, 0.0)


def test_anomaly_region_is_the_connected_cells_around_the_peak() -> None:
    heat = np.zeros((16, 16), np.float32)
    heat[4:6, 8:12] = 6.0  # the region around the peak (4 x 4 input pixels a cell)
    heat[5, 9] = 9.0
    heat[12, 0] = 5.5  # above the threshold but not connected to the peak
    verdict = judge_anomaly(_anomaly(), float(heat.max()), heat, SQUARE)
    assert verdict.verdict == "fail" and verdict.fail_score == 9.0
    assert verdict.location is not None
    cell = 4 / 64  # a map cell, as a fraction of the frame
    # the peak cell's centre, and the region's cells (rows 4-5, columns 8-11) as a box
    assert (verdict.location["x"], verdict.location["y"]) == pytest.approx((9.5 * cell, 5.5 * cell), abs=1e-3)
    assert verdict.location["box"] == pytest.approx([8 * cell, 4 * cell, 12 * cell, 6 * cell], abs=1e-3)


def test_anomaly_below_threshold_passes_with_a_peak_but_no_region() -> None:
    heat = np.full((16, 16), 1.0, np.float32)
    heat[0, 15] = 2.0
    verdict = judge_anomaly(_anomaly(threshold=5.0), 2.0, heat, SQUARE)
    assert verdict.verdict == "pass" and verdict.location is not None and verdict.location["box"] is None
    assert verdict.location["x"] > 0.9 and verdict.location["y"] < 0.1
    assert 0.5 < verdict.score < 1  # confidence that it passes, below certainty


def test_raw_anomaly_scores_above_one_are_judged_against_a_raw_threshold() -> None:
    manifest = _anomaly(threshold=40.0)
    low, high = judge_anomaly(manifest, 39.0, None, SQUARE), judge_anomaly(manifest, 41.0, None, SQUARE)
    assert (low.verdict, high.verdict) == ("pass", "fail")
    assert high.location is None and high.scores == {"anomaly": 41.0}
    assert 0.5 < high.score < 0.52  # just over the threshold: just over 0.5


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    found = Detections(boxes, np.array([0.8, 0.9, 0.7, 0.6], np.float32), np.array([0, 0, 1, 0]))
    assert list(nms(found, 0.45)) == [1, 2, 3]


def test_raw_head_boxes_are_centre_size_in_input_pixels() -> None:
    head = np.zeros((7, 3), np.float32)
    head[:4, 0] = [32, 16, 8, 4]  # cx, cy, w, h
    head[4 + 1, 0] = 0.9  # a dent
    head[4 + 2, 1] = 0.3  # a screw below the threshold
    verdict = judge_detections(_detector(), raw_detections(_detector(), head), SQUARE)
    assert (verdict.verdict, verdict.defect_class, verdict.fail_score) == ("fail", "dent", pytest.approx(0.9))
    assert verdict.boxes is not None and [(b["label"], b["confidence"]) for b in verdict.boxes] == [
        ("dent", pytest.approx(0.9))
    ]
    assert verdict.boxes[0]["box"] == pytest.approx([28 / 64, 14 / 64, 36 / 64, 18 / 64], abs=1e-3)


def test_a_detector_of_defects_only_passes_a_frame_without_boxes() -> None:
    manifest = ModelManifest.model_validate(byo.detector_manifest(b"", raw=False))
    rows = np.zeros((5, 6), np.float32)  # zero padding rows, as post-NMS exports pad
    rows[0] = [0, 0, 8, 8, 0.4, 0]  # below the threshold
    rows[1] = [0, 0, 8, 8, 0.9, 7]  # a class the manifest does not have: ignored
    verdict = judge_detections(manifest, post_nms_detections(manifest, rows), SQUARE)
    assert (verdict.verdict, verdict.boxes, verdict.fail_score) == ("pass", [], 0.0)


def _result(**extra: Any) -> wire.Result:
    timings = wire.Timings(queue=1, inference=2, total=3)
    return wire.Result(frame_id="f", tenant="acme", line="l", robot="r", slice="s", node="n", verdict="fail",
                       defect_class="scratch", score=0.9, fail_score=0.9, scores={}, model="m:1.0.0",
                       timings_ms=timings, **extra)  # fmt: skip


def test_results_without_location_or_boxes_read_as_before() -> None:
    sent = json.loads(_result().model_dump_json())
    assert "location" not in sent and "boxes" not in sent
    boxes = [{"label": "scratch", "confidence": 0.9, "box": [0.1, 0.1, 0.2, 0.2]}]
    sent = json.loads(_result(boxes=boxes).model_dump_json())
    assert sent["boxes"] == boxes and "location" not in sent


@pytest.mark.parametrize(
    "location",
    [
        {"x": 1.5, "y": 0.5},
        {"x": 0.5, "y": float("nan")},
        {"x": 0, "y": 0, "box": [0, 0, 2, 1]},
        {"x": 0, "y": 0, "evil": 1},
    ],
)
def test_failed_part_location_from_the_edge_is_bounded(location: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="location"):
        wire.FailedPart(robot="cam-1", frame_id="f", at=0, defect_class="anomaly", score=0.6, location=location)


def test_a_failed_parts_location_is_the_anomaly_or_the_reported_defects_best_box() -> None:
    anomaly = judge_anomaly(_anomaly(), 9.0, np.full((16, 16), 9.0, np.float32), SQUARE)
    where = wire.defect_location(anomaly.location, anomaly.boxes, anomaly.defect_class)
    assert where is not None and where.box == (0, 0, 1, 1)  # the whole map is anomalous
    head = np.zeros((7, 2), np.float32)
    head[:4, 0], head[4 + 2, 0] = [8, 8, 16, 16], 0.95  # a screw (no defect), the most confident box
    head[:4, 1], head[4 + 0, 1] = [48, 48, 16, 16], 0.8  # a scratch
    found = judge_detections(_detector(), raw_detections(_detector(), head), SQUARE)
    where = wire.defect_location(found.location, found.boxes, found.defect_class)
    assert found.defect_class == "scratch" and where is not None
    assert (where.x, where.y, where.box) == (0.75, 0.75, (0.625, 0.625, 0.875, 0.875))
    assert wire.defect_location(None, [], None) is None
