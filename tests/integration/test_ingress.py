"""The MQTT ingress against a real Mosquitto and the real model, without Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import wire
from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.broker import MosquittoBroker
from edge_node.errors import FrameError
from edge_node.ingress import FrameIngress, InferFn
from edge_node.runtime import InspectionModel, as_reply
from models import synth
from robots.sdk import RobotClient
from robots.simulate import Simulation
from tests.unit.test_imaging import _png_header_only
from tests.waiting import wait_until

TENANT, LINE = "acme", "line-1"


def _spec(broker: MosquittoBroker, **overrides: Any) -> SliceSpec:
    return SliceSpec(name="s1", tenant=TENANT, lines=[LINE], broker=BrokerSpec(port=broker.port), **overrides)


@pytest.fixture
def start_ingress(broker: MosquittoBroker, model: InspectionModel) -> Iterator[Callable[..., FrameIngress]]:
    started: list[FrameIngress] = []

    def start(infer: InferFn | None = None, **overrides: Any) -> FrameIngress:
        ingress = FrameIngress(
            _spec(broker, **overrides),
            infer or (lambda frames: [as_reply(o) for o in model.inspect(frames)]),
            client_id=f"ingress-{len(started)}",
            node="test-node",
            model="part-inspector:test",
        )
        ingress.start()
        assert ingress.connected.wait(10)
        started.append(ingress)
        return ingress

    yield start
    for ingress in started:
        ingress.stop()


def _subscribe(client: mqtt.Client, topic: str, qos: int) -> None:
    """Subscribe a started client and wait for the broker's SUBACK, so nothing published next is missed."""
    acked = threading.Event()
    client.on_subscribe = lambda *_args: acked.set()
    client.subscribe(topic, qos=qos)
    assert acked.wait(10), f"no SUBACK for {topic} within 10 s"


def _expected_verdict(model: InspectionModel, frame: bytes) -> str:
    """The model's own verdict on these bytes, judged directly, without MQTT or the ingress."""
    outcome = model.inspect([frame])[0]
    assert not isinstance(outcome, FrameError), outcome
    return outcome.verdict


@pytest.fixture
def robot(broker: MosquittoBroker) -> Iterator[RobotClient]:
    client = RobotClient(broker.host, broker.port, tenant=TENANT, line=LINE, robot="cam-7").connect()
    yield client
    client.close()


