"""Fitting an anomaly model from photos of good parts (PaDiM-style, on an extractor that learned nothing).

Why this method: Lineside cannot download pretrained weights, and a feature extractor trained on the
project's generator would carry that generator into every factory (the bundled classifier shows what
that costs on parts drawn differently). The extractor here is a fixed filter bank (``features``) after
a pose correction (``pose``), so nothing in it was ever fitted to any surface. What is fitted, per
factory, is small and fast to fit on a CPU:

1. the silhouette threshold and polarity (Otsu over the good photos), and whether the parts are
   elongated enough to correct their turn;
2. per grid position, a Gaussian of the good patches' descriptors (mean and covariance, pooled over the
   position's 3 x 3 neighbours for the fixture's residual play, shrunk towards the diagonal);
3. per position, the distance that held-out good parts reach (``1 / (mean + 3 sd)``), so a place that
   varies on good parts (an edge, a hot spot) needs more to raise the alarm than a calm one;
4. the decision threshold: the score at the chosen false-reject rate on other held-out good parts
   (a log-normal tail fitted to them, never below their empirical quantile).

The good photos are split three ways (``split``): Gaussians, per-position normaliser, threshold; no
photo is used for two of these.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import onnx
import onnxruntime as ort

from contracts.manifest import DecisionRule, InputSpec, ModelManifest, OutputSpec, Preprocess, sha256_of
from models.anomaly.features import FeatureConfig
from models.anomaly.graph import INPUT, MAP, SCORE, Gaussians, extractor_model, scorer_model
from models.anomaly.pose import PoseConfig, elongation, otsu

log = logging.getLogger(__name__)

MIN_GOOD, MAX_GOOD = 50, 500
"""How many good photos a fit takes."""
SHRINK = 0.01
"""Covariance shrinkage towards the global per-feature variance (keeps 15 x 15 inverses stable)."""
BORDER_CELLS = 2
"""Grid cells along the frame's edge that never raise the alarm (filters there see the padding)."""
ELONGATED = 0.04
"""Below this median silhouette elongation the part's turn is not measured (round or square parts)."""
NEIGHBOURS = 1
"""Grid cells of play around each position whose patches join its Gaussian."""
SPLIT = (0.5, 0.2, 0.3)
"""Shares of the good photos for the Gaussians, the per-position normaliser and the threshold."""

Progress = Callable[[str, float], None]
"""Told each stage's name and how far the fit is (0..1)."""


class FitError(ValueError):
    """The photos cannot make a model; the message says what to change."""


@dataclass
class FitReport:
    """What the model card records about a fit."""

    good_photos: int
    split: dict[str, int]
    threshold: float
    false_reject_rate_target: float
    held_out_false_reject_rate: float
    pose: dict[str, object]
    features: dict[str, object]
    fit_s: float
    defect_photos: int = 0
    defect_recall: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class FittedModel:
    """A fitted model in memory: the ONNX graph, its threshold and the report."""

    model: onnx.ModelProto
    threshold: float
    report: FitReport

    def session(self) -> ort.InferenceSession:
        return ort.InferenceSession(self.model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_batches(
    session: ort.InferenceSession, images: np.ndarray, outputs: list[str], batch: int = 16, input_name: str = INPUT
) -> list[np.ndarray]:
    """``session`` over ``images`` in batches; each output concatenated."""
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for i in range(0, len(images), batch):
        for k, value in enumerate(session.run(outputs, {input_name: images[i : i + batch]})):
            parts[k].append(np.asarray(value))
    return [np.concatenate(p) for p in parts]


def measure_pose(images: np.ndarray) -> PoseConfig:
    """The silhouette's threshold and polarity, and whether a turn can be measured, from good photos."""
    luma = images.transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114], np.float32)
    threshold = otsu(luma[:, ::2, ::2].ravel())
    border = np.concatenate(
        [luma[:, :4].ravel(), luma[:, -4:].ravel(), luma[:, :, :4].ravel(), luma[:, :, -4:].ravel()]
    )
    brighter = bool(np.median(border) < threshold)
    pose = PoseConfig(threshold=threshold, part_is_brighter=brighter, rotate=False)
    return PoseConfig(threshold, brighter, rotate=elongation(luma, pose) >= ELONGATED)


