"""A rollout on one ingress replica, against a real Mosquitto and the real model, without Ray: the canary
answers its robots with the candidate, the others with the current model, a switch mid-stream loses no
frame and mixes no robot's verdicts, shadow publishes nothing of the candidate, and both models' figures
reach the telemetry topic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contracts import wire
from contracts.slice_spec import BrokerSpec, RolloutReport, RolloutSpec, SliceSpec, routes_to_candidate
from edge_node.broker import MosquittoBroker
from edge_node.ingress import FrameIngress
from edge_node.runtime import InspectionModel, as_reply
from robots.sdk import RobotClient
from tests.integration.rollout_streams import Stream
from tests.waiting import wait_until

TENANT, LINE = "acme", "line-1"
CURRENT, CANDIDATE = "part-inspector:1.0.0", "fails-every-part:2.0.0"


@pytest.fixture
def ingress(broker: MosquittoBroker, model: InspectionModel) -> Iterator[FrameIngress]:
    broker_spec = BrokerSpec(port=broker.port)
    spec = SliceSpec(name="s1", tenant=TENANT, lines=[LINE], broker=broker_spec, telemetry_period_s=0.5)
    running = FrameIngress(spec, lambda frames: [as_reply(o) for o in model.inspect(frames)], client_id="ingress-0",
                           node="test-node", model=CURRENT)  # fmt: skip
    running.start()
    assert running.connected.wait(10)
    yield running
    running.stop()


def fails_everything(model: InspectionModel) -> Any:
    def infer(frames: list[bytes]) -> list[dict[str, Any]]:
        return [{**as_reply(o), "verdict": "fail"} for o in model.inspect(frames)]

    return infer


def robots(broker: MosquittoBroker, frame: bytes, share: float) -> tuple[list[Stream], list[Stream]]:
    names = [f"cam-{i}" for i in range(100)]
    routed = [n for n in names if routes_to_candidate(LINE, n, share)][:2]
    kept = [n for n in names if not routes_to_candidate(LINE, n, share)][:2]
    streams = [Stream(RobotClient(broker.host, broker.port, tenant=TENANT, line=LINE, robot=n).connect(), frame,
                      pause_s=0) for n in routed + kept]  # fmt: skip
    return streams[:2], streams[2:]


def reports(broker: MosquittoBroker) -> tuple[mqtt.Client, list[RolloutReport]]:
    got: list[RolloutReport] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="control-plane", protocol=mqtt.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.payload.startswith(b'{"kind":"rollout"'):
            got.append(RolloutReport.model_validate_json(msg.payload))

    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.subscribe(f"{wire.TELEMETRY_ROOT}/#", qos=1)
    client.loop_start()
    return client, got


def test_a_canary_switched_on_and_off_mid_stream_loses_no_frame_and_mixes_no_robot(
    broker: MosquittoBroker, ingress: FrameIngress, model: InspectionModel, part_frames: list
) -> None:
    good = next(s.data for s in part_frames if s.label == "good")
    routed, kept = robots(broker, good, 0.5)
    watcher, got = reports(broker)
    threads = [threading.Thread(target=s.run, daemon=True) for s in routed + kept]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: all(len(s.answers) >= 5 for s in routed + kept), 30, "answers of the current model")
        canary = RolloutSpec(rollout_id=3, step=0, stage="canary", share=0.5)
        ingress.set_candidate(canary, fails_everything(model), CANDIDATE)
        marks = {id(s): len(s.answers) for s in routed + kept}
        wait_until(lambda: all(len(s.answers) >= marks[id(s)] + 10 for s in routed + kept), 30, "canary answers")
        ingress.set_candidate(None)  # rolled back
        marks = {id(s): len(s.answers) for s in routed + kept}
        wait_until(lambda: all(len(s.answers) >= marks[id(s)] + 10 for s in routed + kept), 30, "answers after it")
        wait_until(lambda: got, 10, "a rollout report on the telemetry topic")
    finally:
        for s in routed + kept:
            s.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for s in routed + kept:
            s.client.close()
        watcher.loop_stop()

    for s in routed + kept:
        assert (s.lost, len(s.verdicts())) == (0, s.sent), (s.client.robot, s.sent, s.answers)
    for s in kept:
        assert s.runs() == [CURRENT], s.runs()
    for s in routed:
        assert s.runs() == [CURRENT, CANDIDATE, CURRENT], s.runs()
        assert {a.verdict for a in s.verdicts() if a.model == CANDIDATE} == {"fail"}
    candidate_verdicts = sum(1 for s in routed for a in s.verdicts() if a.model == CANDIDATE)
    assert sum(r.candidate.frames for r in got) == candidate_verdicts
    assert sum(r.candidate.fails for r in got) == candidate_verdicts
    assert {(r.rollout_id, r.step) for r in got} == {(3, 0)}


def test_shadow_publishes_only_the_current_models_verdicts_and_reports_the_agreement(
    broker: MosquittoBroker, ingress: FrameIngress, model: InspectionModel, part_frames: list
) -> None:
    good = next(s.data for s in part_frames if s.label == "good")
    routed, kept = robots(broker, good, 0.5)
    watcher, got = reports(broker)
    ingress.set_candidate(RolloutSpec(rollout_id=4, step=0, stage="shadow"), fails_everything(model), CANDIDATE)
    try:
        for s in routed + kept:
            for _ in range(10):
                s.answers.append(s.client.inspect(s.frame, timeout_s=10))
        wait_until(lambda: sum(sum(r.agreement.values()) + r.shadow_skipped for r in got) >= 40, 20,
                   "every shadow frame compared or counted as skipped")  # fmt: skip
    finally:
        for s in routed + kept:
            s.client.close()
        watcher.loop_stop()
    assert all(len(s.verdicts()) == len(s.answers) == 10 for s in routed + kept)
    assert {a.model for s in routed + kept for a in s.verdicts()} == {CURRENT}
    assert {a.verdict for s in routed + kept for a in s.verdicts()} == {"pass"}
    compared = sum(sum(r.agreement.values()) for r in got)
    assert compared > 0 and {k for r in got for k in r.agreement} == {"pass/fail"}  # the candidate always disagrees
    assert sum(r.candidate.frames for r in got) == compared
