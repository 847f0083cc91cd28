"""The fitted anomaly model as one ONNX graph: pose, features, per-position Gaussians, a map and a score.

    image (N, 3, S, S), 0..1 RGB
      -> pose from the silhouette, frame resampled to the fitted pose        (models.anomaly.pose)
      -> patch descriptors on a G x G grid                                   (models.anomaly.features)
      -> Mahalanobis distance of each patch to its position's Gaussian       (fitted: mean, inverse covariance)
      -> 3 x 3 smoothing, divided by what good parts reach at that position  (fitted: ``normaliser``)
      -> sampled back to the robot's frame                                   -> anomaly_map (N, G, G)
      -> its maximum                                                         -> score (N,)

The graph needs only standard operators (opset 17), so any ONNX Runtime build serves it, on CPU or GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.anomaly.features import FEATURES, OPSET, FeatureConfig, feature_nodes
from models.anomaly.pose import PoseConfig, pose_nodes, sampling_grid

INPUT, SCORE, MAP = "image", "score", "anomaly_map"
"""Tensor names of the exported model."""


@dataclass(frozen=True)
class Gaussians:
    """What the fit learned: per grid position, the good patches' mean and inverse covariance."""

    mean: np.ndarray
    """(P, D) float32."""
    inverse_covariance: np.ndarray
    """(P, D, D) float32."""
    normaliser: np.ndarray
    """(G, G) float32: reciprocal of what held-out good parts reach per position (0 on the ignored border)."""


def _front(
    features: FeatureConfig, pose: PoseConfig
) -> tuple[list[onnx.NodeProto], list[TensorProto], tuple[str, ...]]:
    """Pose and aligned features of ``image``: nodes, constants, and (cos, sin, cx, cy)."""
    luma_w = numpy_helper.from_array(np.array([0.299, 0.587, 0.114], np.float32).reshape(1, 3, 1, 1), "a_luma_w")
    nodes = [helper.make_node("Conv", [INPUT, "a_luma_w"], ["a_luma"])]
    inits = [luma_w]
    pn, pi, cos, sin, cx, cy = pose_nodes(pose, features.size, "a_luma")
    gn, gi, grid = sampling_grid("g_", features.size, features.size, cos, sin, cx, cy, inverse=False)
    nodes += pn + gn + [helper.make_node("GridSample", [INPUT, grid], ["aligned"], mode="bilinear",
                                         padding_mode="border", align_corners=0)]  # fmt: skip
    fn, fi = feature_nodes(features, "aligned", "features")
    return nodes + fn, inits + pi + gi + fi, (cos, sin, cx, cy)


def _model(
    nodes: list[onnx.NodeProto], inits: list[TensorProto], size: int, outputs: list[onnx.ValueInfoProto]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "lineside-anomaly", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 3, size, size])],
        outputs, inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lineside")
    model.ir_version = 8  # readable by every ONNX Runtime from 1.10
    onnx.checker.check_model(model, full_check=True)
    return model


def extractor_model(features: FeatureConfig, pose: PoseConfig) -> onnx.ModelProto:
    """What the fit runs over good photos: ``image`` -> ``features`` (N, D, G, G) at the fitted pose."""
    nodes, inits, _ = _front(features, pose)
    g = features.grid
    return _model(nodes, inits, features.size,
                  [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES, g, g])])  # fmt: skip


def scorer_model(features: FeatureConfig, pose: PoseConfig, fitted: Gaussians) -> onnx.ModelProto:
    """The served model: ``image`` -> ``score`` (N,) and ``anomaly_map`` (N, G, G) in the robot's frame."""
    nodes, inits, (cos, sin, cx, cy) = _front(features, pose)
    g, d = features.grid, FEATURES

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    n = helper.make_node
    nodes += [
        n("Transpose", ["features"], ["s_nhwc"], perm=[0, 2, 3, 1]),
        n("Reshape", ["s_nhwc", const("s_npd", np.array([0, g * g, d], np.int64))], ["s_patches"]),
        n("Sub", ["s_patches", const("s_mean", fitted.mean.astype(np.float32))], ["s_centred"]),
        n("Einsum", ["s_centred", const("s_icov", fitted.inverse_covariance.astype(np.float32))], ["s_whitened"],
          equation="npd,pde->npe"),
        n("Mul", ["s_centred", "s_whitened"], ["s_terms"]),
        n("ReduceSum", ["s_terms", const("s_axis", np.array([2], np.int64))], ["s_d2"], keepdims=0),
        n("Relu", ["s_d2"], ["s_d2_pos"]),
        n("Sqrt", ["s_d2_pos"], ["s_dist"]),
        n("Reshape", ["s_dist", const("s_grid", np.array([-1, 1, g, g], np.int64))], ["s_map"]),
        n("AveragePool", ["s_map"], ["s_smooth"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0),
        n("Mul", ["s_smooth", const("s_norm", fitted.normaliser.astype(np.float32)[None, None])], ["s_relative"]),
    ]  # fmt: skip
    gn, gi, grid = sampling_grid("b_", g, features.size, cos, sin, cx, cy, inverse=True)
    nodes += [
        *gn,
        n("GridSample", ["s_relative", grid], ["s_back"], mode="bilinear", padding_mode="zeros", align_corners=0),
        n("Reshape", ["s_back", const("s_nhw", np.array([-1, g, g], np.int64))], [MAP]),
        n("ReduceMax", [MAP], [SCORE], axes=[1, 2], keepdims=0),
    ]
    inits += gi
    return _model(nodes, inits, features.size, [
        helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info(MAP, TensorProto.FLOAT, ["N", g, g]),
    ])  # fmt: skip
