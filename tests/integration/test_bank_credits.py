"""Contributors earn from the bank slices their nodes ran, and draw on it (issue 14, section 2), on both databases.

Globex acts as a lab lending its GPU server on weekday nights; acme's bank slice runs there and on acme's
own edge server. The figures are computed here from the records and the standard product's bank price
(0.45 EUR per replica-hour: half the 0.90 reserved price the site was seeded with).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, func, select, text

from control_plane import bank, billing_cycle, catalogue, metering
from control_plane.models import BankCredit, Charge, JournalEntry, Slice
from control_plane.pricing import Source, usage_key
from tests.integration.cp_fixtures import ControlPlane, ok
from tests.integration.test_ownership import MONDAY_NIGHT, site_of_owners

BANK_CENTS_PER_REPLICA_HOUR = 45


def _engine(cp: ControlPlane) -> Any:
    return cp.client.app.state.engine  # type: ignore[attr-defined]


def _run(cp: ControlPlane, slice_id: int, node_id: int, start: datetime, replicas: int) -> None:
    """An hour of per-minute capacity records of the slice on the node, as metering writes them."""
    with Session(_engine(cp)) as session:
        item = session.get(Slice, slice_id)
        assert item is not None
        rows = [
            dict(key=usage_key(Source.AGENT, item.app_name, f"node-{node_id}", start + timedelta(minutes=m)),
                 source=metering.CAPACITY, tenant_id=item.tenant_id, slice_id=slice_id, node_id=node_id,
                 window_start=start + timedelta(minutes=m), window_s=60, replica_seconds=replicas * 60, verdicts={})
            for m in range(60)
        ]  # fmt: skip
        metering.insert_once(session, rows)
        session.commit()


def _pass(cp: ControlPlane, now: datetime) -> billing_cycle.Pass:
    with Session(_engine(cp)) as session:
        return billing_cycle.run(session, now)


def _lease_hour(cp: ControlPlane, slice_id: int) -> datetime:
    with Session(_engine(cp)) as session:
        lease = catalogue.current_lease(session, slice_id)
        assert lease is not None
        start = lease.starts_at if lease.starts_at.tzinfo else lease.starts_at.replace(tzinfo=UTC)
    return start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def test_a_lab_earns_credits_from_bank_slices_on_its_node_and_draws_on_them(control_plane: ControlPlane) -> None:
    cp = control_plane
    acme_eo, lab_eo, head, acme_node, lab, _ = site_of_owners(cp)
    body = {"slug": "night", "line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank",
            "residency": "any_bank", "max_replicas": 4}  # fmt: skip
    night = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    assert night["placement"] == {str(acme_node): 2, str(lab): 2}
    hour = _lease_hour(cp, night["id"])
    _run(cp, night["id"], lab, hour, replicas=2)
    _run(cp, night["id"], acme_node, hour, replicas=2)  # acme's own server: it would pay itself, earns nothing
    first = _pass(cp, hour + timedelta(hours=1))
    assert first.credits == 1
    later = (hour + timedelta(minutes=30)).astimezone().replace(tzinfo=None)  # the page: hours up to now
    cp.client.app.state.clock = lambda: later  # type: ignore[attr-defined]
    charge = 4 * BANK_CENTS_PER_REPLICA_HOUR  # 4 replica-hours
    earned = charge * 2 // 4 * 70 // 100  # the lab's half of the hour, 70 % of it: 63 cents
    page = ok(cp.client.get("/bank/contributor", headers=lab_eo))
    assert page["credits"]["earned"]["minor"] == earned and page["credits"]["left"]["minor"] == earned
    assert page["ran"] == {"slices": 1, "replica_hours": 2.0}
    with Session(_engine(cp)) as session:
        assert bank.credits_earned(session, cp.b.tenant_id, "EUR") == earned
    [node] = page["nodes"]
    assert node["node_id"] == lab and node["hours_used"] == 1 and node["hours_offered"] >= 1
    assert "acme" not in str(page).lower() and "night" not in str(page)  # whose slice ran stays unsaid
    # Another pass credits nothing twice; the ledger still balances.
    assert _pass(cp, hour + timedelta(hours=1, minutes=5)).credits == 0
    with Session(_engine(cp)) as session:
        assert session.exec(select(func.sum(JournalEntry.amount_minor))).one() == 0
        assert len(session.exec(select(BankCredit)).all()) == 2  # a row per node the charge ran on
    # Isolation: acme sees its own page only; operators name the tenant.
    assert ok(cp.client.get("/bank/contributor", headers=acme_eo))["nodes"] == []  # acme lends nothing
    assert cp.client.get(f"/bank/contributor?tenant_id={cp.b.tenant_id}", headers=acme_eo).status_code == 403
    assert cp.client.get("/bank/contributor", headers=cp.op).status_code == 403
    assert ok(cp.client.get(f"/bank/contributor?tenant_id={cp.b.tenant_id}", headers=cp.op)) == page
    assert cp.client.get("/bank/contributor", headers=cp.a.it).status_code == 403

    # A payout turns credits into a payable; more than is left is refused and moves nothing.
    payout = {"amount": "0.20", "currency": "EUR", "reference": "december"}
    paid = ok(cp.client.post("/bank/payouts", json=payout, headers=lab_eo), 201)
    assert paid["credits"]["left"]["minor"] == earned - 20 and paid["payable"]["owed"]["minor"] == 20
    assert ok(cp.client.post("/bank/payouts", json=payout, headers=lab_eo), 201)["credits"] == paid["credits"]
    cents = cp.client.post("/bank/payouts", json={**payout, "amount": "0.205", "reference": "y"}, headers=lab_eo)
    assert cents.status_code == 422 and "0.205" in cents.json()["detail"]  # was a 500: more decimals than EUR has
    too_much = cp.client.post("/bank/payouts", json={**payout, "amount": "5.00", "reference": "x"}, headers=lab_eo)
    assert too_much.status_code == 409 and too_much.json()["code"] == "not_enough_credits"
    assert ok(cp.client.get("/bank/contributor", headers=lab_eo))["credits"]["left"]["minor"] == earned - 20

    # Drawing from the bank: the lab's own reserved slice is paid from its credits first.
    own_hour = _lease_hour(cp, cp.b.ids["slice"])
    _run(cp, cp.b.ids["slice"], head, max(own_hour, hour), replicas=1)
    _pass(cp, max(own_hour, hour) + timedelta(hours=1))
    with Session(_engine(cp)) as session:
        paid_by_credits = session.exec(
            select(func.sum(Charge.credits_minor)).where(Charge.tenant_id == cp.b.tenant_id)
        ).one()
    assert paid_by_credits == earned - 20
    page = ok(cp.client.get("/bank/contributor", headers=lab_eo))
    assert page["credits"]["spent"]["minor"] == earned - 20 and page["credits"]["left"]["minor"] == 0


def test_a_sites_rule_sets_the_share_and_pays_as_a_payable_and_rows_are_written_once(
    control_plane: ControlPlane,
) -> None:
    cp = control_plane
    _, lab_eo, _, _, lab, _ = site_of_owners(cp)
    today = MONDAY_NIGHT.date()  # the control plane's clock
    rule = {"site_id": cp.site_id, "effective_from": today.isoformat(), "share_bp": 5000, "settle_as": "payable"}
    assert cp.client.post("/bank/rules", json=rule, headers=lab_eo).status_code == 403
    back_dated = {**rule, "effective_from": (today - timedelta(days=1)).isoformat()}
    assert cp.client.post("/bank/rules", json=back_dated, headers=cp.op).status_code == 422
    assert cp.client.post("/bank/rules", json={**rule, "share_bp": 10001}, headers=cp.op).status_code == 422
    ok(cp.client.post("/bank/rules", json=rule, headers=cp.op), 201)
    assert [r["share_bp"] for r in ok(cp.client.get(f"/bank/rules?site_id={cp.site_id}", headers=lab_eo))] == [5000]
    body = {"slug": "night", "line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank",
            "residency": "any_bank", "max_replicas": 4}  # fmt: skip
    night = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    hour = _lease_hour(cp, night["id"])
    _run(cp, night["id"], lab, hour, replicas=3)
    _pass(cp, hour + timedelta(hours=1))
    page = ok(cp.client.get("/bank/contributor", headers=lab_eo))
    owed = 3 * BANK_CENTS_PER_REPLICA_HOUR * 50 // 100  # the whole charge ran on the lab: 67 cents (67.5 down)
    assert page["payable"]["earned"]["minor"] == owed and page["payable"]["owed"]["minor"] == owed
    assert page["credits"]["earned"]["minor"] == 0
    # The database refuses to change a credit or a rule: corrections are new rows.
    with Session(_engine(cp)) as session:
        credit_id = session.exec(select(BankCredit.id).where(col(BankCredit.amount_minor) > 0)).first()
        with pytest.raises(DBAPIError):
            session.execute(text("UPDATE bankcredit SET amount_minor = 1 WHERE id = :i"), {"i": credit_id})
        session.rollback()
        with pytest.raises(DBAPIError):
            session.execute(text("DELETE FROM bankrule"))


def test_a_months_credits_are_rounded_once_not_every_hour(control_plane: ControlPlane) -> None:
    """70 % of 45 cents is 31.5: three hours earn 94 cents, not 3 x 31 (the economics bench found contributors
    receiving 66.9 % instead of 70 % when every hour was rounded down on its own)."""
    cp = control_plane
    *_, lab, _ = site_of_owners(cp)
    body = {"slug": "night", "line_ids": [cp.a.line_id], "model_version_id": 1, "priority": "bank",
            "residency": "any_bank", "max_replicas": 4}  # fmt: skip
    night = ok(cp.client.post("/slices", json=body, headers=cp.a.pm), 201)
    hour = _lease_hour(cp, night["id"])
    for k in range(3):
        _run(cp, night["id"], lab, hour + timedelta(hours=k), replicas=1)
        _pass(cp, hour + timedelta(hours=k + 1))  # one pass per hour, as the billing pass would
    with Session(_engine(cp)) as session:
        amounts = session.exec(
            select(BankCredit.amount_minor).where(BankCredit.node_id == lab).order_by(col(BankCredit.id))
        ).all()
        assert sum(amounts) == 3 * BANK_CENTS_PER_REPLICA_HOUR * 70 // 100 == 94
        assert sorted(amounts) == [31, 31, 32]
        assert bank.credits_earned(session, cp.b.tenant_id, "EUR") == 94
