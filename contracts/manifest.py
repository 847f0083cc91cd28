"""Model manifest: everything runtime code may know about a model version.

A manifest is a JSON file beside the ONNX file. Runtime code (preprocessing,
verdicts, the model registry) reads it; nothing about a model is hard-coded
elsewhere. Unknown keys are errors, so a typo names the field.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The model's single input tensor."""

    name: str = Field(description="Input tensor name in the ONNX graph.")
    layout: Literal["NCHW"] = Field(description="Tensor layout; the batch axis is dynamic.")
    dtype: Literal["float32"] = Field(description="Element type of the input tensor.")
    color: Literal["RGB"] = Field(description="Channel order after decoding.")
    height: int = Field(gt=0, le=4096, description="Input height in pixels.")
    width: int = Field(gt=0, le=4096, description="Input width in pixels.")


class Preprocess(_Strict):
    """How a decoded frame becomes the input tensor: resize, then (x * scale - mean) / std."""

    resize: Literal["bilinear"] = Field(description="Interpolation used to resize to the input size.")
    scale: float = Field(gt=0, description="Factor applied to 8-bit pixel values first (1/255 maps to 0..1).")
    mean: tuple[float, float, float] = Field(description="Per-channel mean subtracted after scaling.")
    std: tuple[float, float, float] = Field(description="Per-channel standard deviation divided by after.")

    @model_validator(mode="after")
    def _std_positive(self) -> Preprocess:
        if min(self.std) <= 0:
            raise ValueError(f"std {self.std} must be positive in every channel")
        return self


class OutputSpec(_Strict):
    """The model's output tensor."""

    name: str = Field(description="Output tensor name in the ONNX graph.")
    kind: Literal["probabilities"] = Field(description="Softmax probabilities over `labels`, shape (N, len(labels)).")


class DecisionRule(_Strict):
    """Pass/fail rule: a part fails when the summed probability of `fail_classes` reaches `threshold`."""

    fail_classes: tuple[str, ...] = Field(min_length=1, description="Labels that mean the part is defective.")
    threshold: float = Field(gt=0, lt=1, description="Fail when P(any fail class) >= threshold.")


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
    labels: tuple[str, ...] = Field(min_length=2, description="Class labels in output order.")
    decision: DecisionRule = Field(description="How scores become pass or fail.")

    @model_validator(mode="after")
    def _labels_consistent(self) -> ModelManifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels {self.labels} must be unique")
        unknown = set(self.decision.fail_classes) - set(self.labels)
        if unknown:
            raise ValueError(f"fail_classes {sorted(unknown)} are not in labels {self.labels}")
        if set(self.decision.fail_classes) == set(self.labels):
            raise ValueError("at least one label must mean pass; every label is in fail_classes")
        return self

    @functools.cached_property
    def fail_mask(self) -> np.ndarray:
        """Boolean mask over ``labels``: True where a label means fail."""
        return np.array([label in self.decision.fail_classes for label in self.labels])

    @property
    def pass_classes(self) -> tuple[str, ...]:
        """Labels that mean the part is good."""
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
