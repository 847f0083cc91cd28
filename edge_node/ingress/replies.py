"""The answers the ingress publishes, built from a frame and an outcome; no I/O, no clock, no state.

Every frame gets exactly one answer, on a topic beside its frames topic:

* a verdict (``wire.Result``) on the robot's results topic, with timings;
* a coded error (``wire.ErrorReply``) on its errors topic: refused before any
  decoding (empty, too large, rate limited, bad frame id), undecodable, or not
  judged because the model could not be reached.

Callers pass the times they measured and a rate-limit check, so each builder's
answer depends on its arguments alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import wire
from contracts.slice_spec import FramePolicy
from edge_node.ingress.frames import Frame

Refusal = tuple[wire.ErrorCode, str]
"""An error code and the detail that tells the robot's programmer what to do."""

MODEL_UNREACHABLE = "the slice could not run the model; retry the frame, and tell the operator if this persists"

NOT_FINAL = (wire.ErrorCode.INTERNAL, wire.ErrorCode.RATE_LIMITED)
"""Errors that a retry of the same frame id may not get again, so they are never remembered."""


@dataclass(frozen=True)
class Replier:
    """Who answers: the slice, the node and the model named in every answer."""

    slice_name: str
    node: str
    model: str

    def envelope(self, frame: Frame) -> dict[str, Any]:
        """The fields that every answer to ``frame`` shares."""
        return {
            "frame_id": frame.frame_id,
            "tenant": frame.robot.tenant,
            "line": frame.robot.line,
            "robot": frame.robot.robot,
            "slice": self.slice_name,
            "node": self.node,
            "user_properties": frame.user_properties,
        }

    def result(
        self, frame: Frame, outcome: dict[str, Any], *, started: float, inference_ms: float, now: float
    ) -> wire.Result:
        """The verdict on ``frame``: ``started`` is when its batch went to the model, ``now`` when it came back
        (monotonic seconds, like ``frame.received``)."""
        timings = wire.Timings(
            queue=round((started - frame.received) * 1000, 2),
            inference=round(inference_ms, 2),
            total=round((now - frame.received) * 1000, 2),
        )
        return wire.Result(
            **self.envelope(frame),
            verdict=outcome["verdict"],
            defect_class=outcome["defect_class"],
            score=outcome["score"],
            fail_score=outcome["fail_score"],
            scores=outcome["scores"],
            model=self.model,
            timings_ms=timings,
            location=outcome.get("location"),
            boxes=outcome.get("boxes"),
        )

    def error(self, frame: Frame, code: wire.ErrorCode, detail: str) -> wire.ErrorReply:
        """A coded error for ``frame``."""
        return wire.ErrorReply(**self.envelope(frame), code=code, detail=detail)


def refusal(frame: Frame, policy: FramePolicy | None, allow: Callable[[str, float], bool]) -> Refusal | None:
    """Why ``frame`` is answered without decoding it, if it is; ``allow(robot, max_fps)`` is the rate limit.

    The rate limit is asked last among the line's limits, so that an empty or oversized frame
    does not use up a token of its robot's bucket.
    """
    if not frame.payload:
        return wire.ErrorCode.BAD_IMAGE, "empty payload: publish the JPEG or PNG bytes of the frame"
    max_bytes = policy.max_frame_bytes if policy else wire.MAX_FRAME_BYTES
    if len(frame.payload) > max_bytes:
        return wire.ErrorCode.TOO_LARGE, (
            f"frame is {len(frame.payload)} bytes; the line's limit is {max_bytes}: crop or compress on the robot"
        )
    if policy and not allow(frame.robot.sibling(wire.TopicKind.FRAMES), policy.max_fps):
        return wire.ErrorCode.RATE_LIMITED, (
            f"robot sends more than the line's {policy.max_fps:g} frames/s: send fewer frames, "
            "or ask factory IT to raise the line's robot_max_fps"
        )
    if frame.correlation is not None and len(frame.correlation) > wire.MAX_FRAME_ID_BYTES:
        return wire.ErrorCode.BAD_FRAME_ID, f"frame id is {len(frame.correlation)} bytes; the limit is 128"
    return None


def outcome_error(outcome: dict[str, Any]) -> Refusal | None:
    """The error a model outcome reports (a frame that did not decode, ...); None for a verdict."""
    if "code" not in outcome:
        return None
    return wire.ErrorCode(outcome["code"]), outcome["detail"]


def is_final(code: wire.ErrorCode) -> bool:
    """Whether a retry of the frame gets this error again (so it may be answered from memory)."""
    return code not in NOT_FINAL


def answer_topic(frame: Frame, answer: wire.Result | wire.ErrorReply) -> str:
    """Where the robot hears ``answer``: its results topic for verdicts, its errors topic for errors."""
    kind = wire.TopicKind.RESULTS if isinstance(answer, wire.Result) else wire.TopicKind.ERRORS
    return frame.robot.sibling(kind)


def reply_properties(frame: Frame) -> Properties:
    """MQTT 5 properties of the answer: the frame's correlation data and user properties, echoed."""
    props = Properties(PacketTypes.PUBLISH)
    if frame.correlation is not None:
        props.CorrelationData = frame.correlation
    if frame.user_properties:
        props.UserProperty = list(frame.user_properties.items())
    props.ContentType = "application/json"
    return props
