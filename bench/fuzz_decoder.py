"""Chaos scenario 10 (issue 18): the frame decoder under mutated JPEG and PNG frames.

Seeds are real frames from the part renderer (JPEG and PNG, several sizes); each case applies one to four
mutations (bit flips, overwritten, inserted or deleted byte runs, truncation, a chunk spliced from another
seed, a header's width or height rewritten) and decodes the result as a slice does (``decode_rgb`` with the
default limits). A case passes when it decodes or raises one of the typed frame errors the robot is answered
with. Reported: cases, outcomes by type, anything else raised (must be 0), the slowest case and the resident
memory's growth. A native crash (a segfault in a decoder) ends the process: ``lineside bench fuzz-decoder`` runs
the cases in a child process and reports that as a crash, with the seed of the case batch to replay it.
"""

from __future__ import annotations

import io
import json
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from edge_node.errors import FrameError
from edge_node.imaging import FrameLimits, decode_rgb
from edge_node.settings import EdgeSettings
from models import synth

SIZE = (224, 224)
SLOW_MS = 1000.0


def seeds() -> list[bytes]:
    """Rendered parts as JPEG (the renderer's own) and PNG, at two sizes."""
    from PIL import Image

    frames = [synth.generate(9090, i).data for i in range(4)]
    for data in frames[:2]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        for side in (64, 320):
            out = io.BytesIO()
            image.resize((side, side)).save(out, format="PNG")
            frames.append(out.getvalue())
    return frames


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One to four random mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        at = rng.randrange(max(1, len(out)))
        if kind == 0:  # flip bits (of what an earlier truncation left, if anything)
            for _ in range(rng.randint(1, 8) if out else 0):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # overwrite a run
            run = rng.randint(1, 64)
            out[at : at + run] = bytes(rng.randrange(256) for _ in range(run))
        elif kind == 2:  # insert a run
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 256)))
        elif kind == 3:  # delete a run
            del out[at : at + rng.randint(1, 512)]
        elif kind == 4:  # truncate
            del out[at:]
        elif kind == 5:  # splice a piece of another frame
            other = rng.choice(pool)
            start = rng.randrange(len(other))
            out[at : at + rng.randint(1, 2048)] = other[start : start + rng.randint(1, 2048)]
        else:  # claim a huge or zero size in the header (JPEG SOF / PNG IHDR)
            _rewrite_dimensions(out, rng)
    return bytes(out)


def _rewrite_dimensions(out: bytearray, rng: random.Random) -> None:
    value = rng.choice([0, 1, 65535, rng.randrange(65536)]).to_bytes(2, "big")
    png = out.find(b"IHDR")
    if png >= 0 and len(out) >= png + 12:
        field = png + 4 + rng.choice([0, 4]) + 2  # the low two bytes of width or height
        out[field : field + 2] = value
        return
    sof = out.find(b"\xff\xc0")
    if sof >= 0 and len(out) >= sof + 9:
        field = sof + 5 + rng.choice([0, 2])  # height, then width
        out[field : field + 2] = value


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cases: int, seed: int) -> dict[str, Any]:
    """Decode ``cases`` mutated frames (reproducible from ``seed``); the figures."""
    pool = seeds()
    rng = random.Random(seed)
    limits = FrameLimits.from_settings(EdgeSettings())
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    slowest_ms = 0.0
    for _ in range(50):  # warm up the decoders before the memory baseline
        decode_rgb(pool[0], limits, SIZE)
    rss_start = _rss_mb()
    for _ in range(cases):
        frame = mutate(rng.choice(pool), rng, pool)
        started = time.perf_counter()
        try:
            decode_rgb(frame, limits, SIZE)
            outcomes["decoded"] += 1
        except FrameError as e:
            outcomes[e.code.value] += 1
        except Exception as e:  # the point: anything else is a finding
            outcomes["unexpected"] += 1
            if len(unexpected) < 10:
                unexpected.append(f"{type(e).__name__}: {str(e)[:200]}")
        slowest_ms = max(slowest_ms, (time.perf_counter() - started) * 1000)
    return {
        "cases": cases, "seed": seed, "outcomes": dict(sorted(outcomes.items())), "unexpected": unexpected,
        "slowest_ms": round(slowest_ms, 2), "slow_cases_limit_ms": SLOW_MS,
        "rss_start_mb": round(rss_start, 1), "rss_growth_mb": round(_rss_mb() - rss_start, 1),
    }  # fmt: skip


def measure(cases: int, seed: int, batch: int = 100_000) -> dict[str, Any]:
    """``run`` in child processes of ``batch`` cases each, so a native crash is reported, not fatal."""
    total: Counter[str] = Counter()
    report: dict[str, Any] = {"cases": 0, "crashes": [], "unexpected": [], "slowest_ms": 0.0, "rss_growth_mb": 0.0}
    started = time.perf_counter()
    for index in range((cases + batch - 1) // batch):
        n = min(batch, cases - index * batch)
        child = subprocess.run([sys.executable, "-m", "bench.fuzz_decoder", str(n), str(seed + index)],
                               capture_output=True, text=True, timeout=3600)  # fmt: skip
        if child.returncode != 0:
            report["crashes"].append({"seed": seed + index, "cases": n, "returncode": child.returncode,
                                      "stderr": child.stderr[-500:]})  # fmt: skip
            continue
        part = json.loads(child.stdout)
        report["cases"] += part["cases"]
        total.update(part["outcomes"])
        report["unexpected"] += part["unexpected"]
        report["slowest_ms"] = max(report["slowest_ms"], part["slowest_ms"])
        report["rss_growth_mb"] = max(report["rss_growth_mb"], part["rss_growth_mb"])
        print(f"fuzz: {report['cases']}/{cases} cases", file=sys.stderr, flush=True)
    report["outcomes"] = dict(sorted(total.items()))
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]), int(sys.argv[2]))))
