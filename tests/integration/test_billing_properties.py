"""Property test of the books (issue 13, section 3), on SQLite: any sequence of usage (repeated, reordered,
late), top-ups (retried), voucher redemptions, expiries and rating runs (re-runs included) keeps them right.

After every step, read from the database and checked against a model the test keeps itself:
- every journal transaction balances, and all balances of a currency sum to zero;
- every usage record that was due is rated exactly once (``ChargedUsage``), and the charged quantity per
  lease, month and measure equals the model's, from unique records after the billed increment;
- each month's charges of a lease and measure add up to its month-to-date amount rounded once;
- every balance equals the sum of its entries; no prepaid balance is below minus its credit limit;
- vouchers pay only for their products and at most their share of the month's charges (the invoice),
  never go negative, and after expiry hold nothing (the funder's account shows what was granted less what came back).

SQLite only (the same code paths as PostgreSQL; the database-level checks run on both in
``test_ledger_store.py``): a migrated database is copied per example, and rows are written directly, so
thirty sequences run in a minute or so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text
from sqlmodel import Session, col, select

from contracts.wire import ErrorCode
from control_plane import billing, catalogue, db, funds, ledger_store, metering, pricing, vouchers
from control_plane.ledger import AccountKind
from control_plane.models import (
    Account,
    Charge,
    ChargedUsage,
    JournalEntry,
    ModelVersion,
    Product,
    Site,
    Slice,
    Tenant,
    Voucher,
    VoucherProgramme,
)
from control_plane.models import Lease as LeaseRow
from control_plane.money import Money
from control_plane.pricing import Source, usage_key
from control_plane.scheduler import Priority

CREDIT_LIMIT = 200  # 2.00 EUR: small, so sequences run into it and on into debt
INCREMENT_S = 45
LATE_MIN = 120  # a report arrives up to two hours after its window
CAPACITY = {"kind": "capacity", "reserved_per_hour": "9.8765", "burst_per_hour": "7.4321",
            "bank_per_hour": "1.2345", "billed_increment_s": INCREMENT_S}  # fmt: skip
USAGE = {"kind": "usage", "tiers": [{"up_to": 500, "per_1000": "2.50"}, {"up_to": None, "per_1000": "1.75"}]}


@dataclass(frozen=True)
class SliceSpec:
    tenant: int  # index into the machine's tenants
    product: str  # "cap" or "use"
    priority: Priority


SLICES = (
    SliceSpec(0, "cap", Priority.RESERVED),
    SliceSpec(0, "use", Priority.BURST),
    SliceSpec(1, "cap", Priority.BURST),
)


@dataclass(frozen=True)
class Expected:
    """What the model says one usage record bills: (lease, month, measure) and quantity; None: nothing."""

    group: tuple[int, date, str] | None
    quantity: int
    window_start: datetime


def _migrated(directory: Path) -> Path:
    """A migrated, empty database file, copied for each example (migrating each time would be slow)."""
    path = directory / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.migrate(engine)
    engine.dispose()
    return path


class Books(RuleBasedStateMachine):
    """Two factories, three leased slices (capacity and usage products), two voucher programmes."""

    template: Path  # set by the test: a migrated database

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="example-", dir=self.template.parent))
        shutil.copy(self.template, self.dir / "cp.db")
        self.engine = db.make_engine(f"sqlite:///{self.dir / 'cp.db'}")
        self.t0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        self.now = self.t0 + timedelta(minutes=30)
        self.records: dict[str, Expected] = {}  # usage key -> what it bills (first report wins)
        self.rows: dict[str, dict[str, Any]] = {}  # usage key -> the row as first reported (for replays)
        self.rated: set[str] = set()
        self.topups: list[tuple[str, int, int]] = []  # key, tenant, minor
        self.redeemed: dict[int, set[int]] = defaultdict(set)  # programme id -> tenants
        self.expired_at: datetime | None = None  # the latest clock expire_due ran at
        with Session(self.engine, expire_on_commit=False) as session:
            self._setup(session)
            session.commit()

    def _setup(self, session: Session) -> None:
        site = Site(name="north", broker_host="127.0.0.1", broker_port=1883)
        model = ModelVersion(name="m", version="1", sha256="0" * 64, size_bytes=1, manifest={})
        self.tenants = [Tenant(slug=f"prop-{n}", name=f"Factory {n}") for n in "ab"]
        session.add_all([site, model, *self.tenants])
        session.flush()
        assert site.id is not None
        assert model.id is not None
        first = self.t0.date().replace(day=1)
        self.products: dict[str, Product] = {}
        for name, terms in (("cap", CAPACITY), ("use", USAGE)):
            product = catalogue.add_product(session, sku=f"prop-{name}", site_id=site.id, name=name,
                                            hardware_class="replica", unit=str(terms["kind"]))  # fmt: skip
            catalogue.add_price(session, product, effective_from=first, currency="EUR", terms=terms, today=first)
            self.products[name] = product
        self.slices: list[Slice] = []
        self.leases: list[LeaseRow] = []
        for n, spec in enumerate(SLICES):
            tenant = self.tenants[spec.tenant]
            assert tenant.id is not None
            funds.settings_for(session, tenant.id, credit_limit_minor=CREDIT_LIMIT)
            item = Slice(tenant_id=tenant.id, site_id=site.id, slug=f"s{n}", line_ids=[], model_version_id=model.id,
                         priority=spec.priority)  # fmt: skip
            session.add(item)
            session.flush()
            assert item.id is not None
            product = self.products[spec.product]
            price = catalogue.price_in_force(session, product, self.t0)
            assert product.id is not None
            assert price.id is not None
            lease = LeaseRow(tenant_id=tenant.id, slice_id=item.id, product_id=product.id, price_id=price.id,
                             starts_at=self.t0)  # fmt: skip
            session.add(lease)
            self.slices.append(item)
            self.leases.append(lease)
        session.flush()
        before = self.t0 - timedelta(minutes=1)
        self.programmes = [
            vouchers.create_programme(session, name="all-half", funder="District", budget=Money(600, "EUR"),
                                      per_tenant=Money(300, "EUR"), expires_at=self.t0 + timedelta(minutes=150),
                                      product_skus=[], max_share_bp=5000, now=before),
            vouchers.create_programme(session, name="usage-only", funder="Region", budget=Money(150, "EUR"),
                                      per_tenant=Money(150, "EUR"), expires_at=self.t0 + timedelta(minutes=300),
                                      product_skus=["prop-use"], max_share_bp=10_000, now=before),
        ]  # fmt: skip

    def teardown(self) -> None:
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- usage -------------------------------------------------------------------------------------

    def _window(self, late: int) -> datetime:
        """The window of a report arriving ``late`` minutes after it, now (none before the leases start)."""
        return max(self.t0, self.now - timedelta(minutes=late))

    def _report(self, rows: list[dict[str, Any]], expected: list[Expected]) -> None:
        with Session(self.engine) as session:
            new = metering.insert_once(session, rows)
            session.commit()
        assert new == len({row["key"] for row in rows} - set(self.records))  # repeats are stored once
        for row, record in zip(rows, expected, strict=True):
            self.records.setdefault(row["key"], record)
            self.rows.setdefault(row["key"], row)

    @rule(slice_n=st.sampled_from(range(len(SLICES))), node=st.sampled_from([1, 2]), late=st.integers(0, LATE_MIN),
          minutes=st.integers(1, 10), seconds=st.integers(1, 60), replicas=st.integers(1, 8))  # fmt: skip
    def capacity(self, slice_n: int, node: int, late: int, minutes: int, seconds: int, replicas: int) -> None:
        """One heartbeat's records: ``minutes`` minute pieces up to ``late`` minutes ago, the oldest partial."""
        item, spec, lease = self.slices[slice_n], SLICES[slice_n], self.leases[slice_n]
        assert item.id is not None
        assert lease.id is not None
        rows, expected = [], []
        for start in sorted({self._window(late + k) for k in range(minutes)}):
            piece = seconds if start == self._window(late + minutes - 1) else 60
            rows.append(dict(key=usage_key(Source.AGENT, item.app_name, f"node-{node}", start), source="capacity",
                             tenant_id=item.tenant_id, slice_id=item.id, node_id=None, window_start=start,
                             window_s=piece, replica_seconds=replicas * piece, verdicts={}))  # fmt: skip
            billed = -(-replicas * piece // INCREMENT_S) * INCREMENT_S
            group = (lease.id, pricing.month_start(start), spec.priority.value) if spec.product == "cap" else None
            expected.append(Expected(group, billed if group else 0, start))
        self._report(rows, expected)

    @rule(slice_n=st.sampled_from(range(len(SLICES))), line=st.sampled_from(["l1/0", "l2/0"]),
          late=st.integers(0, LATE_MIN), passed=st.integers(0, 400), failed=st.integers(0, 50),
          bad=st.integers(0, 10), internal=st.integers(0, 10))  # fmt: skip
    def verdicts(self, slice_n: int, line: str, late: int, passed: int, failed: int, bad: int, internal: int) -> None:
        item, spec, lease = self.slices[slice_n], SLICES[slice_n], self.leases[slice_n]
        assert item.id is not None
        assert lease.id is not None
        start = self._window(late)
        counts = {"pass": passed, "fail": failed, "errors": bad + internal,
                  "error_codes": {ErrorCode.BAD_IMAGE.value: bad, ErrorCode.INTERNAL.value: internal}}  # fmt: skip
        row = dict(key=usage_key(Source.INGRESS, item.app_name, line, start), source="verdicts",
                   tenant_id=item.tenant_id, slice_id=item.id, window_start=start, window_s=60, replica_seconds=0,
                   verdicts=counts)  # fmt: skip
        group = (lease.id, pricing.month_start(start), "verdicts") if spec.product == "use" else None
        self._report([row], [Expected(group, passed + failed + bad if group else 0, start)])  # internal: not billed

    @precondition(lambda self: bool(self.rows))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A report delivered again (a retry, or an agent replaying after a restart): stored once."""
        key = data.draw(st.sampled_from(sorted(self.rows)))
        self._report([self.rows[key]], [self.records[key]])

    # --- money -------------------------------------------------------------------------------------

    @rule(tenant=st.sampled_from([0, 1]), amount=st.integers(1, 1500), retry=st.booleans())
    def top_up(self, tenant: int, amount: int, retry: bool) -> None:
        mine = [t for t in self.topups if t[1] == tenant]
        key, _, minor = mine[-1] if retry and mine else (f"topup-{len(self.topups)}", tenant, amount)
        tenant_id = self.tenants[tenant].id
        assert tenant_id is not None
        with Session(self.engine) as session:
            funds.top_up(session, tenant_id, Money(minor, "EUR"), key)
            session.commit()
        if not (retry and mine):
            self.topups.append((key, tenant, minor))

    @rule(tenant=st.sampled_from([0, 1]), programme_n=st.sampled_from([0, 1]))
    def redeem(self, tenant: int, programme_n: int) -> None:
        programme, tenant_id = self.programmes[programme_n], self.tenants[tenant].id
        assert programme.id is not None
        assert tenant_id is not None
        held = self.redeemed[programme.id]
        expected: type[Exception] | None = None
        if self.now >= programme.expires_at.replace(tzinfo=UTC):
            expected = vouchers.ProgrammeExpired
        elif tenant_id in held:
            expected = vouchers.AlreadyRedeemed
        elif (len(held) + 1) * programme.per_tenant_minor > programme.budget_minor:
            expected = vouchers.BudgetUsedUp
        with Session(self.engine) as session:
            code = vouchers.issue_codes(session, programme, 1)[0]
            session.commit()
            try:
                vouchers.redeem(session, tenant_id, code, self.now)
                session.commit()
                outcome: type[Exception] | None = None
            except (vouchers.ProgrammeExpired, vouchers.AlreadyRedeemed, vouchers.BudgetUsedUp) as e:
                session.rollback()
                outcome = type(e)
        assert outcome is expected
        event(f"redeem: {outcome.__name__ if outcome else 'granted'}")
        if outcome is None:
            held.add(tenant_id)

    @rule(minutes=st.integers(1, 90), expire=st.booleans())
    def advance_clock(self, minutes: int, expire: bool) -> None:
        """Time passes; then (``expire``) the expiry pass returns expired vouchers' remainders, once."""
        self.now += timedelta(minutes=minutes)
        if not expire:
            return
        with Session(self.engine) as session:
            returned = vouchers.expire_due(session, self.now)
            session.commit()
        event(f"expiry returned {min(returned, 1)}+ vouchers")
        self.expired_at = self.now

    @rule(advance=st.integers(0, 30), runs=st.integers(1, 2))
    def rate(self, advance: int, runs: int) -> None:
        """A rating run (the control plane's billing pass), ``advance`` minutes on; sometimes run twice."""
        self.now += timedelta(minutes=advance)
        for _ in range(runs):
            with Session(self.engine) as session:
                run = billing.rate_pending(session, self.now)
                session.commit()
            event(f"rating run: {'charges' if run.charges else 'nothing new'}")
        self.rated |= {key for key, record in self.records.items() if record.window_start < self.now}

    # --- what must hold after every step ------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        with Session(self.engine) as session:
            off = session.execute(text("SELECT transaction_id FROM journalentry GROUP BY transaction_id, currency "
                                       "HAVING SUM(amount_minor) <> 0")).all()  # fmt: skip
            assert off == []
            entries = session.exec(select(JournalEntry)).all()
            sums: dict[int, int] = defaultdict(int)
            for entry in entries:
                sums[entry.account_id] += entry.amount_minor
            assert sum(sums.values()) == 0  # one currency: value only moves between accounts
            for account in session.exec(select(Account)).all():
                assert account.id is not None
                balance = ledger_store.balance(session, account).minor
                assert balance == sums.get(account.id, 0)
                if account.kind == AccountKind.PREPAID:
                    assert balance >= -(account.credit_limit_minor or 0), (account.id, balance)
                if account.kind == AccountKind.VOUCHER:
                    assert balance >= 0

    @invariant()
    def usage_billed_once(self) -> None:
        with Session(self.engine) as session:
            keys = session.exec(select(ChargedUsage.usage_key)).all()
            assert len(keys) == len(set(keys))
            assert set(keys) == self.rated
            charged: dict[tuple[int, date, str], tuple[int, int]] = defaultdict(lambda: (0, 0))
            for charge in session.exec(select(Charge).where(Charge.measure != "subscription_fee")).all():
                quantity, amount = charged[charge.lease_id, charge.period, charge.measure]
                charged[charge.lease_id, charge.period, charge.measure] = (
                    quantity + charge.quantity,
                    amount + charge.amount_minor,
                )
            expected: dict[tuple[int, date, str], int] = defaultdict(int)
            for key in self.rated:
                record = self.records[key]
                if record.group is not None:
                    expected[record.group] += record.quantity
            assert {g: q for g, (q, _) in charged.items() if q} == {g: q for g, q in expected.items() if q}
            leases = {lease.id: lease for lease in self.leases}
            for (lease_id, period, measure), (quantity, amount) in charged.items():
                _, price = catalogue.price_for_period(session, leases[lease_id], period)
                total = pricing.amount_to_date(catalogue.terms_of(price), measure, quantity, "EUR")
                assert amount == total.minor  # the month's hours add up to its amount, rounded once

    @invariant()
    def vouchers_keep_their_rules(self) -> None:
        with Session(self.engine) as session:
            programmes = {f"programme-{p.id}": p for p in session.exec(select(VoucherProgramme)).all()}
            skus = {p.id: p.sku for p in session.exec(select(Product)).all()}
            leases = {lease.id: lease for lease in self.leases}
            rows = session.exec(
                select(Charge, JournalEntry, Account)
                .join(JournalEntry, col(JournalEntry.transaction_id) == col(Charge.transaction_id))
                .join(Account, col(Account.id) == col(JournalEntry.account_id))
                .where(Account.kind == AccountKind.VOUCHER)
            ).all()
            paid_in: dict[tuple[int, Any], int] = {}  # (voucher account, month) -> paid
            for charge, entry, account in rows:
                programme = programmes[account.name]
                paid = -entry.amount_minor
                assert 0 <= paid <= charge.amount_minor
                sku = skus[leases[charge.lease_id].product_id]
                assert not programme.product_skus or sku in programme.product_skus
                key = (entry.account_id, charge.period)
                paid_in[key] = paid_in.get(key, 0) + paid
            accounts = {a.id: a for a in session.exec(select(Account)).all()}
            for (account_id, period), paid in paid_in.items():  # at most its share of the month (the invoice)
                programme = programmes[accounts[account_id].name]
                month = [c for c in session.exec(select(Charge).where(Charge.period == period)).all()
                         if c.tenant_id == accounts[account_id].tenant_id and c.amount_minor > 0 and (
                             not programme.product_skus
                             or skus[leases[c.lease_id].product_id] in programme.product_skus)]  # fmt: skip
                assert paid <= sum(c.amount_minor for c in month) * programme.max_share_bp // 10_000
            for programme in programmes.values():
                assert programme.id is not None
                held = session.exec(
                    select(Voucher, Account)
                    .join(Account, col(Account.id) == col(Voucher.account_id))
                    .where(Voucher.programme_id == programme.id)
                ).all()
                assert {v.tenant_id for v, _ in held} == self.redeemed[programme.id]
                funder = session.get(Account, programme.funder_account_id)
                assert funder is not None
                spent = sum(-e.amount_minor for c, e, a in rows if a.name == f"programme-{programme.id}")
                left = sum(ledger_store.balance(session, account).minor for _, account in held)
                assert ledger_store.balance(session, funder).minor == -(spent + left)  # granted less returned
                if self.expired_at is not None and programme.expires_at.replace(tzinfo=UTC) <= self.expired_at:
                    assert left == 0


def test_any_sequence_of_usage_money_and_rating_keeps_the_books(tmp_path: Path) -> None:
    Books.template = _migrated(tmp_path)
    run_state_machine_as_test(
        Books,
        settings=settings(max_examples=12, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )  # fmt: skip
