"""Simulated inspection robots: stream generated parts with known ground truth, measure what comes back."""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from contracts.wire import ErrorReply
from models import synth
from robots.sdk import FrameLost, Reply, RobotClient

ProgressFn = Callable[["SimulationReport"], None]


def render_pool(
    n: int, seed: int = 2026, workers: int | None = None, *, jpeg_only: bool = False, family: str | None = None
) -> list[tuple[str, bytes]]:
    """``n`` generated frames (label, JPEG/PNG bytes) for robots to cycle through.

    ``jpeg_only`` skips the generator's PNG frames (15 %), as robot cameras streaming
    at line speed send JPEG. ``family`` makes every part one surface family (``synth.FAMILIES``), as on a
    real line that makes one kind of part: what a model fitted on that family's good parts expects.
    """
    indices = range(n * 2 if jpeg_only else n)
    samples = synth.generate_many(seed, indices, workers=workers, chunksize=8, family=family)
    return [(s.label, s.data) for s in samples if not jpeg_only or s.encoding == "jpeg"][:n]


@dataclass
class SimulationReport:
    """What the robots saw."""

    robots: int
    target_fps: float
    elapsed_s: float = 0.0
    sent: int = 0
    results: int = 0
    errors: int = 0
    lost: int = 0
    pending: int = 0
    duplicates: int = 0
    resent: int = 0
    correct: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    slice_ms: list[float] = field(default_factory=list, repr=False)
    model_call_ms: list[float] = field(default_factory=list, repr=False)
    """Duration of the model call each verdict was part of (Ray round trip, decoding, inference)."""
    """Time each verdict spent inside the slice (ingress arrival to publish), from its timings."""
    answered_at: list[float] = field(default_factory=list, repr=False)
    """Monotonic time of every answer, for gaps in service."""
    sent_at: list[float] = field(default_factory=list, repr=False)
    """Monotonic time each verdict of ``latencies_ms`` was sent at (same order): latency by when it was sent."""

    @property
    def throughput_fps(self) -> float:
        return (self.results + self.errors) / self.elapsed_s if self.elapsed_s else 0.0

    def longest_gap_s(self, after: float = 0.0) -> float:
        """Longest time without any answer, counting only answers after ``after`` (monotonic)."""
        times = sorted(t for t in self.answered_at if t >= after)
        points = [after, *times] if after else times
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @staticmethod
    def _rounded_percentile(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: throughput, latency percentiles, accuracy, losses."""
        per_frame = {f.name for f in fields(self) if not f.repr}  # a figure per frame: summarized below
        data = {k: v for k, v in asdict(self).items() if k not in per_frame}
        data.update(
            throughput_fps=round(self.throughput_fps, 1),
            p50_ms=round(self.percentile(50), 2),
            p95_ms=round(self.percentile(95), 2),
            p99_ms=round(self.percentile(99), 2),
            accuracy=round(self.correct / self.results, 4) if self.results else None,
            slice_p50_ms=self._rounded_percentile(self.slice_ms, 50),
            slice_p99_ms=self._rounded_percentile(self.slice_ms, 99),
            model_call_p50_ms=self._rounded_percentile(self.model_call_ms, 50),
        )
        return data


class Simulation:
    """``robots`` robots on one line, each sending ``fps`` frames a second."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tenant: str,
        line: str,
        robots: int,
        fps: float,
        pool: list[tuple[str, bytes]],
        timeout_s: float = 5.0,
        retries: int = 2,
        window: int = 32,
        credentials: Callable[[str], tuple[str | None, str | None]] | None = None,
    ) -> None:
        self.pool = pool
        self.fps = fps
        self.window = window
        self.timeout_s, self.retries = timeout_s, retries
        self.report = SimulationReport(robots=robots, target_fps=fps * robots)
        self.run_id = f"{time.time_ns():x}"[-8:]
        """Part of every frame id: a new run never reuses ids that a slice remembers answering."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._futures: list[Future[Reply]] = []
        self.clients = []
        for k in range(robots):
            name = f"robot-{k:03d}"
            username, password = credentials(name) if credentials else (None, None)
            self.clients.append(
                RobotClient(
                    host, port, tenant=tenant, line=line, robot=name, username=username, password=password,
                    client_id=username,  # brokers with per-robot credentials pin the client id to the username
                )
            )  # fmt: skip

    def run(
        self, duration_s: float | None, progress: ProgressFn | None = None, stop: threading.Event | None = None
    ) -> SimulationReport:
        """Stream until ``duration_s`` passes (or ``stop`` is set), then wait for answers still due."""
        for client in self.clients:
            client.connect()
        started = time.monotonic()
        threads = [
            threading.Thread(target=self._robot, args=(i, c, started), daemon=True) for i, c in enumerate(self.clients)
        ]
        for t in threads:
            t.start()
        stop = stop or threading.Event()
        while not stop.is_set() and (duration_s is None or time.monotonic() - started < duration_s):
            stop.wait(1.0)
            self.report.elapsed_s = time.monotonic() - started
            if progress:
                progress(self.report)
        self._stop.set()
        for t in threads:
            t.join()
        patience = self.timeout_s * (2 ** (self.retries + 1) - 1)  # the SDK doubles its wait per retry
        deadline = time.monotonic() + patience + 1
        for future in list(self._futures):
            with contextlib.suppress(FrameLost, TimeoutError):
                future.result(timeout=max(deadline - time.monotonic(), 0.01))
        self.report.elapsed_s = time.monotonic() - started
        self.report.pending = sum(not f.done() for f in self._futures)
        self.report.lost += self.report.pending
        self.report.duplicates = sum(c.duplicates for c in self.clients)
        self.report.resent = sum(c.resent for c in self.clients)
        for client in self.clients:
            client.close()
        return self.report

    def _robot(self, index: int, client: RobotClient, started: float) -> None:
        period = 1.0 / self.fps
        k = 0
        while not self._stop.is_set():
            due = started + k * period + index * period / max(len(self.clients), 1)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            while client.in_flight >= self.window and not self._stop.is_set():
                time.sleep(0.002)  # closed loop when the slice is saturated
            label, frame = self.pool[(index * 7919 + k) % len(self.pool)]
            sent_at = time.monotonic()
            frame_id = f"{client.robot}-{self.run_id}-{k}"
            future = client.send(frame, frame_id=frame_id, timeout_s=self.timeout_s, retries=self.retries)
            future.add_done_callback(functools.partial(self._record, label=label, sent_at=sent_at))
            with self._lock:
                self._futures.append(future)
                self.report.sent += 1
            k += 1

    def _record(self, future: Future[Reply], *, label: str, sent_at: float) -> None:
        latency_ms = (time.monotonic() - sent_at) * 1000
        with self._lock:
            error = future.exception()
            if error is not None:
                self.report.lost += 1
                return
            reply = future.result()
            self.report.answered_at.append(time.monotonic())
            if isinstance(reply, ErrorReply):
                self.report.errors += 1
                codes = Counter(self.report.errors_by_code)
                codes[reply.code.value] += 1
                self.report.errors_by_code = dict(codes)
                return
            self.report.results += 1
            self.report.latencies_ms.append(latency_ms)
            self.report.sent_at.append(sent_at)
            self.report.slice_ms.append(reply.timings_ms.total)
            self.report.model_call_ms.append(reply.timings_ms.inference)
            self.report.correct += (reply.verdict == "pass") == (label == "good")
