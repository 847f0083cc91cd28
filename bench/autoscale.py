"""Reactive autoscaling under a load step: 20% -> 150% of one replica's measured capacity.

On this 2-core machine the broker, Ray and the robots share the cores, so the
model is made slow on purpose (``--model-delay-ms`` per call, a sleep that uses
no CPU): one replica's capacity is then set by that delay, and adding a replica
really adds capacity. What is measured is Serve's control loop with the
slice's settings (upscale after 3 s, downscale after 60 s; Ray's defaults are
30 s and 600 s):

    reaction_s                        load step -> a second replica RUNNING in Serve
    p99_ms_during_step                robots' latency over the step phase
    scale_changes_per_10min_steady    replica-count changes while the load stays at 150%

The baseline, measured in the same run, is one replica's capacity at
saturation (``one_replica_fps``); the step's loads are fractions of it.

    lineside bench autoscale --json
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from contracts.slice_spec import BatchSpec, BrokerSpec, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import cluster
from edge_node.broker import MosquittoBroker
from robots.simulate import Simulation, render_pool

ROBOTS = 5


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ReplicaWatch:
    """Polls Serve for the model deployment's RUNNING replicas; keeps (time, count) on every change."""

    def __init__(self, app: str) -> None:
        self.app, self.changes, self._stop = app, [(time.monotonic(), 0)], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            replicas = cluster.app_status(self.app)["deployments"].get("model", {}).get("replicas", {})
            count = int(replicas.get("RUNNING", 0))
            if count != self.changes[-1][1]:
                self.changes.append((time.monotonic(), count))

    def __enter__(self) -> ReplicaWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _spec(broker: MosquittoBroker, delay_ms: float, max_replicas: int, name: str = "autoscale") -> SliceSpec:
    """A slice on line ``name`` (the capacity probe and the step run on separate lines and sessions)."""
    return SliceSpec(
        name=name, tenant="bench", lines=[name], broker=BrokerSpec(host=broker.host, port=broker.port),
        replicas=ReplicaSpec(min_replicas=1, max_replicas=max_replicas, upscale_delay_s=3.0, downscale_delay_s=60.0,
                             target_ongoing_requests=1.0),
        batch=BatchSpec(max_batch_size=1, batch_wait_ms=0, ingress_batch=1, ingress_wait_ms=0, ingress_concurrency=8),
        resources=ResourceSpec(cpus_per_replica=0.25, ingress_cpus=0.25, ort_threads=1),
        inject_delay_ms=delay_ms,
    )  # fmt: skip


def _run(broker: MosquittoBroker, pool: list[tuple[str, bytes]], fps_total: float, seconds: float,
         timeout_s: float = 10.0, line: str = "autoscale") -> dict[str, Any]:  # fmt: skip
    simulation = Simulation(broker.host, broker.port, tenant="bench", line=line, robots=ROBOTS,
                            fps=fps_total / ROBOTS, pool=pool, timeout_s=timeout_s, retries=3)  # fmt: skip
    return simulation.run(seconds).summary()


def measure(delay_ms: float, step_seconds: float, steady_seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lineside-autoscale-"))
    pool = render_pool(64, jpeg_only=True)
    with MosquittoBroker(workdir / "broker") as broker:
        cluster.start(num_cpus=2)
        try:
            _log("(a) one replica at saturation...")
            cluster.apply_slice(_spec(broker, delay_ms, max_replicas=1, name="probe"))
            capacity = _run(broker, pool, 3 * 1000 / delay_ms, seconds=8, timeout_s=30, line="probe")["throughput_fps"]
            cluster.delete_slice("probe")
            _log(f"    one replica: {capacity:.1f} frames/s")
            cluster.apply_slice(_spec(broker, delay_ms, max_replicas=3))
            _log("(b) 20% load...")
            low = _run(broker, pool, 0.2 * capacity, seconds=10)
            with ReplicaWatch("autoscale") as watch:
                time.sleep(1.0)
                _log("(c) step to 150% load...")
                step_at = time.monotonic()
                step = _run(broker, pool, 1.5 * capacity, seconds=step_seconds)
                _log(f"(d) 150% held for {steady_seconds:.0f}s more...")
                steady_from = time.monotonic()
                steady = _run(broker, pool, 1.5 * capacity, seconds=steady_seconds)
                steady_to = time.monotonic()
            up = next((t for t, n in watch.changes if t >= step_at and n >= 2), None)
            changes = [(t, n) for t, n in watch.changes if steady_from <= t <= steady_to]
            return {
                "benchmark": "autoscale",
                "model_delay_ms": delay_ms,
                "one_replica_fps": capacity,
                "low_fps": low["throughput_fps"],
                "step_fps": round(1.5 * capacity, 1),
                "reaction_s": round(up - step_at, 2) if up else None,
                "p99_ms_during_step": step["p99_ms"],
                "p50_ms_during_step": step["p50_ms"],
                "replicas_timeline": [(round(t - step_at, 1), n) for t, n in watch.changes[1:]],
                "steady_seconds": steady_seconds,
                "scale_changes_steady": len(changes),
                "scale_changes_per_10min_steady": round(len(changes) * 600 / steady_seconds, 1),
                "sent": low["sent"] + step["sent"] + steady["sent"],
                "lost_frames": low["lost"] + step["lost"] + steady["lost"],
                "targets": {"reaction_s": 15, "scale_changes_per_10min_steady": 1, "lost_frames": 0},
            }
        finally:
            cluster.stop(process_exiting=True)  # the command ends with cluster.exit_now
