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
from sqlmodel import Session

from contracts import wire
from contracts.slice_spec import BrokerSpec, FramePolicy, SliceSpec
from control_plane import sites
from control_plane.models import Site, Slice
from edge_node.broker import MosquittoBroker
from edge_node.ingress import FrameIngress
from robots.sdk import FrameLost, Reply, RobotClient
from tests.integration.cp_fixtures import ControlPlane, ok

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


# --- per-robot frame policy -----------------------------------------------------------------------


def test_robot_beyond_its_lines_policy_is_answered_not_dropped(small_broker: MosquittoBroker) -> None:
    policy = {LINE: FramePolicy(max_fps=2, max_frame_bytes=2000)}
    spec = _spec(small_broker).model_copy(update={"frame_policy": policy})
    ingress = FrameIngress(spec, _judge, client_id="ingress-0", node="test-node", model="stand-in:1")
    ingress.start()
    robot = RobotClient(small_broker.host, small_broker.port, tenant=TENANT, line=LINE, robot="cam-7").connect()
    try:
        assert ingress.connected.wait(10)
        big = robot.inspect(b"\xff\xd8" + b"x" * 3000, timeout_s=5)
        assert isinstance(big, wire.ErrorReply) and big.code is wire.ErrorCode.TOO_LARGE and "2000" in big.detail
        replies = [f.result(timeout=20) for f in [robot.send(b"\xff\xd8small", timeout_s=5) for _ in range(10)]]
        limited = [r for r in replies if isinstance(r, wire.ErrorReply) and r.code is wire.ErrorCode.RATE_LIMITED]
        judged = [r for r in replies if isinstance(r, wire.Result)]
        assert len(judged) + len(limited) == 10  # every frame answered, none dropped
        assert 1 <= len(judged) <= 6 and "2 frames/s" in limited[0].detail
        time.sleep(1.5)  # the bucket refills at the line's rate
        assert isinstance(robot.inspect(b"\xff\xd8again", timeout_s=5), wire.Result)
    finally:
        robot.close()
        ingress.stop()


def test_line_frame_policy_is_bounded_and_reaches_the_slice_spec(control_plane: ControlPlane) -> None:
    cp, a, b = control_plane, control_plane.a, control_plane.b
    for bad in ({"robot_max_fps": 0}, {"robot_max_fps": 1e6}, {"robot_max_frame_bytes": 10**9},
                {"robot_max_frame_bytes": -1}):  # fmt: skip
        body = {"slug": "line-2", "site_id": cp.site_id, **bad}
        assert cp.client.post("/lines", json=body, headers=a.it).status_code == 422, bad
        assert cp.client.patch(f"/lines/{a.line_id}", json=bad, headers=a.it).status_code == 422, bad
    created = ok(cp.client.post("/lines", json={"slug": "line-2", "site_id": cp.site_id}, headers=a.it), 201)
    assert (created["robot_max_fps"], created["robot_max_frame_bytes"]) == (30.0, wire.MAX_FRAME_BYTES)
    assert cp.client.patch(f"/lines/{a.line_id}", json={"robot_max_fps": 5}, headers=b.it).status_code == 404
    engine = cp.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:
        generation = session.get(Slice, a.ids["slice"]).generation  # type: ignore[union-attr]
    line = ok(cp.client.patch(f"/lines/{a.line_id}", json={"robot_max_fps": 5, "robot_max_frame_bytes": 100_000},
                              headers=a.it))  # fmt: skip
    assert (line["robot_max_fps"], line["robot_max_frame_bytes"]) == (5.0, 100_000)
    with Session(engine) as session:
        item = session.get(Slice, a.ids["slice"])
        site = session.get(Site, cp.site_id)
        assert item is not None and site is not None
        assert item.generation > generation  # the agent applies the new policy
        desired = sites.slice_spec(session, cp.settings, item, site, secrets=False)
    spec = desired.spec
    assert spec.policy("line-1") == FramePolicy(max_fps=5, max_frame_bytes=100_000)
