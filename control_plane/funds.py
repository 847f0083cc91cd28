"""A tenant's money (issue 13, sections 3 and 5): its accounts, what it may still spend, who pays a charge.

Why a module of its own: rating (``billing``), vouchers and the routes all ask the same questions (which
account, how much is left, may it buy) and must get the same answers. Accounts are opened on first use,
one per tenant, kind and currency (a voucher account per redeemed voucher, named after its programme).

Who pays a charge (``fund``): voucher balances first, within each programme's products and share of
the charge; then bank credits; then the prepaid balance down to minus its credit limit; what is left is
recorded as debt on the tenant's receivable. Usage that ran is always billed: money never stops a line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

from sqlmodel import Session, col, func, select

from control_plane import ledger, ledger_store, pricing
from control_plane.errors import PaymentRequired
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    Account,
    Charge,
    JournalEntry,
    Lease,
    Product,
    TenantBilling,
    Voucher,
    VoucherProgramme,
    as_utc,
)
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


def funds(session: Session, tenant_id: int, now: datetime, payers: Payers | None = None) -> Funds:
    """What the tenant may still spend; ``payers``: a rating run's, which knows the balances already."""
    billing = settings_for(session, tenant_id)
    currency = billing.currency
    if payers is not None and (tenant_id, currency) in payers.vouchers:
        return payers.funds(tenant_id, currency, now)
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
    payers = Payers(session)
    payers.load([tenant_id], amount.currency)
    return payers.fund(tenant_id, product, amount, at)


