"""The frames connection of an ingress replica: a persistent MQTT 5 session with manual acknowledgement.

* Frames arrive at QoS 1 on a persistent session (``clean_start=False``, a
  stable client id per replica rank). A frame is acknowledged only once its
  answer was published and the broker confirmed it, so a crashed ingress gets
  its unacknowledged frames back when it reconnects under the same id.
* Backpressure: while ``max_inflight_frames`` frames are unacknowledged the
  socket is not read, and the broker keeps the rest queued in the session.
* Acknowledgements are counted per connection (``AckLedger``): a frame received
  on an earlier connection must not be acknowledged on this one, since its
  message id means nothing there; the broker redelivers it instead.

A frames connection that dies and does not come back leaves its session with the broker, and Mosquitto goes on
routing that session its share of the line's frames, which nobody reads (chaos scenario 7). So each frames
connection has a will, delayed by ``ADOPT_AFTER_S``, naming its client id on the slice's ``gone`` topic: a
replica restarted under the same id in time cancels it; otherwise every other frames connection of the slice
hears it, and one adopts the session (``adopting=True``): it connects under that id, leaves the subscriptions,
answers what the session held, and ends it.

The answers go out on a second connection (``mqtt_client(..., manual_ack=False)``):
while this one's reads are paused, the PUBACKs confirming answers would go
unread and acknowledging would stall.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from contracts import wire
from contracts.broker_logins import connection_password
from contracts.slice_spec import BrokerSpec, SliceSpec
from edge_node.ingress.counts import Counts
from edge_node.ingress.frames import Frame, frame_of

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600
"""How long the broker keeps a replica's session (and its frames) while the replica is away."""

ADOPT_AFTER_S = 5
"""A frames connection gone this long without coming back is announced (its will) for another replica to adopt."""

WILL_EXPIRY_S = 60
"""An announcement older than this is stale (the session was adopted or resumed long since): the broker drops it."""

WITH_WILL = 4
"""MQTT 5 DISCONNECT reason "disconnect with will message": the broker publishes the will as if the connection died."""


def mqtt_client(broker: BrokerSpec, client_id: str, *, manual_ack: bool) -> mqtt.Client:
    """An MQTT 5 client logged in as the broker expects: with its own per-connection password where
    the broker uses connection logins, else with the slice's shared login (if any)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    if broker.username:
        password = broker.password.get_secret_value() if broker.password else None
        if broker.connection_logins and password:
            client.username_pw_set(client_id, connection_password(password, client_id))
        else:
            client.username_pw_set(broker.username, password)
    return client


class AckLedger:
    """Unacknowledged frames of the current connection, and which connection a frame came on. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.generation = 0
        """Connection number."""
        self.backlog = 0
        """Frames received on the current connection and not yet acknowledged."""

    def connected(self) -> None:
        """A new connection: the broker redelivers whatever the last one left unacknowledged."""
        with self._lock:
            self.generation += 1
            self.backlog = 0

    def received(self) -> int:
        """One more frame in the backlog; returns the connection it came on."""
        with self._lock:
            self.backlog += 1
            return self.generation

    def settle(self, frame: Frame) -> bool:
        """Take ``frame`` out of the backlog; False when its connection is gone (do not acknowledge it)."""
        with self._lock:
            if frame.generation != self.generation:
                return False
            self.backlog -= 1
            return True

    def has_room(self, limit: int) -> bool:
        """Whether another frame may be read without exceeding ``limit`` unacknowledged ones."""
        return self.backlog < limit


