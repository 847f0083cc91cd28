"""The compute bank's money (``/bank``): what contributors earn, see and take out.

Operators set each site's rule (contributors' share of what bank slices paid, as credits or a payable).
A contributor (an edge operator of the owning tenant, or a factory's plant manager for its own edge
servers) sees its page: hours offered and used, credits earned, spent and left, what ran on its nodes
(slice counts and hours, never whose); and turns credits into a payout. Credits are posted by the
billing pass (``bank.credit_contributors``), never by a request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import select

from control_plane import bank, funds, ledger
from control_plane.api.deps import NowDep, PageDep, SessionDep, allowed, get_or_404, money_in
from control_plane.errors import Conflict, Forbidden
from control_plane.models import BankRule, BankRuleIn, BankRulePublic, PayoutIn, Site, Tenant
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/bank", tags=["compute bank"])


@router.post("/rules", response_model=BankRulePublic, status_code=201)
def add_bank_rule(
    body: BankRuleIn,
    session: SessionDep,
    now: NowDep,
    _: Annotated[Principal, allowed(Permission.MANAGE_CATALOGUE, "setting the bank's rule")],
) -> BankRule:
    """A new version of what the site's contributors earn, from ``effective_from`` (today or later)."""
    get_or_404(session, Site, body.site_id)
    row = bank.add_rule(session, body.site_id, body.share_bp, body.settle_as, body.effective_from, now.date())
    session.commit()
    session.refresh(row)
    return row


@router.get("/rules", response_model=list[BankRulePublic])
def list_bank_rules(
    site_id: Annotated[int, Query(ge=1, le=2**31 - 1, description="The site whose rule versions to list.")],
    session: SessionDep,
    page: PageDep,
    _: Annotated[Principal, allowed(Permission.READ_BANK, "reading the bank's rules")],
) -> list[BankRule]:
    """Every version of the site's rule, newest first, paged (none: contributors earn the default 70 % as
    credits); the one in force on a day is the latest whose ``effective_from`` has come."""
    get_or_404(session, Site, site_id)
    return page.of(session, select(BankRule).where(BankRule.site_id == site_id), BankRule, newest_first=True)


def _owner(caller: Principal, tenant_id: int | None) -> int:
    if caller.is_operator:
        if tenant_id is None:
            raise Forbidden("operators name the contributor: ?tenant_id=")
        return tenant_id
    assert caller.tenant_id is not None
    if tenant_id not in (None, caller.tenant_id):
        raise Forbidden("you see your own tenant's contribution only")
    return caller.tenant_id


@router.get("/contributor")
def contributor(
    session: SessionDep,
    now: NowDep,
    caller: Annotated[Principal, allowed(Permission.READ_BANK, "reading the bank's contribution")],
    tenant_id: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Operators: whose page.")] = None,
) -> dict[str, Any]:
    """Your contributed nodes this month: hours offered and used inside their windows, credits earned,
    spent and left, and what ran on them (slice counts and replica-hours; other tenants stay unnamed)."""
    owner = _owner(caller, tenant_id)
    get_or_404(session, Tenant, owner)
    currency = funds.settings_for(session, owner).currency
    page = bank.contributor(session, owner, now, currency)
    session.commit()  # accounts opened on first look
    return page


@router.post("/payouts", status_code=201)
def pay_out(
    body: PayoutIn,
    session: SessionDep,
    now: NowDep,
    caller: Annotated[Principal, allowed(Permission.BANK_PAYOUT, "taking bank credits out")],
) -> dict[str, Any]:
    """Turn bank credits into a payable: money the operator owes you; the same reference pays once."""
    assert caller.tenant_id is not None
    amount = money_in(body.amount, body.currency, "amount")
    try:
        transaction_id = bank.pay_out(session, caller.tenant_id, amount, body.reference)
    except ledger.LedgerError as e:
        raise Conflict(f"reference {body.reference!r} was already used for another amount; use a new one") from e
    session.commit()
    page = bank.contributor(session, caller.tenant_id, now, amount.currency)
    return {"transaction_id": transaction_id, "amount": str(amount), "credits": page["credits"],
            "payable": page["payable"]}  # fmt: skip
