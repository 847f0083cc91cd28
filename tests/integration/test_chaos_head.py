"""Chaos scenario 5 (issue 18): the Ray head dies under a running agent, and the agent's service restarts it.

A real ``lineside edge-node run`` (its own Ray head) serves a slice from a real control plane over HTTP. Its
GCS server is killed with -9. The agent must not hang: it ends every Ray process of its run and exits with
``EXIT_HEAD_LOST``, leaving nothing behind; started again (systemd's ``Restart=always``), it starts a new
head and its reconciler applies the slice once, and the line is answered again within 120 s of the kill.
Before the fix the agent's Ray calls hung until Ray ended the process from inside 60 s later (exit 1), and
the raylet's agents were left running."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from contracts.wire import Result
from control_plane.app import create_app
from control_plane.server import BackgroundServer
from edge_node.agent import join
from edge_node.broker import free_port
from edge_node.cluster import EXIT_HEAD_LOST
from robots.sdk import FrameLost, RobotClient
from tests.integration.cp_fixtures import ControlPlane, monitor_away, ok
from tests.integration.test_security_shutdown import run_processes, started, wait_for_ray_agents

SERVING_AGAIN_S = 120.0


def _answered(robot: RobotClient, frame: bytes) -> bool:
    try:
        return isinstance(robot.inspect(frame, timeout_s=5, retries=0), Result)
    except FrameLost:
        return False


def _until_answered(robot: RobotClient, frame: bytes, timeout_s: float, what: str) -> float:
    started_at = time.monotonic()
    while not _answered(robot, frame):
        assert time.monotonic() - started_at < timeout_s, f"no answer within {timeout_s:.0f} s: {what}"
    return time.monotonic()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_5_the_ray_head_killed_the_agent_exits_clean_and_once_restarted_serves_within_120_s(
    control_plane: ControlPlane, tmp_path: Path, ray_tmp: Path, monkeypatch: pytest.MonkeyPatch, part_frames: list
) -> None:
    cp = control_plane
    frame = part_frames[0].data
    ok(cp.client.delete(f"/slices/{cp.b.ids['slice']}", headers=cp.b.pm))  # one slice fits 2 test CPUs
    creds = ok(cp.client.post(f"/robots/{cp.a.ids['robot']}/rotate", headers=cp.a.it))
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    monitor_away(cp, monkeypatch)  # the served control plane below is the one the agent talks to
    app = create_app(cp.settings)
    server = BackgroundServer(app, "127.0.0.1", free_port()).start()
    robot = RobotClient(
        cp.broker.host, cp.broker.port, tenant="acme", line="line-1", robot="cam-1",
        username=str(creds["mqtt_username"]), password=str(creds["mqtt_password"]), client_id=str(creds["client_id"]),
    )  # fmt: skip
    app_name = f"t{cp.a.tenant_id}-inspect"
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            join(client, token, tmp_path / "agent")
        args = ["edge-node", "run", "--data-dir", str(tmp_path / "agent"), "--period", "2"]
        robot.connect()
        with started(args, ray_tmp) as first:
            first.wait_for("agent running")
            wait_for_ray_agents(first)
            _until_answered(robot, frame, 300, "the slice serving before the fault")
            first.up = run_processes(first.mark)  # the whole tree, replicas included
            gcs = next(pid for (pid, _), cmd in first.up.items() if "gcs_server" in cmd)
            os.kill(gcs, signal.SIGKILL)
            killed = time.monotonic()
            code = first.process.wait(timeout=90)
            exited_s = time.monotonic() - killed
            left = first.leftovers()
            survivors = "\n".join(f"{pid} {cmd[:120]}" for (pid, _), cmd in sorted(left.items()))
            last = "\n".join(first.lines[-20:])
            assert code == EXIT_HEAD_LOST, f"exit {code} {exited_s:.1f} s after the kill:\n{last}"
            assert not left, f"{len(left)} processes of the dead head's run are still running:\n{survivors}"
        with started(args, ray_tmp) as second:  # the service manager starts the agent again
            serving_s = _until_answered(robot, frame, SERVING_AGAIN_S, "after the restart") - killed
            applies = [line for line in second.lines if f"applying slice {app_name}" in line]
            status = ok(cp.client.get(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
            print({"scenario": 5, "agent_exited_s": round(exited_s, 1), "serving_again_s": round(serving_s, 1),
                   "applies": len(applies), "actual": status["actual"]})  # fmt: skip
            assert serving_s <= SERVING_AGAIN_S
            assert len(applies) == 1, applies
            assert status["actual"]["replicas"]["model"] == {"RUNNING": 1}, status
            assert second.stop(signal.SIGTERM) == 0
    finally:
        robot.close()
        server.stop()
        app.state.engine.dispose()
