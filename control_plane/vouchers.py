"""Voucher programmes (issue 13, section 4): a funder's subsidy, its codes, redemptions, expiry and audit report.

How the money moves, all through the ledger (``ledger_store``), each step idempotent by its key:

- A programme owns a ``voucher_funder`` account (``programme-<id>``). Nothing is posted when it is created:
  its budget is a cap on redemptions, not money the platform holds.
- Redeeming a code (``redeem``) opens the tenant's ``voucher`` account for that programme and moves the
  per-tenant amount into it from the funder (key ``voucher-grant:<voucher id>``): the funder account goes
  negative by what the programme granted.
- Rating spends it (``funds.fund``: vouchers first, within the programme's products and share of each charge).
- When the programme expires, ``expire_due`` moves each voucher's unused balance back to the funder
  (key ``voucher-expiry:<voucher id>``).

Codes are 16 characters from an alphabet without look-alikes (0/O, 1/I/L), drawn with ``secrets``
(80 bits: not guessable), printed in groups of four. A code that is unknown and a code another tenant
already used answer the same 404, so trying codes reveals nothing about which exist.

``report`` answers what a subsidy auditor asks: per tenant and product, what was granted, spent,
returned at expiry and is left. Spending is read from the journal entries of each charge's transaction on
this programme's voucher account, so a charge paid by two programmes counts only this programme's part.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlmodel import Session, col, select

from control_plane import funds, ledger, ledger_store
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    Account,
    Charge,
    JournalEntry,
    JournalTransaction,
    Lease,
    Product,
    Tenant,
    Voucher,
    VoucherProgramme,
    as_utc,
)
from control_plane.money import Money

VOUCHER_GRANT = "voucher_grant"
VOUCHER_EXPIRY = "voucher_expiry"
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_GROUPS, CODE_GROUP_LEN = 4, 4
MAX_CODES_PER_CALL = 1000


class UnknownCode(NotFound):
    """No unused code of that text: check it for typos (letters and digits, groups of four)."""

    code = "unknown_voucher_code"


class AlreadyRedeemed(Conflict):
    """The tenant already holds this programme's voucher: one per tenant per programme."""

    code = "voucher_already_redeemed"


class ProgrammeExpired(Conflict):
    code = "voucher_programme_expired"


class BudgetUsedUp(Conflict):
    code = "voucher_budget_used_up"


class MoneyOut(BaseModel):
    """An amount shown back: integer minor units, the currency, and the amount as people read it."""

    minor: int = Field(description="Minor units (cents), an integer.")
    currency: str = Field(description="ISO 4217 code.")
    formatted: str = Field(description="Major units with the currency, e.g. '12.50 EUR'.")

    @classmethod
    def of(cls, minor: int, currency: str) -> MoneyOut:
        return cls(minor=minor, currency=currency, formatted=str(Money(minor, currency)))


# --- programmes and codes --------------------------------------------------------------------------


def create_programme(
    session: Session,
    *,
    name: str,
    funder: str,
    budget: Money,
    per_tenant: Money,
    expires_at: datetime,
    product_skus: list[str],
    max_share_bp: int,
    now: datetime,
) -> VoucherProgramme:
    """A programme and its funder's account; the caller commits."""
    if budget.currency != per_tenant.currency:
        raise InvalidInput(f"budget ({budget.currency}) and per_tenant ({per_tenant.currency}) differ in currency")
    if per_tenant.minor <= 0 or budget.minor < per_tenant.minor:
        raise InvalidInput(f"per_tenant ({per_tenant}) must be positive and at most the budget ({budget})")
    if not 1 <= max_share_bp <= 10_000:
        raise InvalidInput(f"max_share_bp ({max_share_bp}) must be 1 to 10000 (basis points of each charge)")
    if as_utc(expires_at) <= as_utc(now):
        raise InvalidInput(f"expires_at ({expires_at.isoformat()}) is not in the future")
    skus = sorted(set(product_skus))
    known = set(session.exec(select(Product.sku).where(col(Product.sku).in_(skus))).all()) if skus else set()
    if set(skus) - known:
        raise InvalidInput(f"unknown product skus {sorted(set(skus) - known)}; see GET /catalogue")
    if session.exec(select(VoucherProgramme.id).where(VoucherProgramme.name == name)).first() is not None:
        raise Conflict(f"a voucher programme named {name!r} exists; choose another name")
    account = ledger_store.open_account(session, AccountKind.VOUCHER_FUNDER, budget.currency, None, "programme-new")
    assert account.id is not None
    programme = VoucherProgramme(
        name=name, funder=funder, currency=budget.currency, budget_minor=budget.minor,
        per_tenant_minor=per_tenant.minor, expires_at=as_utc(expires_at), product_skus=skus,
        max_share_bp=max_share_bp, funder_account_id=account.id,
    )  # fmt: skip
    session.add(programme)
    session.flush()
    account.name = f"programme-{programme.id}"  # the id exists only now; the account has no entries yet
    session.add(account)
    session.flush()
    return programme


