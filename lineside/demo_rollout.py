"""The demo's line moves to a model fitted on its own parts, through a canary (issue 15).

At start-up, while Ray and the slice come up, a background thread renders good photos of the surface
family the demo's robots make, fits an anomaly model on them (``edge_node.fitting``, as ``lineside model
fit`` does on a laptop) and uploads it as the tenant's own model version. Once the robots have streamed
for a few seconds it starts a rollout on the slice (shadow, a canary of about half the robots, full) and
prints each step the control plane takes, with its reason, until the rollout ends. Everything goes
through the REST API, as a plant manager's script would; the plant page's Model rollout card shows the
same rollout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.slice_spec import ROUTING_BUCKETS, robot_bucket

log = logging.getLogger(__name__)

FAMILY = "printed"
"""The surface family of every part on the demo's line: the fitted model knows only this family's parts."""
FIT_PHOTOS = 120
FIT_SEED = 515
"""Photos of good parts the model is fitted on, rendered from another seed than the robots' parts."""
MODEL_NAME, MODEL_VERSION = "printed-labels-fitted", "1.0.0"
WINDOW_S, MIN_FRAMES = 20, 20
"""Each step is watched this long and needs this many of the new model's verdicts (production: minutes)."""
MAX_FAIL_RATE_DIFF = 0.1
"""The two models may disagree on the line's fail rate by 10 points before the rollout rolls back."""
MAX_P99_MS = 1000.0
"""Roll back when the new model's p99 passes 1 s. Not the line's 100 ms budget (the default): on a laptop the
new model warms up and shares two cores with the current one, the robots and the control plane."""
WARMUP_S = 5.0
"""The robots stream this long on the current model before the rollout starts."""

Call = Callable[..., Any]
Note = Callable[[str], None]


class Stopped(Exception):
    """The demo is stopping: the fit or the rollout watch ends early."""


