"""Robots' broker credentials against a real Mosquitto with the dynamic-security plugin."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.cp_fixtures import ControlPlane, ok
from tests.waiting import wait_until


class Probe:
    """A raw MQTT 5 client that records what it receives and how its connection ends."""

    def __init__(self, cp: ControlPlane, username: str, password: str, client_id: str) -> None:
        self.received: list[str] = []
        self.payloads: list[bytes] = []
        self.connect_reason: str | None = None
        self.disconnected = threading.Event()
        self.granted: list[Any] = []
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(cp.broker.host, cp.broker.port)
        self.client.loop_start()
        assert self._connected.wait(5), f"{username}: no CONNACK within 5 s"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_reason = str(reason)
        self._connected.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.received.append(message.topic)
        self.payloads.append(bytes(message.payload))

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        self.granted = [str(r) for r in reasons]
        self._subscribed.set()

    def subscribe(self, topic: str) -> list[Any]:
        """The broker's reason codes for subscribing to ``topic``; no SUBACK within 5 s fails the test."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), f"no SUBACK for {topic} within 5 s"
        return self.granted

    def publish(self, topic: str, payload: bytes = b"x") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _robot(cp: ControlPlane, who: str) -> dict[str, Any]:
    tenancy = getattr(cp, who)
    return ok(cp.client.post(f"/robots/{tenancy.ids['robot']}/rotate", headers=tenancy.it))


def test_robot_is_confined_to_its_own_topics(control_plane: ControlPlane) -> None:
    cp = control_plane
    a, b = _robot(cp, "a"), _robot(cp, "b")
    robot_a = Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"])
    robot_b = Probe(cp, b["mqtt_username"], b["mqtt_password"], b["client_id"])
    assert robot_a.connect_reason == "Success" and robot_b.connect_reason == "Success"
    assert robot_a.subscribe("#") == ["Not authorized"]
    assert robot_a.subscribe("lineside/+/+/+/results") == ["Not authorized"]
    assert robot_a.subscribe(b["topics"]["results"]) == ["Not authorized"]
    assert robot_a.subscribe(a["topics"]["results"]) == ["Granted QoS 1"]
    assert robot_b.subscribe(b["topics"]["results"]) == ["Granted QoS 1"]
    # Forging another robot's verdict or frame: refused, and Mosquitto drops the offender's connection.
    for target in (b["topics"]["results"], b["topics"]["frames"], a["topics"]["results"]):
        forger = Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"])
        forger.client.publish(target, b"forged", qos=1)
        assert forger.disconnected.wait(5), f"publishing to {target} was not refused"
        forger.client.loop_stop()
    # A real answer from B's slice, sent after every forgery was refused: once it is in, a forgery
    # that got through would be in too, so the test waits on it instead of a clock.
    answer = _ingress_answer(cp, b["topics"]["results"])
    wait_until(lambda: robot_b.payloads, 5, "robot B to receive its slice's answer")
    assert robot_b.payloads == [answer], "robot B received a forged message"
    robot_b.close()


def _ingress_answer(cp: ControlPlane, topic: str, who: str = "b", answer: bytes = b'{"verdict": "pass"}') -> bytes:
    """Publish ``answer`` to ``topic`` as a tenant's slice does (its rank-0 results-out login); globex's default."""
    from sqlmodel import Session

    from control_plane import sites
    from control_plane.models import Slice

    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        item = session.get(Slice, getattr(cp, who).ids["slice"])
        assert item is not None
        results_out = sites.ingress_broker_clients(session, cp.settings, item)[1]  # rank 0, results out
    sender = Probe(cp, results_out.username, results_out.password, results_out.username)
    sender.publish(topic, answer)
    sender.close()
    return answer


