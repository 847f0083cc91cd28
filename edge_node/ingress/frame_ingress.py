"""MQTT side of a slice: consume frames, micro-batch them to the model, publish verdicts.

No Ray here: the model is reached through an ``infer`` callable (a Serve
handle in production, an in-process model in tests), so this module runs and
is tested against a real broker without a cluster.

Delivery guarantees:

* Frames arrive at QoS 1 on a persistent MQTT 5 session (``clean_start=False``,
  stable client id per replica rank), with manual acknowledgement. A frame is
  acknowledged only after its result or error was published and the broker
  confirmed it, so a crashed ingress gets its unacknowledged frames back when
  it reconnects under the same id.
* Backpressure: the MQTT 5 receive maximum caps unacknowledged frames per
  replica, so the broker stops sending when the model falls behind; the queue
  here can never hold more than that.
* A retried frame id whose result was already published gets the same result
  again without a second inference.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import select
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from contracts import wire
from contracts.broker_logins import connection_password
from contracts.slice_spec import SliceSpec
from edge_node.rate_limit import RobotRateLimiter
from edge_node.telemetry import TelemetryWindow

log = logging.getLogger(__name__)

InferFn = Callable[[list[bytes]], list[dict[str, Any]]]
"""Judges encoded frames; one dict per frame: a verdict, or ``code``/``detail`` for an error."""

ObserveFn = Callable[[str, float], None]
"""Told of every answer: its outcome (``verdict_pass``, ``error_bad_image``, ...) and ms inside the slice."""

ANSWERED_MEMORY = 20_000
"""Recently answered frame ids remembered per replica, to answer retries without re-inference."""

INFER_ATTEMPTS = 3
"""Model calls tried per batch before the frames are answered with ``internal``."""


@dataclass
class Frame:
    """One received frame, until it is acknowledged."""

    mid: int
    qos: int
    generation: int
    robot: wire.RobotTopic
    payload: bytes
    frame_id: str
    correlation: bytes | None
    user_properties: dict[str, str]
    received: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the frame across retries: robot and frame id."""
        return self.robot.sibling(wire.TopicKind.FRAMES), self.frame_id


def frame_id_of(correlation: bytes | None) -> str | None:
    """The frame id carried in MQTT 5 correlation data (UTF-8, else hex)."""
    if correlation is None:
        return None
    try:
        return correlation.decode("utf-8")
    except UnicodeDecodeError:
        return correlation.hex()