def gaussians(features: np.ndarray, neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean (P, D) and inverse covariance (P, D, D) of (N, D, G, G) descriptors."""
    _, d, g, _ = features.shape
    shifted = [np.roll(features, (dy, dx), axis=(2, 3))
               for dy in range(-neighbours, neighbours + 1) for dx in range(-neighbours, neighbours + 1)]  # fmt: skip
    samples = np.concatenate(shifted).transpose(2, 3, 0, 1).reshape(g * g, -1, d).astype(np.float64)
    mean = samples.mean(1)
    centred = samples - mean[:, None]
    cov = np.einsum("pnd,pne->pde", centred, centred) / (samples.shape[1] - 1)
    spread = features.transpose(1, 0, 2, 3).reshape(d, -1).var(1)
    cov += SHRINK * np.diag(spread + 1e-8)[None]
    return mean.astype(np.float32), np.linalg.inv(cov).astype(np.float32)


def raw_maps(features: np.ndarray, mean: np.ndarray, icov: np.ndarray) -> np.ndarray:
    """Smoothed Mahalanobis maps (N, G, G), as the graph computes them before normalising."""
    n, d, g, _ = features.shape
    q = features.transpose(0, 2, 3, 1).reshape(n, g * g, d) - mean[None]
    dist = np.sqrt(np.maximum(np.einsum("npd,pde,npe->np", q, icov, q), 0)).reshape(n, g, g)
    padded = np.pad(dist, ((0, 0), (1, 1), (1, 1)), constant_values=np.nan)
    windows = np.stack([padded[:, i : i + g, j : j + g] for i in range(3) for j in range(3)])
    return np.nanmean(windows, axis=0)


def calibrate(scores: np.ndarray, false_reject_rate: float) -> float:
    """Score threshold at ``false_reject_rate`` from held-out good scores: a log-normal tail, at least
    the empirical quantile (a handful of photos cannot show a 1 % tail by themselves)."""
    logs = np.log(np.maximum(scores, 1e-6))
    z = NormalDist().inv_cdf(1 - false_reject_rate)
    parametric = float(np.exp(logs.mean() + z * logs.std(ddof=1)))
    return max(parametric, float(np.quantile(scores, 1 - false_reject_rate)))


def split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices for the Gaussians, the normaliser and the threshold (disjoint, seeded)."""
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(n * SPLIT[0]), int(n * (SPLIT[0] + SPLIT[1]))
    return order[:a], order[a:b], order[b:]


def fit(
    good: np.ndarray,
    *,
    false_reject_rate: float = 0.01,
    defects: np.ndarray | None = None,
    config: FeatureConfig | None = None,
    progress: Progress | None = None,
) -> FittedModel:
    """Fit a model on ``good`` (N, 3, S, S) float32 0..1 RGB photos; ``defects`` only report recall."""
    started = time.monotonic()
    tell = progress or (lambda stage, done: None)
    config = config or FeatureConfig()
    if not MIN_GOOD <= len(good) <= MAX_GOOD:
        raise FitError(f"{len(good)} good photos; a fit takes {MIN_GOOD} to {MAX_GOOD}")
    if not 0 < false_reject_rate < 0.5:
        raise FitError(f"false-reject rate {false_reject_rate} must be between 0 and 0.5 (0.01 is 1 %)")
    expected = (3, config.size, config.size)
    if good.shape[1:] != expected:
        raise FitError(f"photos arrive as {good.shape[1:]}, expected {expected}")
    tell("pose", 0.05)
    pose = measure_pose(good)
    tell("features", 0.1)
    extractor = ort.InferenceSession(
        extractor_model(config, pose).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (descriptors,) = run_batches(extractor, good, ["features"])
    tell("gaussians", 0.5)
    fit_idx, norm_idx, thr_idx = split(len(good))
    mean, icov = gaussians(descriptors[fit_idx])
    tell("normaliser", 0.7)
    reach = raw_maps(descriptors[norm_idx], mean, icov)
    normaliser = 1.0 / (reach.mean(0) + 3 * reach.std(0) + 1e-6)
    g = config.grid
    inner = np.zeros((g, g), np.float32)
    inner[BORDER_CELLS : g - BORDER_CELLS, BORDER_CELLS : g - BORDER_CELLS] = 1
    model = scorer_model(config, pose, Gaussians(mean, icov, (normaliser * inner).astype(np.float32)))
    tell("threshold", 0.85)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (held_out,) = run_batches(session, good[thr_idx], [SCORE])
    threshold = calibrate(held_out, false_reject_rate)
    recall = None
    if defects is not None and len(defects):
        (defect_scores,) = run_batches(session, defects, [SCORE])
        recall = float((defect_scores >= threshold).mean())
    report = FitReport(
        good_photos=len(good),
        split={"gaussians": len(fit_idx), "normaliser": len(norm_idx), "threshold": len(thr_idx)},
        threshold=threshold,
        false_reject_rate_target=false_reject_rate,
        held_out_false_reject_rate=float((held_out >= threshold).mean()),
        pose=asdict(pose),
        features=asdict(config),
        fit_s=round(time.monotonic() - started, 2),
        defect_photos=0 if defects is None else len(defects),
        defect_recall=recall,
    )
    tell("done", 1.0)
    return FittedModel(model, threshold, report)


def manifest_for(name: str, version: str, file: str, sha256: str, threshold: float, size: int) -> ModelManifest:
    """The manifest of a fitted model: 0..1 RGB input, an anomaly score and map, a raw threshold."""
    return ModelManifest(
        schema_version=1,
        name=name,
        version=version,
        file=file,
        sha256=sha256,
        opset=17,
        input=InputSpec(name=INPUT, layout="NCHW", dtype="float32", color="RGB", height=size, width=size),
        preprocess=Preprocess(resize="bilinear", scale=1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        output=OutputSpec(name=SCORE, kind="anomaly", map=MAP),
        labels=("good", "anomaly"),
        decision=DecisionRule(fail_classes=("anomaly",), threshold=round(threshold, 6)),
    )


def write(fitted: FittedModel, out_dir: Path, name: str, version: str) -> Path:
    """Write ``NAME.onnx``, ``NAME.manifest.json`` and ``NAME.card.md``; returns the manifest's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{name}.onnx"
    onnx.save(fitted.model, onnx_path)
    size = int(fitted.report.features["size"])  # type: ignore[call-overload]
    manifest = manifest_for(name, version, onnx_path.name, sha256_of(onnx_path), fitted.threshold, size)
    manifest_path = out_dir / f"{name}.manifest.json"
    manifest_path.write_text(manifest.model_dump_json(indent=2, exclude_defaults=True) + "\n")
    (out_dir / f"{name}.card.md").write_text(model_card(name, version, fitted.report))
    return manifest_path


def model_card(name: str, version: str, report: FitReport) -> str:
    """A short model card: what the model is, how it was fitted, and its quality figures."""
    recall = "not measured (no defect photos given)" if report.defect_recall is None else (
        f"{report.defect_recall:.3f} of {report.defect_photos} defect photos")  # fmt: skip
    figures = json.dumps(asdict(report), indent=2, default=str)
    return f"""# Model card: {name} {version}

An anomaly model fitted by `lineside model fit` on {report.good_photos} photos of good parts only. It scores
how far each part of a frame is from what the good photos showed at that place, and fails a part whose
score reaches {report.threshold:.4f}. Each verdict carries where the anomaly is (the peak of the map, and the
region above the threshold).

| figure | value |
| --- | --- |
| false-reject rate asked for | {report.false_reject_rate_target:.3f} |
| false-reject rate on held-out good photos ({report.split["threshold"]}) | {report.held_out_false_reject_rate:.3f} |
| defect recall | {recall} |
| fit time | {report.fit_s:.1f} s |

Method (and how well it does on the generator's families: models/anomaly/MODEL_CARD.md): a fixed filter bank
(no learned weights) after a pose correction from the part's silhouette;
per position, a Gaussian of good patches (PaDiM-style). See `models/anomaly/fit.py`.

The threshold rests on {report.split["threshold"]} held-out good photos: check the false-reject rate on
the line and refit with more photos if it drifts.

```json
{figures}
```
"""