def test_frame_gets_a_verdict_with_its_id_and_properties(
    broker: MosquittoBroker, start_ingress: Callable[..., FrameIngress], model: InspectionModel
) -> None:
    start_ingress()
    answers: list[mqtt.MQTTMessage] = []
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-robot", protocol=mqtt.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        answers.append(msg)
        got.set()

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    _subscribe(client, wire.topic(TENANT, LINE, "cam-9", wire.TopicKind.RESULTS), qos=1)
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = b"frame-42"
    props.UserProperty = [("part_id", "P-1001"), ("view", "top")]
    sample = synth.generate(4242, 0, "scratch")
    client.publish(wire.topic(TENANT, LINE, "cam-9", wire.TopicKind.FRAMES), sample.data, qos=1, properties=props)
    assert got.wait(10), "no result within 10 s"
    client.loop_stop()
    msg = answers[0]
    result = wire.Result.model_validate_json(msg.payload)
    assert result.frame_id == "frame-42"
    assert (result.tenant, result.line, result.robot) == (TENANT, LINE, "cam-9")
    assert result.user_properties == {"part_id": "P-1001", "view": "top"}
    assert (result.verdict, result.defect_class) == ("fail", "crack")  # a scratch the model takes for a crack
    assert result.verdict == _expected_verdict(model, sample.data)
    assert set(result.scores) == set(synth.CLASSES)
    assert result.timings_ms.total >= result.timings_ms.inference > 0
    assert msg.properties is not None
    assert getattr(msg.properties, "CorrelationData", None) == b"frame-42"


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
@pytest.mark.skipif(shutil.which("stdbuf") is None, reason="coreutils' stdbuf not installed")
def test_plain_mosquitto_pub_of_a_jpeg_yields_a_result(
    broker: MosquittoBroker, start_ingress: Callable[..., FrameIngress], tmp_path: Path
) -> None:
    start_ingress()
    part = tmp_path / "part.jpg"
    part.write_bytes(synth.generate(4242, 1, "good").data)
    results = wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.RESULTS)
    sub = subprocess.Popen(  # -d logs the SUBACK, line-buffered by stdbuf so it is read as it happens
        ["stdbuf", "-oL", "mosquitto_sub", "-d", "-p", str(broker.port), "-t", results, "-C", "1", "-W", "15"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sub.stdout is not None
    subscribed = any(line.startswith("Subscribed") for line in sub.stdout)  # ends at SUBACK, or at exit (-W 15)
    assert subscribed, "mosquitto_sub got no SUBACK"
    frames = wire.topic(TENANT, LINE, "cam-7", wire.TopicKind.FRAMES)
    subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-f", str(part), "-t", frames], check=True)
    out, _ = sub.communicate(timeout=20)
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["robot"] == "cam-7"
    assert result["frame_id"]  # assigned by the ingress
    assert result["verdict"] == "pass"  # a good part


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (synth.generate(4242, 2, "good").data[:3000], "bad_image"),
        (np.random.default_rng(1).bytes(5000), "unsupported_format"),
        (_png_header_only(20000, 20000), "too_large"),
        (b"\xff\xd8\xff" + bytes(wire.MAX_FRAME_BYTES), "too_large"),
        (b"", "bad_image"),
    ],
    ids=["truncated-jpeg", "random-bytes", "20000x20000-png", "over-size-limit", "empty"],
)
def test_bad_frames_get_coded_errors_and_good_frames_keep_flowing(
    start_ingress: Callable[..., FrameIngress], robot: RobotClient, payload: bytes, code: str
) -> None:
    start_ingress()
    good = synth.generate(4242, 3, "good").data
    before = robot.send(good)
    bad = robot.send(payload)
    after = robot.send(good)
    error = bad.result(timeout=15)
    assert isinstance(error, wire.ErrorReply)
    assert error.code.value == code
    assert error.detail
    assert isinstance(before.result(timeout=15), wire.Result)
    assert isinstance(after.result(timeout=15), wire.Result)


def test_retried_frame_id_is_answered_from_memory(
    broker: MosquittoBroker, start_ingress: Callable[..., FrameIngress], robot: RobotClient
) -> None:
    ingress = start_ingress()
    frame = synth.generate(4242, 4, "dent").data
    first = robot.inspect(frame, frame_id="retry-me", timeout_s=10)
    second = robot.inspect(frame, frame_id="retry-me", timeout_s=10)
    assert isinstance(first, wire.Result)
    assert second == first
    assert ingress.counts["retries_answered_from_memory"] == 1
    assert ingress.counts["verdict_pass"] + ingress.counts["verdict_fail"] == 1


def test_slow_model_means_backpressure_not_loss(
    broker: MosquittoBroker, start_ingress: Callable[..., FrameIngress], model: InspectionModel
) -> None:
    """With a model 20x too slow, unacknowledged frames stay capped and every frame is answered."""
    in_model = 0
    peak = 0
    lock = threading.Lock()

    def slow(frames: list[bytes]) -> list[dict[str, Any]]:
        nonlocal in_model, peak
        with lock:
            in_model += len(frames)
            peak = max(peak, in_model)
        time.sleep(0.25)  # the scenario: a model far slower than the robots
        try:
            return [as_reply(o) for o in model.inspect(frames)]
        finally:
            with lock:
                in_model -= len(frames)

    ingress = start_ingress(slow, max_inflight_frames=8)
    pool = [(s.label, s.data) for s in (synth.generate(4242, i) for i in range(20))]
    sim = Simulation(broker.host, broker.port, tenant=TENANT, line=LINE, robots=4, fps=20, pool=pool,
                     timeout_s=60, retries=0, window=1000)  # fmt: skip
    report = sim.run(3.0)
    assert report.sent >= 150
    assert report.lost == 0
    assert report.results == report.sent
    assert peak <= 8, f"{peak} frames were inside the model at once; the receive maximum is 8"
    assert ingress._queue.qsize() == 0


