"""Frames built by hand for the ingress's unit tests: what the MQTT session would have made of a message."""

from __future__ import annotations

from contracts import wire
from edge_node.ingress import Frame

TENANT, LINE, ROBOT = "acme", "line-1", "cam-7"


def make_frame(
    payload: bytes = b"\xff\xd8\xff jpeg",
    *,
    frame_id: str | None = "f-1",
    robot: str = ROBOT,
    generation: int = 1,
    mid: int = 1,
    received: float = 100.0,
    user_properties: dict[str, str] | None = None,
) -> Frame:
    """A frame from ``robot``; ``frame_id=None`` is one sent without correlation data (named by the ingress)."""
    correlation = frame_id.encode() if frame_id is not None else None
    return Frame(
        mid=mid,
        qos=1,
        generation=generation,
        robot=wire.parse_topic(wire.topic(TENANT, LINE, robot, wire.TopicKind.FRAMES)),
        payload=payload,
        frame_id=frame_id if frame_id is not None else f"node-{mid}",
        correlation=correlation,
        user_properties=user_properties or {},
        received=received,
    )