def _new_code() -> str:
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
    return "-".join(chars[i : i + CODE_GROUP_LEN] for i in range(0, len(chars), CODE_GROUP_LEN))


def normalise(code: str) -> str:
    """A code as typed (any case, spaces or dashes anywhere) in its stored form ``XXXX-XXXX-XXXX-XXXX``."""
    chars = "".join(c for c in code.upper() if c.isalnum())
    return "-".join(chars[i : i + CODE_GROUP_LEN] for i in range(0, len(chars), CODE_GROUP_LEN))


def issue_codes(session: Session, programme: VoucherProgramme, count: int) -> list[str]:
    """``count`` new unguessable codes of ``programme`` (shown once by the caller); the caller commits."""
    if not 1 <= count <= MAX_CODES_PER_CALL:
        raise InvalidInput(f"count ({count}) must be 1 to {MAX_CODES_PER_CALL}; call again for more")
    assert programme.id is not None
    codes = {_new_code() for _ in range(count)}
    while len(codes) < count:  # 80 bits each: a clash is as good as impossible, but cheap to rule out
        codes.add(_new_code())
    session.add_all(Voucher(programme_id=programme.id, code=code) for code in sorted(codes))
    session.flush()
    return sorted(codes)


# --- redeeming and expiring ------------------------------------------------------------------------


