"""Model outputs to verdicts, one rule per output kind (see ``contracts.manifest`` for the kinds).

Pure numpy, no ONNX Runtime: ``edge_node.runtime`` runs the model and hands each frame's rows here
with the frame's ``Placement``, so that boxes and anomaly locations come back in 0..1 coordinates
of the frame the robot sent, with letterbox padding and crops undone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from contracts.manifest import ModelManifest
from edge_node.errors import FrameError
from edge_node.imaging import Placement


@dataclass(frozen=True)
class Verdict:
    """What a robot is told about one part."""

    verdict: Literal["pass", "fail"]
    defect_class: str | None
    """Most likely defect when the part fails; ``None`` when it passes."""
    score: float
    """Confidence in the reported outcome, 0..1: classifiers, the probability of the defect class on fail
    and of the pass classes on pass; detectors, the top defect box's confidence on fail; anomaly models,
    ``anomaly_probability`` of the raw score on fail and one minus it on pass."""
    fail_score: float
    """What the manifest's threshold is compared with: summed probability of the fail classes
    (classifiers), the highest defect box confidence at or above the threshold, else 0 (detectors), the raw
    score (anomaly models)."""
    scores: dict[str, float] = field(default_factory=dict)
    """Classifiers: probability of every label; detectors: each class's highest box confidence;
    anomaly models: the raw score under the anomalous label."""
    location: dict[str, Any] | None = None
    """Anomaly models with a map: ``{"x", "y", "box"}``, the map's peak in 0..1 frame coordinates and
    ``[x1, y1, x2, y2]`` around the cells at or above the threshold that touch it (None if the peak is below)."""
    boxes: list[dict[str, Any]] | None = None
    """Detectors: ``{"label", "confidence", "box"}`` for every box at or above the threshold, best first,
    ``box`` being ``[x1, y1, x2, y2]`` in 0..1 frame coordinates."""


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def decide(manifest: ModelManifest, probs: np.ndarray) -> Verdict:
    """The manifest's pass/fail rule applied to one row of class probabilities."""
    labels, fail_mask = manifest.labels, manifest.fail_mask
    fail_score = float(probs[fail_mask].sum())
    scores = {label: round(float(p), 6) for label, p in zip(labels, probs, strict=True)}
    if fail_score >= manifest.decision.threshold:
        worst = int(np.argmax(np.where(fail_mask, probs, -1.0)))
        return Verdict("fail", labels[worst], float(probs[worst]), fail_score, scores)
    return Verdict("pass", None, 1.0 - fail_score, fail_score, scores)


# --- anomaly models ----------------------------------------------------------------------------


def anomaly_probability(score: float, threshold: float) -> float:
    """A raw anomaly score as a 0..1 figure: score / (score + threshold), 0.5 at the threshold, 0 for
    scores at or below zero. Monotonic, so it ranks parts as the raw score does; not calibrated."""
    return score / (score + threshold) if score > 0 else 0.0


def judge_anomaly(manifest: ModelManifest, score: float, heatmap: np.ndarray | None, placement: Placement) -> Verdict:
    """Fail when the raw score reaches the threshold; locate the anomaly on the map when there is one."""
    threshold = manifest.decision.threshold
    anomalous = manifest.labels[1]
    probability = anomaly_probability(score, threshold)
    size = (manifest.input.width, manifest.input.height)
    location = None if heatmap is None else locate(heatmap, threshold, size, placement)
    scores = {anomalous: round(score, 6)}
    if score >= threshold:
        return Verdict("fail", anomalous, probability, score, scores, location)
    return Verdict("pass", None, 1.0 - probability, score, scores, location)


def locate(heatmap: np.ndarray, threshold: float, size: tuple[int, int], placement: Placement) -> dict[str, Any]:
    """The map's peak and the box of the cells at or above ``threshold`` connected to it (4-neighbours).

    ``heatmap`` is (h, w) over the whole input of ``size`` (width, height), so a cell is size / (w, h) pixels.
    """
    cell_w, cell_h = size[0] / heatmap.shape[1], size[1] / heatmap.shape[0]
    peak_y, peak_x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    x, y = placement.point((peak_x + 0.5) * cell_w, (peak_y + 0.5) * cell_h)
    box = None
    if heatmap[peak_y, peak_x] >= threshold:
        rows, cols = np.nonzero(_grow(heatmap >= threshold, int(peak_y), int(peak_x)))
        top_left = (cols.min() * cell_w, rows.min() * cell_h)
        box = placement.box(*top_left, (cols.max() + 1) * cell_w, (rows.max() + 1) * cell_h)
    return {"x": x, "y": y, "box": box}


