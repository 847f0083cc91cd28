"""The answers the ingress publishes, built from frames by hand: no broker, no model, no clock."""

from __future__ import annotations

import pytest

from contracts import wire
from contracts.slice_spec import FramePolicy
from edge_node.ingress import replies
from tests.unit.ingress_frames import LINE, TENANT, make_frame

REPLIER = replies.Replier("s1", "node-a", "part-inspector:3")
VERDICT = {
    "verdict": "fail",
    "defect_class": "scratch",
    "score": 0.9,
    "fail_score": 0.95,
    "scores": {"good": 0.05, "scratch": 0.9, "dent": 0.05},
}


def allow_all(_robot: str, _max_fps: float) -> bool:
    return True


def test_a_verdict_carries_the_frame_s_identity_and_times_measured_by_the_caller() -> None:
    frame = make_frame(frame_id="frame-42", received=10.0, user_properties={"part_id": "P-1"})
    result = REPLIER.result(frame, VERDICT, started=10.004, inference_ms=3.0, now=10.0085)
    assert (result.frame_id, result.tenant, result.line, result.robot) == ("frame-42", TENANT, LINE, "cam-7")
    assert (result.slice, result.node, result.model) == ("s1", "node-a", "part-inspector:3")
    assert result.user_properties == {"part_id": "P-1"}
    assert (result.verdict, result.defect_class, result.fail_score) == ("fail", "scratch", 0.95)
    assert result.timings_ms == wire.Timings(queue=4.0, inference=3.0, total=8.5)
    assert replies.answer_topic(frame, result) == wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.RESULTS)


def test_an_error_goes_to_the_robot_s_errors_topic_with_its_code() -> None:
    frame = make_frame()
    error = REPLIER.error(frame, wire.ErrorCode.BAD_IMAGE, "not a JPEG")
    assert (error.code, error.detail, error.frame_id) == (wire.ErrorCode.BAD_IMAGE, "not a JPEG", "f-1")
    assert replies.answer_topic(frame, error) == wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.ERRORS)


@pytest.mark.parametrize(
    ("payload", "frame_id", "policy", "code"),
    [
        (b"", "f-1", None, wire.ErrorCode.BAD_IMAGE),
        (bytes(wire.MAX_FRAME_BYTES + 1), "f-1", None, wire.ErrorCode.TOO_LARGE),
        (bytes(1001), "f-1", FramePolicy(max_frame_bytes=1000), wire.ErrorCode.TOO_LARGE),
        (b"jpeg", "x" * (wire.MAX_FRAME_ID_BYTES + 1), None, wire.ErrorCode.BAD_FRAME_ID),
        (b"jpeg", "f-1", FramePolicy(max_frame_bytes=1000), None),
        (b"jpeg", None, None, None),
    ],
    ids=["empty", "over-wire-limit", "over-line-limit", "long-frame-id", "fine", "fine-unnamed"],
)
def test_frames_refused_before_decoding(
    payload: bytes, frame_id: str | None, policy: FramePolicy | None, code: wire.ErrorCode | None
) -> None:
    refusal = replies.refusal(make_frame(payload, frame_id=frame_id), policy, allow_all)
    assert (refusal[0] if refusal else None) == code
    if refusal:
        assert refusal[1], "a refusal tells the robot's programmer what to do"


def test_rate_limit_is_asked_per_robot_at_the_line_s_rate_and_only_for_frames_within_size() -> None:
    asked: list[tuple[str, float]] = []

    def deny(robot: str, max_fps: float) -> bool:
        asked.append((robot, max_fps))
        return False

    policy = FramePolicy(max_fps=5, max_frame_bytes=1000)
    assert replies.refusal(make_frame(bytes(2000)), policy, deny) is not None
    assert asked == [], "an oversized frame must not use up a token"
    refusal = replies.refusal(make_frame(b"jpeg"), policy, deny)
    assert refusal is not None and refusal[0] is wire.ErrorCode.RATE_LIMITED
    assert "5 frames/s" in refusal[1]
    assert asked == [(wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.FRAMES), 5.0)]
    assert replies.refusal(make_frame(b"jpeg"), None, deny) is None, "no policy, no rate limit"


def test_model_outcomes_are_verdicts_or_coded_errors() -> None:
    assert replies.outcome_error(VERDICT) is None
    assert replies.outcome_error({"code": "unsupported_format", "detail": "GIF"}) == (
        wire.ErrorCode.UNSUPPORTED_FORMAT,
        "GIF",
    )


@pytest.mark.parametrize("code", list(wire.ErrorCode))
def test_only_errors_a_retry_might_not_get_again_are_not_final(code: wire.ErrorCode) -> None:
    transient = code in (wire.ErrorCode.INTERNAL, wire.ErrorCode.RATE_LIMITED)
    assert replies.is_final(code) is not transient


def test_reply_properties_echo_the_frame_s_correlation_and_user_properties() -> None:
    props = replies.reply_properties(make_frame(frame_id="frame-42", user_properties={"view": "top"}))
    assert getattr(props, "CorrelationData", None) == b"frame-42"
    assert getattr(props, "UserProperty", None) == [("view", "top")]
    assert getattr(props, "ContentType", None) == "application/json"
    unnamed = replies.reply_properties(make_frame(frame_id=None))
    assert not hasattr(unnamed, "CorrelationData") and not hasattr(unnamed, "UserProperty")
