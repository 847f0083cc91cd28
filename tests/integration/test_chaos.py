"""Chaos scenarios (issue 18) against a real slice: Ray Serve, ONNX Runtime, Mosquitto and simulated robots.

Each test is one fault from the issue's table with its invariant. Sized for CI (fewer robots and seconds than
the soak); ``lineside bench soak`` runs them at full size."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contracts import wire
from contracts.slice_spec import BrokerSpec, ReplicaSpec, SliceSpec
from edge_node import cluster
from edge_node.broker import MosquittoBroker
from models import synth

pytestmark = pytest.mark.usefixtures("ray_cluster")

POOL = [(s.label, s.data) for s in (synth.generate(6160, i) for i in range(24))]


@pytest.fixture
def deployed(broker: MosquittoBroker, request: pytest.FixtureRequest) -> Iterator[SliceSpec]:
    spec = SliceSpec(
        name=f"c-{request.node.name[5:25].replace('_', '-')}",
        tenant="acme",
        lines=["line-1"],
        broker=BrokerSpec(port=broker.port),
        replicas=ReplicaSpec(min_replicas=1, max_replicas=1),
    )
    cluster.apply_slice(spec)
    yield spec
    cluster.delete_slice(spec.name)


def _subscriber(broker: MosquittoBroker, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    """A plain MQTT subscriber of ``topic`` and what it has received so far."""
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, msg: got.append(bytes(msg.payload))
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    return client, got


def _close(client: mqtt.Client) -> None:
    client.loop_stop()
    client.disconnect()


def test_8_a_retained_frame_is_answered_and_never_handed_to_a_new_subscriber(
    broker: MosquittoBroker, deployed: SliceSpec
) -> None:
    """A robot (mosquitto_pub -r, a client we did not write) publishes a frame retained: it gets its verdict,
    and a subscriber that comes later receives no frame (the ingress cleared the broker's copy)."""
    frames = wire.topic("acme", "line-1", "cam-9", wire.TopicKind.FRAMES)
    results = wire.topic("acme", "line-1", "cam-9", wire.TopicKind.RESULTS)
    watcher, answers = _subscriber(broker, results)
    try:
        pub = shutil.which("mosquitto_pub") or "mosquitto_pub"
        command = [pub, "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-r", "-t", frames,
                   "-s"]  # fmt: skip
        subprocess.run(command, input=POOL[0][1], check=True, timeout=30)
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answers, "the retained frame got no answer"
        assert wire.Result.model_validate_json(answers[0]).verdict in ("pass", "fail")
        time.sleep(1)  # the clearing is published right after the answer
        late, received = _subscriber(broker, frames)
        time.sleep(2)
        _close(late)
        assert received == [], "a new subscriber received the retained frame"
        assert cluster.slice_stats(deployed).get("retained_frames_cleared") == 1
    finally:
        _close(watcher)
