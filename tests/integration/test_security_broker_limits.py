"""Issue 11 item 9: broker queues are bounded in bytes, and no frame a robot sent vanishes unreported.

Observed with Mosquitto 2.0.11 (``test_mosquitto_acknowledges_then_drops_frames_beyond_the_queue``):
while the slice ingress is down, its persistent session (a ``$share`` subscriber) queues the
line's frames up to ``max_queued_bytes``. A QoS 1 frame beyond that is still acknowledged with
PUBACK reason "Success" (0x00), never "Quota exceeded" (0x97), and then dropped; the broker
logs "Outgoing messages are being dropped for client <ingress>". A PUBACK therefore cannot
mean "accepted". The SDK counts a frame as accepted only when its answer arrives: a dropped
frame goes unanswered, is resent with the same id after its timeout, and is reported with
``FrameLost`` once its retries are spent. So after the ingress is back, every frame the robot
sent either has its verdict or was reported to the robot; none is lost silently.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_node import wire
from edge_node.broker import MosquittoBroker
from edge_node.ingress import FrameIngress
from edge_node.sdk import FrameLost, Reply, RobotClient
from edge_node.slice_spec import BrokerSpec, SliceSpec

TENANT, LINE = "acme", "line-1"
QUEUE_LIMIT = 1_500_000
FRAME = b"\xff\xd8" + b"x" * 400_000  # judged by the stand-in model below: the broker never looks inside
FLOOD = 12  # 4.8 MB of frames: three fit the stopped ingress's queue


@pytest.fixture
def small_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker", max_queued_bytes=QUEUE_LIMIT) as broker:
        yield broker


def _spec(broker: MosquittoBroker) -> SliceSpec:
    return SliceSpec(name="s1", tenant=TENANT, lines=[LINE], broker=BrokerSpec(port=broker.port))


def _ingress_went_down(broker: MosquittoBroker, client_id: str) -> None:
    """The ingress's persistent session, subscribed and then gone, as after a crash of its replica."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe(_spec(broker).frame_filters[0], qos=1)
    assert subscribed.wait(5)
    client.disconnect()
    client.loop_stop()


def _judge(frames: list[bytes]) -> list[dict[str, Any]]:
    return [{"verdict": "pass", "defect_class": None, "score": 1.0, "fail_score": 0.0, "scores": {"ok": 1.0}}] * len(
        frames
    )


def _dropped(broker: MosquittoBroker) -> bool:
    return "Outgoing messages are being dropped for client ingress-0" in (broker.workdir / "mosquitto.log").read_text()


def test_mosquitto_acknowledges_then_drops_frames_beyond_the_queue(small_broker: MosquittoBroker) -> None:
    """Pins the broker behaviour the SDK's design rests on; if an upgrade changes it, revisit the SDK."""
    assert f"max_queued_bytes {QUEUE_LIMIT}" in small_broker.config_path.read_text()
    _ingress_went_down(small_broker, "ingress-0")
    reasons: dict[int, str] = {}
    robot = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-robot", protocol=mqtt.MQTTv5)
    robot.on_publish = lambda _c, _u, mid, reason, _p: reasons.__setitem__(mid, str(reason))
    robot.connect(small_broker.host, small_broker.port)
    robot.loop_start()
    topic = wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.FRAMES)
    infos = [robot.publish(topic, FRAME, qos=1) for _ in range(FLOOD)]
    for info in infos:
        info.wait_for_publish(10)
    robot.disconnect()
    robot.loop_stop()
    assert [reasons[info.mid] for info in infos] == ["Success"] * FLOOD  # no 0x97 "Quota exceeded"
    assert _dropped(small_broker)

    delivered: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingress-0", protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: delivered.append(bytes(m.payload))
    client.connect(small_broker.host, small_broker.port, clean_start=False)
    client.loop_start()
    time.sleep(2)
    client.disconnect()
    client.loop_stop()
    assert 0 < len(delivered) < FLOOD  # the queue held what fit; the rest are gone


def _flood(broker: MosquittoBroker, *, retries: int) -> list[Future[Reply]]:
    """Ingress down, a robot floods past the queue, then the ingress comes back; returns each frame's future."""
    _ingress_went_down(broker, "ingress-0")
    robot = RobotClient(broker.host, broker.port, tenant=TENANT, line=LINE, robot="cam-7").connect()
    ingress = FrameIngress(_spec(broker), _judge, client_id="ingress-0", node="test-node", model="stand-in:1")
    try:
        futures = [robot.send(FRAME, timeout_s=2.0, retries=retries) for _ in range(FLOOD)]
        deadline = time.monotonic() + 10
        while not _dropped(broker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _dropped(broker), "the flood never reached the queue limit"
        ingress.start()
        assert ingress.connected.wait(10)
        for future in futures:
            future.exception(timeout=40)  # resolved one way or the other; none hangs
    finally:
        ingress.stop()
        robot.close()
    return futures


def test_frames_dropped_at_the_queue_limit_are_resent_and_judged(small_broker: MosquittoBroker) -> None:
    futures = _flood(small_broker, retries=3)
    answers = [f.result() for f in futures]
    assert all(isinstance(a, wire.Result) for a in answers)
    assert len({a.frame_id for a in answers}) == FLOOD


def test_without_retries_every_dropped_frame_is_reported_to_the_robot(small_broker: MosquittoBroker) -> None:
    futures = _flood(small_broker, retries=0)
    judged = [f for f in futures if f.exception() is None]
    reported = [f for f in futures if isinstance(f.exception(), FrameLost)]
    assert len(judged) + len(reported) == FLOOD
    assert judged and reported  # what fit the queue was judged; the robot was told of every other frame
