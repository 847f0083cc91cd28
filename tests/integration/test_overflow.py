"""Cross-site overflow (issue 17, section 1) against the real control plane, two dynsec Mosquittos and a WAN
proxy that delays every byte: the east site's agent measures its round trip to the west (home) broker through
the proxy; a burst slice the west site cannot hold goes east while the budget allows, stops when west has room
again, and is refused when the round trip would break its line's budget. The east site's ingress login
reaches the home broker only through the WAN and may take only its share of the slice's frames.

``test_overflow_ray.py`` runs the data path: two Ray clusters, robots, a link drop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from contracts import wire
from contracts.broker_logins import connection_password
from edge_node import agent as agent_module
from edge_node.agent import Agent, join
from edge_node.broker import MosquittoBroker, free_port, wait_for_port
from edge_node.links import round_trip_ms
from tests.integration.cp_fixtures import ControlPlane, RecordedServe, ok
from tests.integration.test_cp_agent_ray import quick_profile
from tests.integration.wan_proxy import WanProxy
from tests.waiting import wait_until

ONE_WAY_S = 0.05  # the proxy holds each byte this long each way: a 100 ms round trip


def two_sites(cp: ControlPlane, tmp_path: Path, proxy: WanProxy) -> tuple[int, dict[str, str]]:
    """West (the fixture's site, reached by other sites through ``proxy``) and a new east site; returns east's
    id and its broker admin password."""
    west = {"region": "west", "wan_broker_host": "127.0.0.1", "wan_broker_port": proxy.port}
    assert ok(cp.client.patch(f"/sites/{cp.site_id}", json=west, headers=cp.op))["region"] == "west"
    east = ok(cp.client.post("/sites", json={"name": "east", "region": "east", "broker_port": free_port()},
                             headers=cp.op), 201)  # fmt: skip
    admin = ok(cp.client.get(f"/sites/{east['id']}/broker-admin", headers=cp.op))
    return east["id"], {"port": str(east["broker_port"]), "password": admin["password"]}


def head(cp: ControlPlane, site_id: int, folder: Path, serve: RecordedServe | None, cpus: int | None = None,
         monkeypatch: pytest.MonkeyPatch | None = None) -> Agent:  # fmt: skip
    """A site's head agent: with Ray left out (``serve`` records what it would apply), or on this process's Ray."""
    if cpus is not None and monkeypatch is not None:  # a smaller machine than this one
        real = agent_module.inventory
        monkeypatch.setattr(agent_module, "inventory", lambda: {**real(), "cpus": cpus})
    token = ok(cp.client.post(f"/sites/{site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, folder)
    options = {} if serve is None else {"delete": serve.present.discard, "forget": lambda _name: None,
                                        **serve.agent_options()}  # fmt: skip
    agent = Agent(cp.client, node["node_token"], folder, profiler=quick_profile, link_period_s=0.0, **options)
    if monkeypatch is not None:
        monkeypatch.undo()
    return agent


def mqtt_login(port: int, username: str, password: str) -> tuple[mqtt.Client, list[Any]]:
    granted: list[Any] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.extend(codes)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, granted


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_full_site_overflows_east_within_the_budget_and_comes_home(
    control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = control_plane
    with WanProxy(cp.broker.port, ONE_WAY_S) as proxy:
        east_id, east_broker = two_sites(cp, tmp_path, proxy)
        with MosquittoBroker(tmp_path / "east-broker", int(east_broker["port"]),
                             admin_password=east_broker["password"]):  # fmt: skip
            west_serve, east_serve = RecordedServe(), RecordedServe()
            west = head(cp, cp.site_id, tmp_path / "west", west_serve, cpus=2, monkeypatch=monkeypatch)
            east = head(cp, east_id, tmp_path / "east", east_serve)
            west.step()
            east.step()  # pulls the peers, probes west's broker through the WAN, reports the round trip

            links = ok(cp.client.get(f"/sites/{east_id}/links", headers=cp.op))
            assert [link["peer_site_id"] for link in links] == [cp.site_id]
            measured = links[0]["measured_rtt_ms"]
            # The probe crosses the proxy both ways: at least the injected round trip, and not far above it.
            assert 2 * ONE_WAY_S * 1000 <= measured < 2 * ONE_WAY_S * 1000 * 3, links

            # West: globex's reserved slice holds one of its two CPUs; acme's burst slice wants three halves.
            ok(cp.client.delete(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
            body = {"slug": "burst", "line_ids": [cp.a.line_id], "model_version_id": _public_model(cp),
                    "priority": "burst", "min_replicas": 1, "max_replicas": 3, "cpus_per_replica": 0.5,
                    "overflow_regions": ["east"]}  # fmt: skip
            ok(cp.client.patch(f"/lines/{cp.a.line_id}", json={"latency_budget_ms": 500}, headers=cp.a.it))
            burst = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
            east_node = ok(cp.client.get("/nodes", headers=cp.op))[-1]["id"]
            assert sum(burst["placement"].values()) == 2
            assert burst["overflow"] == {str(east_id): {str(east_node): 1}}, burst
            events = ok(cp.client.get(f"/slices/{burst['id']}/events", headers=cp.a.pm))
            said = [e["reason"] for e in events if e["kind"] == "overflow"]
            assert said and "within the 500 ms budget" in said[0], said  # newest first

            # East runs it: its ingress joins west's broker through the WAN, with east's own login.
            east.step()
            spec = next(s for s in east_serve.applied if s.name == f"t{cp.a.tenant_id}-burst")
            assert (spec.broker.host, spec.broker.port) == ("127.0.0.1", proxy.port)
            assert spec.broker.username == f"s.t{cp.a.tenant_id}-burst.x{east_id}"
            assert (spec.replicas.min_replicas, spec.replicas.max_replicas) == (1, 1)
            west.step()
            home_spec = next(s for s in west_serve.applied if s.name == spec.name)
            assert home_spec.replicas.max_replicas == 2  # what west has room for, not the lease's 3
            assert spec.broker.password is not None
            _east_login_takes_only_its_share(cp, proxy, spec.broker.username,
                                             spec.broker.password.get_secret_value())  # fmt: skip

            # Room returns at home: globex releases its slice; the overflow ends.
            ok(cp.client.delete(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))
            back = ok(cp.client.get(f"/slices/{burst['id']}", headers=cp.a.pm))
            assert back["overflow"] == {} and sum(back["placement"].values()) == 3, back
            east.step()
            assert spec.name not in east_serve.present  # east's agent deleted it
            assert spec.name not in _desired_names(east)

            # A tighter budget: a round trip of 100 ms plus the slice's p99 no longer fits 120 ms.
            ok(cp.client.put(f"/sites/{east_id}/links/{cp.site_id}", json={"rtt_ms": 150}, headers=cp.op))
            ok(cp.client.patch(f"/lines/{cp.a.line_id}", json={"latency_budget_ms": 120}, headers=cp.a.it))
            ok(cp.client.post(f"/slices/{burst['id']}/scale", json={"min_replicas": 1, "max_replicas": 6},
                              headers=cp.a.pm))  # fmt: skip
            refused = ok(cp.client.get(f"/slices/{burst['id']}", headers=cp.a.pm))
            assert refused["overflow"] == {}, refused
            events = ok(cp.client.get(f"/slices/{burst['id']}/events", headers=cp.a.pm))
            said = [e["reason"] for e in events if e["kind"] == "overflow"]
            assert "round trip 150 ms + p99" in said[0] and "would exceed the 120 ms budget" in said[0], said


def _public_model(cp: ControlPlane) -> int:
    return next(m["id"] for m in ok(cp.client.get("/models", headers=cp.a.pm)) if m["tenant_id"] is None)


def _desired_names(agent: Agent) -> set[str]:
    return {s.spec.name for s in agent.pull().slices}


def _east_login_takes_only_its_share(cp: ControlPlane, proxy: WanProxy, username: str, base: str) -> None:
    """East's ingress login works on west's broker (through the WAN) for the slice's shared frames only."""
    app = username.split(".")[1]
    client_id = f"{username}.0"
    client, granted = mqtt_login(proxy.port, client_id, connection_password(base, client_id))
    try:
        shared = wire.shared_frames_filter(app, "acme", "line-1")
        plain = wire.line_frames_filter("acme", "line-1")
        client.subscribe([(shared, 1), (plain, 1), (wire.line_frames_filter("globex", "line-1"), 1)])
        wait_until(lambda: len(granted) == 3, 10, "east's subscriptions answered")
        assert [code.is_failure for code in granted] == [False, True, True], granted
    finally:
        client.loop_stop()
        client.disconnect()


def test_the_broker_listens_where_other_sites_reach_it(tmp_path: Path) -> None:
    """``lineside broker run --host``: the plain listener on the private network between sites (here a second
    loopback address), so that another site's overflow ingress can reach it; nothing on 127.0.0.1 then."""
    port = free_port()
    env = {**os.environ, "LINESIDE_BROKER_ADMIN_PASSWORD": "admin-secret-1234"}
    command = [sys.executable, "-m", "lineside", "broker", "run", "--host", "127.0.0.2", "--port", str(port),
               "--data-dir", str(tmp_path / "broker")]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port("127.0.0.2", port, 30)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert round_trip_ms("127.0.0.2", port) is not None  # an MQTT broker answers there: the probe's CONNACK
        assert round_trip_ms("127.0.0.1", port) is None  # nothing: the round trip is unknown, not zero
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=30)
    assert f"broker on 127.0.0.2:{port}" in out, out
