"""Vouchers (issue 13, section 4), on SQLite and PostgreSQL: an operator sets up a funder's programme and its
codes, a plant manager redeems one, rating spends it first (within the programme's products and share of
each charge), its remainder returns to the funder at expiry, and the funder's report adds up.

Usage is inserted as the metering module stores it (``metering.insert_once``) and rated with
``billing.rate_pending``; every expected figure is computed here from the usage and the programme's rules.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from control_plane import billing, catalogue, funds, ledger_store, metering, vouchers
from control_plane.ledger import AccountKind
from control_plane.models import Account, Charge, Lease, Product, Slice, VoucherProgramme
from control_plane.pricing import Source, usage_key
from tests.integration.cp_fixtures import ControlPlane, ok

PER_HOUR_MINOR = 360  # 3.60 EUR a replica-hour: a replica-minute costs 6 cents, exactly


def _engine(cp: ControlPlane) -> Any:
    return cp.client.app.state.engine  # type: ignore[attr-defined]


def _product(session: Session, site_id: int, sku: str, today: Any) -> Product:
    product = catalogue.add_product(session, sku=sku, site_id=site_id, name=sku, hardware_class="replica",
                                    unit="capacity")  # fmt: skip
    per_hour = f"{PER_HOUR_MINOR / 100:.2f}"
    terms = {"kind": "capacity", "reserved_per_hour": per_hour, "burst_per_hour": per_hour, "bank_per_hour": "1.00"}
    catalogue.add_price(session, product, effective_from=today, currency="EUR", terms=terms, today=today)
    return product


def _usage(session: Session, item: Slice, start: datetime, minutes: int, replicas: int) -> int:
    """Capacity records of ``minutes`` whole minutes from ``start``; their replica-seconds."""
    assert item.id is not None
    rows: list[dict[str, Any]] = [
        dict(key=usage_key(Source.AGENT, item.app_name, "node-1", start + timedelta(minutes=k)), source="capacity",
             tenant_id=item.tenant_id, slice_id=item.id, node_id=None, window_start=start + timedelta(minutes=k),
             window_s=60, replica_seconds=replicas * 60, verdicts={})
        for k in range(minutes)
    ]  # fmt: skip
    metering.insert_once(session, rows)
    metering.insert_once(session, rows[:3])  # a replayed report: stored once
    return replicas * 60 * minutes


def _programme(cp: ControlPlane, **fields: Any) -> dict[str, Any]:
    body = {"funder": "North District SME programme", "currency": "EUR", **fields}
    return ok(cp.client.post("/voucher-programmes", json=body, headers=cp.op), 201)


def _codes(cp: ControlPlane, programme_id: int, count: int) -> list[str]:
    issued = ok(cp.client.post(f"/voucher-programmes/{programme_id}/codes", json={"count": count}, headers=cp.op), 201)
    return list(issued["codes"])


def test_vouchers_pay_first_within_their_rules_and_return_the_rest_at_expiry(control_plane: ControlPlane) -> None:
    cp, now = control_plane, datetime.now(UTC)
    with Session(_engine(cp), expire_on_commit=False) as session:
        covered = _product(session, cp.site_id, "vq-covered", now.date())
        other = _product(session, cp.site_id, "vq-other", now.date())
        session.commit()
    main = _programme(cp, name="sme-covered", budget="25.00", per_tenant="10.00", max_share_bp=5000,
                      product_skus=[covered.sku], expires_at=(now + timedelta(days=30)).isoformat())  # fmt: skip
    small = _programme(cp, name="sme-small", budget="5.00", per_tenant="0.50", max_share_bp=10_000,
                       expires_at=(now + timedelta(days=1)).isoformat())  # fmt: skip
    assert main["budget"] == {"minor": 2500, "currency": "EUR", "formatted": "25.00 EUR"}

    codes = _codes(cp, main["id"], 3)
    assert len(set(codes)) == 3 and all(len(c) == 19 and c.count("-") == 3 for c in codes)
    voucher = ok(cp.client.post("/vouchers/redeem", json={"code": codes[0].lower()}, headers=cp.a.pm), 201)
    assert voucher["balance"]["minor"] == main["per_tenant"]["minor"] and voucher["programme"] == "sme-covered"
    ok(cp.client.post("/vouchers/redeem", json={"code": _codes(cp, small["id"], 1)[0]}, headers=cp.a.pm), 201)

    # One factory, one voucher per programme: another code of it, or the same again, is refused.
    again = cp.client.post("/vouchers/redeem", json={"code": codes[1]}, headers=cp.a.pm)
    assert again.status_code == 409 and again.json()["code"] == "voucher_already_redeemed"
    assert cp.client.post("/vouchers/redeem", json={"code": codes[0]}, headers=cp.a.pm).status_code == 409
    # Another factory trying acme's used code learns as much as from a made-up one: nothing.
    used = cp.client.post("/vouchers/redeem", json={"code": codes[0]}, headers=cp.b.pm)
    made_up = cp.client.post("/vouchers/redeem", json={"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"}, headers=cp.b.pm)
    assert used.status_code == made_up.status_code == 404 and used.json() == made_up.json()

    # An hour of usage: ten minutes at two replicas under the covered product, then ten under the other.
    hour = (now + timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    with Session(_engine(cp)) as session:
        item = session.get(Slice, cp.a.ids["slice"])
        assert item is not None
        catalogue.buy(session, item, covered, price_id=None, now=now, user_id=None)
        covered_rs = _usage(session, item, hour, 10, 2)
        catalogue.buy(session, item, other, price_id=None, now=hour + timedelta(minutes=15), user_id=None)
        other_rs = _usage(session, item, hour + timedelta(minutes=20), 10, 2)
        prepaid_before = ledger_store.balance(
            session, funds.tenant_account(session, cp.a.tenant_id, AccountKind.PREPAID, "EUR")
        ).minor
        billing.rate_pending(session, hour + timedelta(hours=1))
        billing.rate_pending(session, hour + timedelta(hours=1))  # a re-run bills nothing more
        session.commit()
        charges = session.exec(
            select(Charge, Lease).join(Lease).where(Charge.tenant_id == cp.a.tenant_id, Charge.hour_start == hour)
        ).all()
        by_product = {lease.product_id: charge for charge, lease in charges}
        assert covered.id is not None
        assert other.id is not None
        prepaid_after = ledger_store.balance(
            session, funds.tenant_account(session, cp.a.tenant_id, AccountKind.PREPAID, "EUR")
        ).minor

    # What the test expects: the smaller programme expires first, so it pays first (all products, all of a
    # charge) until its 0.50 is gone; the main one pays at most half of each covered charge.
    covered_amount, other_amount = covered_rs * PER_HOUR_MINOR // 3600, other_rs * PER_HOUR_MINOR // 3600
    small_pays = min(covered_amount, small["per_tenant"]["minor"])
    main_pays = min(covered_amount - small_pays, covered_amount * 5000 // 10_000)
    assert len(charges) == 2
    assert by_product[covered.id].amount_minor == covered_amount
    assert by_product[covered.id].voucher_minor == small_pays + main_pays
    assert by_product[other.id].amount_minor == other_amount and by_product[other.id].voucher_minor == 0
    assert prepaid_before - prepaid_after == covered_amount + other_amount - small_pays - main_pays

    mine = {v["programme"]: v for v in ok(cp.client.get("/vouchers", headers=cp.a.pm))}
    assert mine["sme-covered"]["balance"]["minor"] == main["per_tenant"]["minor"] - main_pays
    assert mine["sme-small"]["balance"]["minor"] == small["per_tenant"]["minor"] - small_pays

    # The funder's report: only each programme's own part of the charge both paid.
    report = ok(cp.client.get(f"/voucher-programmes/{main['id']}/report", headers=cp.op))
    (acme,) = report["tenants"]
    assert acme["tenant"] == "acme" and acme["granted"]["minor"] == main["per_tenant"]["minor"]
    assert [(p["sku"], p["spent"]["minor"]) for p in acme["products"]] == [(covered.sku, main_pays)]
    assert report["totals"]["spent"]["minor"] == main_pays and report["totals"]["codes_issued"] == 3
    small_report = ok(cp.client.get(f"/voucher-programmes/{small['id']}/report", headers=cp.op))
    assert small_report["totals"]["spent"]["minor"] == small_pays

    # Expiry: the remainder goes back to the funder, once, however often expiry runs.
    with Session(_engine(cp)) as session:
        assert vouchers.expire_due(session, now + timedelta(days=2)) == 0  # the small one has nothing left
        assert vouchers.expire_due(session, now + timedelta(days=31)) == 1
        assert vouchers.expire_due(session, now + timedelta(days=32)) == 0
        session.commit()
        programme = session.get(VoucherProgramme, main["id"])
        assert programme is not None
        funder = session.get(Account, programme.funder_account_id)
        assert funder is not None
        assert ledger_store.balance(session, funder).minor == -main_pays  # granted, less what came back
    report = ok(cp.client.get(f"/voucher-programmes/{main['id']}/report", headers=cp.op))
    left = main["per_tenant"]["minor"] - main_pays
    assert report["totals"]["returned"]["minor"] == left and report["totals"]["balance"]["minor"] == 0
    assert {v["programme"]: v["balance"]["minor"] for v in ok(cp.client.get("/vouchers", headers=cp.a.pm))} == {
        "sme-covered": 0,
        "sme-small": 0,
    }

    download = cp.client.get(f"/voucher-programmes/{main['id']}/report?format=csv", headers=cp.op)
    assert download.status_code == 200 and download.headers["content-disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    total = next(r for r in rows if r["tenant"] == "(total)")
    assert total["spent"] == f"{main_pays / 100:.2f}" and total["returned"] == f"{left / 100:.2f}"

    # Tenant isolation: globex sees neither acme's vouchers nor the programmes nor the report.
    assert ok(cp.client.get("/vouchers", headers=cp.b.pm)) == []
    assert ok(cp.client.get("/voucher-programmes", headers=cp.b.pm)) == []
    assert {p["name"] for p in ok(cp.client.get("/voucher-programmes", headers=cp.a.pm))} == {
        "sme-covered",
        "sme-small",
    }
    assert cp.client.get(f"/voucher-programmes/{main['id']}/report", headers=cp.b.pm).status_code == 403
    assert (
        cp.client.post(f"/voucher-programmes/{main['id']}/codes", json={"count": 1}, headers=cp.b.pm).status_code == 403
    )
    assert len(ok(cp.client.get("/vouchers", headers=cp.op))) == 2  # operators see every factory's


def test_redemption_refusals_say_what_to_do(control_plane: ControlPlane) -> None:
    cp, now = control_plane, datetime.now(UTC)
    later = (now + timedelta(days=30)).isoformat()
    one = _programme(cp, name="one-only", budget="10.00", per_tenant="10.00", expires_at=later)
    first, second = _codes(cp, one["id"], 2)
    ok(cp.client.post("/vouchers/redeem", json={"code": first}, headers=cp.a.pm), 201)
    spent = cp.client.post("/vouchers/redeem", json={"code": second}, headers=cp.b.pm)
    assert spent.status_code == 409 and spent.json()["code"] == "voucher_budget_used_up"
    assert "budget" in spent.json()["detail"]

    dollars = _programme(cp, name="in-dollars", currency="USD", budget="10", per_tenant="5", expires_at=later)
    wrong = cp.client.post("/vouchers/redeem", json={"code": _codes(cp, dollars["id"], 1)[0]}, headers=cp.a.pm)
    assert wrong.status_code == 422 and "USD" in wrong.json()["detail"] and "EUR" in wrong.json()["detail"]

    short = _programme(cp, name="short", budget="10", per_tenant="5", expires_at=(now + timedelta(hours=1)).isoformat())
    code = _codes(cp, short["id"], 1)[0]
    app = cp.client.app
    clock = app.state.clock  # type: ignore[attr-defined]
    app.state.clock = lambda: clock() + timedelta(hours=2)  # type: ignore[attr-defined]
    try:
        expired = cp.client.post("/vouchers/redeem", json={"code": code}, headers=cp.a.pm)
    finally:
        app.state.clock = clock  # type: ignore[attr-defined]
    assert expired.status_code == 409 and expired.json()["code"] == "voucher_programme_expired"

    # Bodies: money as decimal text only; shares and counts in range; only operators create programmes.
    body = {"name": "floaty", "funder": "f", "currency": "EUR", "budget": 10.5, "per_tenant": "1", "expires_at": later}
    assert cp.client.post("/voucher-programmes", json=body, headers=cp.op).status_code == 422
    body |= {"budget": "10.50", "max_share_bp": 0}
    assert cp.client.post("/voucher-programmes", json=body, headers=cp.op).status_code == 422
    assert cp.client.post("/voucher-programmes", json=body | {"max_share_bp": 1}, headers=cp.a.pm).status_code == 403
    too_many = cp.client.post(f"/voucher-programmes/{one['id']}/codes", json={"count": 1001}, headers=cp.op)
    assert too_many.status_code == 422
    bad_sku = body | {"name": "skus", "max_share_bp": 1, "product_skus": ["no-such-product"]}
    assert cp.client.post("/voucher-programmes", json=bad_sku, headers=cp.op).status_code == 422


def test_a_voucher_pays_its_share_of_the_month_not_a_rounded_down_share_of_each_charge(
    control_plane: ControlPlane,
) -> None:
    """Ten hourly charges of 3 cents at a 50% share: the voucher pays 15 cents of the month's 30 (it paid 10
    when each charge's share was rounded down on its own)."""
    cp, now = control_plane, datetime.now(UTC)
    with Session(_engine(cp), expire_on_commit=False) as session:
        product = catalogue.add_product(session, sku="vq-odd", site_id=cp.site_id, name="odd", hardware_class="r",
                                        unit="capacity")  # fmt: skip
        terms = {"kind": "capacity", "reserved_per_hour": "1.80", "burst_per_hour": "1.80", "bank_per_hour": "1.00"}
        catalogue.add_price(session, product, effective_from=now.date(), currency="EUR", terms=terms, today=now.date())
        session.commit()
    programme = _programme(cp, name="half", budget="10.00", per_tenant="10.00", max_share_bp=5000,
                           expires_at=(now + timedelta(days=40)).isoformat())  # fmt: skip
    ok(cp.client.post("/vouchers/redeem", json={"code": _codes(cp, programme["id"], 1)[0]}, headers=cp.a.pm), 201)
    first = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    if (first + timedelta(hours=10)).month != first.month:  # keep the ten hours in one month (one invoice)
        first -= timedelta(hours=12)
    with Session(_engine(cp)) as session:
        item = session.get(Slice, cp.a.ids["slice"])
        assert item is not None
        catalogue.buy(session, item, product, price_id=None, now=min(now, first), user_id=None)
        for h in range(10):  # one replica-minute an hour: 3 cents each
            _usage(session, item, first + timedelta(hours=h), 1, 1)
            billing.rate_pending(session, first + timedelta(hours=h + 1))  # each hour rated on its own
        session.commit()
        charges = session.exec(select(Charge).where(Charge.tenant_id == cp.a.tenant_id)).all()
    assert [c.amount_minor for c in charges] == [3] * 10
    assert sum(c.voucher_minor for c in charges) == 15  # half of the month's 30 cents
