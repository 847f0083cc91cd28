"""The edge agent's files are its own: 0600 files in 0700 folders whatever the umask (issue 11, item 17).

Its data folder holds the node token (agent.json), the cached desired state with the slices' broker
passwords (desired.json) and tenants' model files; another user of the edge server must read none.
The agent joins and makes a pass against the real control plane app; only Ray is left out (the pass
applies slices through a recording stand-in), since what is checked is what lands on disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.slice_spec import SliceSpec
from edge_node.agent import Agent, join
from edge_node.profiling import ProfileResult
from tests.integration.cp_fixtures import ControlPlane, ok


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default: new files 0644 and folders 0755 unless the code says otherwise."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def quick_profile(_manifest: Path, *, threads: int, batch: int) -> ProfileResult:
    return ProfileResult(frames_per_s_per_replica=100.0, cold_start_s=1.0)


def modes(root: Path) -> dict[str, str]:
    """Relative path -> octal permission bits of ``root`` and everything under it."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_agent_files_are_private_whatever_the_umask(
    control_plane: ControlPlane, tmp_path: Path, loose_umask: None
) -> None:
    cp = control_plane
    data_dir = tmp_path / "lineside" / "agent"
    data_dir.parent.mkdir()
    data_dir.mkdir(mode=0o755)  # made by an operator (or an older agent) before: the agent tightens it
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, data_dir)
    applied: list[str] = []

    def record(spec: SliceSpec) -> None:
        applied.append(spec.name)

    def running(_name: str) -> dict[str, Any]:
        return {"status": "RUNNING", "deployments": {}}

    agent = Agent(
        cp.client, node["node_token"], data_dir, apply=record, applications=set, status=running,
        ray_resources=list, profiler=quick_profile,
    )  # fmt: skip
    agent.step()
    assert applied, "the pass applied no slice: nothing of the desired state reached the disk"

    found = modes(data_dir)
    for name in ("agent.json", "desired.json", "applied.json", "models"):
        assert name in found, f"{name} not written: {sorted(found)}"
    assert any(name.endswith(".onnx") for name in found), f"no model file cached: {sorted(found)}"
    loose = {name: mode for name, mode in found.items() if mode != ("0o700" if (data_dir / name).is_dir() else "0o600")}
    assert not loose, f"readable by others (umask 022): {loose}"
