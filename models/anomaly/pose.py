"""Turning a frame to the fitted parts' pose, inside the ONNX graph.

A fixtured part still shifts by a few pixels and turns by a few degrees between frames. A small designed
feature (a 5 px fiducial dot) moves more than its own size, so comparing patch by patch at fixed positions
would take "dot here" and "no dot here" for normal variation. The graph therefore finds the part's pose
from its silhouette and resamples the frame so that every part sits the same way:

* the silhouette is a soft threshold of luma between the belt's level and the part's (fitted: Otsu's
  threshold over the good photos, with the polarity that makes the frame's border background);
* its centroid is the part's position; the orientation of its second moments, 0.5 atan(2 mu11 /
  (mu20 - mu02)), its turn (within +-45 degrees, the range of a fixture). A part whose silhouette is
  nearly round has no orientation to measure: the fit then leaves the turn out (``rotate=False``);
* ``GridSample`` resamples the frame at ``R(theta) a + c`` for every output pixel ``a``;
* the anomaly map is sampled back the other way (``R(-theta) (p - c)``), so locations are in the frame
  the robot sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

SILHOUETTE_GAIN = 40.0
"""Steepness of the soft threshold, per unit of luma (0..1)."""


@dataclass(frozen=True)
class PoseConfig:
    """What the fit measured about the parts' silhouette."""

    threshold: float
    """Luma (0..1) between the background's level and the part's."""
    part_is_brighter: bool
    """The part is brighter than the background (a dark belt)."""
    rotate: bool
    """The silhouette is elongated enough to measure a turn."""


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.arange(size, dtype=np.float32) + 0.5 - size / 2
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return x, y


def _moments(luma: np.ndarray, pose: PoseConfig) -> tuple[np.ndarray, ...]:
    """Centroid x, y and central moments mu20, mu02, mu11 of each (N, S, S) frame's soft silhouette."""
    x, y = _coords(luma.shape[-1])
    sign = 1.0 if pose.part_is_brighter else -1.0
    m = 1 / (1 + np.exp(-(luma - pose.threshold) * SILHOUETTE_GAIN * sign))
    m00 = m.sum((1, 2))
    cx, cy = (m * x).sum((1, 2)) / m00, (m * y).sum((1, 2)) / m00
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    return cx, cy, (m * dx * dx).sum((1, 2)), (m * dy * dy).sum((1, 2)), (m * dx * dy).sum((1, 2))


