"""Verdicts to PLCs: a line's answers from MQTT as OPC UA variables (issue 17, section 2).

A reject gate's PLC speaks OPC UA, not MQTT. ``lineside bridge opcua`` subscribes to one line's results and
errors with the line's read-only watch login and serves them from an OPC UA server (asyncua) the PLC reads
or subscribes to. Optionally it also writes each verdict to a node of the PLC's own OPC UA server (client
mode), for PLCs that take values rather than subscribe.

Address space (namespace ``urn:lineside:verdicts``; every node id is a string, so a PLC program addresses
them by name, and they do not change across restarts)::

    Objects/Lineside/<tenant>.<line>                     ns=<i>;s=<tenant>.<line>
        <robot>                                           ns=<i>;s=<tenant>.<line>.<robot>
            Verdict       String    "pass", "fail" or "error" (the frame got no verdict: see ErrorCode)
            DefectClass   String    the most likely defect on fail, else ""
            Score         Double    the model's confidence in the verdict, 0..1
            FrameId       String    the frame's id (the robot's correlation data)
            Timestamp     DateTime  when the bridge received the answer (UTC)
            ErrorCode     String    the wire error code of an "error" answer, else ""
            PassCount, FailCount, ErrorCount   UInt64  answers since the bridge started
            RejectPulse   Boolean   true for ``pulse_ms`` after each "fail", then false again
        Robots            UInt32    robots seen on the line so far

A robot's node appears with its first answer. The variables are read-only to clients. Everything that
arrives is bounded and validated (``MAX_MESSAGE_BYTES``, ``contracts.wire``) before a node changes: a
malformed message is counted in the log and changes nothing.

Security: with a certificate and private key the server offers Basic256Sha256 (sign, and sign and encrypt)
and no unsecured endpoint unless asked; with a user name it refuses anonymous sessions and checks the
password (constant time). Credentials come from the environment, never from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from asyncua import Client, Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from contracts import wire

log = logging.getLogger(__name__)

NAMESPACE = "urn:lineside:verdicts"
APPLICATION_URI = "urn:lineside:opcua-bridge"
"""The server's application URI; its certificate names it (``make_certificate``), as OPC UA clients check."""
MAX_MESSAGE_BYTES = 64 * 1024
"""The largest result or error message the bridge reads (a verdict is under 2 KB; boxes add some)."""


@dataclass(frozen=True)
class BrokerLogin:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None


@dataclass(frozen=True)
class Security:
    """The OPC UA server's security: a certificate and key (PEM or DER) and one user, or none of them."""

    certificate: Path | None = None
    private_key: Path | None = None
    user: str | None = None
    password: str | None = None
    allow_insecure: bool = False  # an unsecured endpoint beside the secure ones (test benches)


@dataclass(frozen=True)
class PlcTarget:
    """Client mode: write each verdict's fail flag (Boolean) to ``node`` on the PLC's server at ``endpoint``."""

    endpoint: str
    node: str
    user: str | None = None
    password: str | None = None


class OneUser(UserManager):
    """Accepts exactly one user name and password (a reader, never an admin); refuses anonymous and
    certificate-only sessions. Without a name (``name`` None) it accepts anonymous readers and no user at all:
    asyncua's own default would make anyone who says "admin", with any password, an administrator who may
    write the verdicts."""

    def __init__(self, name: str | None, password: str | None) -> None:
        self._name = name.encode() if name is not None else None
        self._password = (password or "").encode()

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:  # fmt: skip
        if self._name is None:
            return User(role=UserRole.User) if username is None else None
        if username is None or password is None:
            return None
        same_name = hmac.compare_digest(username.encode(), self._name)
        same_password = hmac.compare_digest(password.encode(), self._password)
        return User(role=UserRole.User, name=username) if same_name and same_password else None


@dataclass
class RobotNodes:
    """One robot's variables."""

    verdict: Node
    defect_class: Node
    score: Node
    frame_id: Node
    timestamp: Node
    error_code: Node
    counts: dict[str, Node]
    reject_pulse: Node
    counted: dict[str, int] = field(default_factory=lambda: {"pass": 0, "fail": 0, "error": 0})
    pulse_task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class Answer:
    """A validated result or error from MQTT, as the bridge shows it."""

    robot: str
    verdict: str  # pass, fail or error
    defect_class: str
    score: float
    frame_id: str
    error_code: str
    received_at: datetime


