"""ONNX Runtime inference for one model version: preprocess -> predict -> postprocess.

``InspectionModel`` is what a slice replica holds. It checks the model file
against its manifest, picks the best available execution provider (TensorRT,
then CUDA, then CPU, unless settings say otherwise), warms up in its
constructor so the first frame is not slow, and judges batches of frames.
Classifiers, anomaly models and object detectors differ only in the outputs
they ask for and in the rule of ``edge_node.verdicts`` that judges them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contracts.manifest import ModelManifest, load_manifest, model_file, sha256_of
from edge_node.errors import FrameError, ModelIntegrityError, ProviderUnavailable
from edge_node.imaging import FrameLimits, Placement, Preprocessor
from edge_node.settings import EdgeSettings, get_settings
from edge_node.verdicts import (
    Verdict,
    as_reply,
    decide,
    judge_anomaly,
    judge_detections,
    post_nms_detections,
    raw_detections,
    softmax,
)

__all__ = ["InspectionModel", "Verdict", "as_reply", "choose_providers", "decide"]

log = logging.getLogger(__name__)

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
"""Execution providers in the order Lineside prefers them when available."""


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
        warmup = np.zeros((warmup_batch, *self.preprocess.shape), self.preprocess.dtype)
        self.infer(warmup[:1])
        self.infer(warmup)
        log.info(
            "loaded %s %s (%s) on %s (warm-up done)",
            self.manifest.name,
            self.manifest.version,
            self.manifest.output.kind,
            ", ".join(self.providers),
        )

    def _check_io(self) -> None:
        (inp,) = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        spec, wanted = self.manifest.input, self.manifest.output.tensors
        shape = list(inp.shape[1:])
        expected = list(self.preprocess.shape)
        matches = [d == e or not isinstance(d, int) for d, e in zip(shape, expected, strict=False)]
        if inp.name != spec.name or len(shape) != 3 or not all(matches) or not set(wanted) <= outputs:
            raise ModelIntegrityError(
                f"model has input {inp.name}{inp.shape} and outputs {sorted(outputs)}; manifest expects input "
                f"{spec.name}[N, {', '.join(map(str, expected))}] ({spec.layout}) and outputs {wanted}"
            )

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """The manifest's outputs (main, then the anomaly map if any) for a preprocessed batch."""
        feeds = {self.manifest.input.name: batch}
        return [np.asarray(out) for out in self._session.run(self.manifest.output.tensors, feeds)]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """The main output for a preprocessed batch: class probabilities for classifiers (softmax applied
        to logits), scores for anomaly models, detections for detectors."""
        main = self.infer(batch)[0]
        return softmax(main) if self.manifest.output.kind == "logits" else main

    def judge(self, probs: np.ndarray) -> Verdict:
        """Apply a classifier's decision rule to one row of probabilities."""
        return decide(self.manifest, probs)

    def inspect(self, frames: Sequence[bytes]) -> list[Verdict | FrameError]:
        """Judge encoded frames in one batch; a bad frame yields its error, not an exception."""
        outcomes: list[Verdict | FrameError | None] = [None] * len(frames)
        tensors: list[np.ndarray] = []
        placements: list[Placement] = []
        decoded: list[int] = []
        for i, data in enumerate(frames):
            try:
                tensor, placement = self.preprocess.prepare(data)
            except FrameError as e:
                outcomes[i] = e
                continue
            tensors.append(tensor)
            placements.append(placement)
            decoded.append(i)
        if tensors:
            verdicts = self._judge_batch(self.infer(np.stack(tensors)), placements)
            for i, verdict in zip(decoded, verdicts, strict=True):
                outcomes[i] = verdict
        return [o for o in outcomes if o is not None]

    def inspect_decoded(self, frames: Sequence[tuple[np.ndarray, Placement]]) -> list[Verdict]:
        """Judge frames an ingress decoded (``Preprocessor.decode``: RGB pixels at the input size) in one batch.

        The pixels crossed a process boundary: an array of another shape or type is refused whole (it is this
        node's ingress that sent it, so it is a fault of the slice, not of a robot)."""
        expected = (self.preprocess.size[1], self.preprocess.size[0], 3)
        for rgb, _ in frames:
            if rgb.shape != expected or rgb.dtype != np.uint8:
                got = f"{rgb.dtype}{list(rgb.shape)}"
                raise ValueError(f"decoded frame is {got}; this model takes uint8{list(expected)}")
        if not frames:
            return []
        tensors = np.stack([self.preprocess.to_tensor(rgb) for rgb, _ in frames])
        return self._judge_batch(self.infer(tensors), [placement for _, placement in frames])

    def _judge_batch(self, outputs: list[np.ndarray], placements: list[Placement]) -> list[Verdict]:
        """One verdict per frame from the batch's outputs, by the manifest's output kind."""
        manifest, main = self.manifest, outputs[0]
        kind = manifest.output.kind
        if kind in ("probabilities", "logits"):
            probs = softmax(main) if kind == "logits" else main
            return [decide(manifest, row) for row in probs]
        if kind == "anomaly":
            scores = main.reshape(len(placements), -1)[:, 0]
            maps = outputs[1].reshape(len(placements), *outputs[1].shape[-2:]) if len(outputs) > 1 else None
            return [
                judge_anomaly(manifest, float(scores[n]), None if maps is None else maps[n], placement)
                for n, placement in enumerate(placements)
            ]
        detect = raw_detections if kind == "detections_raw" else post_nms_detections
        return [judge_detections(manifest, detect(manifest, main[n]), p) for n, p in enumerate(placements)]


def _open_session(path: Path, settings: EdgeSettings) -> ort.InferenceSession:
    """Open a session on the best provider that actually initialises, falling back towards CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = settings.ort_memory_arena
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
