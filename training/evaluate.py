"""Evaluate a model with ONNX Runtime on a freshly generated held-out set.

Frames go through the same path a slice uses (``edge_node.runtime``): encoded
bytes, preprocessing from the manifest, batched inference, the manifest's
pass/fail rule.

    python -m training.evaluate --json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_node.runtime import InspectionModel, Verdict
from models import BUNDLED_MANIFEST, synth
from training.dataset import HELDOUT_SEED

CARD_BEGIN = "<!-- evaluation:begin -->"
CARD_END = "<!-- evaluation:end -->"


def evaluate(
    manifest_path: Path = BUNDLED_MANIFEST,
    *,
    n: int = 2400,
    seed: int = HELDOUT_SEED,
    batch: int = 32,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Metrics of the model at ``manifest_path`` on ``n`` frames of set ``seed``."""
    model = InspectionModel(manifest_path)
    labels: list[str] = []
    predicted: list[str] = []
    verdicts: list[str] = []
    infer_s = 0.0
    pending: list[synth.PartSample] = []
    for i, sample in enumerate(synth.generate_many(seed, range(n), workers=workers)):
        pending.append(sample)
        if len(pending) == batch or i == n - 1:
            t0 = time.perf_counter()
            outcomes = model.inspect([s.data for s in pending])
            infer_s += time.perf_counter() - t0
            for done, outcome in zip(pending, outcomes, strict=True):
                if not isinstance(outcome, Verdict):
                    raise RuntimeError(f"generated frame refused: {outcome}")
                labels.append(done.label)
                verdicts.append(outcome.verdict)
                predicted.append(outcome.defect_class or model.manifest.pass_classes[0])
            pending = []
            if progress:
                progress(i + 1, n)
    metrics = score(labels, predicted, verdicts, model.manifest.decision.fail_classes)
    metrics.update(
        model=f"{model.manifest.name}:{model.manifest.version}",
        seed=seed,
        threshold=model.manifest.decision.threshold,
        providers=model.providers,
        inference_frames_per_s=round(n / infer_s, 1),
    )
    return metrics


def score(
    labels: list[str], predicted: list[str], verdicts: list[str], fail_classes: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, fail recall, false-reject rate and per-class precision/recall."""
    n = len(labels)
    defective = [v for label, v in zip(labels, verdicts, strict=True) if label in fail_classes]
    good = [v for label, v in zip(labels, verdicts, strict=True) if label not in fail_classes]
    per_class = {}
    for cls in synth.CLASSES:
        tp = sum(1 for t, p in zip(labels, predicted, strict=True) if t == cls and p == cls)
        support = labels.count(cls)
        claimed = predicted.count(cls)
        per_class[cls] = {
            "support": support,
            "precision": round(tp / claimed, 4) if claimed else 0.0,
            "recall": round(tp / support, 4) if support else 0.0,
        }
    return {
        "n": n,
        "accuracy": round(sum(t == p for t, p in zip(labels, predicted, strict=True)) / n, 4),
        "verdict_accuracy": round(
            (defective.count("fail") + good.count("pass")) / n,
            4,
        ),
        "fail_recall": round(defective.count("fail") / max(len(defective), 1), 4),
        "false_reject_rate": round(good.count("fail") / max(len(good), 1), 4),
        "per_class": per_class,
    }


def card_section(metrics: dict[str, Any]) -> str:
    """Markdown for the model card's evaluation section, with the JSON the tests read."""
    rows = "\n".join(
        f"| {cls} | {m['support']} | {m['precision']:.3f} | {m['recall']:.3f} |"
        for cls, m in metrics["per_class"].items()
    )
    return (
        f"{CARD_BEGIN}\n"
        f"Held-out set: {metrics['n']} generated frames, seed {metrics['seed']} (training used seed 1, "
        f"calibration seed 2); model {metrics['model']}, threshold {metrics['threshold']}.\n\n"
        f"| metric | value |\n| --- | --- |\n"
        f"| fail recall (defective parts judged fail) | {metrics['fail_recall']:.4f} |\n"
        f"| false-reject rate (good parts judged fail) | {metrics['false_reject_rate']:.4f} |\n"
        f"| verdict accuracy | {metrics['verdict_accuracy']:.4f} |\n"
        f"| class accuracy | {metrics['accuracy']:.4f} |\n\n"
        f"| class | support | precision | recall |\n| --- | --- | --- | --- |\n{rows}\n\n"
        f"```json\n{json.dumps(metrics, indent=2)}\n```\n{CARD_END}"
    )


def card_metrics(card: Path) -> dict[str, Any]:
    """The metrics JSON recorded in a model card."""
    match = re.search(re.escape(CARD_BEGIN) + r".*?```json\n(.*?)```", card.read_text(), re.S)
    if not match:
        raise ValueError(f"{card} has no evaluation section; run python -m training.evaluate --write-card")
    return dict(json.loads(match.group(1)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=BUNDLED_MANIFEST, help="manifest of the model to evaluate")
    parser.add_argument("-n", "--n", type=int, default=2400, help="held-out frames to generate")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="seed of the held-out set")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--write-card", action="store_true", help="update the model card beside the manifest")
    args = parser.parse_args(argv)

    def progress(done: int, total: int) -> None:
        if done % 320 < 32 or done == total:
            print(f"evaluated {done}/{total} frames", file=sys.stderr, flush=True)

    metrics = evaluate(args.manifest, n=args.n, seed=args.seed, progress=progress)
    if args.write_card:
        card = args.manifest.parent / "MODEL_CARD.md"
        text = card.read_text()
        start, end = text.index(CARD_BEGIN), text.index(CARD_END) + len(CARD_END)
        card.write_text(text[:start] + card_section(metrics) + text[end:])
        print(f"updated {card}", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(card_section(metrics).split("```json")[0].replace(CARD_BEGIN, "").strip())


if __name__ == "__main__":
    main()
