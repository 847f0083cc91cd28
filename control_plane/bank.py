"""The compute bank's money (issue 14, section 2): contributors earn from the bank slices their nodes ran.

What a contributor earns, and why this way:

- Only ``bank`` charges earn: capacity of a bank-priority slice, rated like any charge (``rating``). Each
  such charge of an hour is split over the nodes the slice ran on in that hour by their replica-seconds
  (its capacity usage records); a node a tenant owns (``Node.owner_tenant_id``) earns the site's
  ``BankRule.share_bp`` of its part. Like rating, each credit is the month's exact total so far rounded
  once (toward zero) less what earlier hours credited, so the month adds up to the share of what was
  paid; rounding each hour alone lost ~3 % of it at bank prices of cents an hour. A
  tenant's own slices on its own nodes earn nothing: it would pay itself. The operator's nodes earn nothing.
- Offered hours that nobody used earn nothing (no availability credit). An idle server in its owner's
  off-hours costs the owner little more than its idle power, and paying for offered hours would pay
  the most to whoever offers the most hours, used or not; the bank's money comes only from what bank
  slices paid, so the operator can never pay out more than it took in.
- A credit moves value from the platform's revenue to the owner's ``bank_credits`` account (``settle_as``
  credits: ``funds.fund`` spends them on the owner's own slices after vouchers, before prepaid: that is
  drawing from the bank) or to its ``contributors_payable`` account (money the operator owes it). An
  owner may also turn credits into a payable later (``pay_out``).
- ``credit_contributors`` runs in the billing pass after rating. Each ``(charge, node)`` is credited once:
  the ``BankCredit`` row's unique key and the journal transaction's idempotency key both say so, and a
  pass interrupted anywhere is finished by the next. A reversed charge (negative) earns a negative credit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from control_plane import funds, ledger, ledger_store, pricing
from control_plane.billing_views import shown
from control_plane.errors import Conflict, InvalidInput
from control_plane.ledger import AccountKind, Posting
from control_plane.models import (
    BankCredit,
    BankRule,
    Charge,
    Lease,
    Node,
    SettleAs,
    Slice,
    UsageRecord,
    as_utc,
)
from control_plane.money import Money
from control_plane.placement import local_clock, node_spec

log = logging.getLogger(__name__)

DEFAULT_SHARE_BP = 7000
"""Contributors' share of what bank slices paid on a site without a ``BankRule``: 70 %."""
BANK_MEASURE = "bank"
BANK_CREDIT = "bank_credit"
PAYOUT = "payout"


class NotEnoughCredits(Conflict):
    """A payout larger than the owner's bank credits."""

    code = "not_enough_credits"


def rule_in_force(session: Session, site_id: int, day: date) -> tuple[int, SettleAs]:
    """The site's (share in basis points, settlement) on ``day``: its latest rule already effective."""
    row = session.exec(
        select(BankRule)
        .where(BankRule.site_id == site_id, col(BankRule.effective_from) <= day)
        .order_by(col(BankRule.effective_from).desc(), col(BankRule.id).desc())
        .limit(1)
    ).first()
    return (DEFAULT_SHARE_BP, SettleAs.CREDITS) if row is None else (row.share_bp, row.settle_as)


def add_rule(session: Session, site_id: int, share_bp: int, settle_as: SettleAs, effective_from: date,
             today: date) -> BankRule:  # fmt: skip
    """A new version of the site's rule; like prices, never back-dated (credits already earned stand)."""
    if effective_from < today:
        raise InvalidInput(f"effective_from {effective_from} is in the past; a rule applies from today on")
    row = BankRule(site_id=site_id, share_bp=share_bp, settle_as=settle_as, effective_from=effective_from)
    session.add(row)
    session.flush()
    return row


def _exact(amount_minor: int, part: int, whole: int, share_bp: int) -> Fraction:
    """``amount`` x part/whole x share, exactly (no float ever sees money)."""
    return Fraction(amount_minor * part * share_bp, whole * 10_000)


def _earned_so_far(session: Session, node_id: int, slice_id: int, period: date) -> tuple[Fraction, int]:
    """What the node has earned from the slice in the month: exactly, and as credited (whole minor units)."""
    rows = session.exec(
        select(BankCredit, Charge.amount_minor)
        .join(Charge, col(Charge.id) == col(BankCredit.charge_id))
        .where(BankCredit.node_id == node_id, BankCredit.slice_id == slice_id, BankCredit.period == period)
    ).all()
    if not rows:
        return Fraction(0), 0
    charges = {credit.charge_id for credit, _ in rows}
    wholes = dict(
        session.exec(
            select(BankCredit.charge_id, func.sum(BankCredit.replica_seconds))
            .where(col(BankCredit.charge_id).in_(charges)).group_by(col(BankCredit.charge_id))
        ).all()
    )  # fmt: skip
    exact = sum(
        (_exact(paid, c.replica_seconds, int(wholes[c.charge_id]), c.share_bp) for c, paid in rows), Fraction(0)
    )
    return exact, sum(credit.amount_minor for credit, _ in rows)


