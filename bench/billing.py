"""Billing at scale: idempotent ingest and rating of 2 million usage records, then a month's invoices.

The shape of issue 13's benchmark: 1,000 tenants with 10 slices each, every slice running on 2 nodes,
100 minutes of per-minute capacity records per slice and node (2,000,000 records). As the agents'
heartbeats would, the records arrive minute by minute through ``metering.insert_once`` (``INSERT ... ON
CONFLICT (key) DO NOTHING``), with 5 % of them sent again (a retried heartbeat) and 2 % late: those
arrive only after the rating pass that covered their hour, so a second pass rates them (and its
charges are the marginal month-to-date cost, as for any late record). Then ``invoices.close_due``, the
control plane's 1st-of-the-month job, closes October for all tenants from their rated charges.

Tenants' money differs on purpose, so every branch of ``funds.fund`` is paid from: a third have topped
up their prepaid balance, a third run on the default credit limit, and a third have a small credit
limit, so part of their usage is recorded as debt on their receivable. Slices cycle through the
``reserved``, ``burst`` and ``bank`` rates of one capacity product.

Figures (JSON): ``usage_records_per_s`` = records offered (repeats included) / (ingest + rating
seconds), target >= 20,000; ``month_close_s`` for all tenants, target <= 120 s; ``ledger_balanced``
(no journal transaction off balance, checked in SQL); ``double_billed`` (usage keys in more than one
charge, plus any charged quantity beyond the unique records' quantity: 0). Baseline in the same run:
the same unique rows bulk-INSERTed into a scratch table with no index or conflict check
(``raw_insert_records_per_s``), i.e. what the database takes for the rows alone.

PostgreSQL only (the issue's benchmark database): the run creates a throwaway database on the server
``--database-url`` names and drops it afterwards.

    lineside bench billing --json
"""

from __future__ import annotations

import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, make_url, text
from sqlmodel import Session, select

from control_plane import billing, catalogue, funds, invoices, metering, pricing
from control_plane import models as m
from control_plane.app import bootstrap
from control_plane.db import make_engine, migrate
from control_plane.money import Money
from control_plane.pricing import Source, usage_key
from control_plane.scheduler import Priority
from control_plane.settings import ControlPlaneSettings
from control_plane.states import NodeStatus

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PRICED_FROM = date(2026, 10, 1)
FIRST_MINUTE = datetime(2026, 10, 15, 6, 0, tzinfo=UTC)
CLOSE_AT = datetime(2026, 11, 1, 0, 5, tzinfo=UTC)  # the 1st of the next month, when close_due runs
TERMS = {"kind": "capacity", "reserved_per_hour": "0.90", "burst_per_hour": "1.10", "bank_per_hour": "0.40",
         "billed_increment_s": 60}  # fmt: skip
PRIORITIES = (Priority.RESERVED, Priority.BURST, Priority.BANK)
INGEST_BATCH = 5_000  # rows per INSERT: 10 columns a row stays under the driver's 65,535 parameters
REPEATED, LATE = 0.05, 0.02  # shares of the records sent twice, and sent only after a first rating pass


@dataclass(frozen=True)
class Shape:
    tenants: int
    slices: int
    nodes: int
    minutes: int

    @property
    def records(self) -> int:
        return self.tenants * self.slices * self.nodes * self.minutes


PRESETS = {"full": Shape(1000, 10, 2, 100), "small": Shape(12, 3, 2, 90)}


