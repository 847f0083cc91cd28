"""Check an uploaded ONNX model in a child process: ``python -m control_plane.model_check``.

An upload is hostile input to two large C++ libraries (protobuf and ONNX Runtime). Loading it in the
server let a model read files next to the server (external data resolved against its working
directory, echoed back in ORT's error text), and let a model with a Loop of 2^62 iterations hold the
event loop. So the server (``registry.check_in_subprocess``) starts this module as a separate process:

- its working directory is an empty temporary folder and its environment is rebuilt from scratch
  (no ``LINESIDE_SECRET_KEY``, no database URL), so a relative path finds nothing and there is no
  secret in the process to leak;
- before the model is read it limits itself: CPU seconds (``RLIMIT_CPU``: the kernel ends it with
  SIGXCPU), address space (``RLIMIT_AS``: allocations fail instead of growing the host) and no core
  files; the parent also kills it after a wall-clock timeout;
- external data is refused anywhere in the protobuf before any library resolves it, and ORT is told
  to accept only the ONNX format;
- it answers one JSON line: its own short message and a stable ``reason``, with the library's text in
  ``detail`` for the parent's log only (the parent never returns ``detail`` to the caller).

Why ``subprocess`` and not ``multiprocessing``: fork would copy a threaded server (SQLAlchemy pools,
MQTT clients) into the child; spawn re-imports the parent's ``__main__`` (uvicorn's) and adds a
pickling protocol; a plain child process with a JSON line on stdin and stdout is the smallest thing
the parent can start, time out and kill, and it gets none of the server's state by construction.

Request on stdin: ``{"model": path, "manifest": {...}, "max_batch_size": n, "cpu_s": n,
"memory_bytes": n}``. Answer on stdout: ``{"ok": true, "fixed_batch": n | null}`` or ``{"ok": false,
"reason": ..., "message": ..., "detail": ...}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contracts.manifest import ModelManifest


class Rejected(Exception):
    """The model cannot be served; ``message`` is ours (safe to show), ``detail`` is a library's (log only)."""

    def __init__(self, reason: str, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.reason, self.message, self.detail = reason, message, detail


def limit_self(cpu_s: int, memory_bytes: int) -> None:
    """Limit this process before it reads the model: CPU seconds, address space, no core dump."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # soft: SIGXCPU; hard: SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def tensors_with_external_data(message: onnx.ModelProto) -> Iterator[str]:
    """Names of tensors anywhere in ``message`` (initializers, sparse initializers, TENSOR and TENSORS
    attributes, subgraphs of If/Loop/Scan, functions, training graphs) that point at external data.

    The walk is over every message field, not a list of known places, so a place added to the ONNX
    schema later is covered too.
    """
    stack: list[Any] = [message]  # protobuf messages
    while stack:
        current = stack.pop()
        if isinstance(current, onnx.TensorProto) and (
            current.data_location == onnx.TensorProto.EXTERNAL or len(current.external_data) > 0
        ):
            yield current.name or "(unnamed)"
        for field, value in current.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if hasattr(value, "ListFields"):
                stack.append(value)
            else:  # a repeated field (protobuf 7 dropped FieldDescriptor.label)
                stack.extend(value)


def parse(data: bytes) -> onnx.ModelProto:
    """The protobuf, with external data refused before the checker or ORT resolve any location."""
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise Rejected("not_onnx", "not a valid ONNX model: the file is not an ONNX protobuf", repr(e)) from e
    external = sorted(set(tensors_with_external_data(model)))
    if external:
        raise Rejected("external_data", f"tensors {external[:5]} use external data; the file must hold all of its "
                       "weights (save with onnx.save(model, path, save_as_external_data=False))")  # fmt: skip
    try:
        onnx.checker.check_model(data)  # the bytes: a ModelProto would be serialized again (memory)
    except Exception as e:  # the checker raises several unrelated types
        raise Rejected("not_onnx", "not a valid ONNX model: onnx.checker.check_model refuses it; run it locally "
                       "to see why", repr(e)) from e  # fmt: skip
    return model


_ELEMENT_TYPES = {"float32": onnx.TensorProto.FLOAT, "uint8": onnx.TensorProto.UINT8}


def check_input(model: onnx.ModelProto, manifest: ModelManifest, max_batch_size: int) -> int | None:
    """The graph's fixed batch size (None: dynamic), after checking its input and outputs against the manifest."""
    inputs = {i.name: i for i in model.graph.input}
    spec = manifest.input
    if spec.name not in inputs:
        names = sorted(inputs)[:10]
        raise Rejected("input_mismatch", f"manifest input {spec.name!r} is not a graph input (graph has {names})")
    tensor_type = inputs[spec.name].type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    expected = [3, spec.height, spec.width] if spec.layout == "NCHW" else [spec.height, spec.width, 3]
    if len(shape) != 4 or shape[1:] != expected:
        raise Rejected("input_mismatch", f"graph input {spec.name!r} has shape {shape}; the manifest says "
                       f"[N, {', '.join(map(str, expected))}] ({spec.layout})")  # fmt: skip
    if tensor_type.elem_type != _ELEMENT_TYPES[spec.dtype]:
        actual = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type) if tensor_type.elem_type else "unknown"
        raise Rejected("input_mismatch", f"graph input {spec.name!r} has element type {actual}; the manifest "
                       f"says {spec.dtype}")  # fmt: skip
    fixed = shape[0]
    if fixed is not None and max_batch_size > fixed:
        raise Rejected("fixed_batch", f"input {spec.name!r} has a fixed batch axis of {fixed} but "
                       f"max_batch_size {max_batch_size} was asked for; export with a dynamic batch axis or "
                       f"ask for {fixed}")  # fmt: skip
    graph_outputs = {o.name for o in model.graph.output}
    for name in manifest.output.tensors:
        if name not in graph_outputs:
            raise Rejected("output_mismatch", f"manifest output {name!r} is not a graph output "
                           f"(graph has {sorted(graph_outputs)[:10]})")  # fmt: skip
    return fixed


