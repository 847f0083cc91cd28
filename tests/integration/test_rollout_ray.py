"""A model rollout on a live line, on a real Ray Serve, a dynsec Mosquitto, the control plane app and its agent:
a canary of a model that fails every part rolls back on its own while robots keep sending, no frame is lost,
each robot sees only the verdicts of the model it was routed to, and the current model never restarts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from contracts.slice_spec import SliceSpec, routes_to_candidate
from edge_node import cluster
from edge_node.agent import Agent, join
from edge_node.serving import candidate_app, forget
from models import BUNDLED_MANIFEST
from robots.sdk import RobotClient
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.rollout_streams import Stream, fails_every_part, upload
from tests.integration.test_cp_agent_ray import quick_profile
from tests.waiting import wait_until

LINE = "line-1"
SHARE = 0.5


def apply(spec: SliceSpec) -> None:
    """The agent's apply, waiting until the slice runs (the test asserts on what then serves)."""
    assert cluster.apply_slice(spec), f"slice {spec.name} did not start"


def robots_both_ways(count: int) -> tuple[list[str], list[str]]:
    """``count`` robot names the canary routes to the candidate and ``count`` it leaves on the current model."""
    names = [f"arm-{i}" for i in range(1, 200)]
    routed = [n for n in names if routes_to_candidate(LINE, n, SHARE)][:count]
    kept = [n for n in names if not routes_to_candidate(LINE, n, SHARE)][:count]
    return routed, kept


@dataclass
class LiveLine:
    """A slice of tenant acme on the one-node site, its agent, and robots streaming good parts to it."""

    cp: ControlPlane
    agent: Agent
    slice_id: int
    app: str
    current: dict
    routed: list[str]
    kept: list[str]
    streams: list[Stream]

    def roll_out(self, **body: object) -> dict:
        started = ok(self.cp.client.post("/rollouts", json={"slice_id": self.slice_id, **body}, headers=self.cp.a.it),
                     201)  # fmt: skip
        self.agent.step()  # the candidate joins the slice
        return started

    def until_ended(self, rollout: dict, what: str) -> dict:
        def ended() -> dict:
            self.agent.step()  # each step, its end or a rollback is a new generation the agent applies
            shown = ok(self.cp.client.get(f"/rollouts/{rollout['id']}", headers=self.cp.a.pm))
            return shown if shown["state"] != "running" else {}

        done = wait_until(ended, 240, what, interval=1.0)
        self.agent.step()
        wait_until(lambda: candidate_app(self.app) not in cluster.applications(), 60, "the candidate to be removed")
        after = {id(s): len(s.answers) for s in self.streams}
        wait_until(lambda: all(len(s.answers) >= after[id(s)] + 3 for s in self.streams), 60, "answers after its end")
        return done

    def processes(self) -> dict:
        return cluster.slice_processes(SliceSpec(name=self.app, tenant="acme", lines=[LINE]))


@contextmanager
def live_line(cp: ControlPlane, tmp_path: Path, frame: bytes) -> Iterator[LiveLine]:
    for tenant in (cp.a, cp.b):  # two CPUs: room for this test's slice and its candidate only
        ok(cp.client.delete(f"/slices/{tenant.ids['slice']}", headers=tenant.pm))
    current = next(m for m in ok(cp.client.get("/models", headers=cp.a.pm)) if m["tenant_id"] is None)
    body = {"slug": "canary", "line_ids": [cp.a.line_id], "model_version_id": current["id"], "cpus_per_replica": 0.5}
    slice_id = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)["id"]
    app = f"t{cp.a.tenant_id}-canary"
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    agent = Agent(cp.client, node["node_token"], tmp_path / "agent", apply=apply, profiler=quick_profile)
    routed, kept = robots_both_ways(2)
    line = LiveLine(cp, agent, slice_id, app, current, routed, kept, [])
    threads: list[threading.Thread] = []
    try:
        assert agent.step()[0].healthy
        for name in routed + kept:
            creds = ok(cp.client.post("/robots", json={"slug": name, "line_id": cp.a.line_id}, headers=cp.a.it), 201)
            client = RobotClient(cp.broker.host, cp.broker.port, tenant="acme", line=LINE, robot=name,
                                 username=creds["mqtt_username"], password=creds["mqtt_password"],
                                 client_id=creds["client_id"]).connect()  # fmt: skip
            line.streams.append(Stream(client, frame))
        threads += [threading.Thread(target=s.run, daemon=True) for s in line.streams]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(len(s.answers) >= 3 for s in line.streams), 60, "every robot's first answers")
        yield line
    finally:
        for s in line.streams:
            s.stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for s in line.streams:
            s.client.close()
        if app in cluster.applications():
            cluster.delete_slice(app)
        forget(app)


