"""Pass/fail threshold calibration, shared by training (PyTorch) and recalibration (ONNX Runtime).

python -m training.calibration          # recalibrate the bundled manifest on the validation set
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

MAX_FALSE_REJECT = 0.02
"""False-reject rate the threshold is calibrated to on the validation set: the target is
0.03, and one point of margin is about two standard errors on the ~800 good parts of a
2,000-frame set."""

log = logging.getLogger(__name__)


def calibrate_threshold(fail_scores: np.ndarray, is_good: np.ndarray) -> tuple[float, float, float]:
    """Highest fail recall whose false-reject rate stays within ``MAX_FALSE_REJECT``.

    Returns (threshold, fail_recall, false_reject_rate) on the given set; ties go to
    the threshold nearest 0.5.
    """
    best = (0.5, 0.0, 1.0)
    for t in np.linspace(0.05, 0.95, 181):
        frr = float((fail_scores[is_good] >= t).mean())
        recall = float((fail_scores[~is_good] >= t).mean())
        better = recall > best[1] or (recall == best[1] and abs(t - 0.5) < abs(best[0] - 0.5))
        if frr <= MAX_FALSE_REJECT and better:
            best = (round(float(t), 3), recall, frr)
    return best


def recalibrate(manifest_path: Path, n: int, cache_dir: Path) -> tuple[float, float, float]:
    """Re-derive a model's threshold with ONNX Runtime on the validation set and rewrite its manifest."""
    from edge_node.runtime import InspectionModel
    from training import dataset

    model = InspectionModel(manifest_path)
    manifest = model.manifest
    size = (manifest.input.width, manifest.input.height)
    val = dataset.cached(dataset.VALIDATION_SEED, n, size, cache_dir)
    scores = []
    for i in range(0, n, 64):
        batch = np.stack([model.preprocess.to_tensor(img) for img in val.images[i : i + 64]])
        scores.append(model.predict(batch)[:, manifest.fail_mask].sum(axis=1))
    threshold, recall, frr = calibrate_threshold(np.concatenate(scores), val.labels == 0)
    data = manifest.model_dump(mode="json")
    data["decision"]["threshold"] = threshold
    manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    return threshold, recall, frr


def main(argv: list[str] | None = None) -> None:
    from models import BUNDLED_MANIFEST

    parser = argparse.ArgumentParser(prog="python -m training.calibration", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=BUNDLED_MANIFEST, help="manifest to recalibrate")
    parser.add_argument("--n", type=int, default=2000, help="validation frames")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/datasets"), help="rendered data cache")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threshold, recall, frr = recalibrate(args.manifest, args.n, args.cache_dir)
    print(json.dumps({"threshold": threshold, "val_fail_recall": round(recall, 4), "val_false_reject_rate": frr}))


if __name__ == "__main__":
    main()
