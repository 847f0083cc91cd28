"""Small models of every kind factories bring, built with onnx.helper, and their manifests.

Each model reads colour, not defects, so a test can draw a frame whose verdict it knows:

- classifiers score "defect" by how much redder than blue a frame is (labels good, defect);
- the anomaly model's map is ten times the mean brightness of each 4x4 cell, its score the map's maximum;
- the detectors see one box per 8x8 cell, confident in "scratch" as the cell is red, "dent" as it is
  green and "screw" (no defect) as it is blue.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.conftest import encode

OPSET = 17
DETECTOR_LABELS = ["scratch", "dent", "screw"]
CELL = 8  # detector cell side, input pixels
MAP_CELL = 4  # anomaly map cell side, input pixels
MAP_GAIN = 10.0  # anomaly map = MAP_GAIN * mean brightness (0..1) of a cell


def _serialize(graph: onnx.GraphProto) -> bytes:
    out = io.BytesIO()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), out)
    return out.getvalue()


def _const(name: str, values: np.ndarray) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, list(values.shape), values.astype(np.float32).ravel().tolist())


def _ints(name: str, values: list[int]) -> TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _float_nchw(layout: str, dtype: str) -> tuple[onnx.ValueInfoProto, list[onnx.NodeProto], str]:
    """The input ``pixels`` and the nodes that make it a float NCHW tensor named by the third item."""
    side = 32
    shape: list[str | int] = ["N", 3, side, side] if layout == "NCHW" else ["N", side, side, 3]
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.UINT8
    nodes, name = [], "pixels"
    if dtype == "uint8":
        nodes.append(helper.make_node("Cast", [name], ["as_float"], to=TensorProto.FLOAT))
        name = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [name], ["nchw"], perm=[0, 3, 1, 2]))
        name = "nchw"
    return helper.make_tensor_value_info("pixels", elem, shape), nodes, name


def classifier(
    *, kind: str = "probabilities", layout: str = "NCHW", dtype: str = "float32", color: str = "RGB"
) -> bytes:
    """Labels good, defect: logits k * (blue - red, red - blue) over the frame's mean colour (32x32 input)."""
    x, nodes, name = _float_nchw(layout, dtype)
    red, blue = (0, 2) if color == "RGB" else (2, 0)
    gain = 10.0 if dtype == "float32" else 10.0 / 255
    weights = np.zeros((3, 2), np.float32)
    weights[blue], weights[red] = (gain, -gain), (-gain, gain)
    nodes += [
        helper.make_node("ReduceMean", [name], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits" if kind == "logits" else "raw"]),
    ]
    if kind == "probabilities":
        nodes.append(helper.make_node("Softmax", ["raw"], ["probs"], axis=1))
    out_name = "logits" if kind == "logits" else "probs"
    y = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", 2])
    return _serialize(helper.make_graph(nodes, "classifier", [x], [y], [_const("w", weights)]))


def anomaly(*, side: int = 64, flat_map: bool = False, squeezed: bool = False) -> bytes:
    """Input ``image`` (N, 3, side, side) 0..1; outputs ``anomaly_map`` (N, 1, side/4, side/4) and ``score`` (N,).

    ``flat_map``: the map comes out flattened to (N, cells), the wrong rank for a map. ``squeezed``: the
    map is (N, side/4, side/4) and the score (N, 1), the other shapes the manifest allows.
    """
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, side, side])
    cells = side // MAP_CELL
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
        helper.make_node("AveragePool", ["gray"], ["pooled"], kernel_shape=[MAP_CELL] * 2, strides=[MAP_CELL] * 2),
        helper.make_node("Mul", ["pooled", "gain"], ["map4"]),
        helper.make_node("ReduceMax", ["map4"], ["score_1d"], axes=[1, 2, 3], keepdims=0),
    ]
    score_shape: list[Any] = ["N", 1] if squeezed else ["N"]
    if squeezed:
        nodes.append(helper.make_node("Unsqueeze", ["score_1d", "one"], ["score"]))
        nodes.append(helper.make_node("Squeeze", ["map4", "one"], ["anomaly_map"]))
        map_shape: list[Any] = ["N", cells, cells]
    elif flat_map:
        nodes.append(helper.make_node("Flatten", ["map4"], ["anomaly_map"]))
        map_shape = ["N", cells * cells]
    else:
        nodes.append(helper.make_node("Identity", ["map4"], ["anomaly_map"]))
        map_shape = ["N", 1, cells, cells]
    if not squeezed:
        nodes.append(helper.make_node("Identity", ["score_1d"], ["score"]))
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, score_shape),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, map_shape),
    ]
    inits = [_const("gain", np.array(MAP_GAIN)), _ints("one", [1])]
    return _serialize(helper.make_graph(nodes, "anomaly", [x], outputs, inits))


