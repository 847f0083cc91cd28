"""Money (``/billing``): a tenant's month (spend, forecast, budget, funds, cost per 1,000 parts), its
charges, the budget its plant manager sets; operators record top-ups, set credit limits, read revenue and
receivables, and may rate pending usage now (the control plane also rates on its own every minute)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlmodel import col, select

from control_plane import billing, billing_views, funds, ledger
from control_plane.api.deps import (
    IdFilter,
    PageDep,
    SessionDep,
    UtcNowDep,
    allowed,
    get_or_404,
    money_in,
    own_tenant,
)
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.models import BudgetIn, Charge, CreditLimitIn, Tenant, TopUpIn
from control_plane.models.billing import MONTH_PATTERN
from control_plane.money import Money
from control_plane.security import Permission, Principal

router = APIRouter(prefix="/billing", tags=["billing"])


def _tenant_of(caller: Principal, tenant_id: int | None) -> int:
    """Plant managers read their own tenant; operators name one."""
    if caller.is_operator:
        if tenant_id is None:
            raise InvalidInput("operators name the tenant: ?tenant_id=N")
        return tenant_id
    assert caller.tenant_id is not None
    if tenant_id is not None and tenant_id != caller.tenant_id:
        raise NotFound(f"tenant {tenant_id} not found")
    return caller.tenant_id


@router.get("/summary")
def summary(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "reading spend")],
    now: UtcNowDep,
    tenant_id: IdFilter = None,
) -> dict[str, Any]:
    """Spend this month, a forecast to month end, budget and its alerts, funds, cost per 1,000 parts per line."""
    tenant = _tenant_of(caller, tenant_id)
    get_or_404(session, Tenant, tenant)
    shown = billing_views.summary(session, tenant, now)
    session.commit()  # accounts opened on first read
    return shown


@router.put("/budget")
def set_budget(
    body: BudgetIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.SET_BUDGET, "setting the monthly budget")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """The monthly budget in your billing currency; alerts fire at 80% and 100% of it (null: no budget)."""
    assert caller.tenant_id is not None
    settings = funds.settings_for(session, caller.tenant_id)
    settings.monthly_budget_minor = (
        money_in(body.monthly_budget, settings.currency, "monthly_budget").minor if body.monthly_budget else None
    )
    session.add(settings)
    billing.review(session, caller.tenant_id, now)  # a budget set below this month's spend alerts at once
    session.commit()
    return billing_views.summary(session, caller.tenant_id, now)


@router.get("/charges")
def list_charges(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "reading charges")],
    page: PageDep,
    period: Annotated[str | None, Query(pattern=MONTH_PATTERN, description="Only this month, YYYY-MM.")] = None,
) -> list[dict[str, Any]]:
    """Rated lines, newest first (paged): what each hour of each lease cost and who paid it."""
    query = own_tenant(select(Charge), Charge, caller)
    if period is not None:
        year, month = (int(part) for part in period.split("-"))
        query = query.where(col(Charge.period) == date(year, month, 1))
    rows = page.of(session, query, Charge, newest_first=True)
    return [{**row.model_dump(exclude={"transaction_id"}), "amount": str(Money(row.amount_minor, row.currency))}
            for row in rows]  # fmt: skip


@router.post("/top-ups", status_code=201)
def record_top_up(
    body: TopUpIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_FUNDS, "recording top-ups")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """Money a tenant paid in, moved to its prepaid balance; the same ``reference`` twice is stored once."""
    get_or_404(session, Tenant, body.tenant_id)
    settings = funds.settings_for(session, body.tenant_id)
    if body.currency != settings.currency:
        raise InvalidInput(f"tenant {body.tenant_id} is billed in {settings.currency}, not {body.currency}")
    amount = money_in(body.amount, body.currency, "amount")
    try:
        transaction_id = funds.top_up(session, body.tenant_id, amount, f"top-up:{body.tenant_id}:{body.reference}")
    except ledger.LedgerError as e:
        raise Conflict(f"reference {body.reference!r} was already used for another amount; use a new one") from e
    billing.review(session, body.tenant_id, now)  # funds back: burst and bank slices are released
    session.commit()
    return {"transaction_id": transaction_id, "tenant_id": body.tenant_id, "amount": str(amount),
            "funds": billing_views.summary(session, body.tenant_id, now)["funds"]}  # fmt: skip


@router.put("/credit-limit")
def set_credit_limit(
    body: CreditLimitIn,
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_FUNDS, "setting credit limits")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """How far a tenant's prepaid balance may go below zero before its burst and bank slices are held."""
    get_or_404(session, Tenant, body.tenant_id)
    settings = funds.settings_for(session, body.tenant_id)
    prepaid = funds.tenant_account(session, body.tenant_id, ledger.AccountKind.PREPAID, settings.currency)
    prepaid.credit_limit_minor = money_in(body.credit_limit, settings.currency, "credit_limit").minor
    session.add(prepaid)
    billing.review(session, body.tenant_id, now)
    session.commit()
    return billing_views.summary(session, body.tenant_id, now)["funds"]


@router.get("/revenue")
def revenue(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_FUNDS, "reading revenue")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """Revenue per site and product (this month and all time) and what each tenant owes."""
    return billing_views.revenue(session, now)


@router.post("/rate")
def rate_now(
    session: SessionDep,
    caller: Annotated[Principal, allowed(Permission.MANAGE_FUNDS, "rating usage")],
    now: UtcNowDep,
) -> dict[str, Any]:
    """Rate every usage record not rated yet (the background loop does this every minute)."""
    run = billing.rate_pending(session, now)
    session.commit()
    return {"records": run.records, "charges": run.charges, "amount_minor": run.amount_minor,
            "unleased": run.unleased}  # fmt: skip
