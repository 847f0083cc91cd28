"""Model registry: validate an uploaded ONNX file against its manifest, store it by sha256.

Validation, in the order a user would want to hear about problems: size,
manifest schema, sha256 (the manifest's must match the bytes), the ONNX
checker, the graph's input against the manifest, a fixed batch axis when a
batch > 1 is asked for, loading in ONNX Runtime and running one batch whose
output must be probabilities over the manifest's labels. Any failure is an
``InvalidUpload`` (HTTP 422) naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import ValidationError

from control_plane.errors import InvalidUpload
from models.manifest import ModelManifest


@dataclass(frozen=True)
class ValidatedModel:
    manifest: ModelManifest
    sha256: str
    size_bytes: int
    fixed_batch: int | None  # None: dynamic batch axis


def parse_manifest(raw: bytes | str) -> ModelManifest:
    try:
        return ModelManifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidUpload(f"manifest is not JSON: {e}") from e
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise InvalidUpload(f"manifest is invalid: {problems}") from e


def validate(data: bytes, manifest: ModelManifest, *, max_bytes: int, max_batch_size: int = 1) -> ValidatedModel:
    """Check ``data`` against ``manifest``; raise ``InvalidUpload`` naming the first problem."""
    if len(data) > max_bytes:
        raise InvalidUpload(f"model file is {len(data)} bytes; the limit is {max_bytes} (LINESIDE_MAX_MODEL_BYTES)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise InvalidUpload(f"manifest sha256 {manifest.sha256} does not match the file's {digest}")
    try:
        graph = onnx.load_from_string(data)
        onnx.checker.check_model(graph)
    except Exception as e:  # the checker raises several unrelated types
        raise InvalidUpload(f"not a valid ONNX model: {str(e).splitlines()[0][:300]}") from e
    fixed_batch = _check_input(graph, manifest)
    if fixed_batch is not None and max_batch_size > fixed_batch:
        raise InvalidUpload(
            f"input {manifest.input.name!r} has a fixed batch axis of {fixed_batch} but max_batch_size "
            f"{max_batch_size} was asked for; export with a dynamic batch axis or ask for {fixed_batch}"
        )
    _run_once(data, manifest, fixed_batch or 2)
    return ValidatedModel(manifest, digest, len(data), fixed_batch)


def _check_input(graph: onnx.ModelProto, manifest: ModelManifest) -> int | None:
    inputs = {i.name: i for i in graph.graph.input}
    spec = manifest.input
    if spec.name not in inputs:
        raise InvalidUpload(f"manifest input {spec.name!r} is not a graph input (graph has {sorted(inputs)})")
    dims = inputs[spec.name].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    expected = [3, spec.height, spec.width]
    if len(shape) != 4 or shape[1:] != expected:
        raise InvalidUpload(
            f"graph input {spec.name!r} has shape {shape}; the manifest says [N, {', '.join(map(str, expected))}]"
        )
    return shape[0]


def _run_once(data: bytes, manifest: ModelManifest, batch: int) -> None:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        x = np.zeros((batch, 3, manifest.input.height, manifest.input.width), dtype=np.float32)
        (out,) = session.run([manifest.output.name], {manifest.input.name: x})
    except Exception as e:  # ORT raises its own exception types per failure
        raise InvalidUpload(f"ONNX Runtime cannot run the model: {str(e).splitlines()[0][:300]}") from e
    if out.shape != (batch, len(manifest.labels)):
        raise InvalidUpload(f"output {manifest.output.name!r} has shape {list(out.shape)}; "
                            f"expected [{batch}, {len(manifest.labels)}] (one score per label)")  # fmt: skip


def store(data: bytes, sha256: str, folder: Path) -> Path:
    """Write the file as ``folder/<sha256>.onnx`` (atomic; the same bytes are stored once)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}.onnx"
    if not target.exists():
        partial = target.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(target)
    return target


def manifest_json(validated: ValidatedModel) -> dict[str, Any]:
    return validated.manifest.model_dump(mode="json")