def validation_batch(manifest: ModelManifest, batch: int) -> np.ndarray:
    """``batch`` frames as the runtime feeds them: a black one, then seeded noise, normalised per the manifest."""
    spec, pre = manifest.input, manifest.preprocess
    pixels = np.random.default_rng(0).integers(0, 256, (batch, spec.height, spec.width, 3), dtype=np.uint8)
    pixels[0] = 0
    if spec.layout == "NCHW":
        pixels = pixels.transpose(0, 3, 1, 2)
    if spec.dtype == "uint8":
        return np.ascontiguousarray(pixels)
    axis = (1, 3, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, 3)
    mean, std = np.reshape(pre.mean, axis), np.reshape(pre.std, axis)
    return np.ascontiguousarray((pixels * pre.scale - mean) / std, dtype=np.float32)


def run_once(data: bytes, manifest: ModelManifest, batch: int) -> None:
    """Load the model in ONNX Runtime (one thread, ONNX format only), run one validation batch and check
    that its outputs are what the manifest's output kind says."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.load_model_format", "ONNX")
    x = validation_batch(manifest, batch)
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        outputs = session.run(manifest.output.tensors, {manifest.input.name: x})
    except Exception as e:  # ORT raises its own exception types per failure
        raise Rejected("runtime_failed", "ONNX Runtime cannot load the model or run it on a validation batch; "
                       "check that it runs with onnxruntime (CPU) locally", repr(e)) from e  # fmt: skip
    check_outputs(manifest, [np.asarray(out) for out in outputs], batch)


def check_outputs(manifest: ModelManifest, outputs: list[np.ndarray], batch: int) -> None:
    """Refuse outputs that do not match the declared kind (see ``contracts.manifest`` for each kind's shapes)."""
    output = manifest.output
    for name, out in zip(manifest.output.tensors, outputs, strict=True):
        if not np.issubdtype(out.dtype, np.number):
            raise Rejected("output_mismatch", f"output {name!r} has element type {out.dtype}; expected numbers")
        if not np.isfinite(out).all():
            raise Rejected("output_mismatch", f"output {name!r} has NaN or infinite values on the validation batch")
    main, shape, labels = outputs[0], list(outputs[0].shape), len(manifest.labels)
    if output.kind in ("probabilities", "logits"):
        if shape != [batch, labels]:
            raise Rejected("output_mismatch", f"output {output.name!r} has shape {shape}; expected [{batch}, "
                           f"{labels}] (one score per label)")  # fmt: skip
        _check_softmax(output.name, output.kind, main)
    elif output.kind == "anomaly":
        if shape not in ([batch], [batch, 1]):
            raise Rejected("output_mismatch", f"anomaly score {output.name!r} has shape {shape}; expected "
                           f"[{batch}] or [{batch}, 1] (one score per image)")  # fmt: skip
        if output.map is not None:
            _check_map(output.map, list(outputs[1].shape), manifest, batch)
    else:
        _check_detections(output.name, output.kind, main, labels, batch)


def _check_detections(name: str, kind: str, out: np.ndarray, labels: int, batch: int) -> None:
    shape = list(out.shape)
    if kind == "detections_raw" and (len(shape) != 3 or shape[:2] != [batch, 4 + labels]):
        raise Rejected("output_mismatch", f"detector output {name!r} has shape {shape}; kind detections_raw "
                       f"expects [{batch}, {4 + labels}, anchors] (YOLOv8: cx, cy, w, h, then one confidence per "
                       "label)")  # fmt: skip
    if kind == "detections" and (len(shape) != 3 or shape[0] != batch or shape[2] != 6):
        raise Rejected("output_mismatch", f"detector output {name!r} has shape {shape}; kind detections expects "
                       f"[{batch}, boxes, 6] (x1, y1, x2, y2, confidence, class)")  # fmt: skip
    confidence = out[:, 4:, :] if kind == "detections_raw" else out[:, :, 4]
    if confidence.size and not (confidence.min() >= -1e-4 and confidence.max() <= 1 + 1e-4):
        raise Rejected("output_mismatch", f"detector output {name!r} has confidences from {confidence.min():.3g} "
                       f"to {confidence.max():.3g}; they must be 0..1 (export the model with its sigmoid)")  # fmt: skip


def _check_softmax(name: str, kind: str, scores: np.ndarray) -> None:
    sums = scores.sum(axis=1)
    is_softmax = bool(np.all(scores >= -1e-4) and np.all(scores <= 1 + 1e-4) and np.allclose(sums, 1, atol=1e-3))
    if kind == "probabilities" and not is_softmax:
        raise Rejected("output_mismatch", f"output {name!r} is declared probabilities but its rows sum to "
                       f"{sums.min():.3g}..{sums.max():.3g} (values {scores.min():.3g}..{scores.max():.3g}), not 1; "
                       "declare kind 'logits' if the model has no softmax")  # fmt: skip
    if kind == "logits" and is_softmax:
        raise Rejected("output_mismatch", f"output {name!r} is declared logits but it is already a softmax (every "
                       "row is 0..1 and sums to 1); declare kind 'probabilities'")  # fmt: skip


def _check_map(name: str, shape: list[int], manifest: ModelManifest, batch: int) -> None:
    spec = manifest.input
    rank_ok = len(shape) == 3 or (len(shape) == 4 and shape[1] == 1)
    if not rank_ok or shape[0] != batch:
        raise Rejected("output_mismatch", f"anomaly map {name!r} has shape {shape}; expected [{batch}, h, w] or "
                       f"[{batch}, 1, h, w]")  # fmt: skip
    h, w = shape[-2:]
    if not (0 < h <= spec.height and 0 < w <= spec.width):
        raise Rejected("output_mismatch", f"anomaly map {name!r} is {h}x{w}; it must be at most the input's "
                       f"{spec.height}x{spec.width}")  # fmt: skip


def check(data: bytes, manifest: ModelManifest, max_batch_size: int) -> int | None:
    """Every check, in the order a user wants to hear about problems; the fixed batch size or None."""
    model = parse(data)
    fixed_batch = check_input(model, manifest, max_batch_size)
    del model
    run_once(data, manifest, fixed_batch or 2)
    return fixed_batch


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """Run one request (see the module docstring) under its limits; the JSON answer."""
    limit_self(int(request["cpu_s"]), int(request["memory_bytes"]))
    try:
        manifest = ModelManifest.model_validate(request["manifest"])
        data = Path(request["model"]).read_bytes()
        return {"ok": True, "fixed_batch": check(data, manifest, int(request["max_batch_size"]))}
    except Rejected as e:
        return {"ok": False, "reason": e.reason, "message": e.message, "detail": e.detail[:2000]}
    except MemoryError as e:
        return {"ok": False, "reason": "too_large", "message": "validating the model needs more memory than "
                "LINESIDE_VALIDATOR_MEMORY_BYTES allows", "detail": repr(e)}  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(
        description="Check one uploaded ONNX model: a JSON request on stdin, a JSON answer on stdout. "
        "Started by the control plane; see the module docstring."
    ).parse_args()
    print(json.dumps(answer(json.loads(sys.stdin.read()))), flush=True)


if __name__ == "__main__":
    main()
