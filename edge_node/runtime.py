"""ONNX Runtime inference for one model version: preprocess -> predict -> postprocess.

``InspectionModel`` is what a slice replica holds. It checks the model file
against its manifest, picks the best available execution provider (TensorRT,
then CUDA, then CPU, unless settings say otherwise), warms up in its
constructor so the first frame is not slow, and judges batches of frames.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from contracts.manifest import ModelManifest, load_manifest, model_file, sha256_of
from edge_node.errors import FrameError, ModelIntegrityError, ProviderUnavailable
from edge_node.imaging import FrameLimits, Preprocessor
from edge_node.settings import EdgeSettings, get_settings

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
"""Execution providers in the order Lineside prefers them when available."""


@dataclass(frozen=True)
class Verdict:
    """What a robot is told about one part."""

    verdict: Literal["pass", "fail"]
    defect_class: str | None
    """Most likely defect when the part fails; ``None`` when it passes."""
    score: float
    """Probability of the reported outcome: the defect class on fail, the pass classes on pass."""
    fail_score: float
    """Summed probability of all fail classes; compared with the manifest's threshold."""
    scores: dict[str, float] = field(default_factory=dict)
    """Probability of every label."""


def decide(manifest: ModelManifest, probs: np.ndarray) -> Verdict:
    """The manifest's pass/fail rule applied to one row of class probabilities."""
    labels, fail_mask = manifest.labels, manifest.fail_mask
    fail_score = float(probs[fail_mask].sum())
    scores = {label: round(float(p), 6) for label, p in zip(labels, probs, strict=True)}
    if fail_score >= manifest.decision.threshold:
        worst = int(np.argmax(np.where(fail_mask, probs, -1.0)))
        return Verdict("fail", labels[worst], float(probs[worst]), fail_score, scores)
    return Verdict("pass", None, 1.0 - fail_score, fail_score, scores)


def as_reply(outcome: Verdict | FrameError) -> dict[str, object]:
    """A verdict or frame error as the plain dict that travels from model to ingress."""
    if isinstance(outcome, FrameError):
        return {"code": outcome.code.value, "detail": outcome.detail}
    return dict(outcome.__dict__)


def choose_providers(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """Providers to try, best first. ``requested`` must all be available; CPU is always last."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ProviderUnavailable(
                f"execution providers {missing} are not in this onnxruntime build (available: {list(available)}); "
                "install onnxruntime-gpu or change LINESIDE_PROVIDERS"
            )
        chosen = list(requested)
    else:
        chosen = [p for p in PROVIDER_PREFERENCE if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class InspectionModel:
    """A loaded, warmed-up model version that turns encoded frames into verdicts."""

    def __init__(
        self,
        manifest_path: Path,
        settings: EdgeSettings | None = None,
        *,
        warmup_batch: int = 8,
    ) -> None:
        settings = settings or get_settings()
        self.manifest: ModelManifest = load_manifest(manifest_path)
        path = model_file(manifest_path, self.manifest)
        actual = sha256_of(path)
        if actual != self.manifest.sha256:
            raise ModelIntegrityError(
                f"{path} has sha256 {actual} but its manifest says {self.manifest.sha256}; re-download the model"
            )
        self.preprocess = Preprocessor(self.manifest, FrameLimits.from_settings(settings))
        self._session = _open_session(path, settings)
        self.providers: list[str] = self._session.get_providers()
        self._check_io()
        zeros = np.zeros((warmup_batch, 3, self.manifest.input.height, self.manifest.input.width), np.float32)
        self.predict(zeros[:1])
        self.predict(zeros)
        log.info(
            "loaded %s %s on %s (warm-up done)", self.manifest.name, self.manifest.version, ", ".join(self.providers)
        )

    def _check_io(self) -> None:
        (inp,) = self._session.get_inputs()
        (out,) = self._session.get_outputs()
        spec = self.manifest.input
        expected = [spec.height, spec.width]
        if inp.name != spec.name or out.name != self.manifest.output.name or list(inp.shape[2:]) != expected:
            raise ModelIntegrityError(
                f"model has input {inp.name}{inp.shape} and output {out.name}; manifest expects input "
                f"{spec.name}[N, 3, {spec.height}, {spec.width}] and output {self.manifest.output.name}"
            )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Raw probabilities for a preprocessed ``(N, 3, H, W)`` float32 batch."""
        (probs,) = self._session.run([self.manifest.output.name], {self.manifest.input.name: batch})
        return np.asarray(probs)

    def judge(self, probs: np.ndarray) -> Verdict:
        """Apply the manifest's decision rule to one row of probabilities."""
        return decide(self.manifest, probs)

    def inspect(self, frames: Sequence[bytes]) -> list[Verdict | FrameError]:
        """Judge encoded frames in one batch; a bad frame yields its error, not an exception."""
        outcomes: list[Verdict | FrameError | None] = [None] * len(frames)
        tensors: list[np.ndarray] = []
        decoded: list[int] = []
        for i, data in enumerate(frames):
            try:
                tensors.append(self.preprocess(data))
                decoded.append(i)
            except FrameError as e:
                outcomes[i] = e
        if tensors:
            for i, row in zip(decoded, self.predict(np.stack(tensors)), strict=True):
                outcomes[i] = self.judge(row)
        return [o for o in outcomes if o is not None]


def _open_session(path: Path, settings: EdgeSettings) -> ort.InferenceSession:
    """Open a session on the best provider that actually initialises, falling back towards CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not settings.ort_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    candidates = choose_providers(ort.get_available_providers(), settings.providers)
    while True:
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=candidates)
        except Exception as e:  # a GPU provider whose libraries are missing fails here
            if len(candidates) == 1:
                raise
            log.warning("execution provider %s failed to initialise (%s); trying %s", candidates[0], e, candidates[1])
            candidates = candidates[1:]