def test_a_lines_watcher_reads_every_robots_answers_on_its_line_and_nothing_else(control_plane: ControlPlane) -> None:
    """``POST /lines/{id}/watcher`` (factory IT): the login an OPC UA bridge or an MES uses for a whole line."""
    cp = control_plane
    watch = ok(cp.client.post(f"/lines/{cp.a.line_id}/watcher", headers=cp.a.it))
    assert watch["username"] == "w.acme.line-1" and watch["topics"]["results"] == "lineside/acme/line-1/+/results"
    assert "lineside bridge opcua" in watch["examples"]["opcua_bridge"]
    assert ok(cp.client.post(f"/lines/{cp.a.line_id}/watcher", headers=cp.a.it))["password"] == watch["password"]
    assert cp.client.post(f"/lines/{cp.a.line_id}/watcher", headers=cp.b.it).status_code == 404  # not globex's
    assert cp.client.post(f"/lines/{cp.a.line_id}/watcher", headers=cp.a.pm).status_code == 403
    assert Probe(cp, watch["username"], watch["password"], "another-id").connect_reason == "Not authorized"
    watcher = Probe(cp, watch["username"], watch["password"], watch["username"])
    assert watcher.subscribe("lineside/acme/line-1/+/frames") == ["Not authorized"]
    assert watcher.subscribe("lineside/globex/line-1/+/results") == ["Not authorized"]
    assert watcher.subscribe("lineside/acme/+/+/results") == ["Not authorized"]
    for kind in ("results", "errors", "status"):
        assert watcher.subscribe(watch["topics"][kind]) == ["Granted QoS 1"]
    answer = _ingress_answer(cp, _robot(cp, "a")["topics"]["results"], who="a", answer=b'{"verdict": "fail"}')
    wait_until(lambda: watcher.payloads, 5, "the line's watcher to receive the slice's answer")
    assert watcher.payloads == [answer] and watcher.received == ["lineside/acme/line-1/cam-1/results"]
    # It publishes nothing: a forged verdict costs it its connection.
    watcher.client.publish("lineside/acme/line-1/cam-1/results", b"forged", qos=1)
    assert watcher.disconnected.wait(5), "the watcher published a verdict"
    watcher.client.loop_stop()


def test_frames_reach_only_the_own_slices_ingress(control_plane: ControlPlane) -> None:
    from control_plane import sites
    from control_plane.models import Slice

    cp = control_plane
    a = _robot(cp, "a")
    from sqlmodel import Session

    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        slice_a = session.get(Slice, cp.a.ids["slice"])
        slice_b = session.get(Slice, cp.b.ids["slice"])
        assert slice_a is not None and slice_b is not None
        ingress_a = sites.ingress_broker_clients(session, cp.settings, slice_a)[0]  # rank 0, frames in
        ingress_b = sites.ingress_broker_clients(session, cp.settings, slice_b)[0]
    reader_a = Probe(cp, ingress_a.username, ingress_a.password, ingress_a.username)
    reader_b = Probe(cp, ingress_b.username, ingress_b.password, ingress_b.username)
    assert reader_a.subscribe(f"$share/{slice_a.app_name}/lineside/acme/line-1/+/frames") == ["Granted QoS 1"]
    assert reader_b.subscribe(f"$share/{slice_b.app_name}/lineside/acme/line-1/+/frames") == ["Not authorized"]
    assert reader_b.subscribe(f"$share/{slice_b.app_name}/lineside/globex/line-1/+/frames") == ["Granted QoS 1"]
    robot_a = Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"])
    robot_a.publish(a["topics"]["frames"], b"\xff\xd8 not really a jpeg")
    wait_until(lambda: reader_a.received, 5, "acme's ingress to receive acme's frame")
    assert reader_a.received == [a["topics"]["frames"]]
    assert reader_b.received == []
    for probe in (robot_a, reader_a, reader_b):
        probe.close()


def test_client_id_is_pinned_and_wrong_passwords_refused(control_plane: ControlPlane) -> None:
    cp = control_plane
    a, b = _robot(cp, "a"), _robot(cp, "b")
    robot_a = Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"])
    thief = Probe(cp, b["mqtt_username"], b["mqtt_password"], a["client_id"])  # A's client id, B's credentials
    assert thief.connect_reason == "Not authorized"
    assert not robot_a.disconnected.wait(1.0), "the stolen client id took over robot A's session"
    wrong = Probe(cp, a["mqtt_username"], "not-the-password", a["client_id"] + "-x")
    assert wrong.connect_reason == "Not authorized"
    robot_a.close()