def assert_no_frame_lost(line: LiveLine) -> None:
    """Every frame sent got its answer, and every answer is a verdict."""
    for s in line.streams:
        assert (s.lost, len(s.verdicts())) == (0, s.sent), (s.client.robot, s.sent, s.answers, s.lost)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_canary_of_a_model_that_fails_every_part_rolls_back_on_its_own(
    ray_cluster: int, control_plane: ControlPlane, tmp_path: Path, part_frames: list
) -> None:
    cp = control_plane
    good = next(sample.data for sample in part_frames if sample.label == "good")
    broken = upload(cp, fails_every_part(), "fails-every-part", "2.0.0")
    with live_line(cp, tmp_path, good) as line:
        serving = line.processes()
        started = line.roll_out(model_version_id=broken["id"], shadow=False, canary_shares=[SHARE], window_s=3600,
                                min_frames=10, max_fail_rate_diff=0.2, max_p99_ms=30_000)  # fmt: skip
        assert (started["stage"], started["share"], started["state"]) == ("canary", SHARE, "running")
        done = line.until_ended(started, "the canary to roll back on its own")
        served_on = line.processes()

    assert done["state"] == "rolled_back" and "fail rate" in done["reason"], done
    figures = done["history"][-1]["comparison"]
    assert figures["candidate"]["fail_rate"] == 1.0 and figures["current"]["fail_rate"] < 0.2, figures
    events = ok(cp.client.get(f"/slices/{line.slice_id}/events", headers=cp.a.pm))
    steps = [e["reason"] for e in events if e["kind"] == "rollout"]  # newest first
    assert len(steps) == 2 and steps[0].startswith(f"rollout {started['id']}: rolled back in canary 50%"), steps
    # The current model's replica and the ingress served through it all: neither restarted.
    assert served_on["model"]["pid"] == serving["model"]["pid"]
    assert served_on["ingress"]["pid"] == serving["ingress"]["pid"]
    assert_no_frame_lost(line)
    ours, theirs = f"{line.current['name']}:{line.current['version']}", f"{broken['name']}:{broken['version']}"
    for s in line.streams:
        if s.client.robot in line.kept:  # never routed: the current model's verdicts only
            assert s.runs() == [ours], (s.client.robot, s.models())
        else:  # the current model's, the candidate's while the canary ran, the current model's again: never mixed
            assert s.runs() == [ours, theirs, ours], (s.client.robot, s.models())
            assert {a.verdict for a in s.verdicts() if a.model == theirs} == {"fail"}


def same_model_repackaged() -> bytes:
    """The bundled model's graph under another file hash (its doc string differs): a new version that judges
    every part exactly as the current one."""
    model = onnx.load(str(BUNDLED_MANIFEST.parent / "part-inspector.onnx"))
    model.doc_string = "part-inspector 1.1.0: repackaged"
    return model.SerializeToString()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_clean_rollout_steps_through_shadow_and_canary_and_the_new_version_serves_every_robot(
    ray_cluster: int, control_plane: ControlPlane, tmp_path: Path, part_frames: list
) -> None:
    cp = control_plane
    good = next(sample.data for sample in part_frames if sample.label == "good")
    newer = upload(cp, same_model_repackaged(), "part-inspector", "1.1.0")
    with live_line(cp, tmp_path, good) as line:
        started = line.roll_out(model_version_id=newer["id"], shadow=True, canary_shares=[SHARE], window_s=5,
                                min_frames=10, max_fail_rate_diff=0.2, max_p99_ms=30_000)  # fmt: skip
        done = line.until_ended(started, "the rollout to step through to the new version")

    assert done["state"] == "completed", done
    assert ok(cp.client.get(f"/slices/{line.slice_id}", headers=cp.a.pm))["model_version_id"] == newer["id"]
    shadow, canary = done["history"]
    assert shadow["stage"] == "shadow" and shadow["comparison"]["compared"] >= 10
    assert shadow["comparison"]["disagreement_rate"] == 0.0  # the same graph: they always agree
    assert canary["stage"] == "canary" and canary["comparison"]["candidate"]["frames"] >= 10
    assert_no_frame_lost(line)
    old, new = f"{line.current['name']}:{line.current['version']}", f"{newer['name']}:{newer['version']}"
    for s in line.streams:  # each robot moves to the new version once and never sees the old one again
        assert s.runs() == [old, new], (s.client.robot, s.models())
