"""The rollout's decisions without a database or a cluster: routing robots by hash, counting reports in a
step's window, and when a step rolls back, holds or steps forward."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts import wire
from contracts.agent_api import DesiredSlice
from contracts.slice_spec import ModelCounts, RolloutReport, RolloutSpec, robot_bucket, routes_to_candidate
from control_plane import rollouts
from control_plane.errors import IllegalTransition
from control_plane.models import RolloutCreate, RolloutState
from control_plane.rollouts import Action, Thresholds, decide, empty_window, merge
from edge_node.telemetry import RolloutWindow

LIMITS = Thresholds(max_error_rate=0.02, max_p99_ms=100, max_fail_rate_diff=0.05, min_frames=50, window_s=300)
ROBOTS = [f"cam-{i}" for i in range(2000)]


def counts(frames: int, fails: int = 0, errors: int = 0, ms: float = 20) -> ModelCounts:
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    histogram[wire.latency_bucket(ms)] = frames
    return ModelCounts(frames=frames, fails=fails, errors=errors, latency_ms_histogram=histogram)


def report(current: ModelCounts, candidate: ModelCounts, *, start: float = 1.0, **extra: Any) -> RolloutReport:
    return RolloutReport(rollout_id=1, step=0, replica="ingress-0", start=start, end=start + 2, current=current,
                         candidate=candidate, **extra)  # fmt: skip


def window_of(*reports: RolloutReport) -> dict[str, Any]:
    window = empty_window()
    for r in reports:
        merged = merge(window, r)
        assert merged is not None
        window = merged
    return window


# --- routing -------------------------------------------------------------------------------------


def test_routing_is_a_stable_share_of_robots() -> None:
    routed = [r for r in ROBOTS if routes_to_candidate("line-1", r, 0.1)]
    assert 0.08 < len(routed) / len(ROBOTS) < 0.12
    assert routed == [r for r in ROBOTS if routes_to_candidate("line-1", r, 0.1)]  # same answer every time
    assert robot_bucket("line-1", "cam-1") == robot_bucket("line-1", "cam-1")


def test_a_rising_share_keeps_the_robots_it_had() -> None:
    at_10 = {r for r in ROBOTS if routes_to_candidate("line-1", r, 0.1)}
    at_50 = {r for r in ROBOTS if routes_to_candidate("line-1", r, 0.5)}
    assert at_10 < at_50
    assert not any(routes_to_candidate("line-1", r, 0.0) for r in ROBOTS)


def test_the_same_robot_name_on_another_line_is_routed_on_its_own() -> None:
    line_1 = [routes_to_candidate("line-1", r, 0.5) for r in ROBOTS]
    line_2 = [routes_to_candidate("line-2", r, 0.5) for r in ROBOTS]
    assert line_1 != line_2


def test_only_a_canary_answers_robots_with_the_candidate() -> None:
    shadow = RolloutSpec(rollout_id=1, step=0, stage="shadow")
    canary = RolloutSpec(rollout_id=1, step=1, stage="canary", share=0.5)
    assert not any(shadow.candidate_answers("line-1", r) for r in ROBOTS)
    assert any(canary.candidate_answers("line-1", r) for r in ROBOTS)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_canary_of_nobody_or_everybody_is_refused(share: float) -> None:
    with pytest.raises(ValidationError, match="canary's share"):
        RolloutSpec(rollout_id=1, step=0, stage="canary", share=share)


def test_a_desired_slice_has_a_candidate_exactly_when_its_spec_has_a_rollout() -> None:
    sha = "a" * 64
    spec: dict[str, Any] = {"name": "t1-s", "tenant": "acme", "lines": ["line-1"]}
    base = {"slice_id": 1, "generation": 1, "model": {"sha256": sha, "manifest": {}}, "spec": spec}
    rollout = {"rollout_id": 1, "step": 0, "stage": "shadow"}
    DesiredSlice.model_validate(base)
    DesiredSlice.model_validate({**base, "candidate": {"sha256": sha, "manifest": {}},
                                 "spec": {**spec, "rollout": rollout}})  # fmt: skip
    with pytest.raises(ValidationError, match="come together"):
        DesiredSlice.model_validate({**base, "candidate": {"sha256": sha, "manifest": {}}})


# --- steps and inputs ----------------------------------------------------------------------------


def test_steps_end_in_full_and_shadow_comes_first() -> None:
    assert [(s["stage"], s["share"]) for s in rollouts.plan_steps(True, [0.1, 0.5])] == [
        ("shadow", 0.0), ("canary", 0.1), ("canary", 0.5), ("full", 1.0)
    ]  # fmt: skip
    assert [s["stage"] for s in rollouts.plan_steps(False, [])] == ["full"]


@pytest.mark.parametrize(
    ("shares", "message"), [([0.5, 0.1], "must rise"), ([0.1, 1.0], "between 0 and 1"), ([0.0], "between 0 and 1")]
)
def test_shares_that_do_not_rise_within_0_and_1_are_refused(shares: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RolloutCreate(slice_id=1, model_version_id=2, canary_shares=shares)


def test_an_ended_rollout_cannot_change_again() -> None:
    assert rollouts.transition(RolloutState.RUNNING, RolloutState.ABORTED, what="rollout 1") == RolloutState.ABORTED
    for ended in (RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.ABORTED):
        with pytest.raises(IllegalTransition, match="Start a new rollout"):
            rollouts.transition(ended, RolloutState.RUNNING, what="rollout 1")


# --- windows -------------------------------------------------------------------------------------


def test_reports_add_up_and_a_redelivered_one_counts_once() -> None:
    first = report(counts(100, fails=2), counts(40, fails=1), agreement={"pass/pass": 30, "pass/fail": 2})
    second = report(counts(50, fails=1), counts(10), start=3.0, agreement={"pass/pass": 5})
    window = window_of(first, second)
    assert merge(window, first) is None
    shown = rollouts.comparison(window)
    assert (shown["current"]["frames"], shown["current"]["fails"]) == (150, 3)
    assert (shown["candidate"]["frames"], shown["candidate"]["fails"]) == (50, 1)
    assert shown["agreement"] == {"pass/pass": 35, "pass/fail": 2}
    assert shown["disagreement_rate"] == round(2 / 37, 4)


def test_the_edge_window_reports_both_models_and_the_shadow_agreement() -> None:
    window = RolloutWindow("ingress-0", RolloutSpec(rollout_id=7, step=1, stage="shadow"))
    assert window.drain() is None  # nothing seen: nothing to publish
    window.verdict("current", "pass", 12)
    window.verdict("candidate", "fail", 30)
    window.error("candidate")
    window.agreed("pass", "fail")
    window.skipped(3)
    sent = window.drain()
    assert sent is not None and (sent.rollout_id, sent.step) == (7, 1)
    assert (sent.current.frames, sent.candidate.frames, sent.candidate.fails, sent.candidate.errors) == (1, 1, 1, 1)
    assert (sent.agreement, sent.shadow_skipped) == ({"pass/fail": 1}, 3)
    assert RolloutReport.model_validate_json(sent.model_dump_json()) == sent
    assert window.drain() is None  # drained: the next report starts afresh


# --- decisions -----------------------------------------------------------------------------------


def test_a_candidate_that_errors_rolls_back_before_its_window_ends() -> None:
    action, why = decide(window_of(report(counts(100), counts(60, errors=5))), LIMITS, elapsed_s=10)
    assert action is Action.ROLLBACK and "candidate errors 7.7% of 65 answers > 2.0%" in why


def test_a_candidate_slower_than_the_budget_at_p99_rolls_back() -> None:
    action, why = decide(window_of(report(counts(100), counts(60, ms=400))), LIMITS, elapsed_s=10)
    assert action is Action.ROLLBACK and "p99 latency 500 ms > 100 ms" in why


@pytest.mark.parametrize(("current_fails", "candidate_fails"), [(2, 60), (30, 0)])
def test_a_fail_rate_apart_from_the_current_models_either_way_rolls_back(current_fails: int,
                                                                        candidate_fails: int) -> None:  # fmt: skip
    window = window_of(report(counts(100, fails=current_fails), counts(60, fails=candidate_fails)))
    action, why = decide(window, LIMITS, elapsed_s=10)
    assert action is Action.ROLLBACK and "points apart > 5.0" in why


def test_too_few_frames_judge_nothing_yet() -> None:
    window = window_of(report(counts(100), counts(49, fails=49)))  # every verdict a fail, but only 49 of them
    assert decide(window, LIMITS, elapsed_s=10)[0] is Action.HOLD
    action, why = decide(window, LIMITS, elapsed_s=600)
    assert action is Action.HOLD and "49 of 50 candidate verdicts" in why


def test_a_clean_window_holds_until_its_time_then_advances() -> None:
    window = window_of(report(counts(100, fails=2), counts(60, fails=2)))
    assert decide(window, LIMITS, elapsed_s=299)[0] is Action.HOLD
    action, why = decide(window, LIMITS, elapsed_s=300)
    assert action is Action.ADVANCE and "window of 300 s clean: 60 candidate verdicts" in why


def test_within_every_threshold_at_their_edges_is_clean() -> None:
    window = window_of(report(counts(100, fails=10), counts(100, fails=15, errors=2, ms=100)))
    assert rollouts.breach(window, LIMITS) is None
