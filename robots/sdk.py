"""Robot SDK: connect an inspection robot to Lineside and get verdicts for its frames.

    robot = RobotClient("broker.local", 1883, tenant="acme", line="line-1", robot="cam-7",
                        username="acme-cam-7", password="...").connect()
    reply = robot.inspect(open("part.jpg", "rb").read(), timeout_s=2.0)
    print(reply.verdict if isinstance(reply, Result) else reply.code)
    robot.close()

Frames go out at QoS 1 with their id as MQTT 5 correlation data. A frame with
no answer within ``timeout_s`` is sent again with the same id, waiting twice
as long each time (the slice answers a known id from memory and joins a retry
to the frame still in progress); every frame is reported exactly once, even
when the broker delivers an answer twice. The robot's retained status topic
says ``online`` while connected and ``offline`` (its will) after it vanishes.

A frame counts as accepted only when its answer arrives, never on the broker's
PUBACK: Mosquitto 2.0 acknowledges a frame it then drops because the slice's
queue is full (``max_queued_bytes``, see ``edge_node.broker``), so an unanswered
frame is resent and, after the last retry, reported with ``FrameLost``. A PUBACK
whose MQTT 5 reason code is a failure (quota exceeded, not authorized, ...) is a
refusal: the frame is resent after a pause while retries last, then reported with
``FrameRefused``. ``tls=True`` (or ``tls_ca``) connects over TLS, verifying the
broker with ``tls_ca`` or the system's CAs.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts import wire
from contracts.wire import ErrorReply, Result

log = logging.getLogger(__name__)

Reply = Result | ErrorReply


class FrameLost(TimeoutError):
    """No answer for a frame after every retry: the slice or broker is unreachable or overloaded."""


class FrameRefused(ConnectionError):
    """The broker refused the frame (a failure reason code on its PUBACK) on every try: nothing will judge it.

    ``reason`` is the broker's MQTT 5 reason, e.g. "Quota exceeded": send less, or later.
    """

    def __init__(self, frame_id: str, reason: str) -> None:
        super().__init__(f"frame {frame_id}: the broker refused it ({reason}); send it again later or send less")
        self.frame_id, self.reason = frame_id, reason


REFUSED_PAUSE_S = 0.5
"""Wait before resending a frame the broker refused."""


@dataclass
class _Pending:
    future: Future[Reply]
    payload: bytes
    properties: Properties
    sent_at: float
    deadline: float
    retries_left: int
    timeout_s: float


class RobotClient:
    """One robot's MQTT 5 connection to its site's broker."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tenant: str,
        line: str,
        robot: str,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 30,
        tls: bool = False,
        tls_ca: str | None = None,
    ) -> None:
        self.frames_topic = wire.topic(tenant, line, robot, wire.TopicKind.FRAMES)
        self._results_topic = wire.topic(tenant, line, robot, wire.TopicKind.RESULTS)
        self._errors_topic = wire.topic(tenant, line, robot, wire.TopicKind.ERRORS)
        self._status_topic = wire.topic(tenant, line, robot, wire.TopicKind.STATUS)
        self.robot = robot
        self._host, self._port, self._keepalive = host, port, keepalive_s
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._closing = threading.Event()
        self.duplicates = 0
        self.resent = 0
        self.refused = 0
        """PUBACKs with a failure reason code (each try counts)."""
        self._mids: dict[int, str] = {}
        """Message id of each frame's latest publish -> frame id, to match PUBACKs."""
        self._early: dict[int, Any] = {}
        """Failure PUBACKs that arrived before ``send`` recorded the message id."""
        self._mids_lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or f"{tenant}-{line}-{robot}", protocol=mqtt.MQTTv5
        )
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        if username:
            self._client.username_pw_set(username, password)
        if tls or tls_ca:
            self._client.tls_set(ca_certs=tls_ca)
        self._client.will_set(self._status_topic, "offline", qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._watchdog = threading.Thread(target=self._retry_loop, name=f"{robot}-retry", daemon=True)

    # --- connection ----------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> RobotClient:
        """Connect, subscribe to this robot's results and errors, and announce ``online``."""
        self._client.connect_async(self._host, self._port, self._keepalive, clean_start=True)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self._client.loop_stop()
            raise ConnectionError(
                f"robot {self.robot} could not connect to {self._host}:{self._port} within {timeout_s:.0f}s: "
                "check the broker address and the robot's credentials"
            )
        self._watchdog.start()
        return self

    def close(self) -> None:
        """Announce ``offline`` and disconnect; frames still pending fail with ``FrameLost``."""
        self._closing.set()
        if self._connected.is_set():
            try:
                self._client.publish(self._status_topic, "offline", qos=1, retain=True).wait_for_publish(timeout=5)
            except (RuntimeError, ValueError) as e:  # the broker went first; its copy of the will says offline
                log.info("robot %s could not announce offline (%s)", self.frames_topic, e)
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            pending, self._pending = self._pending, {}
        for frame_id, entry in pending.items():
            entry.future.set_exception(FrameLost(f"frame {frame_id}: client closed before an answer came"))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused robot %s: %s", self.robot, reason)
            return
        self._connected.set()
        client.subscribe([(self._results_topic, 1), (self._errors_topic, 1)])
        client.publish(self._status_topic, "online", qos=1, retain=True)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()
        else:
            log.error("robot %s may not subscribe to its own results: %s", self.robot, reasons)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._closing.is_set():
            log.warning("robot %s lost the broker (%s); reconnecting", self.robot, reason)

    # --- frames ------------------------------------------------------------------

    def send(
        self,
        frame: bytes,
        *,
        frame_id: str | None = None,
        user_properties: dict[str, str] | None = None,
        timeout_s: float = 5.0,
        retries: int = 2,
    ) -> Future[Reply]:
        """Publish a frame; the future resolves with its result or error, or ``FrameLost``."""
        frame_id = frame_id or f"{self.robot}-{time.time_ns():x}-{next(self._ids)}"
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = frame_id.encode()
        if user_properties:
            props.UserProperty = list(user_properties.items())
        future: Future[Reply] = Future()
        now = time.monotonic()
        with self._lock:
            if frame_id in self._pending:
                raise ValueError(f"frame id {frame_id!r} is already awaiting an answer")
            self._pending[frame_id] = _Pending(future, frame, props, now, now + timeout_s, retries, timeout_s)
        self._publish(frame_id, frame, props)
        return future

    def inspect(self, frame: bytes, *, frame_id: str | None = None, timeout_s: float = 5.0, retries: int = 2) -> Reply:
        """Send a frame and wait for its answer (raises ``FrameLost`` after all retries)."""
        return self.send(frame, frame_id=frame_id, timeout_s=timeout_s, retries=retries).result()

    @property
    def in_flight(self) -> int:
        """Frames sent and not yet answered."""
        return len(self._pending)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            schema = Result if msg.topic == self._results_topic else ErrorReply
            reply: Reply = schema.model_validate_json(msg.payload)
        except ValueError as e:
            log.warning("robot %s ignored an unreadable answer on %s: %s", self.robot, msg.topic, e)
            return
        with self._lock:
            entry = self._pending.pop(reply.frame_id, None)
        if entry is None:
            self.duplicates += 1  # a retried frame answered twice at the MQTT level: report it once
            return
        if isinstance(reply, ErrorReply) and reply.code is wire.ErrorCode.INTERNAL and entry.retries_left > 0:
            self._resend(reply.frame_id, entry)
            return
        entry.future.set_result(reply)

    def _resend(self, frame_id: str, entry: _Pending) -> None:
        entry.retries_left -= 1
        entry.timeout_s *= 2  # back off: a slow slice must not be buried under retries
        entry.deadline = time.monotonic() + entry.timeout_s
        with self._lock:
            self._pending[frame_id] = entry
        self.resent += 1
        self._publish(frame_id, entry.payload, entry.properties)

    def _publish(self, frame_id: str, payload: bytes, props: Properties) -> None:
        """Publish (never under ``_lock``: paho calls ``_on_publish`` holding its own lock)."""
        info = self._client.publish(self.frames_topic, payload, qos=1, properties=props)
        with self._mids_lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._mids[info.mid] = frame_id
        if early is not None and early.is_failure:
            self._refused(frame_id, early)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._mids_lock:
            frame_id = self._mids.pop(mid, None)
            if frame_id is None:
                if reason.is_failure:  # successes need no note; the status publishes' land here too
                    self._early[mid] = reason
                return
        if reason.is_failure:
            self._refused(frame_id, reason)

    def _refused(self, frame_id: str, reason: Any) -> None:
        """The broker refused this try: pause and resend while retries last, else report it."""
        self.refused += 1
        log.warning("broker refused frame %s of robot %s: %s", frame_id, self.robot, reason)
        with self._lock:
            entry = self._pending.get(frame_id)
            if entry is not None and entry.retries_left > 0:
                entry.deadline = min(entry.deadline, time.monotonic() + REFUSED_PAUSE_S)  # the retry loop resends
                return
            self._pending.pop(frame_id, None)
        if entry is not None:
            entry.future.set_exception(FrameRefused(frame_id, str(reason)))

    def _retry_loop(self) -> None:
        while not self._closing.wait(0.1):
            now = time.monotonic()
            with self._lock:
                overdue = [(fid, e) for fid, e in self._pending.items() if e.deadline <= now]
                for fid, _ in overdue:
                    del self._pending[fid]
            for frame_id, entry in overdue:
                if entry.retries_left > 0:
                    self._resend(frame_id, entry)
                else:
                    entry.future.set_exception(FrameLost(f"frame {frame_id}: no answer after all retries"))
