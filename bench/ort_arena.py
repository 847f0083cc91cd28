"""ONNX Runtime's CPU memory arena on or off: a model replica's frames/s and resident memory (issue 16, item 5).

Each configuration runs in a fresh process (memory figures of one process would carry over): the model is
loaded as a slice's replica loads it (``InspectionModel``, spinning off), warmed at batch 1 and the batch, then
judges preprocessed frames at the batch and at 1, alternately, for ``--seconds``. Rounds interleave the
configurations so that a machine's noise hits them alike.

    python -m bench.ort_arena --json                 # bundled (batch 32) and reference (batch 8) models
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one(model: str, arena: bool, threads: int, batch: int, seconds: float) -> dict[str, object]:
    import numpy as np

    from edge_node.runtime import InspectionModel
    from edge_node.settings import EdgeSettings
    from models import BUNDLED_MANIFEST, reference

    manifest = Path(BUNDLED_MANIFEST) if model == "bundled" else reference.cached()
    settings = EdgeSettings(intra_op_threads=threads, inter_op_threads=1, ort_spinning=False, ort_memory_arena=arena)
    loaded = InspectionModel(manifest, settings, warmup_batch=batch)
    frames = np.random.default_rng(0).random((batch, *loaded.preprocess.shape)).astype(loaded.preprocess.dtype)
    judged, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        loaded.infer(frames)
        loaded.infer(frames[:1])
        judged += batch + 1
    fps = judged / (time.perf_counter() - started)
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS"))  # fmt: skip
    return {"model": model, "arena": arena, "threads": threads, "batch": batch, "fps": round(fps, 1),
            "rss_mb": rss_kb // 1024}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ort_arena", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Seconds per configuration and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "ARENA", "THREADS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        model, arena, threads, batch = args.one
        print(json.dumps(_one(model, arena == "1", int(threads), int(batch), args.seconds)))
        return
    runs = []
    for round_ in range(args.rounds):
        for model, batch in (("bundled", 32), ("reference", 8)):
            for threads in (1, 2):
                for arena in ("1", "0"):
                    _log(f"round {round_ + 1}: {model} batch {batch}, {threads} thread(s), arena {arena}")
                    out = subprocess.run([sys.executable, "-m", "bench.ort_arena", "--seconds", str(args.seconds),
                                          "--one", model, arena, str(threads), str(batch)],
                                         capture_output=True, text=True, check=True).stdout  # fmt: skip
                    runs.append(json.loads(out.strip().splitlines()[-1]))
    result = {"benchmark": "ort_arena", "runs": runs}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