def canary_share(line: str, robots: list[str]) -> float | None:
    """The smallest share (in whole percent) that routes about half of ``robots`` to the new model; ``None``
    when one robot cannot be split into a canary. Routing hashes each robot's name, so 50 % is not always half."""
    if len(robots) < 2:
        return None
    buckets = sorted(robot_bucket(line, robot) for robot in robots)
    share = math.ceil((buckets[len(robots) // 2 - 1] + 1) * 100 / ROUTING_BUCKETS) / 100
    return min(share, 0.99)


class FittedRollout:
    """Fit, upload and roll out in one background thread; ``note`` prints each step for the demo's console."""

    def __init__(self, call: Call, *, slice_id: int, line: str, robots: list[str], workdir: Path, note: Note,
                 stop: threading.Event) -> None:  # fmt: skip
        self.call, self.note, self.stop = call, note, stop
        self.slice_id, self.line, self.robots, self.workdir = slice_id, line, robots, workdir
        self.streaming = threading.Event()
        """Set by the demo when the robots start streaming: the rollout waits for it."""
        self.outcome = ""
        """How the rollout ended, in a few words (empty while it runs or if it never started)."""
        self._thread = threading.Thread(target=self._run, name="fitted-rollout", daemon=True)

    def start(self) -> FittedRollout:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            model = self._fit_and_upload()
            started = time.monotonic()
            while not self.streaming.is_set() or time.monotonic() - started < WARMUP_S:
                if self.stop.wait(0.5):
                    raise Stopped
                if not self.streaming.is_set():
                    started = time.monotonic()
            self._roll_out(model)
        except Stopped:
            log.info("the demo stopped before the fitted model's rollout ended")
        except Exception as e:  # the demo goes on with its current model; the console says why
            log.exception("fitted model rollout failed")
            self.note(f"rollout: not done ({e}); the line keeps its current model")

    def _fit_and_upload(self) -> dict[str, Any]:
        from edge_node.fitting import fit_folder
        from models import synth

        photos = self.workdir / "good-photos"
        photos.mkdir(parents=True, exist_ok=True)
        self.note(f"model fit: rendering {FIT_PHOTOS} photos of good {FAMILY} parts and fitting an anomaly model "
                  "on them, in the background")  # fmt: skip
        for sample in synth.generate_many(FIT_SEED, range(FIT_PHOTOS), workers=1, label="good", family=FAMILY):
            (photos / f"good-{sample.index:03d}.{'jpg' if sample.encoding == 'jpeg' else 'png'}").write_bytes(
                sample.data
            )
            if self.stop.is_set():
                raise Stopped
        shown: set[str] = set()

        def progress(stage: str, done: float) -> None:
            if self.stop.is_set():
                raise Stopped
            if stage not in shown:
                shown.add(stage)
                log.info("model fit: %s (%.0f%%)", stage, done * 100)

        manifest, fitted, _ = fit_folder(photos, self.workdir / "model", name=MODEL_NAME, version=MODEL_VERSION,
                                         progress=progress)  # fmt: skip
        report = fitted.report
        self.note(f"model fit: {MODEL_NAME} {MODEL_VERSION} from {report.good_photos} good photos in "
                  f"{report.fit_s:.1f} s; held-out false rejects {report.held_out_false_reject_rate:.1%}")  # fmt: skip
        onnx_path = manifest.with_name(f"{MODEL_NAME}.onnx")
        files = {"file": (onnx_path.name, onnx_path.read_bytes())}
        model: dict[str, Any] = self.call("POST", "/models", files=files, data={"manifest": manifest.read_text()})
        self.note(f"model fit: uploaded as model version {model['id']}, the tenant's own (GET /models/{model['id']})")
        return model

    def _roll_out(self, model: dict[str, Any]) -> None:
        share = canary_share(self.line, self.robots)
        body = {
            "slice_id": self.slice_id, "model_version_id": model["id"], "shadow": True,
            "canary_shares": [share] if share else [], "window_s": WINDOW_S, "min_frames": MIN_FRAMES,
            "max_fail_rate_diff": MAX_FAIL_RATE_DIFF, "max_p99_ms": MAX_P99_MS,
        }  # fmt: skip
        rollout = self.call("POST", "/rollouts", json=body)
        steps = " -> ".join(_step_text(s) for s in rollout["steps"])
        self.note(f"rollout {rollout['id']}: {model['name']} {model['version']} on slice inspect: {steps}, each step "
                  f"watched {WINDOW_S} s; rolls back on errors over {rollout['max_error_rate']:.0%}, p99 over "
                  f"{rollout['max_p99_ms']:.0f} ms or fail rates {rollout['max_fail_rate_diff'] * 100:.0f} points "
                  "apart (plant page: Model rollout)")  # fmt: skip
        started, step = time.monotonic(), -1
        while rollout["state"] == "running":
            if rollout["step"] != step:
                step = rollout["step"]
                self.note(f"rollout {rollout['id']}: step {step + 1} of {len(rollout['steps'])}, "
                          f"{_step_text(rollout['steps'][step])} (t+{time.monotonic() - started:.0f}s)")  # fmt: skip
            if self.stop.wait(1.0):
                raise Stopped
            rollout = self.call("GET", f"/rollouts/{rollout['id']}")
        self.outcome = f"{rollout['state'].replace('_', ' ')} after {time.monotonic() - started:.0f}s"
        self.note(f"rollout {rollout['id']}: {self.outcome}: {rollout['reason']}")
        for done in rollout["history"]:
            self.note(f"  {_step_text(done)}: {_figures(done.get('comparison', {}))}")
        if rollout["state"] == "completed":
            self._await_handover(model, started)

    def _await_handover(self, model: dict[str, Any], started: float, timeout_s: float = 180) -> None:
        """The edge hands over: every robot to the new model, then the slice redeployed with it as its own."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.call("GET", f"/slices/{self.slice_id}")
            if status["status"] == "running" and status["observed_generation"] >= status["generation"]:
                self.note(f"slice inspect: running {model['name']} {model['version']} (generation "
                          f"{status['observed_generation']}, t+{time.monotonic() - started:.0f}s)")  # fmt: skip
                return
            if self.stop.wait(1.0):
                raise Stopped
        self.note(f"slice inspect: still handing over to {model['name']} after {timeout_s:.0f} s (see the log)")


def _step_text(step: dict[str, Any]) -> str:
    stage = step.get("stage", "?")
    return f"canary {round(step.get('share', 0) * 100)} %" if stage == "canary" else stage


def _figures(comparison: dict[str, Any]) -> str:
    """A finished step's comparison in one line: each model's verdicts and fail rate, shadow disagreements."""
    parts = []
    for who in ("current", "candidate"):
        figures = comparison.get(who) or {}
        rate = "-" if figures.get("fail_rate") is None else f"{figures['fail_rate']:.1%}"
        parts.append(f"{who} {figures.get('frames', 0)} verdicts, fail rate {rate}")
    if comparison.get("compared"):
        parts.append(f"disagreed on {comparison['disagreement_rate']:.1%} of {comparison['compared']} shadow frames")
    return "; ".join(parts)
