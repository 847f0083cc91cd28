"""Soak (issue 18): a realistic fleet through the whole data path for a long time, one fault every few minutes.

One machine runs a broker (persistent, as a site's), a local Ray with one slice (model replicas autoscaled
between 1 and 3, so replica churn at steady load shows) and a fleet of simulated robots streaming generated
JPEG parts at a steady rate. Every ``fault_every_s`` the next fault of the chaos table that a single site can
suffer is injected, in rotation:

    broker       kill -9 Mosquitto, restarted 3 s later over its own data          (scenario 1)
    model        kill -9 one model replica                                          (scenario 2)
    controller   kill -9 Serve's controller                                         (scenario 3)
    stall        SIGSTOP one model replica for 60 s, then SIGCONT                   (scenario 4)
    ingress      kill -9 the ingress replica (Serve starts another; its session and frames are kept)
    flood        one more robot sends at 10x the line's rate limit for 30 s         (scenario 9)

Every ``sample_every_s`` it samples per component (broker, ingress and model replicas, Serve's controller,
raylet, GCS, this load generator) the resident memory and open file descriptors of one process (the mean
over a deployment's replicas), and the running model replicas. It prints frames sent, answered and lost,
the duplicate rate, model replica changes per hour outside the minute after each fault, the longest gap
between verdicts, latency, and per component the drift from the first to the last ``window_s`` (10
minutes; a quarter of the run when it is shorter), with every sample.

    lineside bench soak --duration 7200 --json
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

from bench import faults
from contracts.slice_spec import BrokerSpec, FramePolicy, ReplicaSpec, ResourceSpec, SliceSpec
from contracts.wire import ErrorCode, ErrorReply
from edge_node import cluster
from edge_node.broker import MosquittoBroker
from robots.simulate import Simulation, SimulationReport, render_pool

TENANT, LINE, SLICE = "soak", "line-1", "soak"
ROBOT_MAX_FPS = 5.0
FLOOD_S = 30.0
STALL_S = 60.0
SETTLE_S = 60.0
"""Replica changes within this long after a fault are the fault's doing, not churn at steady load."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _usage(pid: int) -> tuple[int, int] | None:
    """(resident KiB, open file descriptors) of ``pid``; None if it is gone or not ours to read."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None


def _component(name: str) -> str | None:
    """The component a Ray process of this run belongs to, by its title."""
    for needle, component in (("ServeReplica:soak:ingress", "ingress"), ("ServeReplica:soak:model", "model"),
                              ("ServeController", "serve_controller"), ("raylet", "raylet"),
                              ("gcs_server", "gcs")):  # fmt: skip
        if needle in name:
            return component
    return None


def _drift(samples: list[tuple[float, int]], start: float, end: float, window_s: float) -> float | None:
    """Percent change of the mean from the first ``window_s`` to the last."""
    first = [v for t, v in samples if t < start + window_s]
    last = [v for t, v in samples if t >= end - window_s]
    if not first or not last or mean(first) == 0:
        return None
    return round((mean(last) - mean(first)) / mean(first) * 100, 1)


def summarize_drift(
    samples: dict[str, dict[str, list[tuple[float, int]]]], start: float, end: float, window_s: float
) -> dict[str, dict[str, float | None]]:
    """Per component: RSS and file-descriptor drift (percent), first to last window, with the last means."""
    out: dict[str, dict[str, float | None]] = {}
    for component, series in sorted(samples.items()):
        rss, fds = series.get("rss_kib", []), series.get("fds", [])
        out[component] = {
            "rss_drift_pct": _drift(rss, start, end, window_s),
            "fd_drift_pct": _drift(fds, start, end, window_s),
            "rss_mib_last": round(mean(v for t, v in rss if t >= end - window_s) / 1024, 1) if rss else None,
        }
    return out


def replica_changes(counts: list[tuple[float, int]], faults: list[float], settle_s: float = SETTLE_S) -> int:
    """Changes of the running model replica count, leaving out those within ``settle_s`` after a fault."""
    changes = 0
    for (_, before), (t, after) in itertools.pairwise(counts):
        if after != before and not any(0 <= t - f <= settle_s for f in faults):
            changes += 1
    return changes


class Soak:
    def __init__(self, robots: int, fps: float, fault_every_s: float, sample_every_s: float) -> None:
        self.robots, self.fps = robots, fps
        self.fault_every_s, self.sample_every_s = fault_every_s, sample_every_s
        self.workdir = Path(tempfile.mkdtemp(prefix="lineside-soak-"))
        self.broker = MosquittoBroker(self.workdir / "broker")
        self.spec = SliceSpec(
            name=SLICE, tenant=TENANT, lines=[LINE], broker=BrokerSpec(port=self.broker.port),
            replicas=ReplicaSpec(min_replicas=1, max_replicas=3),
            resources=ResourceSpec(cpus_per_replica=0.5, ort_threads=1),
            frame_policy={LINE: FramePolicy(max_fps=ROBOT_MAX_FPS)},
        )  # fmt: skip
        self.samples: dict[str, dict[str, list[tuple[float, int]]]] = {}
        self.model_counts: list[tuple[float, int]] = []
        self.faults: list[dict[str, Any]] = []
        self.flood: dict[str, int] = {"sent": 0, "rate_limited": 0}
        self.stop = threading.Event()

    # -- faults ---------------------------------------------------------------------------------------------
    def _kill_broker(self) -> None:
        self.broker.kill()
        time.sleep(3)
        self.broker.start()

    def _replica_pid(self, deployment: str) -> int:
        replies = cluster.slice_processes(self.spec)
        return int(replies[deployment]["pid"])

    def _kill_model(self) -> None:
        os.kill(self._replica_pid("model"), signal.SIGKILL)

    def _kill_ingress(self) -> None:
        os.kill(self._replica_pid("ingress"), signal.SIGKILL)

    def _kill_controller(self) -> None:
        for pid in faults.serve_controller_pids():
            os.kill(pid, signal.SIGKILL)

    def _stall_model(self) -> None:
        pid = self._replica_pid("model")
        os.kill(pid, signal.SIGSTOP)
        timer = threading.Timer(STALL_S, faults.resume, args=(pid,))
        timer.daemon = True
        timer.start()

    def _flood(self) -> None:
        def run() -> None:
            sent, replies = faults.flood(self.broker.host, self.broker.port, tenant=TENANT, line=LINE,
                                         frames=[data for _, data in self.pool[:8]], fps=10 * ROBOT_MAX_FPS,
                                         seconds=FLOOD_S, stop=self.stop)  # fmt: skip
            self.flood["sent"] += sent
            self.flood["rate_limited"] += sum(
                1 for r in replies if isinstance(r, ErrorReply) and r.code is ErrorCode.RATE_LIMITED
            )

        threading.Thread(target=run, name="soak-flood", daemon=True).start()

    def faults_in_rotation(self) -> list[tuple[str, Callable[[], None]]]:
        return [("broker", self._kill_broker), ("model", self._kill_model), ("controller", self._kill_controller),
                ("stall", self._stall_model), ("ingress", self._kill_ingress), ("flood", self._flood)]  # fmt: skip

    # -- sampling -------------------------------------------------------------------------------------------
    def _sample(self) -> None:
        now = time.monotonic()
        pids: dict[str, list[int]] = {"load_generator": [os.getpid()]}
        if (broker_pid := self.broker.pid) is not None:
            pids["broker"] = [broker_pid]
        for p in cluster.run_processes():
            if (component := _component(p.name)) is not None:
                pids.setdefault(component, []).append(p.pid)
        for component, group in pids.items():
            used = [u for pid in group if (u := _usage(pid)) is not None]
            if used:
                series = self.samples.setdefault(component, {"rss_kib": [], "fds": []})
                # Per process (the mean over a deployment's replicas): autoscaling adds replicas, not drift.
                series["rss_kib"].append((now, sum(u[0] for u in used) // len(used)))
                series["fds"].append((now, sum(u[1] for u in used) // len(used)))
        with contextlib.suppress(Exception):  # Serve's status while its controller restarts
            running = cluster.slice_status(self.spec)["deployments"]["model"]["replicas"].get("RUNNING", 0)
            self.model_counts.append((now, int(running)))

    def _background(self, started: float, duration_s: float) -> None:
        rotation, k = self.faults_in_rotation(), 0
        next_fault, next_sample = started + self.fault_every_s, started
        while not self.stop.is_set() and time.monotonic() < started + duration_s:
            now = time.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample += self.sample_every_s
            if now >= next_fault and now < started + duration_s - self.fault_every_s / 2:
                name, fault = rotation[k % len(rotation)]
                k += 1
                _log(f"soak: fault {k} ({name}) at {now - started:.0f}s")
                try:
                    fault()
                    self.faults.append({"fault": name, "at_s": round(now - started, 1)})
                except Exception as e:  # a fault that could not be injected is reported, the soak goes on
                    self.faults.append({"fault": name, "at_s": round(now - started, 1), "error": type(e).__name__})
                next_fault += self.fault_every_s
            self.stop.wait(0.5)

    # -- run ------------------------------------------------------------------------------------------------
    def run(self, duration_s: float) -> dict[str, Any]:
        _log(f"soak: rendering frames, starting a broker and Ray; {self.robots} robots at {self.fps} fps")
        self.pool = render_pool(96, seed=7070, jpeg_only=True)
        self.broker.start()
        cluster.start()
        try:
            cluster.apply_slice(self.spec)
            fleet = Simulation(self.broker.host, self.broker.port, tenant=TENANT, line=LINE, robots=self.robots,
                               fps=self.fps, pool=self.pool, timeout_s=5, retries=4)  # fmt: skip
            started = time.monotonic()
            background = threading.Thread(target=self._background, args=(started, duration_s), daemon=True)
            background.start()
            report = fleet.run(duration_s, progress=_progress)
            self.stop.set()
            background.join()
            end = time.monotonic()
        finally:
            self.stop.set()
            with contextlib.suppress(Exception):
                cluster.delete_slice(SLICE)
            cluster.stop(process_exiting=True)  # the command ends with cluster.exit_now
            self.broker.stop()
        window_s = min(600.0, duration_s / 4)
        fault_times = [started + f["at_s"] for f in self.faults]
        summary = report.summary()
        return {
            "duration_s": round(end - started),
            "robots": self.robots,
            "fps_per_robot": self.fps,
            "frames_sent": report.sent,
            "frames_answered": report.results + report.errors,
            "frames_lost": report.lost,
            "duplicate_rate": round(report.duplicates / report.sent, 4) if report.sent else None,
            "resent": report.resent,
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "longest_gap_s": round(report.longest_gap_s(), 1),
            "replica_changes_per_hour": round(
                replica_changes(self.model_counts, fault_times) * 3600 / max(end - started, 1), 1
            ),
            "faults": self.faults,
            "flood": self.flood,
            "drift_window_s": window_s,
            "components": summarize_drift(self.samples, started, end, window_s),
            # Every sample, seconds from the start: a warm-up levels off, a leak keeps climbing.
            "samples": {
                component: {name: [[round(t - started), v] for t, v in values] for name, values in series.items()}
                for component, series in self.samples.items()
            },
        }


def _progress(report: SimulationReport) -> None:
    if int(report.elapsed_s) % 30:
        return  # a line every 30 s
    answered = report.results + report.errors
    _log(f"soak: {report.elapsed_s:.0f}s sent {report.sent} answered {answered} lost {report.lost}")


def measure(
    duration_s: float, robots: int, fps: float, fault_every_s: float, sample_every_s: float = 10.0
) -> dict[str, Any]:
    return Soak(robots, fps, fault_every_s, sample_every_s).run(duration_s)