def redeem(session: Session, tenant_id: int, code: str, now: datetime) -> Voucher:
    """Give ``tenant_id`` the voucher ``code`` stands for and post its grant; the caller commits."""
    unknown = UnknownCode(
        "no unused voucher code matches; check it for typos (letters and digits in groups of four) or ask "
        "the programme's funder for a new one"
    )
    voucher = session.exec(select(Voucher).where(Voucher.code == normalise(code))).first()
    if voucher is None:
        raise unknown
    # Lock the programme (PostgreSQL; SQLite serialises writers): redemptions of one programme run one at a
    # time, so its budget and each code are checked against what is committed.
    programme = session.exec(
        select(VoucherProgramme)
        .where(VoucherProgramme.id == voucher.programme_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    session.refresh(voucher)
    if voucher.tenant_id is not None and voucher.tenant_id != tenant_id:
        raise unknown  # another tenant's used code answers like an unknown one: no oracle
    expires = as_utc(programme.expires_at)
    if voucher.tenant_id == tenant_id:
        raise AlreadyRedeemed(
            f"your factory already redeemed this code on {as_utc(voucher.redeemed_at or now):%Y-%m-%d}"
        )
    if expires <= as_utc(now):
        raise ProgrammeExpired(f"voucher programme {programme.name!r} ended on {expires:%Y-%m-%d %H:%M} UTC; "
                               "ask its funder whether a new programme is open")  # fmt: skip
    held = session.exec(
        select(Voucher.id).where(Voucher.programme_id == programme.id, Voucher.tenant_id == tenant_id)
    ).first()
    if held is not None:
        raise AlreadyRedeemed(f"your factory already holds a voucher of programme {programme.name!r}: one per "
                              "factory; GET /vouchers shows its balance")  # fmt: skip
    assert programme.id is not None
    if (redemptions(session, programme.id) + 1) * programme.per_tenant_minor > programme.budget_minor:
        raise BudgetUsedUp(
            f"voucher programme {programme.name!r} has granted its whole budget "
            f"({Money(programme.budget_minor, programme.currency)}) to other factories; "
            "ask the funder about another programme"
        )
    currency = funds.settings_for(session, tenant_id).currency
    if currency != programme.currency:
        raise InvalidInput(f"this voucher pays in {programme.currency}, but your factory is billed in {currency}; "
                           "ask the funder for a programme in your currency")  # fmt: skip
    account = funds.tenant_account(session, tenant_id, AccountKind.VOUCHER, currency, name=f"programme-{programme.id}")
    assert account.id is not None
    voucher.tenant_id, voucher.account_id, voucher.redeemed_at = tenant_id, account.id, as_utc(now)
    session.add(voucher)
    session.flush()
    amount = Money(programme.per_tenant_minor, currency)
    ledger_store.record(
        session,
        ledger.post(
            f"voucher-grant:{voucher.id}",
            VOUCHER_GRANT,
            [Posting(programme.funder_account_id, -amount), Posting(account.id, amount)],
            f"voucher of {programme.name} for tenant {tenant_id}",
        ),
    )
    return voucher


def expire_due(session: Session, now: datetime) -> int:
    """Return the unused balance of every redeemed voucher of an expired programme to its funder; how many
    vouchers paid something back. Safe to run again: a voucher's return is posted once (by its key)."""
    rows = session.exec(
        select(Voucher, VoucherProgramme)
        .join(VoucherProgramme, col(VoucherProgramme.id) == col(Voucher.programme_id))
        .where(col(Voucher.account_id).is_not(None), col(VoucherProgramme.expires_at) <= as_utc(now))
        .order_by(col(Voucher.id))
    ).all()
    returned = 0
    for voucher, programme in rows:
        key = f"voucher-expiry:{voucher.id}"
        if ledger_store.find(session, key) is not None:
            continue
        # Lock the account so no charge spends from it between reading its balance and emptying it.
        account = session.exec(select(Account).where(Account.id == voucher.account_id).with_for_update()).one()
        left = ledger_store.balance(session, account)
        if left.minor <= 0:
            continue
        assert account.id is not None
        memo = f"unused voucher of {programme.name} returned at expiry"
        posting = [Posting(account.id, -left), Posting(programme.funder_account_id, left)]
        ledger_store.record(session, ledger.post(key, VOUCHER_EXPIRY, posting, memo))
        returned += 1
    return returned


# --- the funder's report ---------------------------------------------------------------------------


@dataclass
class TenantLine:
    """One tenant's voucher of a programme: what it got, spent (per product sku), gave back and holds."""

    tenant_id: int
    tenant: str
    redeemed_at: datetime | None
    granted: int
    spent: dict[str, int] = field(default_factory=dict)  # product sku -> minor units
    returned: int = 0
    balance: int = 0

    @property
    def spent_total(self) -> int:
        return sum(self.spent.values())


@dataclass
class Report:
    programme: VoucherProgramme
    tenants: list[TenantLine]
    codes_issued: int

    def totals(self) -> dict[str, int]:
        return {
            "granted": sum(t.granted for t in self.tenants),
            "spent": sum(t.spent_total for t in self.tenants),
            "returned": sum(t.returned for t in self.tenants),
            "balance": sum(t.balance for t in self.tenants),
        }


def _by_key_prefix(session: Session, account_id: int, prefix: str) -> int:
    total = session.exec(
        select(func.coalesce(func.sum(JournalEntry.amount_minor), 0))
        .join(JournalTransaction, col(JournalTransaction.id) == col(JournalEntry.transaction_id))
        .where(JournalEntry.account_id == account_id, col(JournalTransaction.idempotency_key).startswith(prefix))
    ).one()
    return int(total)


def report(session: Session, programme: VoucherProgramme) -> Report:
    """Per redeeming tenant: granted, spent per product, returned at expiry and balance (minor units)."""
    rows = session.exec(
        select(Voucher, Tenant)
        .join(Tenant, col(Tenant.id) == col(Voucher.tenant_id))
        .where(Voucher.programme_id == programme.id, col(Voucher.account_id).is_not(None))
        .order_by(col(Tenant.slug))
    ).all()
    lines = []
    for voucher, tenant in rows:
        account = session.get(Account, voucher.account_id)
        assert account is not None
        assert account.id is not None
        assert tenant.id is not None
        spent: dict[str, int] = defaultdict(int)
        by_product = session.exec(
            select(Product.sku, func.sum(JournalEntry.amount_minor))
            .select_from(JournalEntry)
            .join(Charge, col(Charge.transaction_id) == col(JournalEntry.transaction_id))
            .join(Lease, col(Lease.id) == col(Charge.lease_id))
            .join(Product, col(Product.id) == col(Lease.product_id))
            .where(JournalEntry.account_id == account.id, Charge.tenant_id == tenant.id)
            .group_by(col(Product.sku))
            .order_by(col(Product.sku))
        ).all()
        for sku, minor in by_product:
            spent[sku] += -int(minor)
        lines.append(
            TenantLine(
                tenant_id=tenant.id,
                tenant=tenant.slug,
                redeemed_at=voucher.redeemed_at,
                granted=_by_key_prefix(session, account.id, f"voucher-grant:{voucher.id}"),
                spent=dict(spent),
                returned=-_by_key_prefix(session, account.id, f"voucher-expiry:{voucher.id}"),
                balance=ledger_store.balance(session, account).minor,
            )
        )
    issued = session.exec(select(func.count()).select_from(Voucher).where(Voucher.programme_id == programme.id)).one()
    return Report(programme, lines, int(issued))


def redemptions(session: Session, programme_id: int) -> int:
    count = session.exec(
        select(func.count())
        .select_from(Voucher)
        .where(Voucher.programme_id == programme_id, col(Voucher.tenant_id).is_not(None))
    ).one()
    return int(count)


def held_by(session: Session, tenant_id: int | None) -> list[tuple[Voucher, VoucherProgramme, Account]]:
    """Redeemed vouchers with their programme and account: one tenant's, or (None) every tenant's."""
    query = (
        select(Voucher, VoucherProgramme, Account)
        .join(VoucherProgramme, col(VoucherProgramme.id) == col(Voucher.programme_id))
        .join(Account, col(Account.id) == col(Voucher.account_id))
        .order_by(col(Voucher.redeemed_at), col(Voucher.id))
    )
    if tenant_id is not None:
        query = query.where(Voucher.tenant_id == tenant_id)
    return [(v, p, a) for v, p, a in session.exec(query).all()]
