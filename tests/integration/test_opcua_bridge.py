"""The OPC UA bridge (issue 17, section 2) against a real Mosquitto, real ``mosquitto_pub`` and a real asyncua
client, with generated certificates: what a PLC sees of a line's verdicts, and how fast."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from asyncua import Client, Server, ua
from paho.mqtt.enums import CallbackAPIVersion

from bridges.opcua import (
    Answer,
    BrokerLogin,
    OpcUaBridge,
    PlcTarget,
    Security,
    make_certificate,
    parse_answer,
    run_bridge,
    wait_ready,
)
from contracts import wire
from edge_node.broker import MosquittoBroker, free_port
from tests.integration.cp_fixtures import ControlPlane, ok

TENANT, LINE = "acme", "line-1"
USER, PASSWORD = "reject-gate", "plc-password-1"


def result(robot: str, verdict: str, frame_id: str, defect: str | None = None) -> bytes:
    body = wire.Result(frame_id=frame_id, tenant=TENANT, line=LINE, robot=robot, slice="inspect", node="edge-1",
                       verdict=verdict, defect_class=defect, score=0.93, fail_score=0.93 if defect else 0.07,
                       scores={"ok": 0.07, "scratch": 0.93} if defect else {"ok": 0.93}, model="part-inspector:1.0.0",
                       timings_ms=wire.Timings(queue=1.0, inference=2.0, total=3.5))  # fmt: skip
    return body.model_dump_json().encode()


def results_topic(robot: str, kind: wire.TopicKind = wire.TopicKind.RESULTS) -> str:
    return wire.topic(TENANT, LINE, robot, kind)


@dataclass
class Running:
    bridge: OpcUaBridge
    endpoint: str
    certificate: Path
    client_certificate: Path
    client_key: Path
    answers: list[Answer]


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    server_cert, server_key = asyncio.run(make_certificate(tmp_path / "server", "localhost"))
    client_cert, client_key = asyncio.run(make_certificate(tmp_path / "client", "localhost"))
    return server_cert, server_key, client_cert, client_key


def start(bridge: OpcUaBridge) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run_bridge, args=(bridge, stop), name="opcua-bridge", daemon=True)
    thread.start()
    wait_ready(bridge, thread)
    yield
    stop.set()
    thread.join(timeout=15)
    assert not thread.is_alive(), "the bridge did not stop"


@pytest.fixture
def running(broker: MosquittoBroker, certificates: tuple[Path, Path, Path, Path]) -> Iterator[Running]:
    server_cert, server_key, client_cert, client_key = certificates
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
    answers: list[Answer] = []
    bridge = OpcUaBridge(BrokerLogin(broker.host, broker.port), TENANT, LINE, endpoint,
                         security=Security(server_cert, server_key, USER, PASSWORD), pulse_ms=300,
                         on_answer=answers.append)  # fmt: skip
    for _ in start(bridge):
        yield Running(bridge, endpoint, server_cert, client_cert, client_key, answers)


def secure_client(running: Running, user: str | None = USER, password: str | None = PASSWORD) -> Client:
    client = Client(running.endpoint, timeout=10)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


@contextlib.asynccontextmanager
async def session(running: Running) -> AsyncIterator[Client]:
    """An encrypted session of the configured user, as the PLC opens it."""
    client = secure_client(running)
    await connect(client, running)
    try:
        yield client
    finally:
        await client.disconnect()


async def connect(client: Client, running: Running) -> None:
    await client.set_security_string(
        f"Basic256Sha256,SignAndEncrypt,{running.client_certificate},{running.client_key},{running.certificate}"
    )
    await client.connect()


def mosquitto_pub(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-s", "-q", "1"],
                   input=payload, check=True, timeout=10)  # fmt: skip


async def wait_value(node: Any, wanted: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = await node.read_value()
        except ua.uaerrors.BadNodeIdUnknown:  # a robot's nodes appear with its first answer
            value = None
        if value == wanted:
            return value
        assert time.monotonic() < deadline, f"{node} is {value!r}, not {wanted!r}"
        await asyncio.sleep(0.05)


def test_a_plc_reads_each_robots_verdicts_counters_and_reject_pulse(running: Running, broker: MosquittoBroker) -> None:
    ns_line = f"{TENANT}.{LINE}"

    async def scenario() -> None:
        async with session(running) as client:
            ns = await client.get_namespace_index("urn:lineside:verdicts")
            mosquitto_pub(broker, results_topic("cam-1"), result("cam-1", "pass", "f-1"))
            cam = f"ns={ns};s={ns_line}.cam-1"
            verdict = client.get_node(f"{cam}.Verdict")
            await wait_value(verdict, "pass")
            mosquitto_pub(broker, results_topic("cam-1"), result("cam-1", "fail", "f-2", "scratch"))
            await wait_value(verdict, "fail")
            assert await client.get_node(f"{cam}.DefectClass").read_value() == "scratch"
            assert await client.get_node(f"{cam}.FrameId").read_value() == "f-2"
            assert await client.get_node(f"{cam}.Score").read_value() == pytest.approx(0.93)
            assert await client.get_node(f"{cam}.RejectPulse").read_value() is True
            await wait_value(client.get_node(f"{cam}.RejectPulse"), False, timeout_s=5)  # 300 ms later
            error = wire.ErrorReply(frame_id="f-3", tenant=TENANT, line=LINE, robot="cam-1", slice="inspect",
                                    node="edge-1", code=wire.ErrorCode.BAD_IMAGE, detail="truncated")  # fmt: skip
            mosquitto_pub(broker, results_topic("cam-1", wire.TopicKind.ERRORS), error.model_dump_json().encode())
            await wait_value(verdict, "error")
            assert await client.get_node(f"{cam}.ErrorCode").read_value() == "bad_image"
            counts = [await client.get_node(f"{cam}.{k}Count").read_value() for k in ("Pass", "Fail", "Error")]
            assert counts == [1, 1, 1]
            # Hostile input changes nothing: malformed JSON, an oversized message, another line's robot.
            mosquitto_pub(broker, results_topic("cam-1"), b'{"verdict": "pass"')
            mosquitto_pub(broker, results_topic("cam-1"), b"x" * 70_000)
            mosquitto_pub(broker, results_topic("cam-2"), result("cam-2", "pass", "f-9"))
            await wait_value(client.get_node(f"ns={ns};s={ns_line}.Robots"), 2)
            assert await verdict.read_value() == "error" and running.bridge.malformed == 2
            # Clients read; they never write a verdict.
            with pytest.raises(ua.UaStatusCodeError):
                await verdict.write_value("pass")

    asyncio.run(scenario())


def test_only_encrypted_sessions_of_the_configured_user_get_in(running: Running) -> None:
    async def scenario() -> None:
        endpoints = await Client(running.endpoint, timeout=10).connect_and_get_server_endpoints()
        modes = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
        assert modes == {("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
                         ("Basic256Sha256", ua.MessageSecurityMode.Sign)}  # no unsecured endpoint  # fmt: skip
        insecure = Client(running.endpoint, timeout=5)
        with pytest.raises(Exception):  # noqa: B017,PT011  (asyncua raises several kinds for a refused channel)
            await insecure.connect()
        for user, password in ((None, None), (USER, "wrong"), ("intruder", PASSWORD)):
            client = secure_client(running, user=user, password=password)
            with pytest.raises(ua.UaStatusCodeError):
                await connect(client, running)
            with contextlib.suppress(Exception):
                await client.disconnect()

    asyncio.run(scenario())


def test_latency_from_the_result_on_mqtt_to_the_opc_ua_value_change(running: Running, broker: MosquittoBroker) -> None:
    """A subscribed asyncua client (publishing interval 10 ms) sees each verdict change; printed as JSON and
    recorded in BENCHMARKS.md (no timing is asserted)."""
    samples = 60
    changed: dict[str, float] = {}

    class Handler:
        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            if value:
                changed.setdefault(value, time.perf_counter())

    async def scenario() -> list[float]:
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        sent: dict[str, float] = {}
        try:
            async with session(running) as client:
                ns = await client.get_namespace_index("urn:lineside:verdicts")
                publisher.publish(results_topic("cam-7"), result("cam-7", "pass", "warm"), qos=1).wait_for_publish()
                node = client.get_node(f"ns={ns};s={TENANT}.{LINE}.cam-7.FrameId")
                await wait_value(node, "warm")
                subscription = await client.create_subscription(10, Handler())
                await subscription.subscribe_data_change(node)
                for k in range(samples):
                    frame = f"f-{k}"
                    sent[frame] = time.perf_counter()
                    publisher.publish(results_topic("cam-7"), result("cam-7", "pass", frame), qos=1)
                    deadline = time.monotonic() + 10
                    while frame not in changed:
                        assert time.monotonic() < deadline, f"no value change for {frame}"
                        await asyncio.sleep(0.002)
                await subscription.delete()
        finally:
            publisher.loop_stop()
            publisher.disconnect()
        return [(changed[f] - sent[f]) * 1000 for f in sent]

    latencies = sorted(asyncio.run(scenario()))
    figures = {"benchmark": "opcua_bridge_latency", "samples": len(latencies),
               "p50_ms": round(statistics.median(latencies), 1),
               "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
               "max_ms": round(latencies[-1], 1), "publishing_interval_ms": 10}  # fmt: skip
    print(json.dumps(figures))
    assert len(latencies) == samples and all(v > 0 for v in latencies)


def test_client_mode_writes_each_verdict_to_the_plcs_own_node(
    broker: MosquittoBroker, certificates: tuple[Path, Path, Path, Path]
) -> None:
    """The PLC's OPC UA server (here an asyncua server with a writable Boolean) gets true on fail, false on pass."""
    plc_endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc_ready, plc_stop = threading.Event(), threading.Event()
    seen: list[bool] = []

    async def plc() -> None:
        server = Server()
        await server.init()
        server.set_endpoint(plc_endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        ns = await server.register_namespace("urn:plc")
        reject = await server.nodes.objects.add_variable(f"ns={ns};s=Reject", "Reject", False, ua.VariantType.Boolean)
        await reject.set_writable()
        async with server:
            plc_ready.set()
            last = None
            while not plc_stop.is_set():
                value = await reject.read_value()
                if value != last:
                    seen.append(value)
                    last = value
                await asyncio.sleep(0.01)

    plc_thread = threading.Thread(target=asyncio.run, args=(plc(),), daemon=True)
    plc_thread.start()
    assert plc_ready.wait(20)
    server_cert, server_key, *_ = certificates
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
    bridge = OpcUaBridge(BrokerLogin(broker.host, broker.port), TENANT, LINE, endpoint,
                         security=Security(server_cert, server_key),
                         plc=PlcTarget(plc_endpoint, "ns=2;s=Reject"))  # fmt: skip
    try:
        for _ in start(bridge):
            mosquitto_pub(broker, results_topic("cam-1"), result("cam-1", "fail", "f-1", "scratch"))
            deadline = time.monotonic() + 10
            while seen[-1:] != [True]:
                assert time.monotonic() < deadline, f"the PLC's node went {seen}"
                time.sleep(0.05)
            mosquitto_pub(broker, results_topic("cam-1"), result("cam-1", "pass", "f-2"))
            while seen[-1:] != [False] or len(seen) < 3:
                assert time.monotonic() < deadline, f"the PLC's node went {seen}"
                time.sleep(0.05)
    finally:
        plc_stop.set()
        plc_thread.join(timeout=10)
    assert seen == [False, True, False]


def test_a_message_from_another_line_or_malformed_is_refused_with_a_reason() -> None:
    good = result("cam-1", "pass", "f-1")
    answer = parse_answer(results_topic("cam-1"), good, TENANT, LINE)
    assert (answer.robot, answer.verdict, answer.frame_id) == ("cam-1", "pass", "f-1")
    cases = [
        (wire.topic(TENANT, "line-2", "cam-1", wire.TopicKind.RESULTS), good, "is not on line acme/line-1"),
        (results_topic("cam-1"), b"{}", "malformed results message"),
        (results_topic("cam-1"), b"x" * 70_000, "at most 65536"),
        (results_topic("cam-1", wire.TopicKind.STATUS), b"online", "neither results nor errors"),
        ("lineside/acme", good, "is not a Lineside robot topic"),
    ]
    for topic, payload, reason in cases:
        with pytest.raises(ValueError, match=reason):
            parse_answer(topic, payload, TENANT, LINE)


def test_the_bridge_logs_in_with_the_lines_watch_credentials_from_the_control_plane(
    control_plane: ControlPlane, certificates: tuple[Path, Path, Path, Path]
) -> None:
    """Factory IT asks the control plane for the line's watch login; the bridge serves with it what the slice
    answers on the site's dynsec broker."""
    from tests.integration.test_cp_broker import _ingress_answer

    cp = control_plane
    watch = ok(cp.client.post(f"/lines/{cp.a.line_id}/watcher", headers=cp.a.it))
    server_cert, server_key, client_cert, client_key = certificates
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
    login = BrokerLogin(watch["broker_host"], watch["broker_port"], watch["username"], watch["password"])
    answers: list[Answer] = []
    bridge = OpcUaBridge(login, TENANT, LINE, endpoint, security=Security(server_cert, server_key, USER, PASSWORD),
                         on_answer=answers.append)  # fmt: skip
    running = Running(bridge, endpoint, server_cert, client_cert, client_key, answers)
    for _ in start(bridge):
        deadline = time.monotonic() + 10
        while not answers:  # the bridge subscribes once connected: publish until it has the answer
            assert time.monotonic() < deadline, "the bridge received no answer with the line's watch login"
            _ingress_answer(cp, results_topic("cam-1"), who="a", answer=result("cam-1", "fail", "f-1", "scratch"))
            time.sleep(0.3)

        async def read() -> str:
            async with session(running) as client:
                ns = await client.get_namespace_index("urn:lineside:verdicts")
                return str(await client.get_node(f"ns={ns};s={TENANT}.{LINE}.cam-1.DefectClass").read_value())

        assert asyncio.run(read()) == "scratch"


def test_without_a_configured_user_no_one_becomes_an_admin_who_could_write_verdicts(
    broker: MosquittoBroker, certificates: tuple[Path, Path, Path, Path]
) -> None:
    """Review finding: asyncua's default user manager makes anyone named "admin" (any password) an administrator,
    who may write read-only nodes. The bridge's own manager admits anonymous readers only when no user is set."""
    server_cert, server_key, client_cert, client_key = certificates
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/lineside/"
    bridge = OpcUaBridge(BrokerLogin(broker.host, broker.port), TENANT, LINE, endpoint,
                         security=Security(server_cert, server_key))  # fmt: skip
    running = Running(bridge, endpoint, server_cert, client_cert, client_key, [])
    for _ in start(bridge):
        deadline = time.monotonic() + 10
        sent: list[Answer] = []
        bridge.on_answer = sent.append
        while not sent:  # the bridge subscribes once connected: publish until it has the answer
            assert time.monotonic() < deadline, "the bridge received no answer"
            mosquitto_pub(broker, results_topic("cam-1"), result("cam-1", "pass", "f-1"))
            time.sleep(0.3)

        async def scenario() -> None:
            admin = secure_client(running, user="admin", password="anything")
            with pytest.raises(ua.UaStatusCodeError):
                await connect(admin, running)
            with contextlib.suppress(Exception):
                await admin.disconnect()
            reader = secure_client(running, user=None)
            await connect(reader, running)
            try:
                ns = await reader.get_namespace_index("urn:lineside:verdicts")
                verdict = reader.get_node(f"ns={ns};s={TENANT}.{LINE}.cam-1.Verdict")
                assert await wait_value(verdict, "pass") == "pass"
                with pytest.raises(ua.UaStatusCodeError):
                    await verdict.write_value("fail")
            finally:
                await reader.disconnect()

        asyncio.run(scenario())
