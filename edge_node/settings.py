"""Settings of an edge-node process, read once from ``LINESIDE_*`` environment variables."""

from __future__ import annotations

import functools

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import wire


class EdgeSettings(BaseSettings):
    """Everything an edge-node process can be told from its environment."""

    model_config = SettingsConfigDict(env_prefix="LINESIDE_", extra="ignore")

    providers: list[str] | None = Field(
        default=None,
        description=(
            "ONNX Runtime execution providers to use, in order (JSON list, e.g. "
            '["CUDAExecutionProvider","CPUExecutionProvider"]). Default: the best available of '
            "TensorRT, CUDA, CPU."
        ),
    )
    intra_op_threads: int = Field(default=0, ge=0, description="ONNX Runtime intra-op threads; 0 lets it decide.")
    inter_op_threads: int = Field(default=1, ge=0, description="ONNX Runtime inter-op threads; 0 lets it decide.")
    ort_spinning: bool = Field(
        default=True,
        description=(
            "Let ONNX Runtime's idle threads spin-wait. Fastest alone on a machine; slices turn it off "
            "because their replicas share cores with the ingress and the broker."
        ),
    )
    ort_memory_arena: bool = Field(
        default=True,
        description=(
            "Let ONNX Runtime keep a CPU memory arena: freed tensors stay with the process for the next call. "
            "Off, a replica of the heavy reference model held 150 MB instead of 215 MB but judged 35-40 % fewer "
            "frames/s (BENCHMARKS.md), so it stays on unless memory is what the node lacks."
        ),
    )
    max_frame_bytes: int = Field(default=wire.MAX_FRAME_BYTES, gt=0, description="Largest encoded frame accepted.")
    max_frame_pixels: int = Field(default=wire.MAX_FRAME_PIXELS, gt=0, description="Largest width x height accepted.")
    max_frame_side: int = Field(default=wire.MAX_FRAME_SIDE, gt=0, description="Longest side accepted, in pixels.")


@functools.cache
def get_settings() -> EdgeSettings:
    """The process's settings, read from the environment once."""
    return EdgeSettings()
