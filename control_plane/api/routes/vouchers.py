"""A factory's vouchers (``/vouchers``): redeem a code, see what each voucher has left.

The programmes behind them (operators create them for a funder) are under ``/voucher-programmes``. Rating
spends a voucher first, within its programme's products and share of each charge; at the programme's
expiry what is left returns to the funder.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from control_plane import ledger_store, vouchers
from control_plane.api.deps import NowDep, PageDep, SessionDep, allowed, own_tenant
from control_plane.errors import Forbidden
from control_plane.models import Account, Voucher, VoucherProgramme, as_utc
from control_plane.models._common import Input
from control_plane.security import Permission, Principal
from control_plane.vouchers import MoneyOut

router = APIRouter(prefix="/vouchers", tags=["vouchers"])


class RedeemIn(Input):
    code: str = Field(min_length=1, max_length=40, description="The code as given, e.g. 'ABCD-EFGH-JKMN-PQRS'.")


class VoucherPublic(BaseModel):
    id: int
    tenant_id: int
    programme_id: int
    programme: str = Field(description="The programme's name.")
    funder: str
    redeemed_at: datetime
    expires_at: datetime = Field(description="Then what is left returns to the funder.")
    expired: bool
    product_skus: list[str] = Field(description="Products it pays for; empty: all.")
    max_share_bp: int = Field(description="Most of each charge it pays, in basis points (5000: 50%).")
    granted: MoneyOut
    balance: MoneyOut = Field(description="What it may still pay.")


def _public(
    session: Session, voucher: Voucher, programme: VoucherProgramme, account: Account, now: datetime
) -> VoucherPublic:
    assert voucher.id is not None
    assert voucher.tenant_id is not None
    assert programme.id is not None
    return VoucherPublic(
        id=voucher.id, tenant_id=voucher.tenant_id, programme_id=programme.id, programme=programme.name,
        funder=programme.funder, redeemed_at=voucher.redeemed_at or now, expires_at=programme.expires_at,
        expired=as_utc(programme.expires_at) <= as_utc(now), product_skus=programme.product_skus,
        max_share_bp=programme.max_share_bp, granted=MoneyOut.of(programme.per_tenant_minor, programme.currency),
        balance=MoneyOut.of(ledger_store.balance(session, account).minor, account.currency),
    )  # fmt: skip


@router.post("/redeem", response_model=VoucherPublic, status_code=201)
def redeem(
    body: RedeemIn,
    session: SessionDep,
    now: NowDep,
    caller: Annotated[Principal, allowed(Permission.REDEEM_VOUCHERS, "redeeming vouchers")],
) -> VoucherPublic:
    """Your factory's voucher of the code's programme, its amount granted now (one per programme)."""
    if caller.tenant_id is None:
        raise Forbidden("only a factory's plant manager redeems vouchers")
    voucher = vouchers.redeem(session, caller.tenant_id, body.code, now)
    session.commit()
    held = [row for row in vouchers.held_by(session, caller.tenant_id) if row[0].id == voucher.id]
    return _public(session, *held[0], now)


@router.get("", response_model=list[VoucherPublic])
def list_vouchers(
    session: SessionDep,
    now: NowDep,
    caller: Annotated[Principal, allowed(Permission.READ_BILLING, "reading vouchers")],
    page: PageDep,
) -> list[VoucherPublic]:
    """Your factory's redeemed vouchers with what each has left (operators: every factory's), by id, a page
    at a time (X-Next-Cursor)."""
    query = own_tenant(select(Voucher).where(col(Voucher.account_id).is_not(None)), Voucher, caller)
    shown = []
    for voucher in page.of(session, query, Voucher):
        programme = session.get(VoucherProgramme, voucher.programme_id)
        account = session.get(Account, voucher.account_id)
        assert programme is not None
        assert account is not None
        shown.append(_public(session, voucher, programme, account, now))
    return shown
