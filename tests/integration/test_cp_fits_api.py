"""The model-fit API on both databases: who may fit, what each tenant sees, typed refusals of bad uploads and
fields, cancel and its 409 once finished, and the agent's side (queued fits, photos, progress, claims)."""

from __future__ import annotations

import io
import math
import zipfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlmodel import Session, col, select

from control_plane import billing, catalogue, fits, pricing
from control_plane.models import Charge, ModelFit, Slice, UsageRecord, as_utc
from tests.integration.cp_fixtures import ControlPlane, bearer, ok

FORM = {"name": "bracket-anomaly", "version": "1.0.0"}


def photo_zip(good: int, defects: int = 0, *, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip with ``good`` photos at its top and ``defects`` under defects/ (contents do not matter to the API)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(good):
            archive.writestr(f"good/{i:03d}.png", b"\x89PNG not decoded by the control plane")
        for i in range(defects):
            archive.writestr(f"defects/{i:03d}.jpg", b"jpeg")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return out.getvalue()


def post_fit(cp: ControlPlane, headers: dict[str, str], photos: bytes, **form: object):
    data = {k: str(v) for k, v in (FORM | form).items()}
    return cp.client.post("/models/fits", headers=headers, data=data,
                          files={"photos": ("good.zip", photos, "application/zip")})  # fmt: skip


def _node(cp: ControlPlane) -> dict[str, str]:
    token = ok(cp.client.post(f"/sites/{cp.site_id}/join-tokens", headers=cp.op), 201)["token"]
    body = {"token": token, "hostname": "edge-1", "cpus": 4, "memory_mb": 8192}
    return bearer(ok(cp.client.post("/agent/v1/join", json=body), 201)["node_token"])


def test_factory_it_and_plant_managers_fit_for_their_own_tenant_only(control_plane: ControlPlane) -> None:
    cp = control_plane
    fit = ok(post_fit(cp, cp.a.it, photo_zip(60, 3, extra={"notes.txt": b"skipped"})), 202)
    assert (fit["status"], fit["stage"], fit["progress"], fit["photos"], fit["defect_photos"]) == (
        "queued", "queued", 0.0, 60, 3)  # fmt: skip
    assert fit["site_id"] == cp.site_id and fit["model_version_id"] is None and fit["time_limit_s"] == 600
    second = ok(post_fit(cp, cp.a.pm, photo_zip(50), version="1.0.1", false_reject_rate=0.02, time_limit_s=30), 202)
    assert (second["false_reject_rate"], second["time_limit_s"]) == (0.02, 30)
    assert [f["id"] for f in ok(cp.client.get("/models/fits", headers=cp.a.pm))] == [fit["id"], second["id"]]
    assert ok(cp.client.get(f"/models/fits/{fit['id']}", headers=cp.a.it))["id"] == fit["id"]

    # The other tenant: a 404 like a missing fit, and an empty list; an operator is no tenant's fitter.
    for headers in (cp.b.pm, cp.b.it):
        assert cp.client.get(f"/models/fits/{fit['id']}", headers=headers).status_code == 404
        assert cp.client.post(f"/models/fits/{fit['id']}/cancel", headers=headers).status_code == 404
        assert ok(cp.client.get("/models/fits", headers=headers)) == []
    refused = post_fit(cp, cp.op, photo_zip(60))
    assert refused.status_code == 403 and "factory_it" in refused.json()["detail"]
    assert cp.client.get("/models/fits", headers=cp.op).status_code == 403
    assert cp.client.get("/models/fits").status_code == 401


@pytest.mark.parametrize(
    ("photos", "form", "reason", "says"),
    [
        (b"not a zip at all", {}, "zip", "not a zip"),
        (photo_zip(10), {}, "photo_count", "10 photos of good parts"),
        (photo_zip(501), {}, "photo_count", "50 to 500"),
        (photo_zip(60, 501), {}, "too_many", "at most 500"),
        (photo_zip(60), {"name": "Bad Name"}, "form", "name"),
        (photo_zip(60), {"version": "one"}, "form", "version"),
        (photo_zip(60), {"false_reject_rate": 0.9}, "form", "false_reject_rate"),
        (photo_zip(60), {"time_limit_s": 1}, "form", "time_limit_s"),
        (photo_zip(60), {"site_id": 999}, None, "serves none of your lines"),
        (photo_zip(60), {"colour": "red"}, "form", "colour"),
    ],
)
def test_bad_uploads_and_fields_are_422_saying_what_to_do(
    control_plane: ControlPlane, photos: bytes, form: dict[str, object], reason: str | None, says: str
) -> None:
    answer = post_fit(control_plane, control_plane.a.it, photos, **form)
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]
    assert answer.json().get("reason") == reason
    assert ok(control_plane.client.get("/models/fits", headers=control_plane.a.it)) == []