class FrameIngress:
    """One ingress replica's MQTT consumer and result publisher."""

    def __init__(
        self,
        spec: SliceSpec,
        infer: InferFn,
        *,
        client_id: str,
        node: str,
        model: str,
        observe: ObserveFn | None = None,
    ) -> None:
        self.spec = spec
        self._observe = observe
        self.node = node
        self.model = model
        self._infer = infer
        self._queue: queue.Queue[Frame] = queue.Queue()
        self._slots = threading.Semaphore(spec.batch.ingress_concurrency)
        self._pool = ThreadPoolExecutor(spec.batch.ingress_concurrency, thread_name_prefix=f"{client_id}-batch")
        self._answered: OrderedDict[tuple[str, str], tuple[str, bytes]] = OrderedDict()
        self._answered_lock = threading.Lock()
        self._followers: dict[tuple[str, str], list[Frame]] = {}
        """Frame ids being judged now, with retries of them that arrived meanwhile: a retry joins
        the frame in progress instead of being judged again, so retries cannot snowball."""
        self._stop = threading.Event()
        self._next_id = 0
        self.counts: Counter[str] = Counter()
        self.connected = threading.Event()
        # Two connections: frames in (manual acks, reads paused under backpressure) and results
        # out. Results must not share the frames connection: while its reads are paused, the
        # PUBACKs confirming results would go unread and acknowledging would stall.
        self._client = self._mqtt_client(client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._publisher = self._mqtt_client(f"{client_id}-out", manual_ack=False)
        self._publisher.max_inflight_messages_set(max(spec.max_inflight_frames * 2, 20))
        self._publisher.max_queued_messages_set(0)
        self._batcher = threading.Thread(target=self._batch_loop, name=f"{client_id}-batcher", daemon=True)
        self._network = threading.Thread(target=self._network_loop, name=f"{client_id}-network", daemon=True)
        self._backlog = 0
        """Frames received on the current connection and not yet acknowledged."""
        self._generation = 0
        """Connection number: message ids of an earlier connection must not be acknowledged on this one."""
        self._ack_lock = threading.Lock()
        self._acks: collections.deque[Frame] = collections.deque()
        """Frames whose answers are confirmed, for the network thread to acknowledge (paho
        does not serialise socket writes across threads, so only that thread writes)."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self.client_id = client_id
        self._unsubscribing = False
        self._leave = threading.Event()
        """Set by ``stop``: the network thread leaves the shared subscriptions."""
        self._left = threading.Event()
        """The broker confirmed the unsubscribe: no new frames are routed to this replica."""
        self._client.on_unsubscribe = lambda *_args: self._left.set()
        self.telemetry = TelemetryWindow(client_id) if spec.telemetry_period_s else None
        self._rates = RobotRateLimiter()
        self._reporter = threading.Thread(target=self._report_loop, name=f"{client_id}-telemetry", daemon=True)

    def _mqtt_client(self, client_id: str, *, manual_ack: bool) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack
        )
        if self.spec.broker.username:
            password = self.spec.broker.password.get_secret_value() if self.spec.broker.password else None
            if self.spec.broker.connection_logins and password:
                client.username_pw_set(client_id, connection_password(password, client_id))
            else:
                client.username_pw_set(self.spec.broker.username, password)
        return client

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Connect (persistent session) and start consuming."""
        broker = self.spec.broker
        self._publisher.connect_async(broker.host, broker.port, broker.keepalive_s, clean_start=True)
        self._publisher.loop_start()
        self._network.start()
        self._batcher.start()
        if self.telemetry is not None:
            self._reporter.start()

    def stop(self, drain_s: float = 15.0) -> None:
        """Leave the line gracefully: unsubscribe, answer every frame already delivered, end the session.

        A replica that Serve replaces (rolling update, scale-down) may come back under another
        rank, i.e. another client id; a persistent session left behind with frames in it would
        keep receiving its share of the line's frames with nobody reading them. So the replica
        first leaves the shared subscriptions, answers and acknowledges what the broker already
        routed to it, and then disconnects with a session expiry of 0. If that does not finish
        within ``drain_s`` the session is kept, so that its frames are not lost.
        """
        drained = self._drain(drain_s) if self.connected.is_set() else False
        self._stop.set()
        self._batcher.join(timeout=5)
        self._pool.shutdown(wait=True)
        self._network.join(timeout=5)
        self._send_acks()
        if self.telemetry is not None:
            self._reporter.join(timeout=5)
            self._publish_telemetry()
        if drained:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        else:
            self._client.disconnect()
        self._publisher.disconnect()
        self._publisher.loop_stop()

    def _drain(self, drain_s: float) -> bool:
        self._leave.set()
        self._wake_w.send(b"\0")
        deadline = time.monotonic() + drain_s
        received, quiet_since = self.counts["frames_received"], time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if self.counts["frames_received"] != received:
                received, quiet_since = self.counts["frames_received"], time.monotonic()
            elif self._left.is_set() and self._backlog == 0 and time.monotonic() - quiet_since > 0.5:
                log.info("ingress %s left the line with every delivered frame answered", self.client_id)
                return True
        log.warning("ingress %s still had %d frames after %.0fs; keeping its session", self.client_id,
                    self._backlog, drain_s)  # fmt: skip
        return False

    def _network_loop(self) -> None:
        """paho's network loop, run by hand so that reading stops while the backlog is full.

        The MQTT 5 receive maximum should bound unacknowledged frames at the broker, but
        Mosquitto 2.0 over-delivers (each PUBACK frees two slots), so the bound is enforced
        here: while ``max_inflight_frames`` frames are unacknowledged, the socket is not read
        and the broker keeps the rest queued in the session.
        """
        broker, client = self.spec.broker, self._client
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600
        props.ReceiveMaximum = self.spec.max_inflight_frames
        backoff = 0.5
        first = True
        while not self._stop.is_set():
            sock = client.socket()
            if sock is None:
                try:
                    if first:
                        client.connect(
                            broker.host, broker.port, broker.keepalive_s, clean_start=False, properties=props
                        )
                        first = False
                    else:
                        client.reconnect()
                    backoff = 0.5
                except OSError as e:
                    log.warning("ingress cannot reach broker %s:%d (%s); retrying in %.1fs",
                                broker.host, broker.port, e, backoff)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                continue
            self._send_acks()
            if self._leave.is_set() and not self._unsubscribing:
                self._unsubscribing = True
                client.unsubscribe(self.spec.frame_filters)
            readable = [self._wake_r, sock] if self._backlog < self.spec.max_inflight_frames else [self._wake_r]
            writable = [sock] if client.want_write() else []
            try:
                ready_r, ready_w, _ = select.select(readable, writable, [], 0.5)
            except (OSError, ValueError):
                ready_r, ready_w = [], []
            if self._wake_r in ready_r:
                self._wake_r.recv(4096)
            if sock in ready_r:
                client.loop_read()
            if ready_w or client.want_write():
                client.loop_write()
            client.loop_misc()

    def _report_loop(self) -> None:
        assert self.spec.telemetry_period_s is not None
        while not self._stop.wait(self.spec.telemetry_period_s):
            self._publish_telemetry()

    def _publish_telemetry(self) -> None:
        """Each line's window, QoS 0: telemetry is for people watching, never in the frames' way."""
        assert self.telemetry is not None
        try:
            for line, window in self.telemetry.drain().items():
                topic = wire.telemetry_topic(self.spec.tenant, line, self.spec.name)
                self._publisher.publish(topic, window.model_dump_json().encode(), qos=0)
        except Exception:  # a report lost is a gap in a chart; the frames go on
            log.exception("publishing telemetry failed")

    def _send_acks(self) -> None:
        """Acknowledge answered frames (network thread only)."""
        while self._acks:
            frame = self._acks.popleft()
            with self._ack_lock:
                if frame.generation != self._generation:
                    continue  # its connection is gone; the broker redelivers it and the retry is answered from memory
                self._backlog -= 1
            self._client.ack(frame.mid, frame.qos)
            self.counts["frames_acked"] += 1

    # --- MQTT callbacks (network thread) ---------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the ingress: %s", self.spec.broker.host, self.spec.broker.port, reason)
            return
        with self._ack_lock:
            self._generation += 1
            self._backlog = 0  # the broker redelivers whatever the last connection left unacknowledged
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in self.spec.frame_filters])
        self.connected.set()
        log.info("ingress %s subscribed to %s", client._client_id.decode(), ", ".join(self.spec.frame_filters))

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("ingress lost the broker (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            robot = wire.parse_topic(msg.topic)
        except ValueError:
            log.warning("ignoring message on unexpected topic %r", msg.topic)
            self._client.ack(msg.mid, msg.qos)
            return
        with self._ack_lock:
            self._backlog += 1
            generation = self._generation
        props = msg.properties
        correlation = getattr(props, "CorrelationData", None) if props else None
        user_properties = dict(getattr(props, "UserProperty", []) or []) if props else {}
        frame_id = frame_id_of(correlation)
        if frame_id is None:
            self._next_id += 1
            frame_id = f"{self.node}-{id(self):x}-{self._next_id}"
        self.counts["frames_received"] += 1
        frame = Frame(msg.mid, msg.qos, generation, robot, bytes(msg.payload), frame_id, correlation, user_properties)
        if correlation is not None:
            with self._answered_lock:
                waiting = self._followers.get(frame.key)
                if waiting is not None:
                    waiting.append(frame)
                    self.counts["retries_joined_in_progress"] += 1
                    return
                self._followers[frame.key] = []
        self._queue.put(frame)

    # --- batching (batcher thread) -------------------------------------------

    def _batch_loop(self) -> None:
        """Form batches only once a model-call slot is free, so that batches grow with the load.

        While every slot is busy, frames accumulate in the queue and go out together as soon
        as one frees up; at light load a frame goes out alone, after ``ingress_wait_ms`` at most.
        """
        size, wait_s = self.spec.batch.ingress_batch, self.spec.batch.ingress_wait_ms / 1000
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                batch = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                self._slots.release()
                continue
            deadline = time.monotonic() + wait_s
            while len(batch) < size:
                try:
                    batch.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            self._pool.submit(self._handle_batch, batch)

    def _handle_batch(self, batch: list[Frame]) -> None:
        try:
            replies = self._replies(batch)
            infos = [
                (frame, self._publisher.publish(topic, payload, qos=1, properties=self._reply_properties(frame)))
                for frame, topic, payload in replies
            ]
            for frame, info in infos:
                try:
                    info.wait_for_publish(timeout=30)
                except (RuntimeError, ValueError) as e:
                    log.warning("result for frame %s not confirmed (%s); broker will redeliver it", frame.frame_id, e)
                    self._release(frame)
                    continue
                followers = self._release(frame)
                if info.is_published():
                    for answered in (frame, *followers):
                        self._ack(answered)
        except Exception:
            log.exception("batch of %d frames failed; they stay unacknowledged and come back", len(batch))
            for frame in batch:
                self._release(frame)
        finally:
            self._slots.release()

    def _release(self, frame: Frame) -> list[Frame]:
        """End ``frame``'s time in progress; returns the retries of it that arrived meanwhile."""
        if frame.correlation is None:
            return []
        with self._answered_lock:
            return self._followers.pop(frame.key, [])

    def _ack(self, frame: Frame) -> None:
        self._acks.append(frame)
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def _replies(self, batch: list[Frame]) -> list[tuple[Frame, str, bytes]]:
        """Topic and payload of the answer to every frame in ``batch``."""
        replies: list[tuple[Frame, str, bytes]] = []
        to_judge: list[Frame] = []
        for frame in batch:
            cached = self._cached(frame)
            if cached:
                self.counts["retries_answered_from_memory"] += 1
                replies.append((frame, *cached))
            elif problem := self._refuse(frame):
                replies.append((frame, *self._error(frame, *problem)))
            else:
                to_judge.append(frame)
        if to_judge:
            started = time.monotonic()
            outcomes = self._judge([f.payload for f in to_judge])
            inference_ms = (time.monotonic() - started) * 1000
            for frame, outcome in zip(to_judge, outcomes, strict=True):
                if "code" in outcome:
                    replies.append((frame, *self._error(frame, wire.ErrorCode(outcome["code"]), outcome["detail"])))
                else:
                    replies.append((frame, *self._result(frame, outcome, started, inference_ms)))
        return replies

    def _judge(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        for attempt in range(1, INFER_ATTEMPTS + 1):
            try:
                return self._infer(payloads)
            except Exception as e:
                log.warning("model call failed (attempt %d/%d): %s", attempt, INFER_ATTEMPTS, e)
                self.counts["model_call_failures"] += 1
                time.sleep(0.5 * attempt)
        detail = "the slice could not run the model; retry the frame, and tell the operator if this persists"
        return [{"code": wire.ErrorCode.INTERNAL.value, "detail": detail}] * len(payloads)

    def _refuse(self, frame: Frame) -> tuple[wire.ErrorCode, str] | None:
        """Checks that need no decoding: empty, oversized, bad frame id."""
        if not frame.payload:
            return wire.ErrorCode.BAD_IMAGE, "empty payload: publish the JPEG or PNG bytes of the frame"
        policy = self.spec.policy(frame.robot.line)
        max_bytes = policy.max_frame_bytes if policy else wire.MAX_FRAME_BYTES
        if len(frame.payload) > max_bytes:
            return wire.ErrorCode.TOO_LARGE, (
                f"frame is {len(frame.payload)} bytes; the line's limit is {max_bytes}: crop or compress on the robot"
            )
        if policy and not self._rates.allow(frame.robot.sibling(wire.TopicKind.FRAMES), policy.max_fps):
            return wire.ErrorCode.RATE_LIMITED, (
                f"robot sends more than the line's {policy.max_fps:g} frames/s: send fewer frames, "
                "or ask factory IT to raise the line's robot_max_fps"
            )
        if frame.correlation is not None and len(frame.correlation) > wire.MAX_FRAME_ID_BYTES:
            return wire.ErrorCode.BAD_FRAME_ID, f"frame id is {len(frame.correlation)} bytes; the limit is 128"
        return None

    # --- answers ---------------------------------------------------------------

    def _cached(self, frame: Frame) -> tuple[str, bytes] | None:
        if frame.correlation is None:
            return None
        with self._answered_lock:
            return self._answered.get(frame.key)

    def _remember(self, frame: Frame, topic: str, payload: bytes) -> tuple[str, bytes]:
        if frame.correlation is not None:
            with self._answered_lock:
                self._answered[frame.key] = (topic, payload)
                while len(self._answered) > ANSWERED_MEMORY:
                    self._answered.popitem(last=False)
        return topic, payload

    def _envelope(self, frame: Frame) -> dict[str, Any]:
        return {
            "frame_id": frame.frame_id,
            "tenant": frame.robot.tenant,
            "line": frame.robot.line,
            "robot": frame.robot.robot,
            "slice": self.spec.name,
            "node": self.node,
            "user_properties": frame.user_properties,
        }

    def _result(self, frame: Frame, outcome: dict[str, Any], started: float, inference_ms: float) -> tuple[str, bytes]:
        now = time.monotonic()
        timings = wire.Timings(
            queue=round((started - frame.received) * 1000, 2),
            inference=round(inference_ms, 2),
            total=round((now - frame.received) * 1000, 2),
        )
        result = wire.Result(
            **self._envelope(frame),
            verdict=outcome["verdict"],
            defect_class=outcome["defect_class"],
            score=outcome["score"],
            fail_score=outcome["fail_score"],
            scores=outcome["scores"],
            model=self.model,
            timings_ms=timings,
        )
        self.counts[f"verdict_{result.verdict}"] += 1
        if self.telemetry is not None:
            class_score = outcome["scores"].get(outcome["defect_class"], 0.0) if outcome["defect_class"] else 0.0
            self.telemetry.observe_verdict(
                frame.robot, frame_id=frame.frame_id, verdict=result.verdict, defect_class=result.defect_class,
                score=class_score, total_ms=timings.total, payload=frame.payload,
            )  # fmt: skip
        if self._observe:
            self._observe(f"verdict_{result.verdict}", timings.total)
        return self._remember(frame, frame.robot.sibling(wire.TopicKind.RESULTS), result.model_dump_json().encode())

    def _error(self, frame: Frame, code: wire.ErrorCode, detail: str) -> tuple[str, bytes]:
        reply = wire.ErrorReply(**self._envelope(frame), code=code, detail=detail)
        self.counts[f"error_{code.value}"] += 1
        if self.telemetry is not None:
            self.telemetry.observe_error(frame.robot)
        if self._observe:
            self._observe(f"error_{code.value}", (time.monotonic() - frame.received) * 1000)
        payload = reply.model_dump_json().encode()
        if code in (wire.ErrorCode.INTERNAL, wire.ErrorCode.RATE_LIMITED):  # not final: a retry is judged afresh
            return frame.robot.sibling(wire.TopicKind.ERRORS), payload
        return self._remember(frame, frame.robot.sibling(wire.TopicKind.ERRORS), payload)

    @staticmethod
    def _reply_properties(frame: Frame) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        if frame.correlation is not None:
            props.CorrelationData = frame.correlation
        if frame.user_properties:
            props.UserProperty = list(frame.user_properties.items())
        props.ContentType = "application/json"
        return props