def credit_contributors(session: Session, now: datetime) -> int:
    """Credit every contributed node's owner for bank charges not credited yet; the credits posted.

    Commits nothing: the billing pass commits (a failure rolls the whole pass back, to be redone)."""
    # Every bank charge with capacity gets a row per node it ran on (the operator's and the slice's own
    # tenant's earning 0), so the charges after the newest one with rows are the ones left to credit.
    latest = session.exec(select(func.max(BankCredit.charge_id))).one() or 0
    rows = session.exec(
        select(Charge, Lease.slice_id)
        .join(Lease, col(Lease.id) == col(Charge.lease_id))
        .where(Charge.measure == BANK_MEASURE, col(Charge.id) > latest)
        .order_by(col(Charge.id))
    ).all()
    posted = 0
    slices: dict[int, Slice | None] = {}
    for charge, slice_id in rows:
        if charge.amount_minor == 0:
            continue
        if slice_id not in slices:
            slices[slice_id] = session.get(Slice, slice_id)
        item = slices[slice_id]
        if item is None:
            continue
        posted += _credit_charge(session, charge, item)
    if posted:
        log.info("credited contributors for %s bank charge part(s)", posted)
    return posted


def _credit_charge(session: Session, charge: Charge, item: Slice) -> int:
    assert charge.id is not None
    assert item.id is not None
    hour = as_utc(charge.hour_start)
    by_node = session.exec(
        select(UsageRecord.node_id, func.sum(UsageRecord.replica_seconds))
        .where(UsageRecord.slice_id == item.id, UsageRecord.source == "capacity",
               col(UsageRecord.window_start) >= hour, col(UsageRecord.window_start) < hour + timedelta(hours=1))
        .group_by(col(UsageRecord.node_id))
    ).all()  # fmt: skip
    seconds = {int(n): int(s or 0) for n, s in by_node if n is not None}
    whole = sum(seconds.values())
    if not whole:
        return 0
    owners = dict(
        session.exec(select(Node.id, Node.owner_tenant_id).where(col(Node.id).in_(list(seconds)))).all()
    )  # fmt: skip
    share_bp, settle_as = rule_in_force(session, item.site_id, hour.date())
    revenue = funds.platform_account(session, AccountKind.REVENUE, charge.currency)
    assert revenue.id is not None
    count = 0
    for node_id, part in sorted(seconds.items()):
        owner = owners.get(node_id)
        earns = owner is not None and owner != item.tenant_id
        amount = 0
        if earns:  # the month's exact share rounded once (toward zero), less what earlier hours credited
            exact, credited = _earned_so_far(session, node_id, item.id, charge.period)
            amount = int(exact + _exact(charge.amount_minor, part, whole, share_bp)) - credited
        transaction_id = None
        if amount and owner is not None:
            kind = AccountKind.BANK_CREDITS if settle_as is SettleAs.CREDITS else AccountKind.CONTRIBUTORS_PAYABLE
            account = funds.tenant_account(session, owner, kind, charge.currency)
            assert account.id is not None
            money = Money(amount, charge.currency)
            memo = f"{share_bp / 100:g} % of bank charge {charge.id} (node {node_id}, {hour:%Y-%m-%d %H}:00 UTC)"
            row = ledger_store.record(session, ledger.post(
                f"bank-credit:{charge.id}:{node_id}", BANK_CREDIT,
                [Posting(revenue.id, -money), Posting(account.id, money)], memo,
            ))  # fmt: skip
            transaction_id = row.id
        session.add(BankCredit(
            charge_id=charge.id, node_id=node_id, owner_tenant_id=owner, slice_id=item.id, period=charge.period,
            hour_start=hour, replica_seconds=part, share_bp=share_bp if earns else 0, amount_minor=amount,
            currency=charge.currency, settle_as=settle_as, transaction_id=transaction_id,
        ))  # fmt: skip
        count += bool(amount)
    session.flush()
    return count


def credits_earned(session: Session, tenant_id: int, currency: str) -> int:
    """Everything the tenant's nodes earned from the bank, as credits or payables, in minor units."""
    total = session.exec(
        select(func.coalesce(func.sum(BankCredit.amount_minor), 0))
        .where(BankCredit.owner_tenant_id == tenant_id, BankCredit.currency == currency)
    ).one()  # fmt: skip
    return int(total)


