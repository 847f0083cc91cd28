"""Monthly invoices (issue 13, section 6), on SQLite and PostgreSQL.

Usage records are stored as metering stores them (``metering.insert_once``, keys from
``pricing.usage_key``) in the months after the slices' leases start; the tests close months with the
control plane's clock set past them and check what a tenant's accountant would: the total is the
records' replica-seconds at the lease's price, rounded once; numbers run 1, 2, 3 across tenants and
months with no gap (an empty month gets none); a late record lands on the next invoice as an
adjustment while the closed one stays as it was; the database refuses to change an issued invoice;
another tenant's invoice is a 404 in every format; the PDF's text carries the number and the total.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from control_plane import billing, catalogue, cli, funds, invoices, ledger, ledger_store, metering, pricing
from control_plane.ledger import AccountKind, Posting
from control_plane.models import Charge, Invoice, Lease, Slice, Voucher, VoucherProgramme
from control_plane.money import CURRENCIES, Money
from control_plane.scheduler import Priority
from control_plane.settings import get_settings
from tests.integration.cp_fixtures import ControlPlane, Tenancy, ok


def _engine(cp: ControlPlane) -> Any:
    return cp.client.app.state.engine  # type: ignore[attr-defined]


def _at(period: date, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(period.year, period.month, day, hour, minute, tzinfo=UTC)


def _months(cp: ControlPlane) -> tuple[date, date, date]:
    """The three months after the month both tenants' leases started in (so all usage is leased)."""
    with Session(_engine(cp)) as session:
        start = max(pricing.month_start(lease.starts_at) for lease in session.exec(select(Lease)).all())
    first = invoices.next_period(start)
    return first, invoices.next_period(first), invoices.next_period(invoices.next_period(first))


@contextmanager
def _clock(cp: ControlPlane, now: datetime) -> Iterator[None]:
    """The control plane's clock at ``now`` for one request (its billing loop shares it)."""
    app = cp.client.app
    saved = app.state.clock  # type: ignore[attr-defined]
    app.state.clock = lambda: now  # type: ignore[attr-defined]
    try:
        yield
    finally:
        app.state.clock = saved  # type: ignore[attr-defined]


def _use(cp: ControlPlane, tenancy: Tenancy, records: list[tuple[datetime, int]], source: str = "capacity") -> None:
    """Store capacity records (window start, replica-seconds) of the tenant's slice, as metering does
    (``gap``: a window of that many seconds the agent was silent in)."""
    with Session(_engine(cp)) as session:
        item = session.get(Slice, tenancy.ids["slice"])
        assert item is not None
        rows: list[dict[str, Any]] = [
            dict(key=pricing.usage_key(pricing.Source.AGENT, item.app_name, f"{source}-t", at), source=source,
                 tenant_id=tenancy.tenant_id, slice_id=item.id, node_id=None, window_start=at,
                 window_s=60 if source == metering.CAPACITY else seconds,
                 replica_seconds=seconds if source == metering.CAPACITY else 0, verdicts={})
            for at, seconds in records
        ]  # fmt: skip
        assert metering.insert_once(session, rows) == len(rows)
        session.commit()