class FrameSession:
    """Receives frames for ``deliver`` and acknowledges them once told to, on one network thread.

    paho does not serialise socket writes across threads, so only the network thread writes:
    ``ack`` queues a frame and wakes that thread through a socket pair.
    """

    def __init__(
        self,
        spec: SliceSpec,
        client_id: str,
        *,
        deliver: Callable[[Frame], None],
        counts: Counts,
        stop: threading.Event,
        unnamed_prefix: str,
        adopting: bool = False,
        peer_gone: Callable[[str], None] | None = None,
    ) -> None:
        """``adopting``: take over a dead connection's session (leave, answer what it holds, end it; never
        reconnect). ``peer_gone``: told the client id of another frames connection of the slice that died."""
        self.spec = spec
        self.client_id = client_id
        self.adopting = adopting
        self.received = 0
        """Frames received on this session, on any connection."""
        self.counts = counts
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        """The broker confirmed the frame subscriptions (SUBACK) at least once: frames are routed here."""
        self.left = threading.Event()
        """The broker confirmed the unsubscribe: no new frames are routed to this replica."""
        self.ledger = AckLedger()
        self._deliver = deliver
        self._peer_gone = peer_gone
        self._gone_topic = wire.ingress_gone_topic(spec.tenant, spec.name)
        self._stop = stop
        self._leave = threading.Event()
        self._unsubscribing = False
        self._unnamed_prefix, self._unnamed = unnamed_prefix, 0
        self._acks: collections.deque[Frame] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._client = mqtt_client(spec.broker, client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = lambda *_args: self.left.set()
        will = Properties(PacketTypes.WILLMESSAGE)
        will.WillDelayInterval = ADOPT_AFTER_S
        will.MessageExpiryInterval = WILL_EXPIRY_S
        self._client.will_set(self._gone_topic, client_id.encode(), qos=1, properties=will)
        self._thread = threading.Thread(target=self._loop, name=f"{client_id}-network", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        """The network thread runs (an adopter's ends with its connection)."""
        return self._thread.is_alive()

    def join(self) -> None:
        """After ``stop`` is set: wait for the network thread, then acknowledge what it left queued."""
        self._thread.join(timeout=5)
        self.send_acks()

    def leave(self) -> None:
        """Leave the shared subscriptions; ``left`` is set once the broker confirms."""
        self._leave.set()
        self._wake()

    @property
    def emptied(self) -> bool:
        """Left the subscriptions, with every frame delivered on this connection acknowledged."""
        return self.left.is_set() and self.ledger.backlog == 0

    def ack(self, frame: Frame) -> None:
        """Acknowledge ``frame`` (its answer is confirmed) from the network thread."""
        self._acks.append(frame)
        self._wake()

    def disconnect(self, *, end_session: bool) -> None:
        """Disconnect; ``end_session`` also tells the broker to drop the session and whatever it holds. A session
        kept (frames still in it) is announced by the will, so that another replica adopts it if this one does
        not come back under the same id."""
        if end_session:
            props = Properties(PacketTypes.DISCONNECT)
            props.SessionExpiryInterval = 0
            self._client.disconnect(properties=props)
        else:
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=WITH_WILL))

    def send_acks(self) -> None:
        """Acknowledge answered frames (network thread, or any thread once it has ended)."""
        while self._acks:
            frame = self._acks.popleft()
            if not self.ledger.settle(frame):
                continue  # its connection is gone; the broker redelivers it and the retry is answered from memory
            self._client.ack(frame.mid, frame.qos)
            self.counts.add("frames_acked")

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_w.send(b"\0")

    def _loop(self) -> None:
        """paho's network loop, run by hand so that reading stops while the backlog is full.

        The MQTT 5 receive maximum should bound unacknowledged frames at the broker, but
        Mosquitto 2.0 over-delivers (each PUBACK frees two slots), so the bound is enforced
        here: while ``max_inflight_frames`` frames are unacknowledged, the socket is not read.
        """
        client, backoff, first = self._client, 0.5, True
        while not self._stop.is_set():
            sock = client.socket()
            if sock is None and self.adopting and not first:
                return  # an adopter never fights for the session: whoever took it answers its frames
            if sock is None:
                try:
                    self._connect(first)
                    first, backoff = False, 0.5
                except OSError as e:
                    log.warning("ingress cannot reach broker %s:%d (%s); retrying in %.1fs",
                                self.spec.broker.host, self.spec.broker.port, e, backoff)  # fmt: skip
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                continue
            self.send_acks()
            if self._leave.is_set() and not self._unsubscribing:
                self._unsubscribing = True
                client.unsubscribe(self.spec.frame_filters)
            room = self.ledger.has_room(self.spec.max_inflight_frames)
            readable = [self._wake_r, sock] if room else [self._wake_r]
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

    def _connect(self, first: bool) -> None:
        """Open the persistent session (first time) or resume it; raises OSError when the broker is unreachable."""
        broker = self.spec.broker
        if first:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            props.ReceiveMaximum = self.spec.max_inflight_frames
            self._client.connect(broker.host, broker.port, broker.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.reconnect()

    # --- MQTT callbacks (network thread) ---------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Properties | None
    ) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the ingress: %s", self.spec.broker.host, self.spec.broker.port, reason)
            return
        self.ledger.connected()
        self.connected.set()
        if self.adopting:  # the session keeps its subscriptions: leave them, and take what it holds
            log.warning("ingress adopts the session of %s (session present: %s)", self.client_id,
                        getattr(_flags, "session_present", "?"))  # fmt: skip
            self.leave()
            return
        # Retain as published: a frame a robot published retained arrives marked so, and is cleared once answered.
        subscriptions = [(f, SubscribeOptions(qos=1, retainAsPublished=True)) for f in self.spec.frame_filters]
        # Not shared: a dead connection would get its share of the announcements, as it gets its share of frames.
        subscriptions.append((self._gone_topic, SubscribeOptions(qos=1, noLocal=True)))
        client.subscribe(subscriptions)
        log.info("ingress %s subscribed to %s", self.client_id, ", ".join(self.spec.frame_filters))

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int, reasons: list[Any], _props: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            log.error("broker refused ingress %s's frame subscriptions: %s", self.client_id, ", ".join(refused))
        if len(refused) < len(reasons):
            self.subscribed.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if self.adopting:
            log.info("adopted session %s: connection ended (%s)", self.client_id, reason)
        elif not self._stop.is_set():
            log.warning("ingress lost the broker (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._gone_topic:
            self._client.ack(msg.mid, msg.qos)
            if self._peer_gone is not None and not self.adopting:
                self._peer_gone(msg.payload[:256].decode("utf-8", "replace"))
            return
        try:
            robot = wire.parse_topic(msg.topic)
        except ValueError:
            log.warning("ignoring message on unexpected topic %r", msg.topic)
            self._client.ack(msg.mid, msg.qos)
            return
        if msg.retain and not msg.payload:  # the empty retained message that cleared a retained frame: no frame
            self._client.ack(msg.mid, msg.qos)
            return
        frame = frame_of(msg, robot, self.ledger.received(), self._name_unnamed)
        frame.origin = self.client_id
        self.received += 1
        self.counts.add("frames_received")
        self._deliver(frame)

    def _name_unnamed(self) -> str:
        """A frame id for a frame sent without one (network thread only)."""
        self._unnamed += 1
        return f"{self._unnamed_prefix}-{self._unnamed}"