def parse_answer(topic: str, payload: bytes, tenant: str, line: str) -> Answer:
    """A message on one of the line's result or error topics as an ``Answer``; raises ``ValueError`` for
    anything else (another line's topic, an oversized or malformed message)."""
    where = wire.parse_topic(topic)
    if (where.tenant, where.line) != (tenant, line):
        raise ValueError(f"{topic} is not on line {tenant}/{line}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{len(payload)} bytes on {topic}; at most {MAX_MESSAGE_BYTES}")
    now = datetime.now(UTC)
    try:
        if where.kind is wire.TopicKind.RESULTS:
            result = wire.Result.model_validate_json(payload)
            return Answer(where.robot, result.verdict, result.defect_class or "", result.score, result.frame_id,
                          "", now)  # fmt: skip
        if where.kind is wire.TopicKind.ERRORS:
            error = wire.ErrorReply.model_validate_json(payload)
            return Answer(where.robot, "error", "", 0.0, error.frame_id, error.code.value, now)
    except ValidationError as e:
        raise ValueError(f"malformed {where.kind.value} message on {topic} ({e.error_count()} error(s))") from None
    raise ValueError(f"{topic} is neither results nor errors")


class OpcUaBridge:
    """The OPC UA server for one line, fed from MQTT; ``run`` serves until ``stop`` is set."""

    def __init__(self, broker: BrokerLogin, tenant: str, line: str, endpoint: str, *,
                 security: Security | None = None, pulse_ms: int = 500, plc: PlcTarget | None = None,
                 on_answer: Callable[[Answer], None] | None = None) -> None:  # fmt: skip
        self.broker, self.tenant, self.line, self.endpoint = broker, tenant, line, endpoint
        self.security = security or Security()
        self.pulse_s = pulse_ms / 1000
        self.plc = plc
        self.on_answer = on_answer
        self.ready = threading.Event()
        self.malformed = 0
        self._robots: dict[str, RobotNodes] = {}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plc_node: Node | None = None

    def _id(self, name: str) -> str:
        """A string node id in the bridge's namespace (stable across restarts: PLC programs name it)."""
        return f"ns={self.ns};s={name}"

    @property
    def line_id(self) -> str:
        return f"{self.tenant}.{self.line}"

    async def _server(self) -> Server:
        sec = self.security
        server = Server(user_manager=OneUser(sec.user, sec.password))
        await server.init()
        server.allow_remote_admin(False)
        await server.set_application_uri(APPLICATION_URI)
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"Lineside verdicts {self.line_id}")
        if sec.certificate and sec.private_key:
            await server.load_certificate(str(sec.certificate))
            await server.load_private_key(str(sec.private_key))
            policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign]
            if sec.allow_insecure:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
        elif not sec.allow_insecure:
            raise ValueError("an OPC UA server without a certificate is unsecured: give --certificate and "
                             "--private-key, or --allow-insecure for a test bench")  # fmt: skip
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_security_IDs(["Username"] if sec.user else ["Anonymous"])
        self.ns = await server.register_namespace(NAMESPACE)
        root = await server.nodes.objects.add_folder(self._id("Lineside"), "Lineside")
        self._line = await root.add_object(self._id(self.line_id), self.line_id)
        self._robot_count = await self._line.add_variable(self._id(f"{self.line_id}.Robots"), "Robots",
                                                          0, ua.VariantType.UInt32)  # fmt: skip
        return server

    async def _robot(self, robot: str) -> RobotNodes:
        if robot in self._robots:
            return self._robots[robot]
        base = f"{self.line_id}.{robot}"
        obj = await self._line.add_object(self._id(base), robot)

        async def var(name: str, value: Any, kind: ua.VariantType) -> Node:
            return await obj.add_variable(self._id(f"{base}.{name}"), name, value, kind)

        nodes = RobotNodes(
            verdict=await var("Verdict", "", ua.VariantType.String),
            defect_class=await var("DefectClass", "", ua.VariantType.String),
            score=await var("Score", 0.0, ua.VariantType.Double),
            frame_id=await var("FrameId", "", ua.VariantType.String),
            timestamp=await var("Timestamp", datetime.now(UTC), ua.VariantType.DateTime),
            error_code=await var("ErrorCode", "", ua.VariantType.String),
            counts={
                k: await var(f"{k.capitalize()}Count", 0, ua.VariantType.UInt64) for k in ("pass", "fail", "error")
            },
            reject_pulse=await var("RejectPulse", False, ua.VariantType.Boolean),
        )
        self._robots[robot] = nodes
        await self._robot_count.write_value(len(self._robots), ua.VariantType.UInt32)
        log.info("robot %s on line %s: first answer, nodes ns=%d;s=%s.*", robot, self.line_id, self.ns, base)
        return nodes

    async def _show(self, answer: Answer) -> None:
        nodes = await self._robot(answer.robot)
        # The counter and the details first, the verdict last: a PLC that reads on the verdict's change
        # finds the rest of the answer already there.
        nodes.counted[answer.verdict] += 1
        await nodes.counts[answer.verdict].write_value(nodes.counted[answer.verdict], ua.VariantType.UInt64)
        await nodes.defect_class.write_value(answer.defect_class, ua.VariantType.String)
        await nodes.score.write_value(float(answer.score), ua.VariantType.Double)
        await nodes.frame_id.write_value(answer.frame_id, ua.VariantType.String)
        await nodes.error_code.write_value(answer.error_code, ua.VariantType.String)
        await nodes.timestamp.write_value(answer.received_at, ua.VariantType.DateTime)
        await nodes.verdict.write_value(answer.verdict, ua.VariantType.String)
        if answer.verdict == "fail":
            await self._pulse(nodes)
        if self._plc_node is not None:
            try:
                await self._plc_node.write_value(answer.verdict == "fail", ua.VariantType.Boolean)
            except Exception as e:  # the PLC's fault or its network's: the bridge keeps serving
                log.warning("writing the verdict to the PLC's node %s failed: %s", self.plc.node if self.plc else "",
                            type(e).__name__)  # fmt: skip
        if self.on_answer is not None:
            self.on_answer(answer)

    async def _pulse(self, nodes: RobotNodes) -> None:
        if nodes.pulse_task is not None:
            nodes.pulse_task.cancel()  # a fail during the pulse extends it
        await nodes.reject_pulse.write_value(True, ua.VariantType.Boolean)

        async def end() -> None:
            await asyncio.sleep(self.pulse_s)
            await nodes.reject_pulse.write_value(False, ua.VariantType.Boolean)

        nodes.pulse_task = asyncio.create_task(end())

    def _mqtt(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.broker.username or "",
                             protocol=mqtt.MQTTv5)  # fmt: skip
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls_ca:
            client.tls_set(ca_certs=self.broker.tls_ca)
        filters = [wire.line_filter(self.tenant, self.line, kind) for kind in (wire.TopicKind.RESULTS,
                                                                                wire.TopicKind.ERRORS)]  # fmt: skip

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if reason.is_failure:
                log.warning("broker refused the bridge's login (%s): check the line's watch credentials", reason)
                return
            c.subscribe([(f, 0) for f in filters])
            log.info("bridge subscribed to %s", ", ".join(filters))

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._enqueue, message.topic, bytes(message.payload))

        client.on_connect, client.on_message = on_connect, on_message
        client.reconnect_delay_set(1, 10)
        return client

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((topic, payload))
        except asyncio.QueueFull:  # the server cannot keep up: the oldest answers are the least useful
            self._queue.get_nowait()
            self._queue.put_nowait((topic, payload))

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        server = await self._server()
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(server)
            if self.plc is not None:
                plc = Client(self.plc.endpoint)
                if self.plc.user:
                    plc.set_user(self.plc.user)
                    plc.set_password(self.plc.password or "")
                await stack.enter_async_context(plc)
                self._plc_node = plc.get_node(self.plc.node)
            client = self._mqtt()
            client.connect_async(self.broker.host, self.broker.port, keepalive=30)
            client.loop_start()
            stack.callback(client.loop_stop)
            stack.callback(client.disconnect)
            log.info("OPC UA bridge for line %s serving on %s", self.line_id, self.endpoint)
            self.ready.set()
            while not stop.is_set():
                try:
                    topic, payload = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    continue
                try:
                    answer = parse_answer(topic, payload, self.tenant, self.line)
                except ValueError as e:
                    self.malformed += 1
                    log.warning("ignored a message: %s", e)
                    continue
                await self._show(answer)


def run_bridge(bridge: OpcUaBridge, stop: threading.Event) -> None:
    """Serve ``bridge`` in this thread until ``stop`` is set (the CLI's Ctrl-C, a test's end)."""

    async def main() -> None:
        done = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.1)
            done.set()

        watcher = asyncio.create_task(watch())
        try:
            await bridge.run(done)
        finally:
            watcher.cancel()

    asyncio.run(main())


def wait_ready(bridge: OpcUaBridge, thread: threading.Thread, timeout_s: float = 30.0) -> None:
    """Block until ``bridge`` serves; raises ``RuntimeError`` if its thread ended first."""
    deadline = time.monotonic() + timeout_s
    while not bridge.ready.wait(0.1):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the OPC UA bridge did not start (see its log)")


async def make_certificate(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed server certificate (DER) and its private key (PEM) in ``directory``, for
    ``APPLICATION_URI`` on ``hostname``; existing valid ones are kept. Returns (certificate, key)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "opcua-bridge.der", directory / "opcua-bridge.key.pem"
    await setup_self_signed_certificate(key, certificate, APPLICATION_URI, hostname,
                                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"organizationName": "Lineside"})  # fmt: skip
    key.chmod(0o600)
    return certificate, key
