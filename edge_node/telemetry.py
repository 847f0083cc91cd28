"""What an ingress replica tells the control plane about each line it serves.

Per line and window (a few seconds): verdicts, fails, errors (in all and per
code, since usage products bill the robot's bad input but not ``internal``), a latency
histogram with fixed buckets (so windows of several replicas add up exactly),
each robot's latest frame, and the latest failed parts with small thumbnails.
The ingress calls ``observe_*`` from its worker threads and publishes ``drain()``
on ``wire.telemetry_topic`` from one thread; nothing here touches the network.
Thumbnails are made at drain time and only for the parts kept, so a burst of
fails costs at most ``max_failed_parts`` small decodes per window.

While a model rollout runs, ``RolloutWindow`` counts both models' answers beside
it (``contracts.slice_spec.RolloutReport``, published on the same topic).
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from contracts import wire
from contracts.slice_spec import ModelCounts, RolloutReport, RolloutSpec


@dataclass
class _Failure:
    robot: str
    frame_id: str
    at: float
    defect_class: str | None
    score: float
    payload: bytes
    location: wire.Location | None = None


@dataclass
class _LineWindow:
    start: float
    frames: int = 0
    fails: int = 0
    errors: int = 0
    error_codes: dict[wire.ErrorCode, int] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * (len(wire.LATENCY_BUCKETS_MS) + 1))
    robots: dict[str, wire.RobotActivity] = field(default_factory=dict)
    failures: list[_Failure] = field(default_factory=list)

    def seen(self, robot: str, at: float) -> None:
        activity = self.robots.get(robot)
        if activity is None:
            self.robots[robot] = wire.RobotActivity(frames=1, last_frame_at=at)
        else:
            activity.frames += 1
            activity.last_frame_at = max(activity.last_frame_at, at)


def thumbnail(payload: bytes, side: int = wire.THUMBNAIL_SIDE) -> str:
    """Base64 JPEG of at most ``side`` pixels a side; empty for payloads that do not decode."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
            small = image.convert("RGB")
            small.thumbnail((side, side))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    return base64.b64encode(out.getvalue()).decode()


def _failed_part(f: _Failure) -> wire.FailedPart:
    """Within the wire bounds, so that the control plane never refuses the window over one part."""
    defect = f.defect_class[:100] if f.defect_class is not None else None
    thumb = thumbnail(f.payload)
    return wire.FailedPart(robot=f.robot, frame_id=f.frame_id[: 2 * wire.MAX_FRAME_ID_BYTES], at=f.at,
                           defect_class=defect, score=min(max(f.score, 0.0), 1.0),
                           thumbnail_jpeg_b64=thumb if len(thumb) <= wire.THUMBNAIL_B64_MAX else "",
                           location=f.location)  # fmt: skip


class TelemetryWindow:
    """Thread-safe accumulator of one ingress replica's per-line telemetry."""

    def __init__(self, replica: str, max_failed_parts: int = 5) -> None:
        self.replica = replica
        self.max_failed_parts = max_failed_parts
        self._lock = threading.Lock()
        self._lines: dict[str, _LineWindow] = {}

    def _line(self, line: str) -> _LineWindow:
        window = self._lines.get(line)
        if window is None:
            window = self._lines[line] = _LineWindow(start=time.time())
        return window

    def observe_verdict(self, robot: wire.RobotTopic, *, frame_id: str, verdict: str, defect_class: str | None,
                        score: float, total_ms: float, payload: bytes,
                        location: wire.Location | None = None) -> None:  # fmt: skip
        now = time.time()
        with self._lock:
            window = self._line(robot.line)
            window.frames += 1
            window.histogram[wire.latency_bucket(total_ms)] += 1
            window.seen(robot.robot, now)
            if verdict == "fail":
                window.fails += 1
                window.failures.append(_Failure(robot.robot, frame_id, now, defect_class, score, payload, location))
                del window.failures[: -self.max_failed_parts]

    def observe_error(self, robot: wire.RobotTopic, code: wire.ErrorCode) -> None:
        with self._lock:
            window = self._line(robot.line)
            window.errors += 1
            window.error_codes[code] = window.error_codes.get(code, 0) + 1
            window.seen(robot.robot, time.time())

    def drain(self) -> dict[str, wire.Telemetry]:
        """Every line's window since the last drain (lines without frames are left out)."""
        with self._lock:
            lines, self._lines = self._lines, {}
        end = time.time()
        return {line: self._message(window, end) for line, window in lines.items()}

    def _message(self, w: _LineWindow, end: float) -> wire.Telemetry:
        parts = [_failed_part(f) for f in w.failures]
        return wire.Telemetry(
            replica=self.replica, start=w.start, end=end, frames=w.frames, fails=w.fails, errors=w.errors,
            error_codes=w.error_codes, latency_ms_histogram=w.histogram, robots=w.robots, failed_parts=parts,
        )  # fmt: skip


class RolloutWindow:
    """Thread-safe accumulator of one ingress replica's rollout figures: both models' answers (the
    candidate's in shadow too, though never published) and, in shadow, how their verdicts agreed."""

    def __init__(self, replica: str, rollout: RolloutSpec) -> None:
        self.replica = replica
        self.rollout = rollout
        self._lock = threading.Lock()
        self._fresh()

    def _fresh(self) -> None:
        self._start = time.time()
        self._models = {"current": ModelCounts(), "candidate": ModelCounts()}
        self._agreement: dict[str, int] = {}
        self._skipped = 0
        self._seen = False

    def verdict(self, model: str, verdict: str, total_ms: float) -> None:
        """A verdict of ``model`` (``current`` or ``candidate``), ``total_ms`` after its frame arrived."""
        with self._lock:
            counts = self._models[model]
            counts.frames += 1
            counts.fails += verdict == "fail"
            counts.latency_ms_histogram[wire.latency_bucket(total_ms)] += 1
            self._seen = True

    def error(self, model: str) -> None:
        """A frame ``model`` failed on (the model could not be run: not the robot's bad input)."""
        with self._lock:
            self._models[model].errors += 1
            self._seen = True

    def agreed(self, current: str, candidate: str) -> None:
        """Shadow: the two verdicts on one frame."""
        with self._lock:
            key = f"{current}/{candidate}"
            self._agreement[key] = self._agreement.get(key, 0) + 1

    def skipped(self, frames: int) -> None:
        """Shadow: frames the candidate did not judge (it lagged behind the line)."""
        with self._lock:
            self._skipped += frames
            self._seen = True

    def drain(self) -> RolloutReport | None:
        """The figures since the last drain; None when there were none."""
        with self._lock:
            if not self._seen:
                return None
            report = RolloutReport.model_validate({
                "rollout_id": self.rollout.rollout_id, "step": self.rollout.step, "replica": self.replica,
                "start": self._start, "end": time.time(), "current": self._models["current"],
                "candidate": self._models["candidate"], "agreement": self._agreement, "shadow_skipped": self._skipped,
            })  # fmt: skip
            self._fresh()
        return report
