"""Keeps each site's Mosquitto in step with the robots and slices in the database.

Choice: Mosquitto's dynamic-security plugin, driven over MQTT
(``$CONTROL/dynamic-security/v1``), rather than generated password/ACL files.
It changes credentials without a restart or reload, refuses a client id that
is not the robot's own (``clientid`` on the client), and disconnects a client
the moment it is deleted, which is what revoking and rotating need. Files
would need a SIGHUP per change and cannot pin client ids.

Per robot there is one dynsec client (username = client id = ``r.tenant.line.robot``) with one role of the
same name allowing exactly: publish to its own frames and status topics, subscribe to and receive its own
results and errors; and a read-only watcher (``w.tenant.line.robot``) for a second connection such as
``mosquitto_sub``. Per line there is a read-only watcher of all its robots' answers (``w.tenant.line``) for a
bridge to plant equipment (``lineside bridge opcua``) or an MES. Per slice and ingress replica rank there are
two clients, one per connection the replica opens (``s.app.rank`` takes its share of the lines' frames through
the slice's ``$share`` group; ``s.app.rank-out`` answers on those lines' results and errors and publishes
their telemetry). Every client's client id is pinned to its username: dynsec pins exact ids only, and a
credential without a pinned id could connect as a robot and take its session over. Per site there is one
monitor client for the control plane's dashboard, which reads telemetry and robots' status topics.
Everything else is denied by the broker's default ACL access. Passwords are
derived (``security.derived_secret``), so ``reconcile`` can rebuild a broker
from the database alone.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contracts import wire
from contracts.broker_logins import connection_password
from contracts.slice_spec import INGRESS_SLOTS
from control_plane.errors import BrokerUnavailable

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"
ADMIN_USERNAME = "lineside-admin"
MANAGED_PREFIXES = ("r.", "w.", "s.", "m.")  # robot, watcher, slice and monitor clients; others are left alone


@dataclass(frozen=True)
class BrokerClient:
    """One dynsec client with its own role."""

    username: str
    password: str
    client_id: str | None
    acls: tuple[tuple[str, str], ...]  # (acltype, topic)

    def role(self) -> dict[str, Any]:
        return {
            "command": "createRole",
            "rolename": self.username,
            "acls": [{"acltype": t, "topic": topic, "allow": True, "priority": 0} for t, topic in self.acls],
        }

    def create(self) -> dict[str, Any]:
        command: dict[str, Any] = {
            "command": "createClient",
            "username": self.username,
            "password": self.password,
            "roles": [{"rolename": self.username}],
        }
        if self.client_id:
            command["clientid"] = self.client_id
        return command


def robot_username(tenant: str, line: str, robot: str) -> str:
    """``r.tenant.line.robot``: names cannot contain '.', so this is unambiguous."""
    return f"r.{tenant}.{line}.{robot}"


def slice_username(app_name: str) -> str:
    return f"s.{app_name}"


def watcher_username(tenant: str, line: str, robot: str) -> str:
    """``w.tenant.line.robot``: read-only access to one robot's answers and status."""
    return f"w.{tenant}.{line}.{robot}"


def watcher_client(tenant: str, line: str, robot: str, password: str) -> BrokerClient:
    """Reads one robot's results, errors and status (a shell, an MES bridge); publishes nothing.

    A robot's own client id is pinned, so a second connection (``mosquitto_sub`` beside
    ``mosquitto_pub``, a PLC bridge) needs credentials of its own.
    """
    username = watcher_username(tenant, line, robot)
    acls: list[tuple[str, str]] = []
    for kind in (wire.TopicKind.RESULTS, wire.TopicKind.ERRORS, wire.TopicKind.STATUS):
        own = wire.topic(tenant, line, robot, kind)
        acls += [("subscribeLiteral", own), ("publishClientReceive", own)]
    return BrokerClient(username, password, username, tuple(acls))


def line_watcher_username(tenant: str, line: str) -> str:
    """``w.tenant.line``: read-only access to every robot's answers and status on one line."""
    return f"w.{tenant}.{line}"


def line_watcher_client(tenant: str, line: str, password: str) -> BrokerClient:
    """Reads the results, errors and status of every robot on one line (the OPC UA bridge, an MES); publishes
    nothing and sees no frames, nor any other line."""
    username = line_watcher_username(tenant, line)
    acls: list[tuple[str, str]] = []
    for kind in (wire.TopicKind.RESULTS, wire.TopicKind.ERRORS, wire.TopicKind.STATUS):
        every = wire.line_filter(tenant, line, kind)
        acls += [("subscribePattern", every), ("publishClientReceive", every)]
    return BrokerClient(username, password, username, tuple(acls))


