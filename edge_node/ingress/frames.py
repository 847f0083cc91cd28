"""A frame as the ingress holds it between its arrival and its acknowledgement.

Every other ingress module speaks in ``Frame``: the MQTT session makes them
from messages, the answer memory keys them, batching groups them and the reply
builders answer them. Nothing here touches the network, so each of those
pieces can be tested on frames built by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from contracts import wire


@dataclass
class Frame:
    """One received frame, until it is acknowledged."""

    mid: int
    qos: int
    generation: int
    robot: wire.RobotTopic
    payload: bytes
    frame_id: str
    correlation: bytes | None
    user_properties: dict[str, str]
    received: float = field(default_factory=time.monotonic)
    retained: bool = False  # the robot published it retained: once answered, the ingress clears the broker's copy
    redelivered: bool = False  # MQTT DUP: the broker sent it before (a robot's resend is a new publish)
    origin: str = ""  # the client id of the session it came on (this replica's, or one it adopted)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the frame across retries: robot and frame id."""
        return self.robot.sibling(wire.TopicKind.FRAMES), self.frame_id


def frame_id_of(correlation: bytes | None) -> str | None:
    """The frame id carried in MQTT 5 correlation data (UTF-8, else hex)."""
    if correlation is None:
        return None
    try:
        return correlation.decode("utf-8")
    except UnicodeDecodeError:
        return correlation.hex()


def frame_of(msg: mqtt.MQTTMessage, robot: wire.RobotTopic, generation: int, name: Callable[[], str]) -> Frame:
    """The frame ``msg`` carries; ``name()`` names it when the robot sent no correlation data
    (a plain ``mosquitto_pub``), so that its answer still says which frame it is."""
    props = msg.properties
    correlation = getattr(props, "CorrelationData", None) if props else None
    user_properties = dict(getattr(props, "UserProperty", []) or []) if props else {}
    frame_id = frame_id_of(correlation)
    if frame_id is None:
        frame_id = name()
    return Frame(msg.mid, msg.qos, generation, robot, bytes(msg.payload), frame_id, correlation, user_properties,
                 retained=bool(msg.retain), redelivered=bool(msg.dup))  # fmt: skip
