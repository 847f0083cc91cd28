"""The MQTT session's decisions, without a broker: logins, frames from messages, what is acknowledged."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from contracts import wire
from contracts.broker_logins import connection_password
from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.ingress import Frame
from edge_node.ingress.counts import Counts
from edge_node.ingress.frames import frame_of
from edge_node.ingress.mqtt_session import AckLedger, FrameSession, mqtt_client
from tests.unit.ingress_frames import LINE, TENANT, make_frame

FRAMES = wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.FRAMES)


def message(topic: str, payload: bytes, *, correlation: bytes | None = None, mid: int = 5) -> mqtt.MQTTMessage:
    """A QoS 1 message as paho hands it to ``on_message``."""
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos = payload, 1
    msg.properties = Properties(PacketTypes.PUBLISH)
    if correlation is not None:
        msg.properties.CorrelationData = correlation
        msg.properties.UserProperty = [("part_id", "P-1")]
    return msg


@pytest.mark.parametrize(
    ("broker", "login"),
    [
        (BrokerSpec(), (None, None)),
        (BrokerSpec(username="slice-s1", password=SecretStr("shared")), ("slice-s1", "shared")),
        (
            BrokerSpec(username="slice-s1", password=SecretStr("shared"), connection_logins=True),
            ("ingress-0", connection_password("shared", "ingress-0")),
        ),
    ],
    ids=["anonymous", "slice-login", "connection-login"],
)
def test_each_connection_logs_in_as_the_broker_expects(broker: BrokerSpec, login: tuple[str | None, ...]) -> None:
    client = mqtt_client(broker, "ingress-0", manual_ack=True)
    assert (client.username, client.password) == login


def test_a_message_becomes_a_frame_named_by_its_correlation_data() -> None:
    robot = wire.parse_topic(FRAMES)
    named = frame_of(message(FRAMES, b"jpeg", correlation=b"frame-42"), robot, 3, lambda: "unused")
    assert (named.frame_id, named.correlation, named.generation, named.mid) == ("frame-42", b"frame-42", 3, 5)
    assert (named.payload, named.user_properties) == (b"jpeg", {"part_id": "P-1"})
    assert frame_of(message(FRAMES, b"jpeg", correlation=b"\xff\xfe"), robot, 3, lambda: "x").frame_id == "fffe"
    unnamed = frame_of(message(FRAMES, b"jpeg"), robot, 3, lambda: "node-1")
    assert (unnamed.frame_id, unnamed.correlation, unnamed.user_properties) == ("node-1", None, {})


def test_a_frame_of_an_earlier_connection_is_not_acknowledged_on_this_one() -> None:
    ledger = AckLedger()
    ledger.connected()
    old = make_frame(generation=ledger.received())
    make_frame(generation=ledger.received())
    ledger.connected()
    assert ledger.backlog == 0, "the broker redelivers what the last connection left unacknowledged"
    current = make_frame(generation=ledger.received())
    assert not ledger.settle(old)
    assert ledger.backlog == 1
    assert ledger.settle(current)
    assert ledger.backlog == 0


def test_reading_pauses_while_the_backlog_is_full() -> None:
    ledger = AckLedger()
    ledger.connected()
    frames = [make_frame(generation=ledger.received(), mid=m) for m in range(3)]
    assert not ledger.has_room(3)
    ledger.settle(frames[0])
    assert ledger.has_room(3)


@pytest.fixture
def session() -> tuple[FrameSession, list[Frame]]:
    """A session that was never connected, with the frames it delivered."""
    delivered: list[Frame] = []
    spec = SliceSpec(name="s1", tenant=TENANT, lines=[LINE], broker=BrokerSpec(port=1))
    made = FrameSession(
        spec, "ingress-0", deliver=delivered.append, counts=Counts(), stop=threading.Event(), unnamed_prefix="node-a"
    )
    return made, delivered


def test_messages_are_delivered_as_frames_and_unnamed_ones_get_distinct_ids(
    session: tuple[FrameSession, list[Frame]],
) -> None:
    frames_session, delivered = session
    on_message = frames_session._client.on_message
    assert on_message is not None
    for _ in range(2):
        on_message(frames_session._client, None, message(FRAMES, b"jpeg"))
    on_message(frames_session._client, None, message(FRAMES, b"jpeg", correlation=b"f-9"))
    assert [f.frame_id for f in delivered] == ["node-a-1", "node-a-2", "f-9"]
    assert frames_session.counts["frames_received"] == 3
    assert frames_session.ledger.backlog == 3


def test_a_message_on_a_topic_that_is_not_a_robot_s_is_not_delivered(
    session: tuple[FrameSession, list[Frame]],
) -> None:
    frames_session, delivered = session
    on_message = frames_session._client.on_message
    assert on_message is not None
    on_message(frames_session._client, None, message("lineside/acme/frames", b"jpeg"))
    assert delivered == []
    assert frames_session.ledger.backlog == 0
    assert frames_session.counts["frames_received"] == 0


def test_only_frames_of_the_current_connection_are_acknowledged_and_counted(
    session: tuple[FrameSession, list[Frame]],
) -> None:
    frames_session, _ = session
    ledger = frames_session.ledger
    ledger.connected()
    before_reconnect = make_frame(generation=ledger.received(), mid=1)
    ledger.connected()
    current = make_frame(generation=ledger.received(), mid=2)
    frames_session.ack(before_reconnect)
    frames_session.ack(current)
    frames_session.send_acks()
    assert frames_session.counts["frames_acked"] == 1
    assert ledger.backlog == 0