def pay_out(session: Session, tenant_id: int, amount: Money, reference: str) -> int:
    """Turn ``amount`` of the owner's bank credits into a payable (the operator owes it that money);
    idempotent by ``reference``. The journal transaction's id."""
    if amount.minor <= 0:
        raise InvalidInput("a payout is a positive amount")
    credits = funds.tenant_account(session, tenant_id, AccountKind.BANK_CREDITS, amount.currency)
    payable = funds.tenant_account(session, tenant_id, AccountKind.CONTRIBUTORS_PAYABLE, amount.currency)
    assert credits.id is not None
    assert payable.id is not None
    key = f"payout:{tenant_id}:{reference}"
    if ledger_store.find(session, key) is None:
        have = ledger_store.balance(session, credits)
        if have.minor < amount.minor:
            raise NotEnoughCredits(f"the payout of {amount} exceeds your bank credits of {have}; ask for at most that")
    row = ledger_store.record(session, ledger.post(
        key, PAYOUT, [Posting(credits.id, -amount), Posting(payable.id, amount)], f"payout {reference}",
    ))  # fmt: skip
    assert row.id is not None
    return row.id


@dataclass(frozen=True)
class NodeHours:
    node_id: int
    hostname: str
    hours_offered: int
    hours_used: int

    @property
    def utilization(self) -> float:
        return round(self.hours_used / self.hours_offered, 4) if self.hours_offered else 0.0


def contributor(session: Session, tenant_id: int, now: datetime, currency: str) -> dict[str, Any]:
    """What a contributor sees for the month so far: its nodes' hours offered and used (inside its windows),
    credits earned, spent and left, and what ran on its nodes (slice counts and hours; no tenant names).

    ``now`` is the plant-local clock (windows are local times); an hour is offered when the node was lent
    at its start, used when a bank slice of another tenant ran on the node in it."""
    month = datetime(now.year, now.month, 1, tzinfo=now.tzinfo)
    period = pricing.month_start(now.date())
    nodes = session.exec(
        select(Node).where(Node.owner_tenant_id == tenant_id, col(Node.contributed).is_(True)).order_by(col(Node.id))
    ).all()
    credits = session.exec(
        select(BankCredit)
        .join(Slice, col(Slice.id) == col(BankCredit.slice_id))
        .where(BankCredit.owner_tenant_id == tenant_id, BankCredit.period == period, Slice.tenant_id != tenant_id)
    ).all()  # its own slices on its own nodes are not the bank's use
    used: dict[int, set[datetime]] = defaultdict(set)
    for credit in credits:
        used[credit.node_id].add(as_utc(credit.hour_start))
    rows = []
    for node in nodes:
        assert node.id is not None
        spec = node_spec(node, now)
        offered: set[datetime] = set()
        joined = local_clock(as_utc(node.joined_at), now)
        assert joined is not None
        hour = max(month, joined.replace(minute=0, second=0, microsecond=0))
        while hour < now:  # from the hour it joined: hours before it existed were not offered
            if spec.contributed and (hour.date() in spec.holidays or any(w.contains(hour) for w in spec.windows)):
                offered.add(hour.astimezone(UTC))  # a naive hour is the machine's local time
            hour += timedelta(hours=1)
        inside = len(used[node.id] & offered)
        rows.append(NodeHours(node.id, node.hostname, len(offered), inside))
    earned = sum(c.amount_minor for c in credits if c.settle_as is SettleAs.CREDITS)
    payable = sum(c.amount_minor for c in credits if c.settle_as is SettleAs.PAYABLE)
    spent = session.exec(
        select(func.coalesce(func.sum(Charge.credits_minor), 0))
        .where(Charge.tenant_id == tenant_id, Charge.period == period, Charge.currency == currency)
    ).one()  # fmt: skip
    left = ledger_store.balance(session, funds.tenant_account(session, tenant_id, AccountKind.BANK_CREDITS, currency))
    owed = ledger_store.balance(
        session, funds.tenant_account(session, tenant_id, AccountKind.CONTRIBUTORS_PAYABLE, currency)
    )
    offered_total = sum(r.hours_offered for r in rows)
    used_total = sum(r.hours_used for r in rows)

    return {
        "period": period.isoformat(),
        "nodes": [
            {
                "node_id": r.node_id,
                "hostname": r.hostname,
                "hours_offered": r.hours_offered,
                "hours_used": r.hours_used,
                "utilization": r.utilization,
            }
            for r in rows
        ],
        "hours_offered": offered_total,
        "hours_used": used_total,
        "utilization": round(used_total / offered_total, 4) if offered_total else 0.0,
        "credits": {
            "earned": shown(earned, currency),
            "spent": shown(int(spent), currency),
            "left": shown(left.minor, currency),
        },
        "payable": {"earned": shown(payable, currency), "owed": shown(owed.minor, currency)},
        "ran": {
            "slices": len({c.slice_id for c in credits}),
            "replica_hours": round(sum(c.replica_seconds for c in credits) / 3600, 2),
        },
    }
