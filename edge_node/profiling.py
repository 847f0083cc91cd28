"""Profiling run: frames/s one replica sustains and its cold-start time, on this node's hardware.

The planner divides a line's required frames/s by the first and pre-warms by
the second. One run takes a few seconds and is done once per model and
hardware (the agent caches which it has reported). It runs in the agent's own
process with the replica's thread count, so it measures the same ONNX Runtime
work a replica does per frame (decode, preprocess, infer), without Serve's
batching overhead.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

from edge_node.runtime import InspectionModel
from edge_node.settings import EdgeSettings
from models import synth


@dataclass(frozen=True)
class ProfileResult:
    frames_per_s_per_replica: float
    cold_start_s: float
    decode_ms: float = 0.0
    """Of each frame's time in one replica, what decoding and resizing took (``Preprocessor.decode``, one thread)."""


@functools.cache
def _frames(count: int) -> tuple[bytes, ...]:
    """Generated JPEG part images, made once per process (generating them takes longer than measuring)."""
    return tuple(s.data for s in synth.generate_many(99, range(count), workers=1) if s.encoding == "jpeg")


def profile(manifest: Path, *, threads: int, batch: int, seconds: float = 1.0, frames: int = 32) -> ProfileResult:
    """Load the model as a replica would (timed), then judge generated JPEG frames for ``seconds``."""
    pool = _frames(frames)
    settings = EdgeSettings(intra_op_threads=threads, inter_op_threads=1, ort_spinning=False)
    started = time.perf_counter()
    model = InspectionModel(manifest, settings, warmup_batch=batch)
    cold_start_s = time.perf_counter() - started
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for k in range(0, len(pool), batch):
            done += len(model.inspect(pool[k : k + batch]))
    fps = done / (time.perf_counter() - started)
    decoding = time.perf_counter()
    for data in pool:
        model.preprocess.decode(data)
    decode_ms = (time.perf_counter() - decoding) * 1e3 / len(pool)
    return ProfileResult(round(fps, 1), round(cold_start_s, 3), round(decode_ms, 3))
