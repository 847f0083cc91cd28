"""A changed slice rolls its ingress over to the other broker login (``SliceSpec.ingress_slot``).

Found in the multi-node test: every placement change restarted the ingress, Serve started the new replica
under the same client id while the old one drained, and the two took the MQTT session from each other
(9,418 reconnects in two minutes, frames answered only after ~96 s). The agent now alternates the slot on
every changed apply and keeps it when Serve merely lost the application (a restart resumes its session).
The agent runs against the real control plane app; Ray is the seam left out (a recording ``apply``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane import broker_sync
from edge_node.agent import Agent, join
from edge_node.profiling import ProfileResult
from tests.integration.cp_fixtures import ControlPlane, RecordedServe, ok


def quick_profile(_manifest: Path, *, threads: int, batch: int) -> ProfileResult:
    return ProfileResult(frames_per_s_per_replica=100.0, cold_start_s=1.0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_changed_slice_takes_the_other_ingress_login_and_a_restart_keeps_its_own(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = control_plane
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    node = join(cp.client, token, tmp_path / "agent")
    serve = RecordedServe()
    applied, present = serve.applied, serve.present
    agent = Agent(cp.client, node["node_token"], tmp_path / "agent", profiler=quick_profile, **serve.agent_options())
    agent.step()
    assert applied and all(s.ingress_slot == 0 for s in applied)
    applied.clear()
    mine = cp.a.ids["slice"]
    ok(cp.client.post(f"/slices/{mine}/scale", json={"min_replicas": 1, "max_replicas": 2}, headers=cp.a.pm))
    agent.step()
    [changed] = applied
    name = changed.name
    assert changed.ingress_slot == 1  # changed: the other login
    applied.clear()
    agent.step()
    assert applied == []  # nothing changed, nothing applied
    present.discard(name)  # Serve lost the application (a Ray restart): the same version, the same login
    agent.step()
    assert [(s.name, s.ingress_slot) for s in applied] == [(name, 1)]
    # Both slots of every rank have a broker login, the frames-in and the answers-out one.
    prefix = applied[0].broker.username
    assert prefix is not None
    for index in (0, 1, 2, 3):
        assert broker_sync.ingress_connection(prefix, "pw", index)[0] == f"{prefix}.{index}"
