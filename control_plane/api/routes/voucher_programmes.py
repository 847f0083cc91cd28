"""Voucher programmes (``/voucher-programmes``): an operator, acting for a funder, sets one up, issues its
codes and reads its report; a plant manager sees the programmes its factory redeemed a voucher of.

Redeeming a code and a factory's own vouchers are under ``/vouchers``. Amounts are sent as decimal text in
major units ("2500.00"; a JSON number is refused, so no float reaches a budget) and shown back as integer
minor units with the currency and a formatted string.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field, StringConstraints
from sqlmodel import Session, col, select

from control_plane import vouchers
from control_plane.api.deps import IdPath, NowDep, PageDep, SessionDep, allowed, get_or_404, money_in
from control_plane.models import Voucher, VoucherProgramme
from control_plane.models._common import Input
from control_plane.money import Money
from control_plane.security import Permission, Principal
from control_plane.vouchers import MoneyOut

router = APIRouter(prefix="/voucher-programmes", tags=["vouchers"])

MoneyText = Annotated[str, StringConstraints(pattern=r"^\d{1,12}(\.\d{1,6})?$", max_length=20)]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ProgrammeCreate(Input):
    name: str = Field(min_length=1, max_length=100, description="Unique name, e.g. 'north-district-sme-2026'.")
    funder: str = Field(min_length=1, max_length=200, description="Who pays, e.g. 'North District SME programme'.")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code; only factories billed in it can redeem.")
    budget: MoneyText = Field(description="The most the programme grants in all, major units as text, e.g. '5000'.")
    per_tenant: MoneyText = Field(description="What each redeeming factory gets, major units as text, e.g. '250.00'.")
    expires_at: datetime = Field(description="When unused balances return to the funder (ISO 8601, UTC if no zone).")
    product_skus: list[Sku] = Field(
        default_factory=list, max_length=100, description="Products it may pay for (GET /catalogue); empty: all."
    )
    max_share_bp: int = Field(
        default=10_000, ge=1, le=10_000, description="Most of each charge it pays, basis points (5000: 50%)."
    )


class CodesIn(Input):
    count: int = Field(ge=1, le=vouchers.MAX_CODES_PER_CALL, description="How many new codes (1 to 1000).")


class ProgrammePublic(BaseModel):
    id: int
    name: str
    funder: str
    currency: str
    budget: MoneyOut
    per_tenant: MoneyOut
    expires_at: datetime
    product_skus: list[str] = Field(description="Products it pays for; empty: all.")
    max_share_bp: int = Field(description="Most of each charge it pays, in basis points.")
    redemptions: int = Field(description="Factories that redeemed a code.")
    created_at: datetime


class CodesIssued(BaseModel):
    programme_id: int
    codes: list[str] = Field(description="Shown once: hand each to one factory.")


def public(session: Session, programme: VoucherProgramme) -> ProgrammePublic:
    assert programme.id is not None
    return ProgrammePublic(
        id=programme.id, name=programme.name, funder=programme.funder, currency=programme.currency,
        budget=MoneyOut.of(programme.budget_minor, programme.currency),
        per_tenant=MoneyOut.of(programme.per_tenant_minor, programme.currency),
        expires_at=programme.expires_at, product_skus=programme.product_skus, max_share_bp=programme.max_share_bp,
        redemptions=vouchers.redemptions(session, programme.id), created_at=programme.created_at,
    )  # fmt: skip


@router.post("", response_model=ProgrammePublic, status_code=201)
def create_programme(
    body: ProgrammeCreate,
    session: SessionDep,
    now: NowDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_VOUCHERS, "creating voucher programmes")],
) -> ProgrammePublic:
    """A funder's programme: a budget, an amount per factory, an expiry, its products and share of each charge."""
    programme = vouchers.create_programme(
        session, name=body.name, funder=body.funder, budget=money_in(body.budget, body.currency, "budget"),
        per_tenant=money_in(body.per_tenant, body.currency, "per_tenant"), expires_at=body.expires_at,
        product_skus=body.product_skus, max_share_bp=body.max_share_bp, now=now,
    )  # fmt: skip
    session.commit()
    session.refresh(programme)
    return public(session, programme)