def silhouette_moments(luma: np.ndarray, pose: PoseConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid x, y and orientation (radians) of each (N, S, S) luma frame, as the graph computes them."""
    cx, cy, mu20, mu02, mu11 = _moments(luma, pose)
    return cx, cy, 0.5 * np.arctan(2 * mu11 / (mu20 - mu02))


def elongation(luma: np.ndarray, pose: PoseConfig) -> float:
    """Median |mu20 - mu02| / (mu20 + mu02) of the frames' silhouettes: 0 for a disc or a square."""
    _, _, mu20, mu02, _ = _moments(luma, pose)
    return float(np.median(np.abs(mu20 - mu02) / (mu20 + mu02)))


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in 0..1 (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


class _Builder:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, value: np.ndarray | np.floating | float) -> str:
        full = f"{self.prefix}{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.asarray(value).dtype), full))
        return full

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"{self.prefix}{name}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def pose_nodes(pose: PoseConfig, size: int, luma: str) -> tuple[list[NodeProto], list[TensorProto], str, str, str, str]:
    """Nodes measuring each frame's pose from ``luma`` (N, 1, S, S).

    Returns the nodes, their constants, and the names of cos, sin, cx, cy, each (N, 1, 1) (cx, cy in
    pixels from the frame's centre)."""
    b = _Builder("p_")
    x, y = _coords(size)
    gain = SILHOUETTE_GAIN * (1.0 if pose.part_is_brighter else -1.0)
    shifted = b.op("Sub", [luma, b.const("thr", np.float32(pose.threshold))], "shifted")
    m = b.op("Sigmoid", [b.op("Mul", [shifted, b.const("gain", np.float32(gain))], "scaled")], "mask")
    axes = b.const("axes", np.array([1, 2, 3], np.int64))
    total = lambda t, name: b.op("ReduceSum", [t, axes], name, keepdims=1)  # noqa: E731
    m00 = total(m, "m00")
    gx, gy = b.const("x", x[None, None]), b.const("y", y[None, None])
    cx = b.op("Div", [total(b.op("Mul", [m, gx], "mx"), "m10"), m00], "cx4")
    cy = b.op("Div", [total(b.op("Mul", [m, gy], "my"), "m01"), m00], "cy4")
    dx, dy = b.op("Sub", [gx, cx], "dx"), b.op("Sub", [gy, cy], "dy")
    mdx = b.op("Mul", [m, dx], "mdx")
    mu20 = total(b.op("Mul", [mdx, dx], "mdxdx"), "mu20")
    mu02 = total(b.op("Mul", [b.op("Mul", [m, dy], "mdy"), dy], "mdydy"), "mu02")
    mu11 = total(b.op("Mul", [mdx, dy], "mdxdy"), "mu11")
    shape = b.const("shape3", np.array([-1, 1, 1], np.int64))
    if pose.rotate:
        ratio = b.op("Div", [b.op("Add", [mu11, mu11], "two_mu11"), b.op("Sub", [mu20, mu02], "spread")], "ratio")
        theta = b.op("Mul", [b.op("Atan", [ratio], "atan"), b.const("half", np.float32(0.5))], "theta4")
    else:
        theta = b.op("Mul", [m00, b.const("zero", np.float32(0.0))], "theta4")
    theta = b.op("Reshape", [theta, shape], "theta")
    cos, sin = b.op("Cos", [theta], "cos"), b.op("Sin", [theta], "sin")
    cx, cy = b.op("Reshape", [cx, shape], "cx"), b.op("Reshape", [cy, shape], "cy")
    return b.nodes, b.inits, cos, sin, cx, cy


def sampling_grid(
    b_prefix: str, size: int, src_size: int, cos: str, sin: str, cx: str, cy: str, *, inverse: bool
) -> tuple[list[NodeProto], list[TensorProto], str]:
    """A ``GridSample`` grid (N, size, size, 2) over a ``src_size`` frame.

    Forward (``inverse=False``): output pixel ``a`` (aligned frame) samples the input at
    ``R(theta) a + c``. Inverse: output cell ``p`` (the robot's frame) samples the aligned map at
    ``R(-theta) (p - c)``. Both grids are normalised by half the frame's side (align_corners=0)."""
    b = _Builder(b_prefix)
    u, v = _coords(size)
    scale = src_size / size
    gu, gv = b.const("u", (u * scale)[None]), b.const("v", (v * scale)[None])  # (1, S, S), pixels of the frame
    mul = lambda p, q, name: b.op("Mul", [p, q], name)  # noqa: E731
    if inverse:
        px, py = b.op("Sub", [gu, cx], "px"), b.op("Sub", [gv, cy], "py")
        gx = b.op("Add", [mul(cos, px, "cpx"), mul(sin, py, "spy")], "gx")
        gy = b.op("Sub", [mul(cos, py, "cpy"), mul(sin, px, "spx")], "gy")
    else:
        gx = b.op("Add", [b.op("Sub", [mul(cos, gu, "cu"), mul(sin, gv, "sv")], "rx"), cx], "gx")
        gy = b.op("Add", [b.op("Add", [mul(sin, gu, "su"), mul(cos, gv, "cv")], "ry"), cy], "gy")
    half = b.const("half", np.float32(src_size / 2))
    axis = b.const("last", np.array([-1], np.int64))
    gx = b.op("Unsqueeze", [b.op("Div", [gx, half], "nx"), axis], "ux")
    gy = b.op("Unsqueeze", [b.op("Div", [gy, half], "ny"), axis], "uy")
    return b.nodes, b.inits, b.op("Concat", [gx, gy], "grid", axis=-1)
