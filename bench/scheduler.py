"""Scheduler throughput: place N replicas on M nodes, then re-place after 10% of the nodes vanish.

Baseline in the same run: a plain first-fit scan (each replica walks the node
list until one fits), the textbook placement loop, on a sample of the same
replicas. kube-scheduler places about 333 pods/s at 500 nodes; the target for
Lineside's scheduler is >= 3,300 placements/s at 5,000 nodes.

    lineside bench scheduler --nodes 5000 --replicas 150000 --json
"""

from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from control_plane.scheduler import GpuSpec, NodeSpec, Priority, SliceDemand, place

NOW = datetime(2026, 11, 30, 12, 0)
REPLICAS_PER_SLICE = 10


def site(nodes: int, replicas: int, seed: int = 7) -> tuple[list[NodeSpec], list[SliceDemand]]:
    """GPU servers (8 GPUs, 96 CPUs) and slices of 10 replicas, a mix of classes and sizes."""
    rng = random.Random(seed)
    servers = [NodeSpec(i, cpus=96, memory_mb=512_000, gpus=(GpuSpec(80_000),) * 8) for i in range(nodes)]
    demands = []
    for slice_id in range(replicas // REPLICAS_PER_SLICE):
        priority = rng.choices(list(Priority)[:2], weights=[3, 1])[0]
        fraction = rng.choice([0.125, 0.125, 0.25])
        demands.append(SliceDemand(slice_id, priority, REPLICAS_PER_SLICE, cpus=1.0, memory_mb=4_000,
                                   gpu_fraction=fraction, gpu_memory_mb=int(80_000 * fraction)))  # fmt: skip
    return servers, demands


@dataclass
class _Free:
    cpus: float
    memory_mb: int
    gpus: list[float]


def first_fit(nodes: list[NodeSpec], demands: list[SliceDemand], budget_s: float) -> tuple[int, float]:
    """Baseline: every replica scans the node list in order; stops after ``budget_s``."""
    free = {n.node_id: _Free(n.cpus, n.memory_mb, [1.0] * len(n.gpus)) for n in nodes}
    placed, started = 0, time.perf_counter()
    for demand in demands:
        for _ in range(demand.replicas):
            for node in nodes:
                room = free[node.node_id]
                gpu = next((i for i, g in enumerate(room.gpus) if g >= demand.gpu_fraction), None)
                if room.cpus >= demand.cpus and room.memory_mb >= demand.memory_mb and gpu is not None:
                    room.cpus -= demand.cpus
                    room.memory_mb -= demand.memory_mb
                    room.gpus[gpu] -= demand.gpu_fraction
                    placed += 1
                    break
            if time.perf_counter() - started > budget_s:
                return placed, time.perf_counter() - started
    return placed, time.perf_counter() - started


def measure(nodes: int, replicas: int, baseline_s: float = 10.0) -> dict[str, Any]:
    servers, demands = site(nodes, replicas)
    started = time.perf_counter()
    first = place(servers, demands, now=NOW)
    place_s = time.perf_counter() - started
    placed = sum(len(v) for v in first.assignments.values())

    gone = set(random.Random(11).sample(range(nodes), nodes // 10))
    survivors = [replace(n, online=False) if n.node_id in gone else n for n in servers]
    displaced = sum(1 for v in first.assignments.values() for node in v if node in gone)
    started = time.perf_counter()
    second = place(survivors, demands, first.assignments, now=NOW)
    replace_s = time.perf_counter() - started

    # The baseline on a fresh copy of the same site, packing from the first node on (its best case).
    baseline_placed, baseline_s_used = first_fit(servers, demands, baseline_s)
    baseline_rate = baseline_placed / baseline_s_used
    rate = placed / place_s
    return {
        "benchmark": "scheduler",
        "nodes": nodes,
        "replicas": replicas,
        "placed": placed,
        "placements_per_s": round(rate),
        "place_s": round(place_s, 3),
        "replace_after_failure_s": round(replace_s, 3),
        "nodes_failed": len(gone),
        "replicas_displaced": displaced,
        "unplaced_after_failure": sum(second.unplaced.values()),
        "alerts_after_failure": len(second.alerts),
        "baseline_first_fit_placements_per_s": round(baseline_rate),
        "baseline_first_fit_sample": baseline_placed,
        "speedup_vs_first_fit": round(rate / baseline_rate, 1),
        "target_placements_per_s": 3300,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
