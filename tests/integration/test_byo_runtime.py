"""Every model kind a factory may bring, run on frames through the real runtime (ONNX Runtime, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_node.runtime import InspectionModel, Verdict
from tests import byo_models as byo

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def _load(tmp_path: Path, data: bytes, spec: dict[str, Any]) -> InspectionModel:
    return InspectionModel(byo.write(tmp_path, data, spec), warmup_batch=2)


def _verdicts(model: InspectionModel, *frames: bytes) -> list[Verdict]:
    outcomes = model.inspect(list(frames))
    assert all(isinstance(o, Verdict) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, Verdict)]


@pytest.mark.parametrize(
    ("kind", "layout", "dtype", "color"),
    [
        ("probabilities", "NCHW", "float32", "RGB"),
        ("logits", "NCHW", "float32", "RGB"),
        ("logits", "NHWC", "uint8", "BGR"),
        ("probabilities", "NHWC", "float32", "BGR"),
    ],
)
def test_classifiers_judge_frames_whatever_their_input_convention(
    tmp_path: Path, kind: str, layout: str, dtype: str, color: str
) -> None:
    data = byo.classifier(kind=kind, layout=layout, dtype=dtype, color=color)
    raw = {"scale": 1, "mean": [0, 0, 0], "std": [1, 1, 1]} if dtype == "uint8" else {}
    spec = byo.manifest(
        data, name="classifier", kind=kind, input={"layout": layout, "dtype": dtype, "color": color}, preprocess=raw
    )
    model = _load(tmp_path, data, spec)
    red, blue = _verdicts(model, byo.frame(48, 48, ((0, 0, 48, 48), RED)), byo.frame(48, 48, ((0, 0, 48, 48), BLUE)))
    assert (red.verdict, red.defect_class) == ("fail", "defect")
    assert (blue.verdict, blue.defect_class) == ("pass", None)
    for verdict in (red, blue):  # logits come back as probabilities too
        assert sum(verdict.scores.values()) == pytest.approx(1, abs=1e-5)
        assert verdict.location is None and verdict.boxes is None


@pytest.mark.parametrize(("fit", "verdict"), [("center_crop", "fail"), ("stretch", "pass")])
def test_centre_crop_judges_only_the_middle_of_a_wide_frame(tmp_path: Path, fit: str, verdict: str) -> None:
    """A wide frame, blue at the sides and red in its middle square: a crop sees red, a stretch mostly blue."""
    data = byo.classifier()
    model = _load(tmp_path, data, byo.manifest(data, name="cropper", kind="probabilities", preprocess={"fit": fit}))
    wide = byo.frame(160, 40, ((0, 0, 160, 40), BLUE), ((60, 0, 100, 40), RED))
    assert _verdicts(model, wide)[0].verdict == verdict


@pytest.mark.parametrize(("side", "squeezed"), [(64, False), (256, True)])
def test_anomaly_model_fails_a_bright_spot_and_says_where_it_is(tmp_path: Path, side: int, squeezed: bool) -> None:
    """Both map and score shapes anomaly exports use: (N, 1, h, w) with (N,), and (N, h, w) with (N, 1)."""
    data = byo.anomaly(side=side, squeezed=squeezed)
    model = _load(tmp_path, data, byo.anomaly_manifest(data, threshold=5.0, side=side))
    spot = byo.frame(128, 128, ((64, 32, 96, 64), WHITE))
    dark, bright = _verdicts(model, byo.frame(128, 128), spot)
    assert dark.verdict == "pass" and dark.fail_score < 5.0 < bright.fail_score
    assert (bright.verdict, bright.defect_class) == ("fail", "anomaly")
    assert bright.scores == {"anomaly": pytest.approx(bright.fail_score, rel=1e-5)}
    assert bright.score > 0.5 > 1 - dark.score  # 0.5 means the score sits on the threshold
    assert bright.location is not None
    assert 0.5 <= bright.location["x"] <= 0.75 and 0.25 <= bright.location["y"] <= 0.5
    x1, y1, x2, y2 = bright.location["box"]
    cell = byo.MAP_CELL / side  # one map cell, as a fraction of the frame
    assert x1 == pytest.approx(0.5, abs=cell) and x2 == pytest.approx(0.75, abs=cell)
    assert y1 == pytest.approx(0.25, abs=cell) and y2 == pytest.approx(0.5, abs=cell)


def test_anomaly_location_undoes_the_letterbox(tmp_path: Path) -> None:
    """A frame twice as wide as high sits in the middle half of the square input; the box is the frame's."""
    data = byo.anomaly()
    model = _load(tmp_path, data, byo.anomaly_manifest(data, fit="letterbox"))
    (verdict,) = _verdicts(model, byo.frame(256, 128, ((192, 0, 256, 64), WHITE)))
    assert verdict.verdict == "fail" and verdict.location is not None
    x1, y1, x2, y2 = verdict.location["box"]
    assert x1 == pytest.approx(0.75, abs=0.07) and x2 == pytest.approx(1.0, abs=0.07)
    assert y1 == pytest.approx(0.0, abs=0.13) and y2 == pytest.approx(0.5, abs=0.13)


def test_raw_detector_finds_defects_with_nms_and_returns_frame_boxes(tmp_path: Path) -> None:
    data = byo.detector(raw=True)
    model = _load(tmp_path, data, byo.detector_manifest(data, raw=True, fit="letterbox"))
    # 256 x 128 frame: letterboxed into the 64 x 64 input at half its height; the red patch covers
    # two neighbouring cells, whose overlapping boxes NMS must merge into one.
    scratch = byo.frame(256, 128, ((64, 32, 128, 64), RED))
    screw = byo.frame(256, 128, ((192, 64, 224, 96), BLUE))
    failed, passed = _verdicts(model, scratch, screw)
    assert (failed.verdict, failed.defect_class) == ("fail", "scratch")
    assert failed.boxes is not None and [b["label"] for b in failed.boxes] == ["scratch"]
    x1, y1, x2, y2 = failed.boxes[0]["box"]
    assert x1 < 96 / 256 < x2 and y1 < 48 / 128 < y2  # the box holds the patch's centre, in frame coordinates
    assert failed.fail_score == pytest.approx(failed.boxes[0]["confidence"], abs=1e-6)
    assert failed.fail_score >= 0.5
    assert passed.verdict == "pass" and passed.boxes is not None
    assert [b["label"] for b in passed.boxes] == ["screw"]
    bx1, by1, bx2, by2 = passed.boxes[0]["box"]
    assert bx1 < 208 / 256 < bx2 and by1 < 80 / 128 < by2


def test_post_nms_detector_fails_any_defect_box_above_the_threshold(tmp_path: Path) -> None:
    data = byo.detector(raw=False)
    model = _load(tmp_path, data, byo.detector_manifest(data, raw=False, fit="stretch", threshold=0.5))
    dim, bright, clean = _verdicts(
        model,
        byo.frame(64, 64, ((8, 8, 16, 16), (100, 0, 0))),  # red mean 0.39: below the threshold
        byo.frame(64, 64, ((8, 8, 16, 16), RED), ((40, 40, 48, 48), RED)),
        byo.frame(64, 64),
    )
    assert dim.verdict == "pass" and dim.boxes == []
    assert bright.verdict == "fail" and bright.boxes is not None and len(bright.boxes) == 2
    assert sorted(b["box"] for b in bright.boxes) == [[0.125, 0.125, 0.25, 0.25], [0.625, 0.625, 0.75, 0.75]]
    assert clean.verdict == "pass"