def _cell_boxes(side: int, box_side: float) -> np.ndarray:
    """(4, cells) centres cx, cy and sizes w, h of one box per CELL x CELL cell, row-major."""
    centres = (np.arange(side // CELL) + 0.5) * CELL
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    sizes = np.full(cx.size, box_side)
    return np.stack([cx.ravel(), cy.ravel(), sizes, sizes])


def detector(*, raw: bool = True, side: int = 64, box_side: float = 24.0, gain: float = 1.0) -> bytes:
    """Input ``image`` (N, 3, side, side) 0..1; one box per 8x8 cell, class confidences the cell's R, G, B means
    (times ``gain``: above 1, confidences are no longer 0..1).

    raw: YOLOv8 head ``output0`` (N, 4 + 3, cells), boxes of ``box_side`` pixels centred on their cells
    (so neighbours overlap and NMS has work to do); else post-NMS ``detections`` (N, cells, 6) of the
    cell's own box with the cell's red mean as a "scratch" confidence.
    """
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, side, side])
    cells = (side // CELL) ** 2
    boxes = _cell_boxes(side, box_side if raw else CELL)
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[CELL] * 2, strides=[CELL] * 2),
        helper.make_node("Mul", ["pooled", "gain"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "flat_shape"], ["colours"]),  # (N, 3, cells)
        helper.make_node("Slice", ["colours", "zero", "one", "one"], ["red"]),  # (N, 1, cells)
        helper.make_node("Mul", ["red", "nothing"], ["zeros"]),
    ]
    inits = [
        _ints("flat_shape", [0, 3, cells]),
        _ints("zero", [0]),
        _ints("one", [1]),
        _const("nothing", np.array(0.0)),
        _const("gain", np.array(gain)),
    ]
    if raw:
        nodes += [
            helper.make_node("Add", ["zeros", "boxes"], ["box_rows"]),  # (N, 4, cells)
            helper.make_node("Concat", ["box_rows", "colours"], ["output0"], axis=1),
        ]
        inits.append(_const("boxes", boxes))
        y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 7, cells])
    else:
        cx, cy, w, h = boxes
        corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        nodes += [
            helper.make_node("Add", ["zeros", "corners"], ["corner_rows"]),
            helper.make_node("Concat", ["corner_rows", "red", "zeros"], ["rows"], axis=1),  # (N, 6, cells)
            helper.make_node("Transpose", ["rows"], ["detections"], perm=[0, 2, 1]),
        ]
        inits.append(_const("corners", corners))
        y = helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["N", cells, 6])
    return _serialize(helper.make_graph(nodes, "detector", [x], [y], inits))


# --- manifests ---------------------------------------------------------------------------------


def manifest(data: bytes, *, name: str, kind: str, **changes: Any) -> dict[str, Any]:
    """A manifest for ``data``: a 32x32 float RGB classifier unless ``changes`` (merged per section) say otherwise."""
    base: dict[str, Any] = {
        "schema_version": 1,
        "name": name,
        "version": "1.0.0",
        "file": f"{name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "opset": OPSET,
        "input": {"name": "pixels", "layout": "NCHW", "dtype": "float32", "color": "RGB", "height": 32, "width": 32},
        "preprocess": {"resize": "bilinear", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "output": {"name": "logits" if kind == "logits" else "probs", "kind": kind},
        "labels": ["good", "defect"],
        "decision": {"fail_classes": ["defect"], "threshold": 0.5},
    }
    for key, value in changes.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return base


def anomaly_manifest(data: bytes, *, threshold: float = 5.0, fit: str = "stretch", side: int = 64) -> dict[str, Any]:
    """The anomaly model's manifest, shaped like the fitted models' (raw score threshold, map)."""
    return manifest(
        data,
        name="anomaly",
        kind="anomaly",
        input={"name": "image", "height": side, "width": side},
        preprocess={"fit": fit},
        output={"name": "score", "kind": "anomaly", "map": "anomaly_map"},
        labels=["good", "anomaly"],
        decision={"fail_classes": ["anomaly"], "threshold": threshold},
    )


def detector_manifest(
    data: bytes, *, raw: bool = True, fit: str = "letterbox", threshold: float = 0.5
) -> dict[str, Any]:
    """The detectors' manifest: scratch and dent fail a part, screw does not."""
    return manifest(
        data,
        name="detector-raw" if raw else "detector",
        kind="detections_raw" if raw else "detections",
        input={"name": "image", "height": 64, "width": 64},
        preprocess={"fit": fit, "pad_value": 0},
        output={"name": "output0" if raw else "detections", "kind": "detections_raw" if raw else "detections"},
        labels=DETECTOR_LABELS if raw else ["scratch"],
        decision={"fail_classes": ["scratch", "dent"] if raw else ["scratch"], "threshold": threshold},
    )


def write(folder: Path, data: bytes, spec: dict[str, Any]) -> Path:
    """Save a model and its manifest in ``folder``; the manifest's path."""
    (folder / spec["file"]).write_bytes(data)
    path = folder / f"{spec['name']}.manifest.json"
    path.write_text(json.dumps(spec))
    return path


# --- frames ------------------------------------------------------------------------------------


def frame(width: int, height: int, *patches: tuple[tuple[int, int, int, int], tuple[int, int, int]]) -> bytes:
    """A black PNG frame with coloured rectangles: each patch is ((x1, y1, x2, y2), (r, g, b))."""
    pixels = np.zeros((height, width, 3), np.uint8)
    for (x1, y1, x2, y2), colour in patches:
        pixels[y1:y2, x1:x2] = colour
    return encode(pixels, "PNG")
