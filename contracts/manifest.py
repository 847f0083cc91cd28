"""Model manifest: everything runtime code may know about a model version.

A manifest is a JSON file beside the ONNX file. Runtime code (preprocessing,
verdicts, the model registry) reads it; nothing about a model is hard-coded
elsewhere. Unknown keys are errors, so a typo names the field.

Four kinds of model are served, chosen by ``output.kind``:

- ``probabilities``: a classifier's softmax, shape (N, len(labels)); a part fails when the summed
  probability of ``decision.fail_classes`` reaches ``decision.threshold`` (in (0, 1)).
- ``logits``: the same classifier before its softmax; the runtime applies the softmax.
- ``anomaly``: an anomaly detector fitted on good parts (anomalib-style export). ``output.name`` is
  the image score, shape (N,) or (N, 1); ``output.map`` optionally names the anomaly map, shape
  (N, h, w) or (N, 1, h, w), at most the input's resolution and on the score's scale. ``labels``
  are ``["good", "anomaly"]`` (any two names, the second one failing), and ``decision.threshold``
  is a raw score: any positive number. A part fails when score >= threshold.
- ``detections_raw``: a YOLOv8-style detector's raw head, shape (N, 4 + C, A): for each of A
  anchors, cx, cy, w, h in input pixels then C class confidences (already sigmoid), C being
  ``len(labels)``. The runtime keeps boxes at or above ``decision.threshold`` and runs NMS per
  class at IoU ``output.nms_iou``.
- ``detections``: a detector with NMS in its graph, shape (N, K, 6): K rows of x1, y1, x2, y2 in
  input pixels, confidence, class index; rows below ``decision.threshold`` (e.g. zero padding) are
  ignored.

For detectors ``labels`` are the detector's classes, ``decision.fail_classes`` the defect classes
(they may be all of them) and ``decision.threshold`` the lowest box confidence that counts: a part
fails when any box of a defect class reaches it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Fit = Literal["stretch", "letterbox", "center_crop"]
OutputKind = Literal["probabilities", "logits", "anomaly", "detections", "detections_raw"]
CLASSIFIER_KINDS: tuple[OutputKind, ...] = ("probabilities", "logits")
DETECTOR_KINDS: tuple[OutputKind, ...] = ("detections", "detections_raw")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's single input tensor."""

    name: str = Field(description="Input tensor name in the ONNX graph.")
    layout: Literal["NCHW", "NHWC"] = Field(description="Tensor layout; the batch axis is dynamic.")
    dtype: Literal["float32", "uint8"] = Field(
        description="Element type of the input tensor; uint8 gets the raw 0..255 pixels (no scaling)."
    )
    color: Literal["RGB", "BGR"] = Field(description="Channel order the model expects.")
    height: int = Field(gt=0, le=4096, description="Input height in pixels.")
    width: int = Field(gt=0, le=4096, description="Input width in pixels.")