def robot_client(tenant: str, line: str, robot: str, password: str) -> BrokerClient:
    """A robot may publish frames and status and receive results and errors, all its own only."""
    own = {kind: wire.topic(tenant, line, robot, kind) for kind in wire.TopicKind}
    username = robot_username(tenant, line, robot)
    acls = (
        ("publishClientSend", own[wire.TopicKind.FRAMES]),
        ("publishClientSend", own[wire.TopicKind.STATUS]),
        ("subscribeLiteral", own[wire.TopicKind.RESULTS]),
        ("subscribeLiteral", own[wire.TopicKind.ERRORS]),
        ("publishClientReceive", own[wire.TopicKind.RESULTS]),
        ("publishClientReceive", own[wire.TopicKind.ERRORS]),
    )
    return BrokerClient(username, password, username, acls)


INGRESS_RANKS_PER_REPLICA = 2
"""Ranks per ingress replica: Serve may start a replacement (the next rank) before the old one stops. Each
rank has ``INGRESS_SLOTS`` logins: a new version of the ingress uses the other slot (``SliceSpec.ingress_slot``)."""


def ingress_connection(prefix: str, base_password: str, index: int, *, out: bool = False) -> tuple[str, str]:
    """(username = pinned client id, password) of one ingress connection, as ``edge_node.serving`` names it
    (``index`` = rank x ``INGRESS_SLOTS`` + slot)."""
    username = f"{prefix}.{index}" + ("-out" if out else "")
    return username, connection_password(base_password, username)


def overflow_username(app_name: str, site_id: int) -> str:
    """The login prefix, on the home broker, of the slice's ingress on another site that runs its overflow."""
    return f"{slice_username(app_name)}.x{site_id}"


def ingress_clients(
    app_name: str, tenant: str, lines: list[str], base_password: str, replicas: int, *, login_prefix: str | None = None
) -> list[BrokerClient]:
    """A slice's ingress: per replica rank, a frames-in login that may only take its share of the lines'
    frames (``$share``, no plain subscription) and a results-out login that may only answer on those lines.
    ``login_prefix``: the logins of another site's ingress running the slice's overflow (no HTTP endpoint there)."""
    gone = wire.ingress_gone_topic(tenant, app_name)
    # Each frames connection's will names it on ``gone``; the slice's other frames connections adopt its session.
    receive: list[tuple[str, str]] = [
        ("publishClientSend", gone),
        ("subscribeLiteral", gone),
        ("publishClientReceive", gone),
    ]
    send: list[tuple[str, str]] = []
    for line in lines:
        frames = wire.line_frames_filter(tenant, line)
        prefix = frames.rsplit("/", 2)[0]
        # Mosquitto checks a shared subscription with its $share/{group}/ prefix.
        receive += [("subscribeLiteral", wire.shared_frames_filter(app_name, tenant, line)),
                    ("publishClientReceive", frames)]  # fmt: skip
        send += [
            # Only to clear a frame a robot published retained (an empty retained message): see SECURITY.md.
            ("publishClientSend", frames),
            ("publishClientSend", f"{prefix}/+/{wire.TopicKind.RESULTS.value}"),
            ("publishClientSend", f"{prefix}/+/{wire.TopicKind.ERRORS.value}"),
            ("publishClientSend", wire.telemetry_topic(tenant, line, app_name)),
        ]
    clients = []
    for index in range(replicas * INGRESS_RANKS_PER_REPLICA * INGRESS_SLOTS):
        for out, acls in ((False, receive), (True, send)):
            username, password = ingress_connection(
                login_prefix or slice_username(app_name), base_password, index, out=out
            )
            clients.append(BrokerClient(username, password, username, tuple(acls)))
    if login_prefix is not None:
        return clients
    # The head's HTTP inference endpoint (edge_node.http_gateway) meters its frames on the lines' telemetry.
    gateway = gateway_username(app_name)
    metering = tuple(("publishClientSend", wire.telemetry_topic(tenant, line, app_name)) for line in lines)
    clients.append(BrokerClient(gateway, connection_password(base_password, gateway), gateway, metering))
    return clients


def gateway_username(app_name: str) -> str:
    """The HTTP inference endpoint's login for a slice, as ``edge_node.http_gateway.gateway_client_id`` names it."""
    return f"{slice_username(app_name)}.http"


def monitor_username(site_name: str, instance: str) -> str:
    """``m.site.instance``: one login per control plane instance, so each can be pinned to its client id."""
    return f"m.{site_name}.{instance}"


def is_instance_monitor(username: str) -> bool:
    """A monitor login of some control plane instance (``m.site.instance``), which reconcile leaves alone:
    each instance ensures its own, and one instance's sync must not cut the others' telemetry."""
    return username.startswith("m.") and username.count(".") >= 2


TELEMETRY_FILTER = f"{wire.TELEMETRY_ROOT}/#"
MONITOR_TOPICS = (
    f"$share/lineside-control-plane/{TELEMETRY_FILTER}",
    f"{wire.TOPIC_ROOT}/+/+/+/{wire.TopicKind.STATUS.value}",
)
"""What the control plane's monitor subscribes to on a site. Telemetry is a shared subscription, so
that with several control plane instances each report is counted once; robots' status is not shared
(retained messages reach only plain subscriptions, and setting a status twice changes nothing)."""


