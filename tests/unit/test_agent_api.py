"""The agent API's models (contracts.agent_api): the wire JSON agents already send still validates,
what a hostile node could send to break the control plane is refused, and the desired state keeps the
broker password on the wire while hiding it everywhere else."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from contracts.agent_api import MAX_ID, DesiredState, Heartbeat, NodeJoin, ProfileReport
from edge_node.agent import Agent
from lineside import entry

SHA = "ab" * 32


def desired_json(password: str | None = "s3cret") -> dict[str, Any]:
    """A desired state as the control plane sends it: only the fields it sets."""
    spec = {
        "name": "t1-inspect", "tenant": "acme", "lines": ["line-1"], "ingress_replicas": 1, "latency_budget_ms": 100.0,
        "replicas": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2.0, "upscale_delay_s": 3.0,
                     "downscale_delay_s": 60.0},
        "batch": {"max_batch_size": 32, "batch_wait_ms": 5.0, "ingress_batch": 16},
        "resources": {"cpus_per_replica": 1.0, "gpus_per_replica": 0.0}, "placement": None,
        "telemetry_period_s": 2.0, "frame_policy": {"line-1": {"max_fps": 30.0, "max_frame_bytes": 4194304}},
        "broker": {"host": "127.0.0.1", "port": 1883, "username": "s.t1-inspect", "password": password,
                   "connection_logins": True},
    }  # fmt: skip
    return {"site": "north", "slices": [{"slice_id": 1, "generation": 2, "model": {"sha256": SHA, "manifest": {}},
                                         "spec": spec}]}  # fmt: skip


def test_the_desired_state_travels_as_the_control_plane_built_it() -> None:
    """What the agent digests and the ETag covers is the JSON sent, unchanged: no defaults added, the password kept."""
    sent = desired_json()
    state = DesiredState.model_validate(sent)
    assert state.content() == sent
    assert json.loads(json.dumps(state.content())) == sent
    assert "s3cret" not in state.model_dump_json() and "s3cret" not in repr(state)  # logs and caches of models
    assert state.slices[0].spec.broker.password is not None
    assert state.slices[0].spec.broker.password.get_secret_value() == "s3cret"


def test_a_rotated_password_changes_what_the_agent_digests() -> None:
    before = DesiredState.model_validate(desired_json("old")).slices[0].content()["spec"]
    after = DesiredState.model_validate(desired_json("new")).slices[0].content()["spec"]
    assert before != after


def test_a_desired_state_the_agent_cannot_apply_is_refused_whole() -> None:
    broken = desired_json()
    broken["slices"][0]["spec"]["replicas"]["max_replicas"] = 0
    with pytest.raises(ValidationError, match="max_replicas"):
        DesiredState.model_validate(broken)


def test_the_agent_keeps_serving_its_cache_when_a_desired_state_is_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A control plane the agent cannot follow (a newer one, a bug) must not stop the slices it serves."""
    good = desired_json()
    bad = {**good, "slices": [{**good["slices"][0], "generation": -1}]}
    answers = [good, bad]

    def control_plane(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0))

    client = httpx.Client(transport=httpx.MockTransport(control_plane), base_url="http://control-plane")
    agent = Agent(client, "lsn_test", tmp_path / "agent")
    first = agent.pull()
    assert first.content() == good
    with caplog.at_level(logging.WARNING, logger="edge_node.agent"):
        assert agent.pull() == first
    assert "desired state unreadable" in caplog.text and "generation" in caplog.text


def test_what_agents_send_today_still_validates() -> None:
    beat = {"cpus": 8, "memory_mb": 32000, "gpus": [{"model": "NVIDIA L4", "memory_mb": 24000}],
            "applications": ["t1-inspect"], "ray_resources": ["lineside_node_1"],
            "utilization": {"cpu": 0.25, "gpus": [0.5]},
            "slices": [{"slice_id": 1, "generation": 2, "healthy": True, "message": "RUNNING",
                        "replicas": {"model": {"RUNNING": 2}, "ingress": {"RUNNING": 1}}}]}  # fmt: skip
    parsed = Heartbeat.model_validate(beat)
    assert parsed.model_dump(exclude_unset=True) == beat
    assert Heartbeat.model_validate({}).applications is None  # a worker's beat says nothing of applications
    join = {"token": "lsj_x", "hostname": "edge-1", "cpus": 16, "memory_mb": 64000, "ray_address": None}
    assert NodeJoin.model_validate(join).gpus == []
    ProfileReport(model_sha256=SHA, hardware="cpu x2", frames_per_s_per_replica=120.0, cold_start_s=1.5)


def report(**changes: Any) -> dict[str, Any]:
    return {"slice_id": 1, "generation": 2, "healthy": True, **changes}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slices": [report(replicas={"model": 5})]}, "replicas"),  # was a 500: running_models calls .get on it
        ({"slices": [report(replicas={"model": {"RUNNING": -1}})]}, "replicas"),
        ({"slices": [report(slice_id=MAX_ID + 1)]}, "slice_id"),
        ({"slices": [report(message="x" * 2001)]}, "message"),
        ({"memory_mb": 10**20}, "memory_mb"),  # past the 32-bit column: the database's overflow, a 500
        ({"cpus": 10**6}, "cpus"),
        ({"gpus": [{"model": "NVIDIA L4", "memory_mb": 24000, "owner": "me"}]}, "owner"),
        ({"utilization": {"cpu": 0.5, "gpus": [7.0]}}, "gpus"),
        ({"applications": ["x" * 201]}, "applications"),
        ({"hostname": "edge-1"}, "hostname"),  # not a heartbeat field: a typo or a probe is named
    ],
)
def test_a_hostile_heartbeat_is_refused_with_the_field_named(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Heartbeat.model_validate(body)


def test_a_node_cannot_join_with_values_the_database_cannot_hold() -> None:
    join = {"token": "lsj_x", "hostname": "edge-1", "cpus": 16, "memory_mb": 2**40}
    with pytest.raises(ValidationError, match="memory_mb"):
        NodeJoin.model_validate(join)
    with pytest.raises(ValidationError, match="gpus"):
        NodeJoin.model_validate({**join, "memory_mb": 1, "gpus": [{"model": "x", "memory_mb": 1}] * 65})


def test_the_lineside_command_without_the_server_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A robot-only install has no typer: a clear message and exit 1, not a traceback."""
    monkeypatch.setitem(sys.modules, "typer", None)  # importing it raises ModuleNotFoundError, as when absent
    monkeypatch.delitem(sys.modules, "lineside.cli", raising=False)
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 1
    message = capsys.readouterr().err
    assert "'typer'" in message and 'pip install "lineside[server,cpu]"' in message


def test_a_missing_module_of_lineside_itself_is_not_blamed_on_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lineside.cli", None)
    with pytest.raises(ModuleNotFoundError):
        entry.main()
