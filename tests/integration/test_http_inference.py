"""HTTP inference beside MQTT (issue 17, section 3): the Open Inference Protocol (KServe v2) served by the head's
gateway in front of a real Ray Serve slice, called with NVIDIA's tritonclient (a KServe v2 client Lineside did
not write) and with plain JSON, and compared with what a robot gets over MQTT for the same images."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import tritonclient.http as triton  # type: ignore[import-untyped]
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from contracts import wire
from contracts.slice_spec import BrokerSpec, FramePolicy, ReplicaSpec, ResourceSpec, SliceSpec
from edge_node import cluster, serving
from edge_node.broker import MosquittoBroker, free_port
from edge_node.http_gateway import Caller, ControlPlaneVerifier, Gateway, GatewayError, body_limit, create_app
from edge_node.profiling import ProfileResult
from models import synth
from robots.sdk import RobotClient
from tests.integration.cp_fixtures import BOOT, ControlPlane, RecordedServe, ok
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("ray_cluster")

POOL = [s.data for s in (synth.generate(7150, i) for i in range(24)) if s.encoding == "jpeg"][:8]
CALLERS = {
    "tok-acme-it": Caller("acme", "factory_it"),
    "tok-globex-it": Caller("globex", "factory_it"),
    "tok-acme-op": Caller("acme", "operator"),
}
AUTH = {"Authorization": "Bearer tok-acme-it"}
FAST = ProfileResult(frames_per_s_per_replica=300.0, cold_start_s=0.5)


class Served:
    def __init__(self, spec: SliceSpec, url: str, gateway: Gateway) -> None:
        self.spec, self.url, self.gateway = spec, url, gateway

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.spec.name}/infer"


@pytest.fixture
def served(broker: MosquittoBroker) -> Iterator[Served]:
    spec = SliceSpec(name="t-http", tenant="acme", lines=["line-1"], broker=BrokerSpec(port=broker.port),
                     replicas=ReplicaSpec(min_replicas=1, max_replicas=1), resources=ResourceSpec(cpus_per_replica=0.5),
                     frame_policy={"line-1": FramePolicy(max_fps=200, max_frame_bytes=200_000)},
                     telemetry_period_s=60)  # fmt: skip
    assert cluster.apply_slice(spec)
    gateway = Gateway(CALLERS.get, serving.model_caller, "edge-1", telemetry_period_s=0.5)
    gateway.update([spec])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, "the gateway's HTTP server to start")
    try:
        yield Served(spec, f"http://127.0.0.1:{port}", gateway)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gateway.close()
        cluster.delete_slice(spec.name)


def by_mqtt(broker: MosquittoBroker, images: list[bytes]) -> list[wire.Result | wire.ErrorReply]:
    robot = RobotClient(broker.host, broker.port, tenant="acme", line="line-1", robot="cam-1").connect()
    try:
        futures = [robot.send(image, timeout_s=30) for image in images]
        return [future.result() for future in futures]
    finally:
        robot.close()


def by_triton(served: Served, images: list[bytes]) -> list[dict[str, Any]]:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"), connection_timeout=30,
                                          network_timeout=60)  # fmt: skip
    try:
        tensor = triton.InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        result = client.infer(
            served.spec.name, [tensor], outputs=[triton.InferRequestedOutput("verdict")], headers=dict(AUTH)
        )  # fmt: skip  (tritonclient adds its own headers to the dict)
        return [json.loads(item) for item in result.as_numpy("verdict")]
    finally:
        client.close()


def test_a_kserve_client_gets_the_same_verdicts_as_a_robot_over_mqtt(served: Served, broker: MosquittoBroker) -> None:
    over_mqtt = by_mqtt(broker, POOL)
    over_http = by_triton(served, POOL)
    assert len(over_http) == len(over_mqtt) == len(POOL)
    for robot_got, mes_got in zip(over_mqtt, over_http, strict=True):
        assert isinstance(robot_got, wire.Result)
        http = wire.Result.model_validate(mes_got)  # the same verdict JSON, field for field
        assert (http.verdict, http.defect_class, http.model) == (robot_got.verdict, robot_got.defect_class,
                                                                  robot_got.model)  # fmt: skip
        assert http.score == pytest.approx(robot_got.score, abs=1e-4)
        assert (http.tenant, http.line, http.robot, http.slice) == ("acme", "line-1", "http", "t-http")
    # Plain JSON with base64 images works too, with the line and robot named; a bad image is a coded error.
    images = [base64.b64encode(POOL[0]).decode(), base64.b64encode(b"not an image").decode()]
    body = {"id": "bench-7", "parameters": {"line": "line-1"},
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": images}]}  # fmt: skip
    response = httpx.post(served.infer_url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    good, bad = (json.loads(item) for item in output["data"])
    first = over_mqtt[0]
    assert isinstance(first, wire.Result)
    assert good["verdict"] == first.verdict and good["robot"] == "http" and good["frame_id"] == "bench-7/0"
    assert bad["code"] == "unsupported_format" and "JPEG or PNG" in bad["detail"]


def test_the_endpoint_refuses_what_it_must_and_says_what_to_do(served: Served) -> None:
    image = base64.b64encode(POOL[0]).decode()
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image]}]}
    cases = [
        ({}, body, 401, "Authorization: Bearer"),
        ({"Authorization": "Bearer nobody"}, body, 401, "unknown, revoked or expired"),
        ({"Authorization": "Bearer tok-globex-it"}, body, 404, "no model 't-http'"),  # another tenant's slice
        ({"Authorization": "Bearer tok-acme-op"}, body, 403, "runs no inspections"),
        (AUTH, {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "BYTES"),
        (AUTH, {"inputs": [{"name": "image", "shape": [33], "datatype": "BYTES", "data": [image] * 33}]}, 413,
         "1 to 32"),
        (AUTH, {**body, "parameters": {"line": "line-9"}}, 400, "line 'line-9' is not served"),
        (AUTH, {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, 400, "base64"),
    ]  # fmt: skip
    for headers, payload, status, words in cases:
        response = httpx.post(served.infer_url, json=payload, headers=headers, timeout=30)
        assert response.status_code == status, (payload, response.text)
        assert words in response.json()["error"], response.text
    assert httpx.post(served.infer_url, content=b"{", headers=AUTH, timeout=30).status_code == 400
    huge = httpx.post(served.infer_url, content=b"x" * (body_limit(served.spec) + 1), headers=AUTH, timeout=60)
    assert huge.status_code == 413
    meta = httpx.get(f"{served.url}/v2/models/t-http", headers=AUTH, timeout=10).json()
    assert meta["inputs"][0]["datatype"] == "BYTES" and meta["parameters"]["lines"] == ["line-1"]
    assert httpx.get(f"{served.url}/v2/health/ready", timeout=10).json() == {"ready": True}


def test_http_frames_are_metered_on_the_lines_telemetry(served: Served, broker: MosquittoBroker) -> None:
    """What the control plane bills: the gateway's telemetry windows on the slice's line topic."""
    windows: list[wire.Telemetry] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    listener.on_message = lambda _c, _u, m: windows.append(wire.Telemetry.model_validate_json(m.payload))
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.connect(broker.host, broker.port)
    listener.loop_start()
    try:
        listener.subscribe(wire.telemetry_topic("acme", "line-1", "t-http"), qos=1)
        assert subscribed.wait(5)
        by_triton(served, POOL[:5])
        bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                           "data": [base64.b64encode(b"\xff\xd8\xff broken").decode()]}]}  # fmt: skip
        assert httpx.post(served.infer_url, json=bad, headers=AUTH, timeout=30).status_code == 200
        http_windows = lambda: [w for w in windows if w.replica == "lineside-t-http.http"]  # noqa: E731
        wait_until(lambda: sum(w.frames + w.errors for w in http_windows()) >= 6, 10, "the gateway's telemetry")
        time.sleep(1.0)  # a window more: nothing is counted twice
        frames = sum(w.frames for w in http_windows())
        errors = {code: n for w in http_windows() for code, n in w.error_codes.items()}
        assert frames == 5 and errors == {wire.ErrorCode.BAD_IMAGE: 1}
        assert all(set(w.robots) == {"http"} for w in http_windows())
    finally:
        listener.loop_stop()
        listener.disconnect()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_gateway_checks_tokens_with_the_control_plane(control_plane: ControlPlane) -> None:
    """``ControlPlaneVerifier`` against the real control plane (``POST /agent/v1/callers``, as the head node)."""
    cp = control_plane
    join = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": join, "hostname": "edge-1", "cpus": 4, "memory_mb": 16000}
    node = ok(cp.client.post("/agent/v1/join", json=body), 201)
    as_node = {"Authorization": f"Bearer {node['node_token']}"}
    verify = ControlPlaneVerifier(cp.client, lambda: as_node, ttl_s=0.0)
    it_token = cp.a.it["Authorization"].removeprefix("Bearer ")
    assert verify(it_token) == Caller("acme", "factory_it")
    assert verify("ls_not-a-real-token-at-all") is None
    assert verify(BOOT) is None  # the operator belongs to no tenant: it runs no inspections
    # A token made and revoked: refused at the next check (ttl 0 here; 30 s by default).
    made = ok(cp.client.post("/users/me/tokens", json={"name": "mes"}, headers=cp.a.it), 201)
    assert verify(made["token"]) == Caller("acme", "factory_it")
    assert cp.client.delete(f"/users/me/tokens/{made['id']}", headers=cp.a.it).status_code == 204
    assert verify(made["token"]) is None
    # Only nodes ask: a tenant's own token is no node token.
    refused = cp.client.post("/agent/v1/callers", json={"token": it_token}, headers=cp.a.it)
    assert refused.status_code == 401
    # A node the site removed is told so (503 to the caller), not that the caller's token is unknown.
    removed = ControlPlaneVerifier(cp.client, lambda: {"Authorization": "Bearer not-a-node"}, ttl_s=0.0)
    with pytest.raises(GatewayError) as not_a_node:
        removed(it_token)
    assert not_a_node.value.status == 503 and "not registered" in not_a_node.value.detail
    # The control plane away: a token it vouched for keeps working for the grace period, an unknown one does not.
    away = ControlPlaneVerifier(httpx.Client(base_url="http://127.0.0.1:9", timeout=1.0), lambda: as_node, ttl_s=0.0)
    away._known = OrderedDict(verify._known)  # what the head's verifier had learnt before the office network went down
    assert away(it_token) == Caller("acme", "factory_it")
    with pytest.raises(GatewayError) as refused_offline:
        away("ls_never-seen-before-token")
    assert refused_offline.value.status == 503


class RecordedGateway:
    """The agent's side of the gateway: what it was told to serve after each pass."""

    def __init__(self) -> None:
        self.served: list[list[SliceSpec]] = []

    def update(self, specs: list[SliceSpec]) -> None:
        self.served.append(list(specs))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_head_agent_tells_its_gateway_the_slices_it_runs_as_it_runs_them(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    """After each pass the gateway serves exactly the applied slices, with the broker login and local model the
    ingress got; a restarted agent, which re-applies nothing, tells it the same; a deleted slice leaves it."""
    from edge_node.agent import Agent, join

    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    recorded = RecordedServe()

    def agent(gateway: RecordedGateway) -> Agent:
        return Agent(cp.client, node["node_token"], tmp_path / "agent", profiler=lambda *_a, **_k: FAST,
                     gateway=gateway, **recorded.agent_options())  # type: ignore[arg-type]  # fmt: skip

    first = RecordedGateway()
    agent(first).step()
    served = {s.name: s for s in first.served[-1]}
    assert set(served) == {s.name for s in recorded.applied} and len(served) == 2  # acme's and globex's
    assert served == {s.name: s for s in recorded.applied}  # the very specs applied (password, manifest, sizing)
    assert all(s.broker.password is not None and s.manifest is not None for s in served.values())
    restarted = RecordedGateway()
    recorded.applied.clear()
    agent(restarted).step()
    assert recorded.applied == [] and {s.name for s in restarted.served[-1]} == set(served)
    ok(cp.client.delete(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
    agent(restarted).step()
    assert [s.tenant for s in restarted.served[-1]] == ["globex"]