def test_rotate_and_revoke_disconnect_the_robot(control_plane: ControlPlane) -> None:
    cp = control_plane
    old = _robot(cp, "a")
    robot = Probe(cp, old["mqtt_username"], old["mqtt_password"], old["client_id"])
    assert robot.connect_reason == "Success"
    new = _robot(cp, "a")
    assert new["mqtt_password"] != old["mqtt_password"]
    assert robot.disconnected.wait(5), "rotation left the old session connected"
    robot.client.loop_stop()
    assert Probe(cp, old["mqtt_username"], old["mqtt_password"], old["client_id"]).connect_reason == "Not authorized"
    current = Probe(cp, new["mqtt_username"], new["mqtt_password"], new["client_id"])
    assert current.connect_reason == "Success"
    ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/revoke", headers=cp.a.it))
    assert current.disconnected.wait(5), "revoking did not disconnect the robot"
    current.client.loop_stop()
    assert Probe(cp, new["mqtt_username"], new["mqtt_password"], new["client_id"]).connect_reason == "Not authorized"


def test_broker_rebuilt_from_the_database(control_plane: ControlPlane, tmp_path_factory: Any) -> None:
    """A broker that lost its state gets every robot and slice back from one sync."""
    cp = control_plane
    a = _robot(cp, "a")
    cp.broker.stop()
    (cp.broker.workdir / "dynamic-security.json").unlink()
    cp.broker.start()
    assert Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"]).connect_reason == "Not authorized"
    counts = ok(cp.client.post(f"/sites/{cp.site_id}/broker/sync", headers=cp.op))
    # Two robots with their watchers, the monitor, the two lines' watchers, and per slice 2 ranks x 2 slots x 2
    # connections of its ingress and its HTTP endpoint's metering login.
    assert counts == {"ensured": 2 * 2 + 1 + 2 + 2 * (8 + 1), "removed": 0}
    assert Probe(cp, a["mqtt_username"], a["mqtt_password"], a["client_id"]).connect_reason == "Success"


def test_broker_down_is_503_and_nothing_is_created(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.broker.stop()
    response = cp.client.post("/robots", json={"slug": "cam-2", "line_id": cp.a.line_id}, headers=cp.a.it)
    assert response.status_code == 503 and "unreachable" in response.json()["detail"]
    cp.broker.start()
    assert [r["slug"] for r in ok(cp.client.get("/robots", headers=cp.a.it))] == ["cam-1"]


def test_watcher_reads_only_its_robots_answers(control_plane: ControlPlane) -> None:
    cp = control_plane
    a, b = _robot(cp, "a"), _robot(cp, "b")
    watcher = Probe(cp, a["watch_username"], a["watch_password"], a["watch_username"])
    assert watcher.connect_reason == "Success"
    assert watcher.subscribe(a["topics"]["results"]) == ["Granted QoS 1"]
    assert watcher.subscribe(b["topics"]["results"]) == ["Not authorized"]
    assert watcher.subscribe(a["topics"]["frames"]) == ["Not authorized"]  # frames are the slice's to read
    watcher.client.publish(a["topics"]["frames"], b"forged", qos=1)
    assert watcher.disconnected.wait(5), "a watcher could publish a frame"
    watcher.client.loop_stop()


def test_the_http_endpoints_login_only_meters_its_slices_lines(control_plane: ControlPlane) -> None:
    """``s.<app>.http`` (the head's KServe endpoint) publishes its slice's telemetry and nothing else."""
    from sqlmodel import Session

    from control_plane import sites
    from control_plane.models import Slice

    cp = control_plane
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        item = session.get(Slice, cp.a.ids["slice"])
        assert item is not None
        gateway = sites.ingress_broker_clients(session, cp.settings, item)[-1]
        app = item.app_name
    assert gateway.username == f"s.{app}.http"
    sender = Probe(cp, gateway.username, gateway.password, gateway.username)
    assert sender.connect_reason == "Success"
    assert sender.subscribe("lineside/acme/line-1/+/frames") == ["Not authorized"]
    sender.publish(f"lineside-telemetry/acme/line-1/{app}", b'{"window": 1}')
    assert not sender.disconnected.wait(1.0), "the endpoint's login may not meter its own slice's line"
    sender.close()
    # Mosquitto drops a client that publishes where it may not: a verdict, another tenant's telemetry.
    for forged in ("lineside/acme/line-1/cam-1/results", f"lineside-telemetry/globex/line-1/{app}"):
        forger = Probe(cp, gateway.username, gateway.password, gateway.username)
        forger.client.publish(forged, b"forged", qos=1)
        assert forger.disconnected.wait(5), f"the endpoint's login published on {forged}"
        forger.client.loop_stop()
