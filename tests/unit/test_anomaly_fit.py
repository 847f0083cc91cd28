"""The fit's parts that need no photos of parts: pose, threshold calibration, splits, refusals."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from models.anomaly.features import FeatureConfig
from models.anomaly.fit import FitError, calibrate, fit, split
from models.anomaly.graph import extractor_model
from models.anomaly.pose import PoseConfig, otsu, silhouette_moments

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _plate(angle: float, shift: tuple[int, int]) -> np.ndarray:
    """A bright 160 x 100 plate with a dark dot near one corner, on a dark belt, turned and moved."""
    image = Image.new("RGB", (256, 256), (30, 30, 30))
    plate = Image.new("RGB", (256, 256), (30, 30, 30))
    plate.paste((200, 200, 200), (48, 78, 208, 178))
    plate.paste((30, 30, 30), (60, 90, 70, 100))
    image = plate.rotate(angle, Image.Resampling.BILINEAR, translate=shift)
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255


def test_the_graph_turns_and_moves_every_part_to_the_same_pose() -> None:
    poses = [(0.0, (0, 0)), (8.0, (6, -5)), (-9.0, (-7, 4))]
    frames = np.stack([_plate(angle, shift) for angle, shift in poses])
    luma = frames.transpose(0, 2, 3, 1) @ LUMA
    pose = PoseConfig(threshold=otsu(luma), part_is_brighter=True, rotate=True)
    cx, cy, theta = silhouette_moments(luma, pose)
    turned = np.degrees(theta[0] - theta)  # PIL turns anticlockwise; image y points down
    assert turned == pytest.approx([angle for angle, _ in poses], abs=0.5)
    assert cx - cx[0] == pytest.approx([dx for _, (dx, _) in poses], abs=1.0)
    assert cy - cy[0] == pytest.approx([dy for _, (_, dy) in poses], abs=1.0)

    model = extractor_model(FeatureConfig(), pose)
    model.graph.output.append(type(model.graph.output[0])(name="aligned"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _, aligned = session.run(None, {"image": frames})
    aligned_luma = aligned.transpose(0, 2, 3, 1) @ LUMA
    cx, cy, theta = silhouette_moments(aligned_luma, pose)
    assert np.abs(np.degrees(theta - theta[0])).max() < 0.5
    assert np.abs(cx).max() < 1.0 and np.abs(cy).max() < 1.0
    inside = np.s_[70:190, 40:216]  # the plate, its dot included, away from the resampled edge
    for k in (1, 2):
        assert np.abs(aligned_luma[k][inside] - aligned_luma[0][inside]).mean() < 0.03, poses[k]


def test_the_threshold_keeps_the_asked_false_reject_rate_on_a_known_distribution() -> None:
    rng = np.random.default_rng(3)
    held_out = rng.lognormal(0.5, 0.2, 200)
    threshold = calibrate(held_out, 0.01)
    population = rng.lognormal(0.5, 0.2, 200_000)
    assert (population >= threshold).mean() == pytest.approx(0.01, abs=0.006)
    assert threshold >= np.quantile(held_out, 0.99)


def test_the_three_parts_of_the_good_photos_share_no_photo() -> None:
    parts = split(200)
    assert [len(p) for p in parts] == [100, 40, 60]
    assert sorted(np.concatenate(parts).tolist()) == list(range(200))


@pytest.mark.parametrize(
    ("count", "rate", "words"),
    [(10, 0.01, "10 good photos; a fit takes 50 to 500"), (60, 0.7, "false-reject rate 0.7 must be between")],
)
def test_a_fit_it_cannot_do_says_what_to_change(count: int, rate: float, words: str) -> None:
    with pytest.raises(FitError, match=words):
        fit(np.zeros((count, 3, 256, 256), np.float32), false_reject_rate=rate)
