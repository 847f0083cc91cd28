"""The heavy reference model of the benchmarks: a MobileNetV2-class classifier at 224 px, built here.

Nothing can be downloaded, and what the benchmarks need from it is its cost, not its skill: the graph is
MobileNetV2 1.0 (Sandler et al. 2018: a 32-channel stem, 17 inverted residual blocks of 1x1 expansion,
3x3 depthwise and 1x1 projection convolutions with ReLU6, a 1280-channel head, global pooling and a
linear layer), with batch norm folded into the convolutions as an exported model has it, about 300 M
multiply-adds and 3.5 M parameters a frame. Its weights are seeded random (He initialisation), so its
verdicts mean nothing; it is written with onnx's helper API, so no PyTorch is needed to build it.

    python -m models.reference --out DIR       # writes DIR/reference-mobilenetv2.{onnx,manifest.json}

``lineside bench pipeline --model reference`` builds it into the user's cache on first use.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contracts.manifest import sha256_of
from models import synth

NAME = "reference-mobilenetv2"
VERSION = "1.0.0"
SIDE = 224
OPSET = 17
# (expansion t, output channels c, repeats n, first stride s): MobileNetV2's table 2
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM, HEAD = 32, 1280


class _Graph:
    """Nodes and seeded weights of the graph being built, with MobileNetV2's three layer kinds."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[TensorProto] = []
        self.macs = 0
        self._n = 0

    def _name(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._n}"

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int, side: int, *, group: int = 1,
             relu6: bool = True) -> tuple[str, int]:  # fmt: skip
        """A convolution with folded batch norm (weights and bias), ReLU6 unless projecting; (output, side)."""
        name = self._name("conv")
        fan_in = c_in // group * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (c_out, c_in // group, k, k)).astype(np.float32)
        b = self.rng.normal(0.0, 0.01, c_out).astype(np.float32)
        self.weights += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
        pad = k // 2
        out = f"{name}.y"
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, group=group))  # fmt: skip
        side_out = (side + 2 * pad - k) // stride + 1
        self.macs += side_out * side_out * c_out * fan_in
        if not relu6:
            return out, side_out
        clipped = f"{name}.relu6"
        self.weights += [numpy_helper.from_array(np.array(0.0, np.float32), f"{name}.lo"),
                         numpy_helper.from_array(np.array(6.0, np.float32), f"{name}.hi")]  # fmt: skip
        self.nodes.append(helper.make_node("Clip", [out, f"{name}.lo", f"{name}.hi"], [clipped]))
        return clipped, side_out

    def inverted_residual(self, x: str, c_in: int, c_out: int, t: int, stride: int, side: int) -> tuple[str, int]:
        hidden = c_in * t
        y, s = (x, side) if t == 1 else self.conv(x, c_in, hidden, 1, 1, side)
        y, s = self.conv(y, hidden, hidden, 3, stride, s, group=hidden)  # depthwise
        y, s = self.conv(y, hidden, c_out, 1, 1, s, relu6=False)  # linear bottleneck
        if stride == 1 and c_in == c_out:
            summed = self._name("add")
            self.nodes.append(helper.make_node("Add", [x, y], [summed]))
            return summed, s
        return y, s


def build(seed: int = 0) -> tuple[bytes, int]:
    """The ONNX model (input ``image`` N x 3 x 224 x 224, output ``probs`` over the generator's classes) and
    its multiply-adds per frame."""
    g = _Graph(seed)
    x, side = g.conv("image", 3, STEM, 3, 2, SIDE)
    c = STEM
    for t, c_out, n, s in BLOCKS:
        for i in range(n):
            x, side = g.inverted_residual(x, c, c_out, t, s if i == 0 else 1, side)
            c = c_out
    x, side = g.conv(x, c, HEAD, 1, 1, side)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    g.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], axis=1))
    classes = len(synth.CLASSES)
    w = g.rng.normal(0.0, np.sqrt(1.0 / HEAD), (HEAD, classes)).astype(np.float32)
    g.weights += [numpy_helper.from_array(w, "fc.w"), numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")]
    g.nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"]))
    g.nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    g.macs += HEAD * classes
    graph = helper.make_graph(
        g.nodes, NAME,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        initializer=g.weights,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lineside")
    onnx.checker.check_model(model)
    return model.SerializeToString(), g.macs


def write(folder: Path, seed: int = 0) -> Path:
    """Write the model and its manifest into ``folder``; returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    data, macs = build(seed)
    onnx_path = folder / f"{NAME}.onnx"
    onnx_path.write_bytes(data)
    manifest = {
        "schema_version": 1, "name": NAME, "version": VERSION, "file": onnx_path.name,
        "sha256": sha256_of(onnx_path), "opset": OPSET,
        "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB", "height": SIDE,
                  "width": SIDE},
        "preprocess": {"resize": "bilinear", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                       "std": [0.229, 0.224, 0.225]},
        "output": {"name": "probs", "kind": "probabilities"},
        "labels": list(synth.CLASSES),
        "decision": {"fail_classes": [c for c in synth.CLASSES if c != "good"], "threshold": 0.5},
    }  # fmt: skip
    path = folder / f"{NAME}.manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    (folder / "macs.txt").write_text(f"{macs}\n")
    return path


def cached() -> Path:
    """The reference model's manifest in the user's cache (``$XDG_CACHE_HOME/lineside``), built once."""
    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lineside" / "reference"
    path = folder / f"{NAME}.manifest.json"
    if not path.exists() or not (folder / f"{NAME}.onnx").exists():
        return write(folder)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model and its manifest to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args(argv)
    path = write(args.out, args.seed)
    macs = int((args.out / "macs.txt").read_text())
    print(f"wrote {path} ({macs / 1e6:.0f} M multiply-adds a frame)")


if __name__ == "__main__":
    main()