@router.get("", response_model=list[ProgrammePublic])
def list_programmes(
    session: SessionDep,
    page: PageDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "listing voucher programmes")],
) -> list[ProgrammePublic]:
    """Operators: every programme. Plant managers: those their factory redeemed a voucher of. Paged by id."""
    query = select(VoucherProgramme)
    if not caller.is_operator:
        redeemed = select(Voucher.programme_id).where(Voucher.tenant_id == caller.tenant_id)
        query = query.where(col(VoucherProgramme.id).in_(redeemed))
    return [public(session, p) for p in page.of(session, query, VoucherProgramme)]


@router.post("/{programme_id}/codes", response_model=CodesIssued, status_code=201)
def issue_codes(
    programme_id: IdPath,
    body: CodesIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_VOUCHERS, "issuing voucher codes")],
) -> CodesIssued:
    """New codes of the programme, returned once (only they are proof of a voucher: keep them safe)."""
    programme = get_or_404(session, VoucherProgramme, programme_id)
    codes = vouchers.issue_codes(session, programme, body.count)
    session.commit()
    return CodesIssued(programme_id=programme_id, codes=codes)


def _major(minor: int, currency: str) -> str:
    return str(Money(minor, currency)).split(" ", 1)[0]


def _report_json(session: Session, report: vouchers.Report) -> dict[str, Any]:
    currency = report.programme.currency
    tenants = [
        {
            "tenant_id": t.tenant_id,
            "tenant": t.tenant,
            "redeemed_at": t.redeemed_at,
            "granted": MoneyOut.of(t.granted, currency),
            "spent": MoneyOut.of(t.spent_total, currency),
            "returned": MoneyOut.of(t.returned, currency),
            "balance": MoneyOut.of(t.balance, currency),
            "products": [{"sku": sku, "spent": MoneyOut.of(minor, currency)} for sku, minor in sorted(t.spent.items())],
        }
        for t in report.tenants
    ]
    totals: dict[str, Any] = {k: MoneyOut.of(v, currency) for k, v in report.totals().items()}
    totals |= {"redemptions": len(report.tenants), "codes_issued": report.codes_issued}
    return {"programme": public(session, report.programme), "tenants": tenants, "totals": totals}


def _report_csv(report: vouchers.Report) -> str:
    """One row per factory and product (what it spent), one per factory (all columns), one of totals."""
    currency = report.programme.currency
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tenant_id", "tenant", "product_sku", "granted", "spent", "returned", "balance", "currency"])
    for t in report.tenants:
        for sku, minor in sorted(t.spent.items()):
            writer.writerow([t.tenant_id, t.tenant, sku, "", _major(minor, currency), "", "", currency])
        writer.writerow([t.tenant_id, t.tenant, "(all)", *(_major(v, currency) for v in
                         (t.granted, t.spent_total, t.returned, t.balance)), currency])  # fmt: skip
    totals = report.totals()
    writer.writerow(["", "(total)", "(all)", *(_major(totals[k], currency) for k in
                     ("granted", "spent", "returned", "balance")), currency])  # fmt: skip
    return out.getvalue()


@router.get("/{programme_id}/report", response_model=None)
def programme_report(
    programme_id: IdPath,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_VOUCHERS, "reading voucher programme reports")],
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv (a download).")] = "json",
) -> dict[str, Any] | Response:
    """Who got, spent (per product), returned at expiry and still holds what: for the funder's auditor."""
    programme = get_or_404(session, VoucherProgramme, programme_id)
    report = vouchers.report(session, programme)
    if format == "csv":
        name = f"voucher-programme-{programme_id}.csv"
        return Response(_report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip
    return _report_json(session, report)