def monitor_client(site_name: str, instance: str, password: str) -> BrokerClient:
    """The control plane's read-only view of a site: telemetry and robots' online/offline status."""
    shared, status = MONITOR_TOPICS
    acls = (
        ("subscribeLiteral", shared),
        ("subscribePattern", status),
        ("publishClientReceive", TELEMETRY_FILTER),
        ("publishClientReceive", status),
    )
    username = monitor_username(site_name, instance)
    return BrokerClient(username, password, username, acls)


@dataclass
class DynsecAdmin:
    """Request/response over the broker's dynsec control topic, as the site's admin client."""

    host: str
    port: int
    password: str
    timeout_s: float = 5.0
    _client: mqtt.Client | None = field(default=None, init=False)
    _answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict, init=False)
    _arrived: threading.Condition = field(default_factory=threading.Condition, init=False)

    def __enter__(self) -> DynsecAdmin:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"lineside-cp-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        client.username_pw_set(ADMIN_USERNAME, self.password)
        client.on_message = self._on_message
        connected: list[str] = []
        done = threading.Event()

        def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            connected.append(str(reason))
            done.set()

        client.on_connect = on_connect
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise BrokerUnavailable(
                f"site broker {self.host}:{self.port} is unreachable ({e}); start it, then retry"
            ) from e
        client.loop_start()
        if not done.wait(self.timeout_s) or connected[0] != "Success":
            client.loop_stop()
            reason = connected[0] if connected else "no answer"
            raise BrokerUnavailable(
                f"site broker {self.host}:{self.port} refused the control plane's admin login ({reason}); "
                "set the broker up with the site's admin password (GET /sites/{id}/broker-admin)"
            )
        client.subscribe(RESPONSE_TOPIC, qos=1)
        self._client = client
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        responses = json.loads(message.payload).get("responses", [])
        key = str(responses[0].get("correlationData", "")) if responses else ""
        with self._arrived:
            self._answers[key] = responses
            self._arrived.notify_all()

    def run(self, commands: list[dict[str, Any]], *, check: bool = True) -> list[dict[str, Any]]:
        """Send dynsec commands in one message and return their responses (errors raise if ``check``)."""
        assert self._client is not None, "use DynsecAdmin as a context manager"
        key = uuid.uuid4().hex
        tagged = [{**c, "correlationData": key} for c in commands]
        self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
        with self._arrived:
            if not self._arrived.wait_for(lambda: key in self._answers, timeout=self.timeout_s):
                raise BrokerUnavailable(
                    f"site broker {self.host}:{self.port} did not answer within {self.timeout_s:.0f}s; "
                    "check that it runs with the dynamic-security plugin and the site's admin password"
                )
            responses = self._answers.pop(key)
        if check:
            for response in responses:
                if response.get("error"):
                    raise BrokerUnavailable(f"site broker refused {response.get('command')}: {response['error']}")
        return responses

    def managed_usernames(self) -> set[str]:
        listing = self.run([{"command": "listClients", "verbose": False}])[0]
        names = listing.get("data", {}).get("clients", [])
        return {n for n in names if isinstance(n, str) and n.startswith(MANAGED_PREFIXES)}

    def ensure(self, client: BrokerClient) -> None:
        """Create the client and its role, or set its password if it exists (no disconnect)."""
        responses = self.run([client.role(), client.create()], check=False)
        for response in responses:
            error = response.get("error")
            if not error or "already exists" in error:
                continue
            raise BrokerUnavailable(f"site broker refused {response.get('command')}: {error}")
        if any("already exists" in (r.get("error") or "") for r in responses if r.get("command") == "createClient"):
            self.run([{"command": "setClientPassword", "username": client.username, "password": client.password}])

    def replace(self, client: BrokerClient) -> None:
        """Delete and re-create: connected sessions of the old credentials are disconnected."""
        self.remove(client.username)
        self.ensure(client)

    def remove(self, username: str) -> None:
        """Delete the client (disconnecting it) and its role; missing ones are fine."""
        self.run(
            [{"command": "deleteClient", "username": username}, {"command": "deleteRole", "rolename": username}],
            check=False,
        )

    def deny_by_default(self) -> None:
        """Nothing is allowed unless a role allows it (Mosquitto's default lets clients receive)."""
        kinds = ("publishClientSend", "publishClientReceive", "subscribe")
        acls = [{"acltype": k, "allow": False} for k in kinds] + [{"acltype": "unsubscribe", "allow": True}]
        self.run([{"command": "setDefaultACLAccess", "acls": acls}])

    def reconcile(self, desired: list[BrokerClient]) -> dict[str, int]:
        """Make the broker's managed clients exactly ``desired``; returns counts of what changed."""
        self.deny_by_default()
        present = self.managed_usernames()
        wanted = {c.username for c in desired}
        stale = {n for n in present - wanted if not is_instance_monitor(n)}
        for username in sorted(stale):
            self.remove(username)
        for client in desired:
            self.ensure(client)
        log.info("broker %s:%d: %d clients kept or created, %d removed", self.host, self.port,
                 len(desired), len(stale))  # fmt: skip
        return {"ensured": len(desired), "removed": len(stale)}