def test_robot_status_is_retained_online_then_offline_by_its_will(broker: MosquittoBroker) -> None:
    status_topic = wire.topic(TENANT, LINE, "cam-3", wire.TopicKind.STATUS)
    live: list[str] = []  # every status the broker routes, so the test waits on it, not on a clock
    follower = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="status-follower", protocol=mqtt.MQTTv5)
    follower.on_message = lambda _c, _u, msg: live.append(msg.payload.decode())
    follower.connect(broker.host, broker.port)
    follower.loop_start()
    _subscribe(follower, status_topic, qos=1)

    def retained_status() -> str:
        seen: list[bytes] = []
        got = threading.Event()
        watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.time_ns()}", protocol=mqtt.MQTTv5)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            seen.append(bytes(msg.payload))
            got.set()

        watcher.on_message = on_message
        watcher.connect(broker.host, broker.port)
        watcher.subscribe(status_topic, qos=1)
        watcher.loop_start()
        assert got.wait(5), "no retained status"
        watcher.loop_stop()
        watcher.disconnect()
        return seen[0].decode()

    robot = RobotClient(broker.host, broker.port, tenant=TENANT, line=LINE, robot="cam-3").connect()
    wait_until(lambda: live[-1:] == ["online"], 5, "the robot to announce online")
    assert retained_status() == "online"
    sock = robot._client.socket()  # the robot loses power: no DISCONNECT, the broker fires its will
    assert sock is not None
    robot._closing.set()
    robot._client.loop_stop()
    sock.close()
    wait_until(lambda: live[-1:] == ["offline"], 10, "the broker to publish the robot's will (offline)")
    follower.loop_stop()
    assert retained_status() == "offline"


def test_retry_of_a_frame_in_progress_joins_it(
    start_ingress: Callable[..., FrameIngress], robot: RobotClient, model: InspectionModel
) -> None:
    judged: list[int] = []

    def slow(frames: list[bytes]) -> list[dict[str, Any]]:
        judged.append(len(frames))
        time.sleep(1.0)  # the scenario: judging outlasts the robot's 0.3 s retry timeout
        return [as_reply(o) for o in model.inspect(frames)]

    ingress = start_ingress(slow)
    future = robot.send(synth.generate(4242, 5, "crack").data, frame_id="dup-1", timeout_s=0.3, retries=3)
    assert isinstance(future.result(timeout=15), wire.Result)
    assert robot.resent >= 1
    assert sum(judged) == 1, "a retry was judged a second time"
    assert ingress.counts["retries_joined_in_progress"] >= 1
    wait_until(lambda: ingress.counts["frames_acked"] == ingress.counts["frames_received"], 5,
               "the ingress to acknowledge every frame it received")  # fmt: skip


def test_telemetry_counts_every_answer_and_shows_failed_parts(
    broker: MosquittoBroker, start_ingress: Callable[..., FrameIngress], robot: RobotClient
) -> None:
    """What the dashboard is fed: per-line windows that add up to the answers the robot got."""
    reports: list[wire.Telemetry] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="telemetry-watcher", protocol=mqtt.MQTTv5)
    watcher.on_message = lambda _c, _u, msg: reports.append(wire.Telemetry.model_validate_json(msg.payload))
    watcher.connect(broker.host, broker.port)
    watcher.loop_start()
    _subscribe(watcher, f"{wire.TELEMETRY_ROOT}/#", qos=0)
    ingress = start_ingress(telemetry_period_s=0.5)
    labels = ["good", "crack", "good", "scratch", "good", "dent"]
    answers = [robot.inspect(synth.generate(777, k, label).data, timeout_s=10) for k, label in enumerate(labels)]
    answers.append(robot.inspect(b"not an image", timeout_s=10))
    fails = sum(isinstance(a, wire.Result) and a.verdict == "fail" for a in answers)
    wait_until(lambda: sum(r.frames + r.errors for r in reports) >= len(answers), 10,
               f"telemetry to account for all {len(answers)} answers")  # fmt: skip
    watcher.loop_stop()
    assert sum(r.frames for r in reports) == len(labels)
    assert sum(r.errors for r in reports) == 1
    assert sum(r.fails for r in reports) == fails == 3  # the crack, the scratch and the dent
    assert sum(sum(r.latency_ms_histogram) for r in reports) == len(labels)
    parts = [p for r in reports for p in r.failed_parts]
    assert len(parts) == fails and all(p.robot == "cam-7" and p.thumbnail_jpeg_b64 for p in parts)
    assert {p.frame_id for p in parts} <= {a.frame_id for a in answers}
    assert ingress.telemetry is not None