class Preprocess(_Strict):
    """How a decoded frame becomes the input tensor: fit to the input size, then (x * scale - mean) / std.

    With ``input.dtype`` uint8 the pixels go in as they are: scale must be 1, mean 0 and std 1.
    """

    resize: Literal["bilinear"] = Field(description="Interpolation used to resize to the input size.")
    fit: Fit = Field(
        default="stretch",
        description="stretch: resize to the input size, ignoring aspect ratio; letterbox: keep the aspect "
        "ratio and pad the rest with `pad_value`; center_crop: keep the aspect ratio, fill the input and "
        "cut the overhang off both sides equally.",
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Pixel value of letterbox padding (8-bit).")
    scale: float = Field(gt=0, description="Factor applied to 8-bit pixel values first (1/255 maps to 0..1).")
    mean: tuple[float, float, float] = Field(
        description="Per-channel mean subtracted after scaling, in the input's channel order (`input.color`)."
    )
    std: tuple[float, float, float] = Field(
        description="Per-channel standard deviation divided by after, in the input's channel order."
    )

    @model_validator(mode="after")
    def _std_positive(self) -> Preprocess:
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be positive in every channel")
        return self

    @property
    def is_identity(self) -> bool:
        """Whether the normalisation leaves pixel values as they are."""
        return self.scale == 1 and self.mean == (0, 0, 0) and self.std == (1, 1, 1)


class OutputSpec(_Strict):
    """The model's output tensors (see the module docstring for each kind's shapes)."""

    name: str = Field(description="Main output tensor name: probabilities, logits, anomaly score or detections.")
    kind: OutputKind = Field(
        description="probabilities | logits (softmax applied by the runtime) | anomaly (a raw score, higher "
        "is worse) | detections (post-NMS, (N, K, 6)) | detections_raw (YOLOv8 head, (N, 4 + C, A))."
    )
    map: str | None = Field(
        default=None, description="Anomaly map output name, kind anomaly only; None when the model has none."
    )
    nms_iou: float = Field(
        default=0.45, gt=0, le=1, description="IoU above which NMS drops the weaker box of a class (detections_raw)."
    )
    max_boxes: int = Field(default=100, ge=1, le=1000, description="Most boxes one verdict reports (detectors).")

    @property
    def tensors(self) -> list[str]:
        """The outputs the runtime asks for: the main one, then the anomaly map if there is one."""
        return [self.name] if self.map is None else [self.name, self.map]

    @model_validator(mode="after")
    def _map_only_for_anomaly(self) -> OutputSpec:
        if self.map is not None and self.kind != "anomaly":
            raise ValueError(f"map {self.map!r} is only for kind 'anomaly', not {self.kind!r}")
        if self.map is not None and self.map == self.name:
            raise ValueError(f"map {self.map!r} must be another output than the score {self.name!r}")
        return self


class DecisionRule(_Strict):
    """Pass/fail rule; what `threshold` is compared with depends on the output kind (module docstring)."""

    fail_classes: tuple[str, ...] = Field(min_length=1, description="Labels that mean the part is defective.")
    threshold: float = Field(
        gt=0,
        allow_inf_nan=False,
        description="Classifiers: fail when P(any fail class) >= threshold, in (0, 1). Detectors: lowest box "
        "confidence that fails a part, in (0, 1). Anomaly: raw score at which a part fails, any positive number.",
    )


class ModelManifest(_Strict):
    """One version of an inspection model."""

    schema_version: Literal[1] = Field(description="Version of this manifest format.")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Model name, stable across versions.")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="Semantic version of this model file.")
    file: str = Field(description="ONNX file name, relative to the manifest.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the ONNX file.")
    opset: int = Field(ge=17, description="ONNX opset the file was exported with.")
    input: InputSpec = Field(description="Input tensor specification.")
    preprocess: Preprocess = Field(description="Decoding-to-tensor steps.")
    output: OutputSpec = Field(description="Output tensor specification.")
    labels: tuple[str, ...] = Field(
        min_length=1, description="Class labels in output order (a detector's classes; anomaly: good, anomaly)."
    )
    decision: DecisionRule = Field(description="How scores become pass or fail.")

    @field_validator("labels")
    @classmethod
    def _enough_labels(cls, labels: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        output = info.data.get("output")
        if output is not None and output.kind in CLASSIFIER_KINDS and len(labels) < 2:
            raise ValueError(f"a classifier needs at least 2 labels; labels are {labels}")
        return labels

    @model_validator(mode="after")
    def _labels_consistent(self) -> ModelManifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels {self.labels} must be unique")
        unknown = set(self.decision.fail_classes) - set(self.labels)
        if unknown:
            raise ValueError(f"fail_classes {sorted(unknown)} are not in labels {self.labels}")
        kind = self.output.kind
        if kind in CLASSIFIER_KINDS and set(self.decision.fail_classes) == set(self.labels):
            raise ValueError("at least one label must mean pass; every label is in fail_classes")
        if kind == "anomaly" and (len(self.labels) != 2 or self.decision.fail_classes != self.labels[1:]):
            raise ValueError(
                f"an anomaly model has two labels, the good one then the anomalous one (e.g. ['good', 'anomaly']) "
                f"and fail_classes [the second]; got labels {self.labels} and fail_classes "
                f"{self.decision.fail_classes}"
            )
        if kind != "anomaly" and self.decision.threshold >= 1:
            raise ValueError(
                f"decision.threshold ({self.decision.threshold}) must be below 1 for kind {kind!r}; only "
                "kind 'anomaly' takes a raw score threshold"
            )
        return self

    @model_validator(mode="after")
    def _uint8_is_raw(self) -> ModelManifest:
        if self.input.dtype == "uint8" and not self.preprocess.is_identity:
            raise ValueError(
                "input.dtype uint8 takes raw 0..255 pixels: preprocess scale must be 1, mean [0, 0, 0] and "
                f"std [1, 1, 1] (got scale {self.preprocess.scale}, mean {list(self.preprocess.mean)}, "
                f"std {list(self.preprocess.std)})"
            )
        return self

    @functools.cached_property
    def fail_mask(self) -> np.ndarray:
        """Boolean mask over ``labels``: True where a label means fail."""
        return np.array([label in self.decision.fail_classes for label in self.labels])

    @property
    def pass_classes(self) -> tuple[str, ...]:
        """Labels that mean the part is good (none for a detector of defects only)."""
        return tuple(label for label in self.labels if label not in self.decision.fail_classes)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path) -> ModelManifest:
    """Read and validate a manifest file (raises pydantic.ValidationError naming bad fields)."""
    return ModelManifest.model_validate_json(path.read_text())


def model_file(manifest_path: Path, manifest: ModelManifest) -> Path:
    """The ONNX file a manifest describes."""
    return manifest_path.parent / manifest.file
