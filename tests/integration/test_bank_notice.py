"""An owner taking the room of its lent server back gives the bank's replicas their notice (issue 14, section 3),
on both databases."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from control_plane import placement
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_ownership import MONDAY_NIGHT, NIGHTS, site_of_owners


def test_an_owner_needing_its_lent_server_gives_the_banks_replicas_their_notice(control_plane: ControlPlane) -> None:
    """The lab's own slice needs the room acme's bank replicas use on the lab's server; with the lab's notice
    of 10 minutes they stay that long (the lab's slice waits for that room), then leave."""
    cp = control_plane
    _, lab_eo, _, acme_node, lab, _ = site_of_owners(cp)
    ok(cp.client.put(f"/nodes/{lab}/contribution", json={**NIGHTS, "notice_s": 600}, headers=lab_eo))
    body = {"slug": "night", "line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank",
            "residency": "any_bank", "max_replicas": 4}  # fmt: skip
    night = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    on_lab = night["placement"].get(str(lab), 0)
    assert on_lab >= 1 and sum(night["placement"].values()) == 4  # acme's own server first, the rest lent
    own = {"slug": "own", "line_ids": [cp.b.line_id], "model_version_id": 1, "max_replicas": 4,
           "cpus_per_replica": 4, "residency": "own_nodes"}  # fmt: skip
    mine = ok(cp.client.post("/slices", json=own, headers=cp.b.pm), 201)  # 16 CPUs: all of the lab's server
    assert mine["placement"] == {str(lab): (16 - on_lab) // 4}  # the rest waits for the notice
    assert ok(cp.client.get(f"/slices/{night['id']}", headers=cp.a.pm))["placement"] == night["placement"]
    held = ok(cp.client.get(f"/nodes/{lab}", headers=lab_eo))
    assert held["status"] == "online" and held["bank_until"] is not None
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        placement.place_all(session, MONDAY_NIGHT + timedelta(minutes=9))  # the planner's period, in the notice
    assert ok(cp.client.get(f"/slices/{night['id']}", headers=cp.a.pm))["placement"] == night["placement"]
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        placement.place_all(session, MONDAY_NIGHT + timedelta(minutes=10))
    assert ok(cp.client.get(f"/slices/{mine['id']}", headers=cp.b.pm))["placement"] == {str(lab): 4}
    after = ok(cp.client.get(f"/slices/{night['id']}", headers=cp.a.pm))["placement"]
    assert str(lab) not in after and after.get(str(acme_node)) == night["placement"].get(str(acme_node))
    events = ok(cp.client.get(f"/slices/{night['id']}/events", headers=cp.a.pm))
    assert any(e["kind"] == "preemption" for e in events)  # the room went to the owner's slice, once noticed
