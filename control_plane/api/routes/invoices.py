"""Invoices (``/invoices``): a tenant's monthly invoices as JSON, CSV and PDF; operators close a month.

The control plane closes last month on its own on the 1st (``invoices.close_due``); ``POST
/invoices/close`` lets an operator close a month that is over now, e.g. after an outage. Another
tenant's invoice answers 404 in every format, like a missing one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import Field
from sqlmodel import Session, select

from control_plane import invoice_render, invoices
from control_plane.api.deps import IdFilter, IdPath, NowDep, PageDep, SessionDep, allowed, own_tenant, scoped_get
from control_plane.invoice_render import InvoicePublic
from control_plane.models import Invoice, Tenant
from control_plane.models._common import Input
from control_plane.models.billing import MONTH_PATTERN
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/invoices", tags=["invoices"])


Reader = Annotated[Principal, allowed(Permission.READ_BILLING, "reading invoices")]


class CloseIn(Input):
    period: str = Field(pattern=MONTH_PATTERN, description="The month to close, YYYY-MM; it must be over (UTC).")


def _shown(session: Session, invoice: Invoice) -> InvoicePublic:
    tenant = session.get(Tenant, invoice.tenant_id)
    assert tenant is not None
    return invoice_render.public(invoice, tenant)


def _utc(now: datetime) -> datetime:
    """The control plane's clock in UTC (billing months are UTC); a naive clock reads local time."""
    return now.astimezone(UTC)


@router.get("", response_model=list[InvoicePublic])
def list_invoices(
    session: SessionDep,
    caller: Reader,
    page: PageDep,
    tenant_id: IdFilter = None,
    period: Annotated[str | None, Query(pattern=MONTH_PATTERN, description="Only this month, YYYY-MM.")] = None,
) -> list[InvoicePublic]:
    """Your tenant's invoices, newest first (operators: every tenant's, or ``?tenant_id``); paged."""
    query = own_tenant(select(Invoice), Invoice, caller)
    if tenant_id is not None:
        query = query.where(Invoice.tenant_id == tenant_id)
    if period is not None:
        query = query.where(Invoice.period == invoices.period_of(period))
    return [_shown(session, row) for row in page.of(session, query, Invoice, newest_first=True)]


@router.post("/close", response_model=list[InvoicePublic])
def close_month(
    body: CloseIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_FUNDS, "closing a month's invoices")],
    now: NowDep,
) -> list[InvoicePublic]:
    """Close a month that is over for every tenant now; returns the invoices issued (none when closed)."""
    issued = invoices.close_month(session, invoices.period_of(body.period), _utc(now))
    session.commit()
    return [_shown(session, row) for row in issued]


def _attachment(invoice: InvoicePublic, content: bytes, media_type: str, suffix: str) -> Response:
    name = f"lineside-{invoice.label}-{invoice.period}.{suffix}"
    return Response(content, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/{invoice_id}.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def invoice_csv(invoice_id: IdPath, session: SessionDep, caller: Reader) -> Response:
    """The invoice as CSV: one row per line, then the subtotal, vouchers, credits and total rows."""
    shown = _shown(session, scoped_get(session, Invoice, invoice_id, caller))
    return _attachment(shown, invoice_render.to_csv(shown).encode(), "text/csv; charset=utf-8", "csv")


@router.get("/{invoice_id}.pdf", response_class=Response, responses={200: {"content": {"application/pdf": {}}}})
def invoice_pdf(invoice_id: IdPath, session: SessionDep, caller: Reader) -> Response:
    """The invoice as a PDF document."""
    shown = _shown(session, scoped_get(session, Invoice, invoice_id, caller))
    return _attachment(shown, invoice_render.to_pdf(shown), "application/pdf", "pdf")


@router.get("/{invoice_id}", response_model=InvoicePublic)
def get_invoice(invoice_id: IdPath, session: SessionDep, caller: Reader) -> InvoicePublic:
    """One invoice with its lines and totals (minor units, currency and text)."""
    return _shown(session, scoped_get(session, Invoice, invoice_id, caller))
