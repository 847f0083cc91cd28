"""A tenant's money (issue 13, sections 3 and 5): its accounts, what it may still spend, who pays a charge.

Why a module of its own: rating (``billing``), vouchers and the routes all ask the same questions (which
account, how much is left, may it buy) and must get the same answers. Accounts are opened on first use,
one per tenant, kind and currency (a voucher account per redeemed voucher, named after its programme).

Who pays a charge (``fund``): voucher balances first, within each programme's products and share of
the charge; then bank credits; then the prepaid balance down to minus its credit limit; what is left is
recorded as debt on the tenant's receivable. Usage that ran is always billed: money never stops a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from control_plane import ledger, ledger_store
from control_plane.errors import PaymentRequired
from control_plane.ledger import AccountKind, Posting
from control_plane.models import Account, Product, TenantBilling, Voucher, VoucherProgramme
from control_plane.money import Money

DEFAULT_CURRENCY = "EUR"
DEFAULT_CREDIT_LIMIT_MINOR = 50_000

# --- accounts --------------------------------------------------------------------------------------


def settings_for(
    session: Session,
    tenant_id: int,
    *,
    currency: str = DEFAULT_CURRENCY,
    credit_limit_minor: int = DEFAULT_CREDIT_LIMIT_MINOR,
) -> TenantBilling:
    """The tenant's money settings, created with its prepaid account (and credit limit) on first use."""
    row = session.get(TenantBilling, tenant_id)
    if row is None:
        row = TenantBilling(tenant_id=tenant_id, currency=currency)
        session.add(row)
        session.flush()
        tenant_account(session, tenant_id, AccountKind.PREPAID, currency, credit_limit_minor=credit_limit_minor)
    return row


def tenant_account(
    session: Session,
    tenant_id: int,
    kind: AccountKind,
    currency: str,
    *,
    name: str = "",
    credit_limit_minor: int | None = None,
) -> Account:
    """The tenant's account of ``kind`` in ``currency`` (opened on first use)."""
    row = session.exec(
        select(Account).where(
            Account.tenant_id == tenant_id, Account.kind == kind, Account.currency == currency, Account.name == name
        )
    ).first()
    if row is None:
        limit = credit_limit_minor if kind == AccountKind.PREPAID else None
        row = ledger_store.open_account(session, kind, currency, tenant_id, name, limit)
    return row


def platform_account(session: Session, kind: AccountKind, currency: str, name: str = "") -> Account:
    """The platform's account of ``kind`` in ``currency`` (revenue, payments received; opened on first use)."""
    row = session.exec(
        select(Account).where(
            col(Account.tenant_id).is_(None), Account.kind == kind, Account.currency == currency, Account.name == name
        )
    ).first()
    return row if row is not None else ledger_store.open_account(session, kind, currency, None, name)


def top_up(session: Session, tenant_id: int, amount: Money, key: str, memo: str = "") -> int:
    """Record money the tenant paid in (payments received -> prepaid); idempotent by ``key``."""
    if amount.minor <= 0:
        raise ledger.LedgerError("a top-up is a positive amount; correct a wrong one by reversing it")
    prepaid = tenant_account(session, tenant_id, AccountKind.PREPAID, amount.currency)
    payments = platform_account(session, AccountKind.PAYMENTS, amount.currency)
    assert prepaid.id is not None
    assert payments.id is not None
    transaction = ledger.post(key, ledger.TOP_UP, [Posting(payments.id, -amount), Posting(prepaid.id, amount)], memo)
    row = ledger_store.record(session, transaction)
    assert row.id is not None
    return row.id


@dataclass(frozen=True)
class Funds:
    """What a tenant may still spend, in its currency, by source (minor units)."""

    currency: str
    prepaid: int
    credit_limit: int
    vouchers: int
    credits: int
    debt: int  # owed on the receivable (a positive number)

    @property
    def available(self) -> int:
        return max(0, self.prepaid + self.credit_limit) + self.vouchers + self.credits


def funds(session: Session, tenant_id: int, now: datetime) -> Funds:
    billing = settings_for(session, tenant_id)
    currency = billing.currency
    prepaid = tenant_account(session, tenant_id, AccountKind.PREPAID, currency)
    credits = tenant_account(session, tenant_id, AccountKind.BANK_CREDITS, currency)
    receivable = tenant_account(session, tenant_id, AccountKind.RECEIVABLE, currency)
    granted = [account for account, _ in vouchers(session, tenant_id, currency, now)]
    return Funds(
        currency,
        ledger_store.balance(session, prepaid).minor,
        prepaid.credit_limit_minor or 0,
        sum(ledger_store.balance(session, account).minor for account in granted),
        ledger_store.balance(session, credits).minor,
        -ledger_store.balance(session, receivable).minor,
    )


def refuse_if_out_of_funds(session: Session, tenant_id: int) -> None:
    """402 for a new lease when the tenant's funds, vouchers and credit are used up."""
    billing = session.get(TenantBilling, tenant_id)
    if billing is not None and billing.held:
        raise PaymentRequired(
            f"your prepaid balance, vouchers and credit are used up ({billing.held_reason}); ask your operator to "
            "record a top-up or raise your credit limit, or redeem a voucher (POST /vouchers/redeem), then retry"
        )


def vouchers(session: Session, tenant_id: int, currency: str, now: datetime) -> list[tuple[Account, VoucherProgramme]]:
    """The tenant's redeemed, unexpired vouchers in ``currency``, soonest expiry first."""
    rows = session.exec(
        select(Account, VoucherProgramme)
        .join(Voucher, col(Voucher.account_id) == col(Account.id))
        .join(VoucherProgramme, col(VoucherProgramme.id) == col(Voucher.programme_id))
        .where(
            Voucher.tenant_id == tenant_id,
            VoucherProgramme.currency == currency,
            col(VoucherProgramme.expires_at) > now,
        )
        .order_by(col(VoucherProgramme.expires_at), col(VoucherProgramme.id))
    ).all()
    return [(account, programme) for account, programme in rows]


def fund(session: Session, tenant_id: int, product: Product, amount: Money, at: datetime) -> list[tuple[int, int]]:
    """Which accounts pay ``amount`` (positive: charges; negative: a correction refunds the same way, to
    prepaid): vouchers within their rules, bank credits, prepaid down to its credit limit, then debt."""
    settings_for(session, tenant_id, currency=amount.currency)
    prepaid = tenant_account(session, tenant_id, AccountKind.PREPAID, amount.currency)
    assert prepaid.id is not None
    if amount.minor < 0:
        return [(prepaid.id, amount.minor)]
    left, sources = amount.minor, []
    for account, programme in vouchers(session, tenant_id, amount.currency, at):
        if programme.product_skus and product.sku not in programme.product_skus:
            continue
        cap = amount.minor * programme.max_share_bp // 10_000  # this programme's share of this charge, at most
        take = min(left, cap, max(0, ledger_store.balance(session, account).minor))
        if take > 0 and account.id is not None:
            sources.append((account.id, take))
            left -= take
    credits = tenant_account(session, tenant_id, AccountKind.BANK_CREDITS, amount.currency)
    for account, floor in ((credits, 0), (prepaid, -(prepaid.credit_limit_minor or 0))):
        take = min(left, max(0, ledger_store.balance(session, account).minor - floor))
        if take > 0 and account.id is not None:
            sources.append((account.id, take))
            left -= take
    if left > 0:
        receivable = tenant_account(session, tenant_id, AccountKind.RECEIVABLE, amount.currency)
        assert receivable.id is not None
        sources.append((receivable.id, left))
    return sources
