"""Throughput of a model (the bundled one by default): raw ONNX Runtime vs. Lineside's runtime, by batch and threads.

The baseline is a bare ``onnxruntime.InferenceSession.run`` on ready tensors,
measured in the same run as ``InspectionModel.inspect`` on encoded JPEG/PNG
frames (decode, resize, normalise, infer, verdict). Their ratio is the cost of
preprocessing, which a slice pays per frame.

    lineside bench runtime --json
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contracts.manifest import model_file
from edge_node.imaging import FrameLimits, Preprocessor
from edge_node.runtime import InspectionModel
from edge_node.settings import EdgeSettings
from models import BUNDLED_MANIFEST, synth


def rate(run: Callable[[], object], items: int, min_seconds: float) -> float:
    """Items per second of ``run`` over at least ``min_seconds`` (after one untimed call)."""
    run()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or calls < 3:
        run()
        calls += 1
    return items * calls / elapsed


def measure(batches: list[int], threads: list[int], min_seconds: float,
            manifest: Path = BUNDLED_MANIFEST) -> dict[str, Any]:  # fmt: skip
    frames = [synth.generate(99, i).data for i in range(max(batches))]
    rows = []
    for n_threads in threads:
        settings = EdgeSettings(intra_op_threads=n_threads, inter_op_threads=1, providers=None)
        model = InspectionModel(manifest, settings)
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        raw = ort.InferenceSession(str(model_file(manifest, model.manifest)), options, providers=model.providers)
        prepare = Preprocessor(model.manifest, FrameLimits.from_settings(settings))
        for batch in batches:
            tensor = np.stack([prepare(frames[i % len(frames)]) for i in range(batch)])  # the model's own input
            raw_fps = rate(lambda: raw.run(None, {model.manifest.input.name: tensor}), batch, min_seconds)  # noqa: B023
            subset = frames[:batch]
            e2e_fps = rate(lambda: model.inspect(subset), batch, min_seconds)  # noqa: B023
            rows.append(
                {
                    "threads": n_threads,
                    "batch": batch,
                    "raw_ort_frames_per_s": round(raw_fps, 1),
                    "lineside_frames_per_s": round(e2e_fps, 1),
                    "lineside_vs_raw": round(e2e_fps / raw_fps, 3),
                }
            )
            print(f"threads={n_threads} batch={batch}: raw {raw_fps:.0f}/s, lineside {e2e_fps:.0f}/s", file=sys.stderr)
    return {
        "benchmark": "runtime_throughput",
        "model": f"{model.manifest.name}:{model.manifest.version}",
        "providers": model.providers,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "onnxruntime": ort.__version__,
        "results": rows,
    }