def _grow(mask: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 4-connected region of ``mask`` that holds (row, col), by repeated dilation (maps are small)."""
    region = np.zeros_like(mask)
    region[row, col] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if np.array_equal(grown, region):
            return region
        region = grown


# --- object detectors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """One frame's boxes in input pixels: ``boxes`` (K, 4) x1, y1, x2, y2; ``confidence`` (K,); ``classes`` (K,)."""

    boxes: np.ndarray
    confidence: np.ndarray
    classes: np.ndarray


def raw_detections(manifest: ModelManifest, head: np.ndarray) -> Detections:
    """A YOLOv8 head (4 + C, A) to the boxes at or above the threshold, after NMS per class."""
    centres, class_scores = head[:4].T, head[4:].T  # (A, 4), (A, C)
    classes = class_scores.argmax(axis=1)
    confidence = class_scores[np.arange(len(classes)), classes]
    keep = confidence >= manifest.decision.threshold
    cx, cy, w, h = centres[keep].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    found = Detections(boxes, confidence[keep], classes[keep])
    return _take(found, nms(found, manifest.output.nms_iou))


def post_nms_detections(manifest: ModelManifest, rows: np.ndarray) -> Detections:
    """Post-NMS rows (K, 6) x1, y1, x2, y2, confidence, class to the boxes at or above the threshold.

    Rows whose class index is not one of the labels are dropped, as padding rows usually are.
    """
    classes = rows[:, 5]
    keep = (
        (rows[:, 4] >= manifest.decision.threshold)
        & (classes >= 0)
        & (classes < len(manifest.labels))
        & (classes == np.round(classes))
    )
    order = np.argsort(-rows[keep, 4], kind="stable")
    kept = rows[keep][order]
    return Detections(kept[:, :4], kept[:, 4], kept[:, 5].astype(np.int64))


def nms(found: Detections, iou_limit: float) -> np.ndarray:
    """Indices of the boxes greedy non-maximum suppression keeps, per class, best first."""
    order = np.argsort(-found.confidence, kind="stable")
    # Offsetting each class by more than any coordinate keeps boxes of different classes apart.
    offset = found.classes[:, None] * (float(np.abs(found.boxes).max(initial=0.0)) + 1.0) * 2
    boxes = found.boxes + offset
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    kept: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        overlap = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        iou = overlap / np.maximum(areas[best] + areas[rest] - overlap, 1e-9)
        order = rest[iou <= iou_limit]
    return np.asarray(kept, dtype=np.int64)


def _take(found: Detections, index: np.ndarray) -> Detections:
    return Detections(found.boxes[index], found.confidence[index], found.classes[index])


def judge_detections(manifest: ModelManifest, found: Detections, placement: Placement) -> Verdict:
    """Fail when any box of a defect class is at or above the threshold (``found`` holds only those boxes)."""
    labels, fail_mask = manifest.labels, manifest.fail_mask
    scores: dict[str, float] = {}
    boxes: list[dict[str, Any]] = []
    for box, confidence, cls in zip(found.boxes, found.confidence, found.classes, strict=True):
        label, shown = labels[int(cls)], round(min(float(confidence), 1.0), 6)  # the registry checked 0..1
        scores[label] = max(scores.get(label, 0.0), shown)
        if len(boxes) < manifest.output.max_boxes:
            boxes.append({"label": label, "confidence": shown, "box": placement.box(*box)})
    defects = fail_mask[found.classes] if len(found.classes) else np.zeros(0, bool)
    if defects.any():
        top = int(np.argmax(np.where(defects, found.confidence, -1.0)))
        confidence = float(found.confidence[top])
        return Verdict("fail", labels[int(found.classes[top])], confidence, confidence, scores, boxes=boxes)
    return Verdict("pass", None, 1.0, 0.0, scores, boxes=boxes)


def as_reply(outcome: Verdict | FrameError) -> dict[str, object]:
    """A verdict or frame error as the plain dict that travels from model to ingress."""
    if isinstance(outcome, FrameError):
        return {"code": outcome.code.value, "detail": outcome.detail}
    return dict(outcome.__dict__)