def test_a_form_without_photos_and_a_taken_version_are_refused(control_plane: ControlPlane) -> None:
    cp = control_plane
    bare = cp.client.post("/models/fits", headers=cp.a.it, data=FORM, files={"other": ("x", b"x")})
    assert bare.status_code == 422 and bare.json()["reason"] == "form" and "'photos'" in bare.json()["detail"]
    public = next(m for m in ok(cp.client.get("/models", headers=cp.a.pm)) if m["tenant_id"] is None)
    assert post_fit(cp, cp.a.it, photo_zip(60), name=public["name"], version=public["version"]).status_code == 202
    ok(post_fit(cp, cp.a.it, photo_zip(60)), 202)  # a fit of a version not yet registered may be queued twice


def test_cancel_stops_a_fit_and_a_finished_fit_answers_409(control_plane: ControlPlane) -> None:
    cp = control_plane
    fit = ok(post_fit(cp, cp.a.it, photo_zip(55, 2)), 202)
    node = _node(cp)
    jobs = ok(cp.client.get("/agent/v1/fits", headers=node))["fits"]
    assert [(j["fit_id"], j["status"], j["defect_photos"]) for j in jobs] == [(fit["id"], "queued", 2)]
    good = cp.client.get(f"/agent/v1/fits/{fit['id']}/photos/good", headers=node)
    with zipfile.ZipFile(io.BytesIO(good.content)) as archive:
        assert len(archive.namelist()) == 55  # renamed by the control plane: no uploaded path travels on
    assert cp.client.get(f"/agent/v1/fits/{fit['id']}/photos/good").status_code == 401
    assert cp.client.get(f"/agent/v1/fits/{fit['id']}/photos/other", headers=node).status_code == 422

    claim = {"status": "running", "stage": "features", "progress": 0.4, "cpu_s": 3.5}
    assert ok(cp.client.post(f"/agent/v1/fits/{fit['id']}/progress", json=claim, headers=node))["status"] == "running"
    seen = ok(cp.client.get(f"/models/fits/{fit['id']}", headers=cp.a.pm))
    assert (seen["status"], seen["stage"], seen["progress"], seen["cpu_s"]) == ("running", "features", 0.4, 3.5)
    assert seen["started_at"] is not None

    cancelled = ok(cp.client.post(f"/models/fits/{fit['id']}/cancel", headers=cp.a.pm))
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    # The agent learns it from its next report, which changes nothing; the photos are gone.
    answer = ok(cp.client.post(f"/agent/v1/fits/{fit['id']}/progress", json=claim, headers=node))
    assert answer["status"] == "cancelled"
    assert cp.client.get(f"/agent/v1/fits/{fit['id']}/photos/good", headers=node).status_code == 404
    assert ok(cp.client.get("/agent/v1/fits", headers=node))["fits"] == []

    again = cp.client.post(f"/models/fits/{fit['id']}/cancel", headers=cp.a.it)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_agent_reports_are_bounded_and_only_for_its_sites_fits(control_plane: ControlPlane) -> None:
    cp = control_plane
    fit = ok(post_fit(cp, cp.a.it, photo_zip(60)), 202)
    node = _node(cp)
    url = f"/agent/v1/fits/{fit['id']}/progress"
    for bad in ({"status": "succeeded"}, {"status": "running", "progress": 2}, {"status": "running", "x": 1}):
        assert cp.client.post(url, json=bad, headers=node).status_code == 422
    assert cp.client.post("/agent/v1/fits/99999/progress", json={"status": "running"}, headers=node).status_code == 404
    # A result for a fit nobody claimed is refused; a fit that timed out ends there.
    assert (
        cp.client.post(f"/agent/v1/fits/{fit['id']}/result", headers=node, files={"file": ("m", b"x")}).status_code
        == 409
    )
    ok(cp.client.post(url, json={"status": "running"}, headers=node))
    ended = ok(cp.client.post(url, json={"status": "timed_out", "message": "stopped after 5 s"}, headers=node))
    assert ended["status"] == "timed_out"
    seen = ok(cp.client.get(f"/models/fits/{fit['id']}", headers=cp.a.it))
    assert (seen["status"], seen["message"]) == ("timed_out", "stopped after 5 s")
    assert cp.client.post(f"/models/fits/{fit['id']}/cancel", headers=cp.a.it).status_code == 409


def test_a_running_fit_whose_agent_went_silent_ends_timed_out(control_plane: ControlPlane) -> None:
    cp = control_plane
    fit = ok(post_fit(cp, cp.a.it, photo_zip(60), time_limit_s=60), 202)
    node = _node(cp)
    ok(cp.client.post(f"/agent/v1/fits/{fit['id']}/progress", json={"status": "running"}, headers=node))
    assert ok(cp.client.get(f"/models/fits/{fit['id']}", headers=cp.a.it))["status"] == "running"
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]  # the agent died long ago
        row = session.get(ModelFit, fit["id"])
        assert row is not None and row.started_at is not None
        row.started_at = as_utc(row.started_at) - timedelta(seconds=60 + fits.OVERDUE_GRACE_S + 1)
        session.commit()
    ended = ok(cp.client.get(f"/models/fits/{fit['id']}", headers=cp.a.it))
    assert ended["status"] == "timed_out" and "start it again" in ended["message"]
    assert ok(cp.client.get("/agent/v1/fits", headers=node))["fits"] == []


