"""How well ``lineside model fit`` does on a surface family it was never tuned on: ``python -m models.evaluate_fit``.

The fit is given 200 good photos of one surface family and is judged on 1,000 other photos of that
family, good and defective as the generator draws them (40 % good). The default family is ``brushed``:
the extractor has no learned weights, so it has seen no family at all, and its few settings (filter
scales, cell sizes, the split) were chosen while looking at ``printed`` and ``cast`` only, never at
``brushed``. ``--all-families`` runs every family in turn; the README has the table, weak families
included. The bundled classifier is judged on the same photos, to show what fitting adds; it was trained
on all five families, so on these photos it is not held out.

Prints JSON: ``auroc``, ``fail_recall`` and ``false_reject_rate`` at the fitted threshold (asked for at
1 % false rejects), ``fit_s``, per-defect recall, and the same figures for the bundled classifier under
``bundled``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from contracts.manifest import load_manifest, model_file
from models import BUNDLED_MANIFEST, synth
from models.anomaly.fit import SCORE, fit, run_batches

FIT_SEED, EVAL_SEED = 5101, 5202
"""Seeds of the good photos the fit gets and of the photos it is judged on (no index is shared)."""


def auroc(failed: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a defective part scores above a good one (ties count half)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(sorted_scores[np.r_[False, np.diff(sorted_scores) == 0]]):  # average tied ranks
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives, negatives = int(failed.sum()), int((~failed).sum())
    return float((ranks[failed].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def decode(data: bytes, size: int) -> np.ndarray:
    """A photo as (3, size, size) float32 0..1 RGB, stretched as the manifest's ``fit: stretch`` does."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255


def figures(failed: np.ndarray, scores: np.ndarray, threshold: float, labels: list[str]) -> dict[str, object]:
    verdict = scores >= threshold
    per_class = {c: round(float(verdict[np.array(labels) == c].mean()), 4) for c in synth.CLASSES[1:] if c in labels}
    return {
        "auroc": round(auroc(failed, scores), 4),
        "fail_recall": round(float(verdict[failed].mean()), 4),
        "false_reject_rate": round(float(verdict[~failed].mean()), 4),
        "threshold": round(float(threshold), 4),
        "recall_by_defect": per_class,
    }


def bundled(photos: list[bytes], failed: np.ndarray, labels: list[str]) -> dict[str, object]:
    """The shipped classifier on the same photos: fail score = summed defect probability."""
    manifest = load_manifest(BUNDLED_MANIFEST)
    session = ort.InferenceSession(str(model_file(BUNDLED_MANIFEST, manifest)), providers=["CPUExecutionProvider"])
    pre = manifest.preprocess
    mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    x = np.stack([(decode(p, manifest.input.height) - mean) / std for p in photos]).astype(np.float32)
    (probs,) = run_batches(session, x, [manifest.output.name], batch=64, input_name=manifest.input.name)
    scores = probs[:, manifest.fail_mask].sum(1)
    return figures(failed, scores, manifest.decision.threshold, labels)


def evaluate(family: str, good_n: int, eval_n: int, false_reject_rate: float, workers: int | None) -> dict[str, object]:
    print(f"rendering {good_n} good {family} photos and {eval_n} to judge", file=sys.stderr)
    good = [s.data for s in synth.generate_many(FIT_SEED, range(good_n), workers=workers, label="good", family=family)]
    samples = list(synth.generate_many(EVAL_SEED, range(eval_n), workers=workers, family=family))
    labels = [s.label for s in samples]
    failed = np.array([label != "good" for label in labels])
    size = 256
    good_x = np.stack([decode(p, size) for p in good])
    print("fitting", file=sys.stderr)
    started = time.monotonic()
    fitted = fit(good_x, false_reject_rate=false_reject_rate,
                 progress=lambda stage, done: print(f"  {stage} {done:.0%}", file=sys.stderr))  # fmt: skip
    fit_s = time.monotonic() - started
    print("judging", file=sys.stderr)
    eval_x = np.stack([decode(s.data, size) for s in samples])
    started = time.monotonic()
    (scores,) = run_batches(fitted.session(), eval_x, [SCORE])
    per_frame_ms = (time.monotonic() - started) / len(samples) * 1000
    result: dict[str, object] = {
        "family": family,
        "good_photos": good_n,
        "eval_photos": eval_n,
        "eval_good": int((~failed).sum()),
        "false_reject_rate_asked": false_reject_rate,
        **figures(failed, scores, fitted.threshold, labels),
        "fit_s": round(fit_s, 2),
        "inference_ms_per_frame": round(per_frame_ms, 2),
        "bundled": bundled([s.data for s in samples], failed, labels),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m models.evaluate_fit", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--family", default="brushed", choices=synth.FAMILIES, help="surface family to fit and judge")
    parser.add_argument("--all-families", action="store_true", help="every family in turn (a JSON list)")
    parser.add_argument("--good", type=int, default=200, help="good photos the fit gets")
    parser.add_argument("--photos", type=int, default=1000, help="photos judged")
    parser.add_argument("--false-reject-rate", type=float, default=0.01, help="false-reject rate the fit aims for")
    parser.add_argument("--workers", type=int, default=None, help="processes rendering photos")
    parser.add_argument("--json", action="store_true", help="print JSON only (progress still goes to stderr)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    families = synth.FAMILIES if args.all_families else (args.family,)
    results = [evaluate(f, args.good, args.photos, args.false_reject_rate, args.workers) for f in families]
    text = json.dumps(results if args.all_families else results[0], indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
