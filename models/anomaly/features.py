"""The fixed feature extractor of a fitted anomaly model, as an ONNX graph.

Nothing here is learned. A frame becomes a grid of patch descriptors through filters whose weights are
formulas (Gaussians and their derivatives), so the extractor has seen no part, no surface and no defect:
a factory's own parts are as new to it as the generator's. What is fitted, per factory, is only the
memory of normal patches (``models.anomaly.fit``).

The descriptor of a patch, for a frame scaled to 0..1 RGB:

* luma in the log domain, minus a heavily smoothed copy of itself: a light's gain, gradient and hot
  spot are smooth, so they leave little behind;
* a bank of Gaussian-derivative filters on that residual (smoothing, two differences of Gaussians,
  first and second derivatives) gives ``BANK`` responses per pixel;
* per patch (``patch`` pixels, every ``stride``): the mean of the three smoothing responses (level
  and two blob scales), the log of every response's mean energy, and the mean log-chroma (two colour
  ratios, also free of the light's gain).

The frame is first turned and moved to the fitted parts' pose (``models.anomaly.pose``), so that a
patch's position means the same place on every part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
EPS = 0.1
ENERGY_EPS = 1e-4
"""Added before taking logs: keeps the black belt's noise from dominating the log domain."""


@dataclass(frozen=True)
class FeatureConfig:
    """Shape of the feature grid; stored in the model card so a fit can be reproduced."""

    size: int = 256
    """Side of the square input, pixels."""
    patch: int = 8
    """Side of the window a patch descriptor pools, pixels."""
    stride: int = 4
    """Distance between patch centres, pixels."""
    illumination_cell: int = 64
    """Side of the cells whose mean log-luma is taken as the light (and removed): larger than any
    designed feature, so a missing hole is not taken for a change of light."""

    @property
    def grid(self) -> int:
        return self.size // self.stride


def _gaussian_kernels(radius: int = 7) -> np.ndarray:
    """The filter bank: (BANK, 1, 2r+1, 2r+1) float32."""
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    x, y = np.meshgrid(ax, ax)

    def g(sigma: float) -> np.ndarray:
        k = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        return k / k.sum()

    def d(sigma: float, order_x: int, order_y: int) -> np.ndarray:
        base = g(sigma)
        hx = {0: 1.0, 1: -x / sigma**2, 2: (x**2 - sigma**2) / sigma**4}[order_x]
        hy = {0: 1.0, 1: -y / sigma**2, 2: (y**2 - sigma**2) / sigma**4}[order_y]
        k = base * hx * hy
        if order_x + order_y > 0:
            k -= k.mean()  # a derivative answers nothing to a flat patch
        return k * sigma ** (order_x + order_y)  # scale-normalised

    bank = [
        g(1.0),
        g(1.0) - g(2.0),
        g(2.0) - g(4.0),
        d(1.0, 1, 0),
        d(1.0, 0, 1),
        d(2.0, 1, 0),
        d(2.0, 0, 1),
        d(1.5, 2, 0),
        d(1.5, 0, 2),
        d(1.5, 1, 1),
    ]
    return np.stack(bank)[:, None].astype(np.float32)


BANK = len(_gaussian_kernels())
LEVELS = 3
"""Bank responses whose patch mean is a feature (smoothing and the two differences of Gaussians); the
derivatives' means are near zero on any texture and only add noise."""
FEATURES = LEVELS + BANK + 2
"""Descriptor length: three response means, the log energy of each filter, and two chroma means."""


def _const(nodes: list[onnx.NodeProto], inits: list[TensorProto], name: str, value: np.ndarray) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def feature_nodes(config: FeatureConfig, image: str, out: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes turning ``image`` (N, 3, S, S) float32 0..1 into ``out`` (N, FEATURES, G, G)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    c = lambda name, value: _const(nodes, inits, name, value)  # noqa: E731
    n = helper.make_node
    rgb_to_luma = np.array([[0.299, 0.587, 0.114]], np.float32).reshape(1, 3, 1, 1)
    nodes += [
        n("Conv", [image, c("f_luma_w", rgb_to_luma)], ["f_y"]),
        n("Add", ["f_y", c("f_eps", np.float32(EPS))], ["f_y_eps"]),
        n("Log", ["f_y_eps"], ["f_logy"]),
        n("Add", [image, "f_eps"], ["f_rgb_eps"]),
        n("Log", ["f_rgb_eps"], ["f_logrgb"]),
        n("Sub", ["f_logrgb", "f_logy"], ["f_chroma3"]),  # log(R/Y), log(G/Y), log(B/Y): free of gain
        n("Slice", ["f_chroma3", c("f_c_start", np.array([0], np.int64)), c("f_c_end", np.array([3], np.int64)),
                    c("f_c_axis", np.array([1], np.int64)), c("f_c_step", np.array([2], np.int64))], ["f_chroma"]),
        # the light: mean log-luma per cell, brought back to full size
        n("AveragePool", ["f_logy"], ["f_cells"], kernel_shape=[config.illumination_cell] * 2,
          strides=[config.illumination_cell] * 2),
        n("Resize", ["f_cells", "", c("f_up", np.array([1, 1, config.illumination_cell, config.illumination_cell],
                                                          np.float32))], ["f_light"], mode="linear"),
        n("Sub", ["f_logy", "f_light"], ["f_flat"]),
        n("Conv", ["f_flat", c("f_bank_w", _gaussian_kernels())], ["f_resp"], pads=[7, 7, 7, 7]),
        n("Mul", ["f_resp", "f_resp"], ["f_energy"]),
    ]  # fmt: skip
    pad = (config.patch - config.stride) // 2
    pool: dict[str, Any] = {"kernel_shape": [config.patch] * 2, "strides": [config.stride] * 2, "pads": [pad] * 4}
    nodes += [
        n(
            "Slice",
            ["f_resp", c("f_l_start", np.array([0], np.int64)), c("f_l_end", np.array([LEVELS], np.int64)), "f_c_axis"],
            ["f_levels"],
        ),
        n("AveragePool", ["f_levels"], ["f_resp_mean"], count_include_pad=0, **pool),
        n("AveragePool", ["f_energy"], ["f_energy_mean"], count_include_pad=0, **pool),
        n("Add", ["f_energy_mean", c("f_e_eps", np.float32(ENERGY_EPS))], ["f_energy_eps"]),
        n("Log", ["f_energy_eps"], ["f_log_energy"]),
        n("AveragePool", ["f_chroma"], ["f_chroma_mean"], count_include_pad=0, **pool),
        n("Concat", ["f_resp_mean", "f_log_energy", "f_chroma_mean"], [out], axis=1),
    ]
    return nodes, inits


def feature_model(config: FeatureConfig) -> onnx.ModelProto:
    """The extractor alone: ``image`` (N, 3, S, S) -> ``features`` (N, FEATURES, G, G)."""
    nodes, inits = feature_nodes(config, "image", "features")
    graph = helper.make_graph(
        nodes,
        "lineside-patch-features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, config.size, config.size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES, config.grid, config.grid])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lineside")
    onnx.checker.check_model(model)
    return model