def _expected_minor(cp: ControlPlane, tenancy: Tenancy, period: date, records: list[tuple[datetime, int]]) -> int:
    """The month's cost worked out here: replica-seconds rounded up to the billed increment, at the
    lease's hourly price for the slice's priority, rounded once, half to even, to the minor unit."""
    with Session(_engine(cp)) as session:
        lease = catalogue.current_lease(session, tenancy.ids["slice"])
        item = session.get(Slice, tenancy.ids["slice"])
        assert lease is not None and item is not None
        _, price = catalogue.price_for_period(session, lease, period)
        terms = catalogue.terms_of(price)
        assert isinstance(terms, pricing.CapacityTerms)
        step = terms.billed_increment_s
        seconds = sum(-(-s // step) * step for _, s in records)
        exact = terms.per_hour(Priority(item.priority)) * Decimal(seconds) / 3600
        return int(exact.scaleb(CURRENCIES[price.currency]).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _hours(period: date, day: int, count: int, seed: int) -> list[tuple[datetime, int]]:
    """``count`` one-minute records over a few hours, with replica-seconds that do not fill whole minutes."""
    return [(_at(period, day, 8 + i // 7, (i * 11) % 60), (i * seed) % 170 + 1) for i in range(count)]


def _voucher(cp: ControlPlane, tenancy: Tenancy, minor: int, expires: datetime) -> str:
    """A redeemed voucher of a programme paying up to half of each charge (set up as the voucher
    routes do: a funder account, the tenant's voucher account named after the programme, a grant)."""
    with Session(_engine(cp)) as session:
        name = "sme-compute"
        funder = funds.platform_account(session, AccountKind.VOUCHER_FUNDER, "EUR", name=name)
        account = funds.tenant_account(session, tenancy.tenant_id, AccountKind.VOUCHER, "EUR", name=name)
        assert funder.id is not None and account.id is not None
        programme = VoucherProgramme(
            name=name, funder="District SME programme", currency="EUR", budget_minor=minor, per_tenant_minor=minor,
            expires_at=expires, product_skus=[], max_share_bp=5000, funder_account_id=funder.id,
        )  # fmt: skip
        session.add(programme)
        session.flush()
        assert programme.id is not None
        session.add(Voucher(programme_id=programme.id, code="SME-TEST", tenant_id=tenancy.tenant_id,
                            account_id=account.id, redeemed_at=datetime.now(UTC)))  # fmt: skip
        grant = [Posting(funder.id, Money(-minor, "EUR")), Posting(account.id, Money(minor, "EUR"))]
        ledger_store.record(session, ledger.post(f"test-voucher:{tenancy.slug}", "voucher_grant", grant))
        session.commit()
        return name


def _close(cp: ControlPlane, month: date, now: datetime) -> list[dict[str, Any]]:
    with _clock(cp, now):
        issued: list[dict[str, Any]] = ok(
            cp.client.post("/invoices/close", json={"period": invoices.month_text(month)}, headers=cp.op)
        )
    return issued


def test_months_close_into_gapless_invoices_with_late_usage_as_adjustments(control_plane: ControlPlane) -> None:
    cp = control_plane
    m1, m2, m3 = _months(cp)
    a1, b1 = _hours(m1, 3, 30, 37), _hours(m1, 5, 20, 53)
    _use(cp, cp.a, a1)
    _use(cp, cp.b, b1)
    programme = _voucher(cp, cp.b, 100_000, _at(m3, 28, 0))

    # A month is closed once it is over, by the control plane's clock.
    with _clock(cp, _at(m1, 20, 12)):
        refused = cp.client.post("/invoices/close", json={"period": invoices.month_text(m1)}, headers=cp.op)
    assert refused.status_code == 422, refused.text
    for month in ("9999-12", "2026-13"):  # beyond any bill, or no month at all
        assert cp.client.post("/invoices/close", json={"period": month}, headers=cp.op).status_code == 422
    assert ok(cp.client.get("/invoices", headers=cp.op)) == []
    first = _close(cp, m1, _at(m2, 1, 0, 5))
    assert [(i["tenant_id"], i["number"]) for i in first] == [(cp.a.tenant_id, 1), (cp.b.tenant_id, 2)]

    acme = ok(cp.client.get(f"/invoices/{first[0]['id']}", headers=cp.a.pm))
    assert acme["period"] == invoices.month_text(m1) and acme["label"] == "INV-000001"
    assert acme["total_minor"] == acme["subtotal_minor"] == _expected_minor(cp, cp.a, m1, a1) > 0
    [usage] = [line for line in acme["lines"] if line["kind"] == "usage"]
    assert usage["slice"] == "inspect" and usage["unit"] == "replica-second"
    assert usage["quantity"] == sum(-(-s // 60) * 60 for _, s in a1)
    assert acme["total"] == str(Money(acme["total_minor"], acme["currency"]))

    # Globex's voucher paid up to half of each charge: a line of its programme, taken off the total.
    globex = ok(cp.client.get(f"/invoices/{first[1]['id']}", headers=cp.b.pm))
    assert globex["subtotal_minor"] == _expected_minor(cp, cp.b, m1, b1)
    [voucher] = [line for line in globex["lines"] if line["kind"] == "voucher"]
    assert programme in voucher["description"] and voucher["amount_minor"] == -globex["voucher_minor"] < 0
    assert globex["voucher_minor"] <= globex["subtotal_minor"] // 2 + len(b1)
    assert globex["total_minor"] == globex["subtotal_minor"] - globex["voucher_minor"]
    for invoice in (acme, globex):  # the lines add up to the total due
        assert sum(line["amount_minor"] for line in invoice["lines"]) == invoice["total_minor"]

    # Next month: acme's usage, and a record of the closed month that arrives late; globex has none.
    a2, late = _hours(m2, 2, 12, 41), [(_at(m1, 25, 16, 30), 150)]
    _use(cp, cp.a, a2 + late)
    with Session(_engine(cp)) as session:
        issued = invoices.close_due(session, _at(m3, 1, 0, 1))
        session.commit()
        assert [(i.tenant_id, i.number) for i in issued] == [(cp.a.tenant_id, 3)]  # globex's empty month: no number
    second = ok(cp.client.get(f"/invoices/{issued[0].id}", headers=cp.a.pm))
    [adjustment] = [line for line in second["lines"] if line["kind"] == "adjustment"]
    assert adjustment["period"] == invoices.month_text(m1)
    late_cost = _expected_minor(cp, cp.a, m1, a1 + late) - _expected_minor(cp, cp.a, m1, a1)
    assert adjustment["amount_minor"] == late_cost
    assert second["total_minor"] == _expected_minor(cp, cp.a, m2, a2) + late_cost
    assert ok(cp.client.get(f"/invoices/{acme['id']}", headers=cp.a.pm)) == acme  # the closed one is as it was

    # Closing again issues nothing.
    assert _close(cp, m1, _at(m3, 2, 9)) == [] and _close(cp, m2, _at(m3, 2, 9)) == []
    with Session(_engine(cp)) as session:
        assert invoices.close_due(session, _at(m3, 3, 0)) == []
        session.commit()
    numbers = sorted(i["number"] for i in ok(cp.client.get("/invoices", headers=cp.op)))
    assert numbers == [1, 2, 3]
    assert [i["number"] for i in ok(cp.client.get("/invoices", headers=cp.a.pm))] == [3, 1]  # own, newest first
    assert [i["number"] for i in ok(cp.client.get(f"/invoices?tenant_id={cp.b.tenant_id}", headers=cp.op))] == [2]


def test_invoice_formats_are_the_tenants_own(control_plane: ControlPlane) -> None:
    cp = control_plane
    m1, m2, _ = _months(cp)
    usage = _hours(m1, 10, 25, 29)
    _use(cp, cp.a, usage)
    _use(cp, cp.a, [(_at(m1, 11, 3, 7), 300)], source=invoices.GAP)  # the agent was silent for 5 minutes
    [invoice] = _close(cp, m1, _at(m2, 1, 1))
    url = f"/invoices/{invoice['id']}"
    [gap] = [line for line in invoice["lines"] if line["kind"] == "gap"]
    assert (gap["quantity"], gap["unit"], gap["amount_minor"]) == (300, "silent second", 0)

    for suffix in ("", ".csv", ".pdf"):
        stranger = cp.client.get(url + suffix, headers=cp.b.pm)
        assert stranger.status_code == 404, (suffix, stranger.text)
    assert cp.client.get(url, headers=cp.a.it).status_code == 403  # factory IT reads no money

    pdf = cp.client.get(url + ".pdf", headers=cp.a.pm)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert "attachment" in pdf.headers["content-disposition"] and "INV-000001" in pdf.headers["content-disposition"]
    words = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf.content)).pages)
    total = str(Money(_expected_minor(cp, cp.a, m1, usage), invoice["currency"]))
    assert "INV-000001" in words and f"Total due {total}" in " ".join(words.split())

    reply = cp.client.get(url + ".csv", headers=cp.a.pm)
    assert reply.status_code == 200 and "INV-000001" in reply.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    [total_row] = [row for row in rows if row["kind"] == "total"]
    assert int(total_row["amount_minor"]) == invoice["total_minor"] and total_row["amount"] == total
    assert (
        sum(int(row["amount_minor"]) for row in rows if row["kind"] in ("usage", "voucher")) == invoice["total_minor"]
    )


def test_issued_invoices_cannot_be_changed_or_deleted(control_plane: ControlPlane) -> None:
    cp = control_plane
    m1, m2, _ = _months(cp)
    _use(cp, cp.a, _hours(m1, 4, 5, 13))
    [invoice] = _close(cp, m1, _at(m2, 1, 1))
    statements = [
        "UPDATE invoice SET total_minor = 0 WHERE id = :id",
        "DELETE FROM invoice WHERE id = :id",
        "UPDATE invoicedcharge SET invoice_id = invoice_id WHERE invoice_id = :id",
        "DELETE FROM invoicedcharge WHERE invoice_id = :id",
    ]
    for statement in statements:
        with Session(_engine(cp)) as session:
            with pytest.raises(DBAPIError):  # the trigger refuses at the statement, before any commit
                session.execute(text(statement), {"id": invoice["id"]})
            session.rollback()
    assert ok(cp.client.get(f"/invoices/{invoice['id']}", headers=cp.a.pm))["total_minor"] == invoice["total_minor"]


def test_concurrent_closes_take_consecutive_numbers(control_plane: ControlPlane) -> None:
    """A second close waits for the first to commit, then takes the next number: never the same one."""
    cp = control_plane
    m1, m2, _ = _months(cp)
    _use(cp, cp.a, _hours(m1, 6, 4, 7))
    _use(cp, cp.b, _hours(m1, 6, 4, 9))
    now = _at(m2, 1, 2)
    with Session(_engine(cp)) as session:
        billing.rate_pending(session, now)
        session.commit()
    numbers: list[int] = []

    def second_close() -> None:
        with Session(_engine(cp)) as session:
            invoice = invoices.close(session, cp.b.tenant_id, m1, now)
            assert invoice is not None
            session.commit()
            numbers.append(invoice.number)

    with Session(_engine(cp)) as first:
        invoice = invoices.close(first, cp.a.tenant_id, m1, now)
        assert invoice is not None
        numbers.append(invoice.number)
        waiting = threading.Thread(target=second_close)
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive()  # held back by the first close's lock
        first.commit()
    waiting.join(timeout=20)
    assert not waiting.is_alive() and numbers == [1, 2]
    with Session(_engine(cp)) as session:
        charged = session.exec(select(Charge).where(col(Charge.period) == m1)).all()
        assert len({c.tenant_id for c in charged}) == 2
        assert len(session.exec(select(Invoice)).all()) == 2


def test_the_cli_closes_only_months_that_are_over(control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = control_plane
    monkeypatch.setenv("LINESIDE_DATA_DIR", str(cp.settings.data_dir))
    monkeypatch.setenv("LINESIDE_DATABASE_URL", cp.settings.url)
    get_settings.cache_clear()
    try:
        this_month = pricing.month_start(datetime.now(UTC))
        last_month = pricing.month_start(datetime.combine(this_month, datetime.min.time(), UTC) - timedelta(days=1))
        refused = CliRunner().invoke(cli.app, ["billing", "close", "--month", invoices.month_text(this_month)])
        assert refused.exit_code == 2 and "is not over" in refused.output
        closed = CliRunner().invoke(cli.app, ["billing", "close", "--month", invoices.month_text(last_month)])
        assert closed.exit_code == 0 and "no invoice issued" in closed.output  # before the leases: nothing charged
    finally:
        get_settings.cache_clear()


def test_a_month_missed_while_down_gets_its_own_invoice_first(control_plane: ControlPlane) -> None:
    """Back after two month ends: each month is invoiced on its own, in order, with no adjustments."""
    cp = control_plane
    m1, m2, m3 = _months(cp)
    a1, a2 = _hours(m1, 8, 6, 23), _hours(m2, 8, 9, 31)
    _use(cp, cp.a, a1 + a2)
    with Session(_engine(cp)) as session:
        issued = invoices.close_due(session, _at(m3, 2, 6))
        session.commit()
        shown = [(i.number, i.period, i.total_minor, {line["kind"] for line in i.lines}) for i in issued]
    assert shown == [
        (1, m1, _expected_minor(cp, cp.a, m1, a1), {"usage"}),
        (2, m2, _expected_minor(cp, cp.a, m2, a2), {"usage"}),
    ]