class Payers:
    """Who pays many charges (a rating run): ``fund``'s answers without a query per charge.

    Why it may keep balances: ``load`` opens each tenant's accounts as ``fund`` does, locks them (``FOR
    UPDATE`` on PostgreSQL, held to commit, as ``ledger_store.record`` locks what it posts to) and reads
    their balances once; the caller reports every charge it posts (``fund`` records its own answer as
    paid), so the balances stay the sums of entries a fresh query would return."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.accounts: dict[tuple[int, str, str], Account] = {}  # (tenant, kind, currency), unnamed accounts
        self.vouchers: dict[tuple[int, str], list[tuple[Account, VoucherProgramme]]] = {}  # soonest expiry first
        self.balances: dict[int, int] = {}  # account id -> minor units
        self.kinds: dict[int, str] = {}  # account id -> AccountKind
        self.months: dict[tuple[int, date], list[int]] = {}  # (voucher account, month) -> [eligible, paid]

    def load(self, tenant_ids: Iterable[int], currency: str) -> None:
        """Make ready the tenants (in ``currency``) not loaded yet: settings, accounts, locks, balances."""
        new = sorted({t for t in tenant_ids if (t, currency) not in self.vouchers})
        for start in range(0, len(new), 500):
            chunk = new[start : start + 500]
            billed = select(TenantBilling).where(col(TenantBilling.tenant_id).in_(chunk))
            known = {row.tenant_id for row in self.session.exec(billed)}  # and in the session: settings_for's get
            for tenant_id in chunk:
                if tenant_id not in known:
                    settings_for(self.session, tenant_id, currency=currency)
            self._accounts(chunk, currency)
            for tenant_id in chunk:
                self._account(tenant_id, AccountKind.PREPAID, currency)
                self.vouchers[tenant_id, currency] = []
            rows = self.session.exec(
                select(Account, VoucherProgramme)
                .join(Voucher, col(Voucher.account_id) == col(Account.id))
                .join(VoucherProgramme, col(VoucherProgramme.id) == col(Voucher.programme_id))
                .where(col(Voucher.tenant_id).in_(chunk), VoucherProgramme.currency == currency)
                .order_by(col(VoucherProgramme.expires_at), col(VoucherProgramme.id))
            ).all()
            for account, programme in rows:
                assert account.tenant_id is not None
                self.vouchers[account.tenant_id, currency].append((account, programme))

    def _accounts(self, tenant_ids: list[int], currency: str) -> None:
        rows = self.session.exec(
            select(Account)
            .where(col(Account.tenant_id).in_(tenant_ids), Account.currency == currency)
            .order_by(col(Account.id))
            .with_for_update()
        ).all()
        ids = [a.id for a in rows if a.id is not None]
        sums = dict(
            self.session.exec(
                select(JournalEntry.account_id, func.sum(JournalEntry.amount_minor))
                .where(col(JournalEntry.account_id).in_(ids))
                .group_by(col(JournalEntry.account_id))
            ).all()
        )
        for account in rows:
            self._track(account, int(sums.get(account.id or 0, 0) or 0))

    def funds(self, tenant_id: int, currency: str, now: datetime) -> Funds:
        """As ``funds`` answers, for a tenant ``load`` made ready (opening the same accounts it opens)."""
        prepaid, credits, receivable = (
            self._account(tenant_id, kind, currency)
            for kind in (AccountKind.PREPAID, AccountKind.BANK_CREDITS, AccountKind.RECEIVABLE)
        )
        granted = [a.id for a, p in self.vouchers[tenant_id, currency] if as_utc(p.expires_at) > as_utc(now)]
        return Funds(
            currency,
            self.balances[prepaid.id or 0],
            prepaid.credit_limit_minor or 0,
            sum(self.balances[i] for i in granted if i is not None),
            self.balances[credits.id or 0],
            -self.balances[receivable.id or 0],
        )

    def _account(self, tenant_id: int, kind: AccountKind, currency: str) -> Account:
        """The tenant's unnamed account of ``kind``, opened on first use as ``tenant_account`` does."""
        account = self.accounts.get((tenant_id, kind, currency))
        if account is None:
            account = tenant_account(self.session, tenant_id, kind, currency)
            self._track(account, 0)  # new in this transaction: no entries, no one else sees it
        return account

    def _track(self, account: Account, balance: int) -> None:
        assert account.id is not None
        assert account.tenant_id is not None
        if account.name == "":
            self.accounts[account.tenant_id, account.kind, account.currency] = account
        self.balances[account.id] = balance
        self.kinds[account.id] = account.kind

    def fund(self, tenant_id: int, product: Product, amount: Money, at: datetime) -> list[tuple[int, int]]:
        """As ``fund`` answers, for a tenant ``load`` made ready; the answer counts as paid."""
        sources, eligible = self._split(tenant_id, product, amount, at)
        for account, minor in sources:
            self.balances[account] -= minor
        paid = dict(sources)
        for account_id, totals in eligible:
            totals[0] += amount.minor
            totals[1] += paid.get(account_id, 0)
        return sources

    def _month(self, account: Account, programme: VoucherProgramme, period: date) -> list[int]:
        """What the voucher's month has so far: [charges it may pay a share of, what it paid of them]."""
        assert account.id is not None
        key = (account.id, period)
        if key not in self.months:
            eligible = (
                select(func.coalesce(func.sum(Charge.amount_minor), 0))
                .join(Lease, col(Lease.id) == col(Charge.lease_id))
                .join(Product, col(Product.id) == col(Lease.product_id))
                .where(Charge.tenant_id == account.tenant_id, Charge.period == period,
                       Charge.currency == programme.currency, col(Charge.amount_minor) > 0)
            )  # fmt: skip
            if programme.product_skus:
                eligible = eligible.where(col(Product.sku).in_(programme.product_skus))
            paid = (
                select(func.coalesce(func.sum(JournalEntry.amount_minor), 0))
                .join(Charge, col(Charge.transaction_id) == col(JournalEntry.transaction_id))
                .where(JournalEntry.account_id == account.id, Charge.period == period)
            )
            self.months[key] = [int(self.session.exec(eligible).one()), -int(self.session.exec(paid).one())]
        return self.months[key]

    def _split(self, tenant_id: int, product: Product, amount: Money, at: datetime
               ) -> tuple[list[tuple[int, int]], list[tuple[int, list[int]]]]:  # fmt: skip
        """The payers of ``amount``, and the month totals of the vouchers that could pay a share of it."""
        currency = amount.currency
        prepaid = self.accounts[tenant_id, AccountKind.PREPAID, currency]
        assert prepaid.id is not None
        if amount.minor < 0:
            return [(prepaid.id, amount.minor)], []
        left, sources, eligible = amount.minor, [], []
        for account, programme in self.vouchers[tenant_id, currency]:
            if as_utc(programme.expires_at) <= as_utc(at) or account.id is None:
                continue  # expired by the charge's time (``vouchers`` asks for expires_at > at)
            if programme.product_skus and product.sku not in programme.product_skus:
                continue
            # Its share of the invoice (the month): of everything eligible so far, this charge included,
            # minus what it paid already; per charge alone, rounding down lost a cent on many small charges.
            totals = self._month(account, programme, pricing.month_start(at))
            eligible.append((account.id, totals))
            cap = (totals[0] + amount.minor) * programme.max_share_bp // 10_000 - totals[1]
            take = min(left, max(0, cap), max(0, self.balances[account.id]))
            if take > 0:
                sources.append((account.id, take))
                left -= take
        credits = self._account(tenant_id, AccountKind.BANK_CREDITS, currency)
        for account, floor in ((credits, 0), (prepaid, -(prepaid.credit_limit_minor or 0))):
            assert account.id is not None
            take = min(left, max(0, self.balances[account.id] - floor))
            if take > 0:
                sources.append((account.id, take))
                left -= take
        if left > 0:
            receivable = self._account(tenant_id, AccountKind.RECEIVABLE, currency)
            assert receivable.id is not None
            sources.append((receivable.id, left))
        return sources, eligible