def _capacity_lease(cp: ControlPlane, slice_id: int, now: datetime) -> int:
    """cp.a's slice rents replicas at 0.60 an hour (reserved), billed per started minute."""
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        product = catalogue.add_product(session, sku="cap-fit", site_id=cp.site_id, name="Replica hours",
                                        hardware_class="replica", unit=pricing.UnitKind.CAPACITY)  # fmt: skip
        terms = pricing.CapacityTerms(reserved_per_hour=Decimal("0.60"), burst_per_hour=Decimal("0.90"),
                                      bank_per_hour=Decimal("0.30"))  # fmt: skip
        catalogue.add_price(session, product, effective_from=now.date(), currency=cp.settings.currency,
                            terms=terms.model_dump(mode="json"), today=now.date())  # fmt: skip
        item = session.get(Slice, slice_id)
        assert item is not None
        lease = catalogue.buy(session, item, product, price_id=None, now=now, user_id=None)
        session.commit()
        assert lease.id is not None
        return lease.id


def test_a_fit_is_billed_as_capacity_of_its_slice_under_the_slices_lease(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp, slice_id = control_plane, control_plane.a.ids["slice"]
    now = [datetime.now(UTC).replace(microsecond=0)]
    monkeypatch.setattr(fits, "utcnow", lambda: now[0])
    lease_id = _capacity_lease(cp, slice_id, now[0])
    fit = ok(post_fit(cp, cp.a.it, photo_zip(60)), 202)
    assert fit["slice_id"] == slice_id  # the tenant's slice on the site with a lease in force
    node = _node(cp)
    url = f"/agent/v1/fits/{fit['id']}/progress"
    ok(cp.client.post(url, json={"status": "running"}, headers=node))
    started = now[0]
    now[0] += timedelta(seconds=95)
    ok(cp.client.post(url, json={"status": "running", "stage": "features", "cpu_s": 60.0}, headers=node))
    # It ends after 130.4 CPU seconds (the agent's figure can only grow; 5,000 is beyond the wall time: bounded).
    now[0] += timedelta(seconds=36)
    ok(cp.client.post(url, json={"status": "failed", "message": "no part found", "cpu_s": 130.4}, headers=node))

    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        records = session.exec(select(UsageRecord).where(UsageRecord.slice_id == slice_id,
                                                         col(UsageRecord.key).contains(f"fit-{fit['id']}"))
                               .order_by(col(UsageRecord.window_start))).all()  # fmt: skip
        item = session.get(Slice, slice_id)
        assert item is not None
        # 130.4 CPU seconds of a slice whose replicas hold cpus_per_replica each, from the claim, cut at minutes
        per_replica = Decimal(repr(item.cpus_per_replica))
        assert sum(r.replica_seconds for r in records) == math.ceil(Decimal("130.4") / per_replica)
        assert {r.source for r in records} == {"capacity"} and as_utc(records[0].window_start) == started
        assert sum(r.window_s for r in records) == 131
        assert all(r.window_start.second + r.window_s <= 60 for r in records)
        row = session.get(ModelFit, fit["id"])
        assert row is not None and fits.meter(session, row) == 0  # metering it again stores nothing
        billing.rate_pending(session, now[0] + timedelta(hours=2))
        session.commit()
        charges = session.exec(select(Charge).where(Charge.lease_id == lease_id)).all()
        assert sum(c.quantity for c in charges if c.measure == "reserved") == sum(
            -(-r.replica_seconds // 60) * 60 for r in records
        )  # per started replica-minute, as the product says
        assert sum(c.amount_minor for c in charges) > 0

    # A hostile report: CPU seconds past the time the fit ran are not billed.
    second = ok(post_fit(cp, cp.a.it, photo_zip(60), version="1.0.1"), 202)
    url = f"/agent/v1/fits/{second['id']}/progress"
    ok(cp.client.post(url, json={"status": "running"}, headers=node))
    now[0] += timedelta(seconds=10)
    ok(cp.client.post(url, json={"status": "timed_out", "cpu_s": 5000.0}, headers=node))
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        billed = session.exec(select(UsageRecord.window_s).where(col(UsageRecord.key).contains(f"fit-{second['id']}")))
        assert sum(billed.all()) == 10 + int(fits.HELD_SLACK_S)


def test_a_fit_needs_a_slice_of_the_tenant_on_its_site(control_plane: ControlPlane) -> None:
    cp = control_plane
    other = post_fit(cp, cp.a.it, photo_zip(60), slice_id=cp.b.ids["slice"])
    assert other.status_code == 422 and "not one of your slices" in other.json()["detail"]
    ok(cp.client.delete(f"/slices/{cp.a.ids['slice']}", headers=cp.a.pm))
    none = post_fit(cp, cp.a.it, photo_zip(60))
    assert none.status_code == 409 and "create a slice there first" in none.json()["detail"]
