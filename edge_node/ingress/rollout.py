"""The candidate model of a rollout, as the ingress sees it: which frames it answers, and shadow judging.

* **canary**: a robot whose routing bucket falls in the share (``RolloutSpec.candidate_answers``) is
  answered by the candidate alone, so it never sees the current model's verdicts, nor the other way
  round. Its frames are judged and published on a pool of their own, so a slow candidate never holds
  up the frames of robots on the current model; they are acknowledged like every frame, only once
  their answer is published.
* **shadow**: the candidate judges the frames the current model already answered, off the answer
  path, and only the agreement is counted. When it lags (``ingress_concurrency`` calls in flight)
  frames are skipped, and counted as skipped, rather than queued without bound.

The figures go to ``telemetry.RolloutWindow``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from contracts import wire
from contracts.slice_spec import RolloutSpec, RolloutStage
from edge_node.ingress.batching import InferFn, judge
from edge_node.ingress.frames import Frame
from edge_node.ingress.replies import Replier
from edge_node.telemetry import RolloutWindow

log = logging.getLogger(__name__)


def is_model_error(outcome: dict[str, Any]) -> bool:
    """A frame the model could not judge because of the model (not the robot's undecodable image)."""
    return outcome.get("code") == wire.ErrorCode.INTERNAL.value


class Candidate:
    """The rollout's candidate model on one ingress replica."""

    def __init__(
        self, rollout: RolloutSpec, infer: InferFn, replier: Replier, *, replica: str, concurrency: int
    ) -> None:
        self.rollout = rollout
        self.infer = infer
        self.replier = replier  # answers name the candidate model
        self.window = RolloutWindow(replica, rollout)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"{replica}-candidate")
        self._slots = threading.Semaphore(concurrency)

    @property
    def shadow(self) -> bool:
        return self.rollout.stage == RolloutStage.SHADOW

    def split(self, batch: list[Frame]) -> tuple[list[Frame], list[Frame]]:
        """``batch`` as (frames the current model answers, frames the candidate answers)."""
        routed = [self.rollout.candidate_answers(f.robot.line, f.robot.robot) for f in batch]
        current = [f for f, theirs in zip(batch, routed, strict=True) if not theirs]
        return current, [f for f, theirs in zip(batch, routed, strict=True) if theirs]

    def answer(self, frames: list[Frame], publish: Callable[[list[Frame]], None]) -> None:
        """Judge and publish the candidate's frames on its own pool (``publish`` acknowledges them)."""
        try:
            self._pool.submit(publish, frames)
        except RuntimeError:  # this candidate has just ended: answer here (``publish`` routes them again)
            publish(frames)

    def count(self, model: str, outcomes: list[dict[str, Any]], totals_ms: list[float]) -> None:
        """Tell the window about answers of ``model`` (``current`` or ``candidate``)."""
        for outcome, total_ms in zip(outcomes, totals_ms, strict=True):
            if is_model_error(outcome):
                self.window.error(model)
            elif "verdict" in outcome:
                self.window.verdict(model, outcome["verdict"], total_ms)

    def shadow_judge(self, frames: list[Frame], current: list[dict[str, Any]]) -> None:
        """Shadow: have the candidate judge ``frames`` too (already answered with ``current``), off the answer path."""
        if not self._slots.acquire(blocking=False):
            self.window.skipped(len(frames))
            return
        try:
            self._pool.submit(self._compare, frames, current)
        except RuntimeError:  # this candidate has just ended
            self._slots.release()
            self.window.skipped(len(frames))

    def _compare(self, frames: list[Frame], current: list[dict[str, Any]]) -> None:
        try:
            outcomes = judge(self.infer, [f.payload for f in frames], attempts=1)
            now = time.monotonic()
            self.count("candidate", outcomes, [(now - f.received) * 1000 for f in frames])
            for ours, theirs in zip(current, outcomes, strict=True):
                if "verdict" in ours and "verdict" in theirs:
                    self.window.agreed(ours["verdict"], theirs["verdict"])
        except Exception:  # a shadow comparison lost is a gap in a report; the line goes on
            log.exception("shadow judging of %d frames failed", len(frames))
        finally:
            self._slots.release()

    def stop(self) -> None:
        """Wait for the candidate's frames in flight (their answers are published and acknowledged)."""
        self._pool.shutdown(wait=True)
