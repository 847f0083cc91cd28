"""Model rollouts: a slice moves to a new model version step by step, and back on its own when it misbehaves.

    shadow ──> canary (share 1) ──> canary (share 2) ──> … ──> full (the candidate is the slice's model)
       │             │                    │
       └─────────────┴────────────────────┴──> rolled_back (a threshold passed) / aborted (a user stopped it)

Each step is watched for ``window_s``. The ingress replicas report both models' answers (``contracts.
slice_spec.RolloutReport``, beside their telemetry); ``record_report`` adds them to the step's window and
``decide`` judges it: any threshold passed (the candidate's error rate, its p99 latency against the line's
budget, the fail-rate difference between the models) rolls back at once; a window that ran its time with
``min_frames`` candidate verdicts and nothing passed steps forward (or waits for ``advance`` when
``auto_advance`` is off). Every step, the end and every rollback is a scale event of kind ``rollout``
with its reason; a step, the end and a rollback are each a new slice generation for the agent.

The first half of this module (steps, figures, ``decide``) is pure; the second writes to the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlmodel import Session, select

from contracts import wire
from contracts.slice_spec import RolloutReport, RolloutStage
from control_plane.errors import Conflict, IllegalTransition, InvalidInput
from control_plane.models import (
    Line,
    ModelVersion,
    Rollout,
    RolloutCreate,
    RolloutPublic,
    RolloutState,
    ScaleEvent,
    ScaleKind,
    Slice,
    as_utc,
)

log = logging.getLogger(__name__)

MODELS = ("current", "candidate")
SEEN_REPORTS = 512
"""Report keys kept per step, so that a report the broker redelivers is counted once."""


# --- pure: steps, figures, decisions --------------------------------------------------------------


def plan_steps(shadow: bool, canary_shares: list[float]) -> list[dict[str, Any]]:
    """The steps of a rollout, ending in ``full``: ``[{"stage": "shadow", "share": 0.0}, ...]``."""
    steps = [{"stage": RolloutStage.SHADOW.value, "share": 0.0}] if shadow else []
    steps += [{"stage": RolloutStage.CANARY.value, "share": share} for share in canary_shares]
    return [*steps, {"stage": RolloutStage.FULL.value, "share": 1.0}]


def empty_window() -> dict[str, Any]:
    buckets = len(wire.LATENCY_BUCKETS_MS) + 1
    counts = {"frames": 0, "fails": 0, "errors": 0, "latency_ms_histogram": [0] * buckets}
    return {"current": dict(counts), "candidate": dict(counts), "agreement": {}, "shadow_skipped": 0, "seen": []}


def merge(window: dict[str, Any], report: RolloutReport) -> dict[str, Any] | None:
    """``window`` with ``report`` added; None when this report was counted already (a redelivery)."""
    key = f"{report.replica}@{report.start:.6f}"
    if key in window["seen"]:
        return None
    merged = {**window, "seen": [*window["seen"], key][-SEEN_REPORTS:]}
    for name in MODELS:
        ours, theirs = window[name], getattr(report, name)
        histogram = [a + b for a, b in zip(ours["latency_ms_histogram"], theirs.latency_ms_histogram, strict=False)]
        merged[name] = {
            "frames": ours["frames"] + theirs.frames,
            "fails": ours["fails"] + theirs.fails,
            "errors": ours["errors"] + theirs.errors,
            "latency_ms_histogram": histogram,
        }
    agreement = dict(window["agreement"])
    for pair, count in report.agreement.items():
        agreement[pair] = agreement.get(pair, 0) + count
    merged["agreement"] = agreement
    merged["shadow_skipped"] = window["shadow_skipped"] + report.shadow_skipped
    return merged


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def comparison(window: dict[str, Any]) -> dict[str, Any]:
    """What the plant page shows of a step: each model's frames, fail rate, error rate and p99, and in
    shadow the agreement (``"pass/fail"``: current passed, candidate failed) and the disagreement rate."""
    shown: dict[str, Any] = {}
    for name in MODELS:
        counts = window.get(name) or empty_window()[name]
        p99 = wire.histogram_quantile(counts["latency_ms_histogram"], 0.99)
        shown[name] = {
            "frames": counts["frames"],
            "fails": counts["fails"],
            "errors": counts["errors"],
            "fail_rate": _rate(counts["fails"], counts["frames"]),
            "error_rate": _rate(counts["errors"], counts["frames"] + counts["errors"]),
            "p99_ms": p99 if p99 is None or p99 != float("inf") else None,
            "p99_over_ms": float(wire.LATENCY_BUCKETS_MS[-1]) if p99 == float("inf") else None,
        }
    agreement = window.get("agreement", {})
    compared = sum(agreement.values())
    disagreed = agreement.get("pass/fail", 0) + agreement.get("fail/pass", 0)
    shown["agreement"] = agreement
    shown["compared"] = compared
    shown["disagreement_rate"] = _rate(disagreed, compared)
    shown["shadow_skipped"] = window.get("shadow_skipped", 0)
    return shown


@dataclass(frozen=True)
class Thresholds:
    """What a step must stay within; set per rollout."""

    max_error_rate: float
    max_p99_ms: float
    max_fail_rate_diff: float
    min_frames: int
    window_s: float


class Action(StrEnum):
    HOLD = "hold"  # keep watching
    ADVANCE = "advance"  # the window ran clean: next step
    ROLLBACK = "rollback"  # a threshold passed


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def breach(window: dict[str, Any], limits: Thresholds) -> str | None:
    """The first threshold the window passes, in words; None while it is within them all (or too small to say)."""
    figures = comparison(window)
    candidate, current = figures["candidate"], figures["current"]
    answers = candidate["frames"] + candidate["errors"]
    if answers < limits.min_frames:
        return None
    if candidate["error_rate"] is not None and candidate["error_rate"] > limits.max_error_rate:
        return (f"candidate errors {_pct(candidate['error_rate'])} of {answers} answers > "
                f"{_pct(limits.max_error_rate)}")  # fmt: skip
    p99 = wire.histogram_quantile(window["candidate"]["latency_ms_histogram"], 0.99)
    if p99 is not None and p99 > limits.max_p99_ms:
        shown = f"over {wire.LATENCY_BUCKETS_MS[-1]} ms" if p99 == float("inf") else f"{p99:g} ms"
        return f"candidate p99 latency {shown} > {limits.max_p99_ms:g} ms"
    if candidate["frames"] >= limits.min_frames and current["frames"] >= limits.min_frames:
        diff = candidate["fail_rate"] - current["fail_rate"]
        if abs(diff) > limits.max_fail_rate_diff:
            return (f"candidate fail rate {_pct(candidate['fail_rate'])} vs current {_pct(current['fail_rate'])}: "
                    f"{abs(diff) * 100:.1f} points apart > {limits.max_fail_rate_diff * 100:.1f}")  # fmt: skip
    return None


def decide(window: dict[str, Any], limits: Thresholds, elapsed_s: float) -> tuple[Action, str]:
    """What to do with a step ``elapsed_s`` into its window, and why."""
    if reason := breach(window, limits):
        return Action.ROLLBACK, reason
    frames = window["candidate"]["frames"]
    if elapsed_s < limits.window_s:
        return Action.HOLD, f"watching: {elapsed_s:.0f} of {limits.window_s:.0f} s"
    if frames < limits.min_frames:
        return Action.HOLD, f"window ran its time with {frames} of {limits.min_frames} candidate verdicts; waiting"
    figures = comparison(window)["candidate"]
    return Action.ADVANCE, (f"window of {limits.window_s:.0f} s clean: {frames} candidate verdicts, fail rate "
                            f"{_pct(figures['fail_rate'])}, errors {_pct(figures['error_rate'] or 0)}")  # fmt: skip


FINAL = (RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.ABORTED)


def transition(current: RolloutState, target: RolloutState, *, what: str) -> RolloutState:
    """A running rollout may end (completed, rolled back, aborted); an ended one never changes again."""
    if current in FINAL:
        raise IllegalTransition(f"{what} is {current.value}; it cannot become {target.value}. Start a new rollout "
                                "on the slice to try again")  # fmt: skip
    return target


# --- the database: start, step, end -----------------------------------------------------------------


def step_of(rollout: Rollout) -> dict[str, Any]:
    return rollout.steps[min(rollout.step, len(rollout.steps) - 1)]


def thresholds(rollout: Rollout) -> Thresholds:
    return Thresholds(rollout.max_error_rate, rollout.max_p99_ms, rollout.max_fail_rate_diff, rollout.min_frames,
                      rollout.window_s)  # fmt: skip


def running(session: Session, slice_id: int) -> Rollout | None:
    query = select(Rollout).where(Rollout.slice_id == slice_id, Rollout.state == RolloutState.RUNNING)
    return session.exec(query).first()


def public(rollout: Rollout) -> RolloutPublic:
    step = step_of(rollout)
    shown = {"stage": step["stage"], "share": step["share"], "comparison": comparison(rollout.window)}
    return RolloutPublic.model_validate({**rollout.model_dump(), **shown})


def _label(session: Session, model_version_id: int) -> str:
    model = session.get(ModelVersion, model_version_id)
    return f"{model.name} {model.version}" if model else f"model version {model_version_id}"


def _step_text(step: dict[str, Any]) -> str:
    return f"canary {step['share'] * 100:g}%" if step["stage"] == RolloutStage.CANARY.value else step["stage"]


def _event(session: Session, item: Slice, rollout: Rollout, reason: str, now: datetime) -> None:
    """A scale event of kind ``rollout`` (bounds unchanged) and a new generation for the agent."""
    assert item.id is not None
    text = f"rollout {rollout.id}: {reason}"[:2000]
    session.add(ScaleEvent(tenant_id=item.tenant_id, slice_id=item.id, at=now, kind=ScaleKind.ROLLOUT,
                           min_before=item.min_replicas, min_after=item.min_replicas, max_before=item.max_replicas,
                           max_after=item.max_replicas, reason=text))  # fmt: skip
    item.generation += 1
    item.updated_at = now
    rollout.reason, rollout.updated_at = reason[:2000], now
    session.add(item)
    session.add(rollout)
    log.info("slice %s %s", item.app_name, text)


def start(session: Session, item: Slice, body: RolloutCreate, candidate: ModelVersion, *, user_id: int | None,
          now: datetime) -> Rollout:  # fmt: skip
    """A new rollout on ``item`` (Conflict while another runs); its first step goes to the agent."""
    assert item.id is not None
    assert candidate.id is not None
    if (other := running(session, item.id)) is not None:
        raise Conflict(f"slice {item.slug} already has rollout {other.id} running ({_step_text(step_of(other))}): "
                       f"advance or abort it first (POST /rollouts/{other.id}/advance or /abort)")  # fmt: skip
    if candidate.id == item.model_version_id:
        raise InvalidInput(f"model version {candidate.id} is already slice {item.slug}'s model; roll out another")
    if candidate.fixed_batch is not None and item.max_batch_size > candidate.fixed_batch:
        raise InvalidInput(f"model {candidate.name} {candidate.version} takes batches of {candidate.fixed_batch}; "
                           f"slice {item.slug} sends up to {item.max_batch_size}")  # fmt: skip
    budget = min(line.latency_budget_ms for line in session.exec(select(Line).where(Line.id.in_(item.line_ids))))  # type: ignore[union-attr]
    rollout = Rollout(
        tenant_id=item.tenant_id, slice_id=item.id, from_model_version_id=item.model_version_id,
        model_version_id=candidate.id, steps=plan_steps(body.shadow, body.canary_shares), window_s=body.window_s,
        min_frames=body.min_frames, max_error_rate=body.max_error_rate, max_p99_ms=body.max_p99_ms or budget,
        max_fail_rate_diff=body.max_fail_rate_diff, auto_advance=body.auto_advance, step_started_at=now,
        window=empty_window(), created_by=user_id, created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(rollout)
    session.flush()
    first = _step_text(step_of(rollout))
    what = f"{_label(session, item.model_version_id)} -> {_label(session, candidate.id)}"
    if step_of(rollout)["stage"] == RolloutStage.FULL.value:
        _finish(session, item, rollout, f"started {what} with no shadow or canary step", now)
    else:
        _event(session, item, rollout, f"started {what}: {first}", now)
    return rollout


def advance(session: Session, item: Slice, rollout: Rollout, why: str, now: datetime) -> None:
    """The next step (or the end: the candidate becomes the slice's model)."""
    transition(rollout.state, RolloutState.RUNNING, what=f"rollout {rollout.id}")
    done = step_of(rollout)
    rollout.history = [*rollout.history, {"step": rollout.step, **done, "ended": why,
                                          "comparison": comparison(rollout.window)}]  # fmt: skip
    rollout.step += 1
    rollout.window, rollout.step_started_at = empty_window(), now
    following = step_of(rollout)
    if following["stage"] == RolloutStage.FULL.value:
        _finish(session, item, rollout, f"{_step_text(done)} -> full ({why})", now)
    else:
        _event(session, item, rollout, f"{_step_text(done)} -> {_step_text(following)} ({why})", now)


def _finish(session: Session, item: Slice, rollout: Rollout, why: str, now: datetime) -> None:
    rollout.state = transition(rollout.state, RolloutState.COMPLETED, what=f"rollout {rollout.id}")
    rollout.finished_at = now
    item.model_version_id = rollout.model_version_id
    _event(session, item, rollout, f"completed: {_label(session, rollout.model_version_id)} serves the slice; {why}",
           now)  # fmt: skip


def stop(session: Session, item: Slice, rollout: Rollout, state: RolloutState, why: str, now: datetime) -> None:
    """Back to the current model alone: ``rolled_back`` (a threshold passed) or ``aborted`` (a user)."""
    rollout.state = transition(rollout.state, state, what=f"rollout {rollout.id}")
    rollout.finished_at = now
    rollout.history = [*rollout.history, {"step": rollout.step, **step_of(rollout), "ended": why,
                                          "comparison": comparison(rollout.window)}]  # fmt: skip
    word = "rolled back" if state == RolloutState.ROLLED_BACK else "aborted"
    _event(session, item, rollout, f"{word} in {_step_text(step_of(rollout))}: {why}", now)


def record_report(session: Session, item: Slice, report: RolloutReport, now: datetime) -> bool:
    """Count an ingress replica's report in its step's window and act on the window; whether it counted
    (reports of an ended rollout, another step or counted before are left out)."""
    assert item.id is not None
    rollout = running(session, item.id)
    if rollout is None or rollout.id != report.rollout_id or rollout.step != report.step:
        return False
    window = merge(rollout.window, report)
    if window is None:
        return False
    rollout.window, rollout.updated_at = window, now
    session.add(rollout)
    elapsed = (now - as_utc(rollout.step_started_at)).total_seconds()
    action, why = decide(window, thresholds(rollout), elapsed)
    if action == Action.ROLLBACK:
        stop(session, item, rollout, RolloutState.ROLLED_BACK, why, now)
    elif action == Action.ADVANCE and rollout.auto_advance:
        advance(session, item, rollout, why, now)
    return True


def desired(session: Session, item: Slice) -> dict[str, Any]:
    """The rollout's part of the slice's desired state: ``spec.rollout`` and the candidate model; {} if none."""
    assert item.id is not None
    rollout = running(session, item.id)
    if rollout is None:
        return {}
    model = session.get(ModelVersion, rollout.model_version_id)
    assert model is not None
    assert rollout.id is not None
    step = step_of(rollout)
    spec = {"rollout_id": rollout.id, "step": rollout.step, "stage": step["stage"], "share": step["share"],
            "replicas": item.max_replicas}  # fmt: skip
    return {"candidate": {"sha256": model.sha256, "manifest": model.manifest}, "rollout": spec}