def _progress(message: str) -> None:
    print(f"[bench billing {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the throwaway database --------------------------------------------------------------------------


def _admin(server: str) -> psycopg.Connection[Any]:
    url = make_url(server)
    return psycopg.connect(host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
                           password=url.password, dbname=url.database or "postgres", autocommit=True)  # fmt: skip


def _create_database(server: str) -> tuple[str, str]:
    if not server.startswith("postgresql"):
        raise SystemExit("bench billing runs on PostgreSQL: give --database-url postgresql+psycopg://...")
    name = f"lineside_bench_billing_{os.getpid()}"
    with _admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server).set(drivername="postgresql+psycopg", database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_database(server: str, name: str) -> None:
    with _admin(server) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- setup: rows written directly, through the models and the catalogue ----------------------------


@dataclass
class Fleet:
    """What the records are about: per slice (tenant, slice id, app name, priority); the node ids."""

    slices: list[tuple[int, int, str, Priority]]
    nodes: list[int]


def setup(engine: Engine, settings: ControlPlaneSettings, shape: Shape) -> Fleet:
    """A site with its nodes and one capacity product; tenants with money settings; leased slices."""
    migrate(engine)
    bootstrap(engine, settings)
    with Session(engine) as session:
        model = session.exec(select(m.ModelVersion)).first()
        assert model is not None
        assert model.id is not None
        site = m.Site(name="bench", broker_host="127.0.0.1", broker_port=1883)
        session.add(site)
        session.flush()
        assert site.id is not None
        nodes = [m.Node(site_id=site.id, hostname=f"node-{k}", cpus=64, memory_mb=262_144, token_hash=f"bench-{k}",
                        status=NodeStatus.ONLINE) for k in range(shape.nodes)]  # fmt: skip
        session.add_all(nodes)
        product = catalogue.add_product(session, sku="bench-l4-quarter", site_id=site.id, name="Quarter GPU, L4",
                                        hardware_class="quarter GPU, L4", unit=pricing.UnitKind.CAPACITY)  # fmt: skip
        catalogue.add_price(session, product, effective_from=PRICED_FROM, currency="EUR", terms=TERMS,
                            today=PRICED_FROM)  # fmt: skip
        session.flush()
        node_ids = [n.id for n in nodes if n.id is not None]
        placement = {str(n): 1 for n in node_ids}
        slices: list[tuple[int, int, str, Priority]] = []
        lease_at = datetime.combine(PRICED_FROM, datetime.min.time(), UTC)
        for t in range(shape.tenants):
            tenant = m.Tenant(slug=f"bench-{t:05d}", name=f"Bench factory {t}")
            session.add(tenant)
            session.flush()
            assert tenant.id is not None
            limit = 500 if t % 3 == 2 else funds.DEFAULT_CREDIT_LIMIT_MINOR
            funds.settings_for(session, tenant.id, credit_limit_minor=limit)
            if t % 3 == 0:
                funds.top_up(session, tenant.id, Money(10_000, "EUR"), f"bench-topup-{t}", "bench")
            for s in range(shape.slices):
                priority = PRIORITIES[(t + s) % len(PRIORITIES)]
                item = m.Slice(tenant_id=tenant.id, site_id=site.id, slug=f"s{s}", line_ids=[],
                               model_version_id=model.id, min_replicas=1, max_replicas=4, priority=priority,
                               placement=placement)  # fmt: skip
                session.add(item)
                session.flush()
                assert item.id is not None
                catalogue.buy(session, item, product, price_id=None, now=lease_at, user_id=None)
                slices.append((tenant.id, item.id, item.app_name, priority))
            if (t + 1) % 100 == 0:
                session.commit()
                _progress(f"setup: {t + 1} of {shape.tenants} tenants")
        session.commit()
    return Fleet(slices, node_ids)


# --- the records -----------------------------------------------------------------------------------


Row = dict[str, Any]


def _record(item: tuple[int, int, str, Priority], node_id: int, start: datetime, replicas: int) -> Row:
    tenant_id, slice_id, app_name, _ = item
    return {"key": usage_key(Source.AGENT, app_name, f"node-{node_id}", start), "source": metering.CAPACITY,
            "tenant_id": tenant_id, "slice_id": slice_id, "node_id": node_id, "window_start": start, "window_s": 60,
            "replica_seconds": replicas * 60, "verdicts": {}}  # fmt: skip


def minutes(fleet: Fleet, shape: Shape) -> Iterator[list[dict[str, Any]]]:
    """Every slice's and node's record of each minute, one list per minute (as heartbeats bring them)."""
    for minute in range(shape.minutes):
        start = FIRST_MINUTE + timedelta(minutes=minute)
        yield [
            _record(item, node_id, start, 1 + (item[1] * 7 + node_id * 3 + minute // 17) % 4)
            for item in fleet.slices
            for node_id in fleet.nodes
        ]


@dataclass
class Offered:
    unique: int = 0
    offered: int = 0
    stored: int = 0
    quantity: int = 0  # replica-seconds of the unique records


def _ingest(session: Session, rows: list[dict[str, Any]], offered: Offered) -> None:
    for i in range(0, len(rows), INGEST_BATCH):
        offered.stored += metering.insert_once(session, rows[i : i + INGEST_BATCH])
    offered.offered += len(rows)
    session.commit()


def ingest(
    engine: Engine, fleet: Fleet, shape: Shape, rng: random.Random
) -> tuple[Offered, list[dict[str, Any]], float]:
    """The on-time records minute by minute, 5 % of each minute's sent again with the next minute;
    returns the late 2 % (not sent yet) and the seconds spent."""
    offered, late, seconds = Offered(), list[Row](), 0.0
    resend: list[dict[str, Any]] = []
    with Session(engine) as session:
        for number, rows in enumerate(minutes(fleet, shape)):
            on_time: list[Row] = []
            for row in rows:
                offered.unique += 1
                offered.quantity += row["replica_seconds"]
                (late if rng.random() < LATE else on_time).append(row)
            started = time.perf_counter()
            _ingest(session, on_time + resend, offered)
            seconds += time.perf_counter() - started
            resend = [row for row in on_time if rng.random() < REPEATED]
            if (number + 1) % 10 == 0:
                _progress(f"ingest: minute {number + 1} of {shape.minutes}, {offered.offered:,} records offered, "
                          f"{offered.offered / seconds:,.0f}/s")  # fmt: skip
        started = time.perf_counter()
        _ingest(session, resend, offered)
        seconds += time.perf_counter() - started
    return offered, late, seconds


def analyze(engine: Engine) -> float:
    """``ANALYZE usagerecord`` as autovacuum would after a bulk load (off on the test server); counted as
    ingest time. Only the loaded table: statistics saying the billing tables are empty made PostgreSQL
    plan (and cache for the session) sequential scans that rating then ran on ever larger tables."""
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE usagerecord"))
    return time.perf_counter() - started


def ingest_late(engine: Engine, late: list[dict[str, Any]], offered: Offered, rng: random.Random) -> float:
    """The late records, after the first rating pass; 5 % of them sent twice, like the others."""
    again = [row for row in late if rng.random() < REPEATED]
    started = time.perf_counter()
    with Session(engine) as session:
        _ingest(session, late + again, offered)
    return time.perf_counter() - started


def rate(engine: Engine, now: datetime) -> tuple[billing.RatingRun, float]:
    started = time.perf_counter()
    with Session(engine) as session:
        run = billing.rate_pending(session, now)
        session.commit()
    return run, time.perf_counter() - started


def raw_insert(engine: Engine, fleet: Fleet, shape: Shape) -> float:
    """Baseline: the same unique rows bulk-INSERTed into a scratch table (no index, no conflict check)."""
    table = m.UsageRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE bench_raw_usage (LIKE usagerecord INCLUDING DEFAULTS)"))
    seconds = 0.0
    with engine.connect() as connection:
        scratch = table.to_metadata(type(table.metadata)(), name="bench_raw_usage")
        for rows in minutes(fleet, shape):
            received = datetime.now(UTC)
            rows = [{**row, "received_at": received} for row in rows]
            started = time.perf_counter()
            connection.execute(scratch.insert(), rows)
            connection.commit()
            seconds += time.perf_counter() - started
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE bench_raw_usage"))
    return seconds


# --- the checks, in SQL ----------------------------------------------------------------------------


CHECKS = {
    "unbalanced_transactions": "SELECT count(*) FROM (SELECT transaction_id FROM journalentry "
    "GROUP BY transaction_id, currency HAVING SUM(amount_minor) <> 0) off",
    "transactions_without_entries": "SELECT count(*) FROM journaltransaction t "
    "WHERE NOT EXISTS (SELECT 1 FROM journalentry e WHERE e.transaction_id = t.id)",
    "keys_in_several_charges": "SELECT count(*) FROM (SELECT usage_key FROM chargedusage GROUP BY usage_key "
    "HAVING count(*) > 1) k",
    "records": "SELECT count(*) FROM usagerecord",
    "unrated_records": "SELECT count(*) FROM usagerecord u "
    "WHERE NOT EXISTS (SELECT 1 FROM chargedusage c WHERE c.usage_key = u.key)",
    "unique_quantity_replica_s": "SELECT coalesce(SUM(replica_seconds), 0) FROM usagerecord WHERE source = 'capacity'",
    "charged_quantity_replica_s": "SELECT coalesce(SUM(quantity), 0) FROM charge",
    "charges": "SELECT count(*) FROM charge",
    "charged_minor": "SELECT coalesce(SUM(amount_minor), 0) FROM charge",
    "invoices": "SELECT count(*) FROM invoice",
    "invoiced_subtotal_minor": "SELECT coalesce(SUM(subtotal_minor), 0) FROM invoice",
    "invoiced_vouchers_and_credits_minor": "SELECT coalesce(SUM(voucher_minor + credits_minor), 0) FROM invoice",
    "invoiced_total_minor": "SELECT coalesce(SUM(total_minor), 0) FROM invoice",
    "invoiced_charges": "SELECT count(*) FROM invoicedcharge",
    "debt_minor": "SELECT coalesce(-SUM(e.amount_minor), 0) FROM journalentry e "
    "JOIN account a ON a.id = e.account_id WHERE a.kind = 'receivable'",
}
"""What the run left, counted in SQL (not by the code under test)."""


def checks(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        found = {name: int(connection.execute(text(sql)).scalar_one()) for name, sql in CHECKS.items()}
    excess = max(0, found["charged_quantity_replica_s"] - found["unique_quantity_replica_s"])
    return {
        "ledger_balanced": found["unbalanced_transactions"] == found["transactions_without_entries"] == 0,
        "double_billed": found["keys_in_several_charges"] + excess,  # keys charged twice, or quantity beyond them
        **found,
    }


# --- the run ---------------------------------------------------------------------------------------


def measure(shape: Shape, server: str = DEFAULT_SERVER, seed: int = 13) -> dict[str, Any]:
    name, url = _create_database(server)
    engine = make_engine(url)
    workdir = Path(tempfile.mkdtemp(prefix="lineside-bench-billing-"))
    quiet = [logging.getLogger(name) for name in ("control_plane", "alembic")]  # 1,000 tenants' holds drown progress
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        return _measure(engine, ControlPlaneSettings(data_dir=workdir, database_url=url, monitor_sites=False), shape,
                        random.Random(seed))  # fmt: skip
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        engine.dispose()
        _drop_database(server, name)
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(engine: Engine, settings: ControlPlaneSettings, shape: Shape, rng: random.Random) -> dict[str, Any]:
    started = time.perf_counter()
    fleet = setup(engine, settings, shape)
    setup_s = time.perf_counter() - started
    _progress(f"setup done in {setup_s:.1f} s; ingesting {shape.records:,} records")
    offered, late, ingest_s = ingest(engine, fleet, shape, rng)
    ingest_s += analyze(engine)
    rate_at = FIRST_MINUTE + timedelta(minutes=shape.minutes + 1)
    _progress(f"ingest done ({ingest_s:.1f} s); rating")
    first, first_s = rate(engine, rate_at)
    _progress(f"first rating pass: {first.records:,} records, {first.charges:,} charges in {first_s:.1f} s; "
              f"{len(late):,} late records arrive")  # fmt: skip
    ingest_s += ingest_late(engine, late, offered, rng) + analyze(engine)
    second, second_s = rate(engine, rate_at)
    rate_s = first_s + second_s
    _progress(f"second rating pass: {second.records:,} records, {second.charges:,} charges in {second_s:.1f} s; "
              "closing the month")  # fmt: skip
    started = time.perf_counter()
    with Session(engine) as session:
        issued = invoices.close_due(session, CLOSE_AT)
        session.commit()
    month_close_s = time.perf_counter() - started
    _progress(f"month closed: {len(issued):,} invoices in {month_close_s:.1f} s; raw INSERT baseline")
    raw_s = raw_insert(engine, fleet, shape)
    result = {
        "tenants": shape.tenants, "slices": shape.tenants * shape.slices, "nodes": shape.nodes,
        "minutes": shape.minutes, "unique_records": offered.unique, "offered_records": offered.offered,
        "stored_records": offered.stored, "late_records": len(late),
        "usage_records_per_s": round(offered.offered / (ingest_s + rate_s)),
        "ingest_records_per_s": round(offered.offered / ingest_s),
        "rate_records_per_s": round((first.records + second.records) / rate_s),
        "raw_insert_records_per_s": round(offered.unique / raw_s),
        "ingest_s": round(ingest_s, 2), "rate_s": round(rate_s, 2),
        "rate_passes": [{"records": r.records, "charges": r.charges, "amount_minor": r.amount_minor,
                         "seconds": round(s, 2)} for r, s in ((first, first_s), (second, second_s))],
        "month_close_s": round(month_close_s, 2), "invoices_issued": len(issued),
        "expected_quantity_replica_s": offered.quantity, "setup_s": round(setup_s, 1),
    }  # fmt: skip
    result |= checks(engine)
    result["targets"] = {"usage_records_per_s": 20_000, "month_close_s": 120}
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "database": _version(engine)}
    return result


def _version(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(connection.execute(text("SHOW server_version")).scalar_one())


def shape_of(preset: str, **given: int | None) -> Shape:
    """A preset's shape with the options given on the command line in its place."""
    base = PRESETS[preset]
    return Shape(**{k: v if v is not None else getattr(base, k) for k, v in given.items()})
