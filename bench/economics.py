"""The seed plant's month, priced (issue 14, section 5): one simulated month of a site, three ways to pay.

Why a simulation and not measured replicas: a month of twenty factories cannot run on a build machine,
and the question is money, which follows from how many replicas each hour needs. So each hour's
replicas come from each factory's order plan and a profile (``bench/economics_assumptions.toml``)
through the real planner (``planner.windows``/``floor_at``), are placed by the real scheduler
(``scheduler.place``, on the nodes' specs as ``placement.node_spec`` makes them), become capacity usage
records stored through ``metering.insert_once``, are rated by ``billing.rate_pending`` into charges and
journal transactions, and bank charges earn contributors credits through ``bank.credit_contributors``;
a throwaway SQLite database holds it all, on a clock the bench moves hour by hour.

The site: the operator's own servers, bought to cover the site's planned peak (a contributor may reclaim
its nodes at any time, so reserved capacity never counts on the bank), and two contributors' servers
lent to the bank in windows. Each factory has a reserved slice; one whose residency allows other owners'
nodes also has a bank slice. Every hour the bank slices ask first for all the replicas their factory
plans (cheapest, where the lent nodes have room), the reserved slices for the rest.

How an hour becomes usage: the replicas wanted in an hour are the highest floor in it (what must be
placed); what runs is the floor second by second (a shift's replicas start ``cold_start_s`` before it),
bank replicas first. One record per slice, node and hour (``window_s`` 3600) stands for the sixty
minute pieces an agent would send: the plans change on whole minutes, so rating charges the same
amount to the cent, and the month has about 12,000 records rather than 720,000.

Compared per factory: (a) its Lineside bill, the rated charges; (b) a dedicated server of the same
class (L4 GPUs) sized for its peak and owned outright, at the operator's cost assumptions; (c) whole
L4 GPU-hours rented 24/7, sized for its peak. Prices are cost-plus: the operator's server cost per
replica-hour, divided by a target utilisation, plus a margin.

    lineside bench economics --json
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, text
from sqlmodel import Session, col, select

from control_plane import bank, billing, catalogue, funds, ledger_store, metering, planner, pricing
from control_plane import models as m
from control_plane.app import bootstrap
from control_plane.db import make_engine, migrate
from control_plane.ledger import AccountKind
from control_plane.money import Money, rate
from control_plane.placement import node_spec
from control_plane.scheduler import NodeSpec, Priority, Residency, SliceDemand, place
from control_plane.settings import ControlPlaneSettings
from control_plane.states import NodeStatus

ASSUMPTIONS = Path(__file__).with_name("economics_assumptions.toml")
HOUR = timedelta(hours=1)
Row = dict[str, Any]


# --- the assumptions and what they cost ------------------------------------------------------------


def load(path: Path = ASSUMPTIONS) -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)


def _d(value: Any) -> Decimal:
    return Decimal(str(value))


def server_cost_per_hour(server: dict[str, Any], gpus: int) -> Decimal:
    """What owning servers with ``gpus`` L4s costs per hour: amortised purchase, power, upkeep.
    Servers of ``gpus_per_server`` each, the last one holding the rest."""
    chassis = math.ceil(gpus / server["gpus_per_server"])
    purchase = chassis * _d(server["chassis_purchase"]) + gpus * _d(server["gpu_purchase"])
    kilowatts = _d(chassis * server["chassis_watts"] + gpus * server["gpu_watts"]) / 1000
    amortised = purchase / (server["amortisation_months"] * server["hours_per_month"])
    power = kilowatts * _d(server["pue"]) * _d(server["electricity_per_kwh"])
    upkeep = purchase * _d(server["upkeep_per_year"]) / (12 * server["hours_per_month"])
    return amortised + power + upkeep


def slots_per_server(server: dict[str, Any]) -> int:
    return int(server["gpus_per_server"] * server["replicas_per_gpu"])


def prices(a: dict[str, Any]) -> dict[str, Decimal]:
    """Cost-plus replica-hour prices: the operator's cost per replica-hour / target utilisation x (1 + margin)."""
    server, terms = a["server"], a["pricing"]
    cost = server_cost_per_hour(server, server["gpus_per_server"]) / slots_per_server(server)
    reserved = cost / _d(terms["target_utilisation"]) * (1 + _d(terms["margin"]))
    step = Decimal("0.0001")
    return {
        "cost": cost.quantize(step, ROUND_HALF_EVEN),
        "reserved": reserved.quantize(step, ROUND_HALF_EVEN),
        "burst": (reserved * _d(terms["burst_factor"])).quantize(step, ROUND_HALF_EVEN),
        "bank": (reserved * _d(terms["bank_factor"])).quantize(step, ROUND_HALF_EVEN),
    }


def money(amount: Money) -> dict[str, Any]:
    return {"minor": amount.minor, "currency": amount.currency, "text": str(amount)}


# --- demand: the real planner on each factory's order plan ----------------------------------------


Hours = list[tuple[int, list[tuple[int, int]]]]
"""Per hour: (replicas wanted, [(seconds, floor)])."""


@dataclass
class Factory:
    """A factory's hours as its plan wants them, and the rows that stand for it once the site is set up."""

    slug: str
    name: str
    residency: Residency
    hours: Hours
    tenant_id: int = 0
    reserved_slice: int = 0
    bank_slice: int | None = None
    apps: dict[int, str] = field(default_factory=dict)  # slice id -> its Serve application name (usage keys)

    @property
    def peak(self) -> int:
        return max((wanted for wanted, _ in self.hours), default=0)


def _plan(entry: dict[str, Any], a: dict[str, Any]) -> planner.OrderPlan:
    """The factory's order plan: its robots' parts per shift, changed by its volume factors over the month."""
    shifts = tuple(
        planner.Shift(s["name"], frozenset(s["days"]), clock.fromisoformat(s["start"]), clock.fromisoformat(s["end"]))
        for s in a["shift_patterns"][entry["shifts"]]
    )
    seconds = int(shifts[0].length.total_seconds())  # the shifts of a pattern are equally long
    parts = _d(entry["robots"] * seconds) / a["robots"]["cycle_s"]
    factors = entry.get("volume", [{"from": a["month"]["start"], "factor": "1.0"}])
    volumes = tuple(planner.Volume(f["from"], int(parts * _d(f["factor"]))) for f in factors)
    profile = a["profile"]
    return planner.OrderPlan(shifts, volumes, a["robots"]["views_per_part"], float(_d(profile["headroom"])),
                             profile["idle_floor"])  # fmt: skip


def demand(entry: dict[str, Any], a: dict[str, Any], start: datetime, days: int) -> Hours:
    """Per hour of ``days`` from ``start`` (plant-local time): the replicas wanted (the highest floor in the
    hour) and the floor's pieces in it as (seconds, replicas)."""
    plan = _plan(entry, a)
    profile = planner.Profile(a["profile"]["frames_per_s_per_replica"], a["profile"]["cold_start_s"])
    windows = planner.windows(plan, profile, planner.Lease(10_000, Decimal(0)), start, days)
    hours = []
    for k in range(days * 24):
        begin = start + k * HOUR
        cuts = {begin, begin + HOUR}
        cuts |= {t for w in windows for t in (w.warm_from, w.start, w.end) if begin < t < begin + HOUR}
        points = sorted(cuts)
        pieces = [(int((b - t).total_seconds()), planner.floor_at(windows, t, plan.idle_floor)[0])
                  for t, b in pairwise(points)]  # fmt: skip
        hours.append((max(floor for _, floor in pieces), pieces))
    return hours


# --- the site in the database ----------------------------------------------------------------------


def _node(site_id: int, name: str, gpus: int, joined: datetime, owner: int | None = None,
          lent: dict[str, Any] | None = None) -> m.Node:  # fmt: skip
    """A node that joined at the month's start (the contributor page counts offered hours from then)."""
    lent = lent or {}
    first: date = lent.get("holiday_from", date.min)
    return m.Node(
        site_id=site_id, owner_tenant_id=owner, hostname=name, cpus=16 * gpus, memory_mb=65_536 * gpus,
        joined_at=joined.replace(tzinfo=UTC),
        gpus=[{"name": "NVIDIA L4", "memory_mb": 24_000}] * gpus, status=NodeStatus.ONLINE, token_hash=f"bench-{name}",
        contributed=bool(lent), windows=lent.get("windows", []),
        holidays=[(first + timedelta(days=d)).isoformat() for d in range(lent.get("holiday_days", 0))],
    )  # fmt: skip


def setup(engine: Engine, settings: ControlPlaneSettings, a: dict[str, Any], factories: list[Factory],
          operator_servers: int, start: datetime) -> list[m.Node]:  # fmt: skip
    """Site, nodes, the cost-plus product and the bank's rule, contributors, factories with their slices."""
    migrate(engine)
    bootstrap(engine, settings)
    server, currency, first_day = a["server"], a["month"]["currency"], start.date()
    with Session(engine) as session:
        model = session.exec(select(m.ModelVersion)).first()
        assert model is not None
        assert model.id is not None
        site = m.Site(name="economics", broker_host="127.0.0.1", broker_port=1883)
        session.add(site)
        session.flush()
        assert site.id is not None
        gpus = server["gpus_per_server"]
        nodes = [_node(site.id, f"operator-{k + 1}", gpus, start) for k in range(operator_servers)]
        for lender in a["contributors"]:
            owner = _tenant(session, lender["slug"], lender["name"])
            nodes += [_node(site.id, f"{lender['slug']}-{k + 1}", gpus, start, owner, lender)
                      for k in range(lender["servers"])]  # fmt: skip
        session.add_all(nodes)
        product = catalogue.add_product(session, sku="l4-quarter-economics", site_id=site.id,
                                        name="Quarter of an NVIDIA L4", hardware_class="quarter GPU, L4",
                                        unit=pricing.UnitKind.CAPACITY)  # fmt: skip
        price = prices(a)
        terms = {"kind": "capacity", **{f"{p}_per_hour": str(price[p]) for p in ("reserved", "burst", "bank")}}
        catalogue.add_price(session, product, effective_from=first_day, currency=currency, terms=terms,
                            today=first_day)  # fmt: skip
        share_bp = int(_d(a["pricing"]["contributor_share"]) * 10_000)
        bank.add_rule(session, site.id, share_bp, m.SettleAs.CREDITS, first_day, first_day)
        for factory in factories:
            factory.tenant_id = _tenant(session, factory.slug, factory.name)
            funds.settings_for(session, factory.tenant_id, currency=currency, credit_limit_minor=10**9)  # invoiced
            fraction = 1 / server["replicas_per_gpu"]
            factory.reserved_slice = _slice(session, factory, site.id, model.id, Priority.RESERVED, product, start,
                                            fraction)  # fmt: skip
            if factory.residency is Residency.ANY_BANK:
                factory.bank_slice = _slice(session, factory, site.id, model.id, Priority.BANK, product, start,
                                            fraction)  # fmt: skip
        session.commit()
        for node in nodes:
            session.refresh(node)
        session.expunge_all()
    return nodes


def _tenant(session: Session, slug: str, name: str) -> int:
    tenant = m.Tenant(slug=slug, name=name)
    session.add(tenant)
    session.flush()
    assert tenant.id is not None
    return tenant.id


def _slice(session: Session, factory: Factory, site_id: int, model_id: int, priority: Priority,
           product: m.Product, start: datetime, gpu_fraction: float) -> int:  # fmt: skip
    item = m.Slice(tenant_id=factory.tenant_id, site_id=site_id, slug=f"inspect-{priority.value}", line_ids=[],
                   model_version_id=model_id, min_replicas=0, max_replicas=64, gpus_per_replica=gpu_fraction,
                   priority=priority, residency=_residency(factory, priority))  # fmt: skip
    session.add(item)
    session.flush()
    assert item.id is not None
    factory.apps[item.id] = item.app_name
    catalogue.buy(session, item, product, price_id=None, now=start.replace(tzinfo=UTC), user_id=None)
    return item.id


# --- the month, hour by hour -----------------------------------------------------------------------


@dataclass
class Tally:
    """What the hours showed: planned factory-hours and those whose planned replicas were all placed."""

    planned_hours: int = 0
    met_hours: int = 0
    missed: list[str] = field(default_factory=list)  # "factory at hour: placed of wanted", for the reader


def _residency(factory: Factory, priority: Priority) -> Residency:
    """A factory allowing ``any_bank`` has a bank slice that may use lent nodes and a reserved slice on the
    site's usual nodes; any other rule is its reserved slice's (and it has no bank slice)."""
    if factory.residency is Residency.ANY_BANK:
        return Residency.ANY_BANK if priority is Priority.BANK else Residency.SITE
    return factory.residency


def _demand(a: dict[str, Any], slice_id: int, factory: Factory, priority: Priority, replicas: int) -> SliceDemand:
    profile = a["profile"]
    residency = _residency(factory, priority)
    return SliceDemand(slice_id, priority, replicas, cpus=profile["replica_cpus"],
                       memory_mb=profile["replica_memory_mb"], gpu_fraction=1 / a["server"]["replicas_per_gpu"],
                       gpu_memory_mb=profile["replica_gpu_memory_mb"], tenant_id=factory.tenant_id,
                       residency=residency)  # fmt: skip


def place_hour(a: dict[str, Any], specs: list[NodeSpec], factories: list[Factory], k: int,
               current: dict[int, list[int]], now: datetime) -> dict[int, list[int]]:  # fmt: skip
    """The hour's placement: bank slices first ask for all their factory's replicas (the cheapest rate,
    where lent nodes have room), then the reserved slices for the rest, placed together as one site."""
    asked = [_demand(a, f.bank_slice, f, Priority.BANK, f.hours[k][0])
             for f in factories if f.bank_slice is not None and f.hours[k][0]]  # fmt: skip
    banked = place(specs, asked, current, now=now).assignments
    demands = []
    for f in factories:
        on_bank = len(banked.get(f.bank_slice, [])) if f.bank_slice is not None else 0
        if on_bank:
            demands.append(_demand(a, f.bank_slice or 0, f, Priority.BANK, on_bank))
        if f.hours[k][0] > on_bank:
            demands.append(_demand(a, f.reserved_slice, f, Priority.RESERVED, f.hours[k][0] - on_bank))
    result = place(specs, demands, {**current, **banked}, now=now)
    return {slice_id: nodes for slice_id, nodes in result.assignments.items() if nodes}


def usage(factory: Factory, k: int, placed: dict[int, list[int]], hour: datetime) -> list[Row]:
    """The hour's capacity records of the factory's slices, one per slice and node: the floor second by
    second, bank replicas first (the replicas placed for the hour run only while the floor wants them)."""
    on_bank = placed.get(factory.bank_slice, []) if factory.bank_slice is not None else []
    on_reserved = placed.get(factory.reserved_slice, [])
    seconds: Counter[tuple[int, int]] = Counter()
    for length, floor in factory.hours[k][1]:
        banked = min(floor, len(on_bank))
        for node_id in on_bank[:banked]:
            seconds[factory.bank_slice or 0, node_id] += length
        for node_id in on_reserved[: min(floor - banked, len(on_reserved))]:
            seconds[factory.reserved_slice, node_id] += length
    return [
        {"key": pricing.usage_key(pricing.Source.AGENT, factory.apps[slice_id], f"node-{node_id}", hour),
         "source": metering.CAPACITY, "tenant_id": factory.tenant_id, "slice_id": slice_id, "node_id": node_id,
         "window_start": hour, "window_s": 3600, "replica_seconds": replica_s, "verdicts": {}}
        for (slice_id, node_id), replica_s in sorted(seconds.items())
    ]  # fmt: skip


def simulate(engine: Engine, a: dict[str, Any], factories: list[Factory], nodes: list[m.Node], start: datetime,
             days: int) -> Tally:  # fmt: skip
    """Every hour: plan, place, meter; at each midnight: rate the day and credit the contributors."""
    specs = [node_spec(n, start) for n in nodes]
    tally, current, rows = Tally(), dict[int, list[int]](), list[Row]()
    with Session(engine) as session:
        for k in range(days * 24):
            now = start + k * HOUR  # plant-local time, which the bench takes to be UTC
            current = place_hour(a, specs, factories, k, current, now)
            for f in factories:
                wanted = f.hours[k][0]
                placed = len(current.get(f.reserved_slice, [])) + len(current.get(f.bank_slice or -1, []))
                if wanted:
                    tally.planned_hours += 1
                    tally.met_hours += placed >= wanted
                    if placed < wanted:
                        tally.missed.append(f"{f.slug} at {now:%Y-%m-%d %H}:00: {placed} of {wanted}")
                rows += usage(f, k, current, now.replace(tzinfo=UTC))
            if (k + 1) % 24 == 0:
                metering.insert_once(session, rows)
                midnight = (now + HOUR).replace(tzinfo=UTC)
                billing.rate_pending(session, midnight)
                bank.credit_contributors(session, midnight)
                session.commit()
                rows = []
    return tally


# --- what the month cost, three ways ---------------------------------------------------------------

UNBALANCED = ("SELECT count(*) FROM (SELECT transaction_id FROM journalentry GROUP BY transaction_id, currency "
              "HAVING SUM(amount_minor) <> 0) off")  # fmt: skip
"""Journal transactions off balance (the billing bench's check, in SQL rather than by the code under test)."""


def _saving(paid: Money, alternative: Money) -> float | None:
    """The share of ``alternative`` that paying ``paid`` instead saves (None: the alternative costs nothing)."""
    return round(1 - paid.minor / alternative.minor, 4) if alternative.minor else None


def compare(a: dict[str, Any], factory: Factory, bill: Money, ran: dict[int, int], hours: int) -> dict[str, Any]:
    """One factory's month: (a) its bill, (b) a dedicated server sized for its peak, (c) GPU-hours for its peak.
    ``ran``: replica-seconds metered per slice."""
    gpus = math.ceil(factory.peak / a["server"]["replicas_per_gpu"])
    currency = bill.currency
    dedicated = rate(server_cost_per_hour(a["server"], gpus), Decimal(hours), currency)
    gpu_hours = rate(_d(a["gpu_hours"]["per_gpu_hour"]), Decimal(gpus * hours), currency)
    return {
        "slug": factory.slug, "peak_replicas": factory.peak, "gpus_for_peak": gpus,
        "planned_replica_hours": round(sum(f * s for _, pieces in factory.hours for s, f in pieces) / 3600, 1),
        "ran_replica_hours": {"reserved": round(ran.get(factory.reserved_slice, 0) / 3600, 1),
                              "bank": round(ran.get(factory.bank_slice or -1, 0) / 3600, 1)},
        "lineside": money(bill), "dedicated_server": money(dedicated), "gpu_hours": money(gpu_hours),
        "saving_vs_dedicated": _saving(bill, dedicated), "saving_vs_gpu_hours": _saving(bill, gpu_hours),
    }  # fmt: skip


def _scalar(session: Session, statement: Any) -> int:
    return int(session.exec(statement).one() or 0)


def _bank_use(session: Session, a: dict[str, Any], nodes: list[m.Node], start: datetime, days: int) -> dict[str, Any]:
    """Replica-hours bank slices ran on lent nodes, against the replica-hours the nodes offered in their windows."""
    lent = [n for n in nodes if n.contributed and n.id is not None]
    specs = [node_spec(n, start) for n in lent]
    hours = sum(1 for spec in specs for k in range(days * 24) if spec.lent(start + k * HOUR))
    offered = hours * slots_per_server(a["server"])
    used_s = _scalar(session, select(func.coalesce(func.sum(m.UsageRecord.replica_seconds), 0)).where(
        col(m.UsageRecord.node_id).in_([n.id for n in lent])))  # fmt: skip
    return {"used_replica_hours": round(used_s / 3600, 1), "offered_replica_hours": offered,
            "utilization": round(used_s / 3600 / offered, 4) if offered else None}  # fmt: skip


def _contributors(session: Session, a: dict[str, Any], end: datetime) -> dict[str, Any]:
    """Each contributor's credits earned (``bank.credits_earned``), and its page's hours offered and used
    (``bank.contributor``: an hour is used when any bank replica ran on the node in it)."""
    currency = a["month"]["currency"]
    found: dict[str, Any] = {}
    total = 0
    for lender in a["contributors"]:
        tenant = session.exec(select(m.Tenant).where(m.Tenant.slug == lender["slug"])).one()
        assert tenant.id is not None
        credits = Money(bank.credits_earned(session, tenant.id, currency), currency)
        page = bank.contributor(session, tenant.id, end - timedelta(seconds=1), currency)
        found[lender["slug"]] = {"credits": money(credits), "hours_offered": page["hours_offered"],
                                 "hours_used": page["hours_used"], "hour_utilization": page["utilization"]}  # fmt: skip
        total += credits.minor
    offered = sum(c["hours_offered"] for c in found.values())
    used = sum(c["hours_used"] for c in found.values())
    return {"total": money(Money(total, currency)), "hour_utilization": round(used / offered, 4) if offered else None,
            **found}  # fmt: skip


def results(engine: Engine, a: dict[str, Any], factories: list[Factory], nodes: list[m.Node], start: datetime,
            days: int, operator_servers: int, tally: Tally) -> dict[str, Any]:  # fmt: skip
    """The figures the issue asks for, read back from what the run stored (charges, usage, the ledger)."""
    currency, hours, server = a["month"]["currency"], days * 24, a["server"]
    end = (start + days * 24 * HOUR).replace(tzinfo=UTC)
    with Session(engine) as session:
        bills = dict(session.exec(select(m.Charge.tenant_id, func.sum(m.Charge.amount_minor))
                                  .group_by(col(m.Charge.tenant_id))).all())  # fmt: skip
        ran = dict(session.exec(select(m.UsageRecord.slice_id, func.sum(m.UsageRecord.replica_seconds))
                                .group_by(col(m.UsageRecord.slice_id))).all())  # fmt: skip
        rows = [compare(a, f, Money(int(bills.get(f.tenant_id, 0)), currency), ran, hours) for f in factories]
        revenue = ledger_store.balance(session, funds.platform_account(session, AccountKind.REVENUE, currency))
        charged = _scalar(session, select(func.coalesce(func.sum(m.Charge.amount_minor), 0)))
        bank_charged = _scalar(session, select(func.coalesce(func.sum(m.Charge.amount_minor), 0))
                               .where(m.Charge.measure == Priority.BANK.value))  # fmt: skip
        contributors = _contributors(session, a, end)
        bank_use = _bank_use(session, a, nodes, start, days)
        operator_ids = [n.id for n in nodes if n.owner_tenant_id is None]
        reserved_s = _scalar(session, select(func.coalesce(func.sum(m.UsageRecord.replica_seconds), 0))
                             .where(col(m.UsageRecord.node_id).in_(operator_ids)))  # fmt: skip
        unbalanced = session.execute(text(UNBALANCED)).scalar_one()
        records = _scalar(session, select(func.count()).select_from(m.UsageRecord))
        charges = _scalar(session, select(func.count()).select_from(m.Charge))
    cost = rate(server_cost_per_hour(server, server["gpus_per_server"]), Decimal(operator_servers * hours), currency)
    margin = revenue - cost
    seed = rows[0]
    savings = [r["saving_vs_dedicated"] for r in rows if r["saving_vs_dedicated"] is not None]
    gpu_savings = [r["saving_vs_gpu_hours"] for r in rows if r["saving_vs_gpu_hours"] is not None]
    slo = round(tally.met_hours / tally.planned_hours, 4) if tally.planned_hours else None
    price = prices(a)
    share = round(margin.minor / revenue.minor, 4) if revenue.minor else None
    utilization = round(reserved_s / (operator_servers * slots_per_server(server) * hours * 3600), 4)
    figures: dict[str, Any] = {
        "month": start.strftime("%Y-%m"), "days": days, "factories": len(factories),
        "prices_per_replica_hour": {k: f"{v} {currency}" for k, v in price.items()},
        "seed_plant": seed["slug"],
        "seed_plant_monthly": {k: seed[k] for k in ("lineside", "dedicated_server", "gpu_hours")},
        "seed_plant_peak_replicas": seed["peak_replicas"],
        "seed_plant_saving_vs_dedicated": seed["saving_vs_dedicated"],
        "seed_plant_saving_vs_gpu_hours": seed["saving_vs_gpu_hours"],
        "median_saving_vs_dedicated": round(statistics.median(savings), 4) if savings else None,
        "median_saving_vs_gpu_hours": round(statistics.median(gpu_savings), 4) if gpu_savings else None,
        "slo_met_share": slo, "planned_factory_hours": tally.planned_hours,
        "slo_missed_hours": tally.planned_hours - tally.met_hours, "slo_missed": tally.missed[:10],
        "bank_utilization_in_windows": bank_use["utilization"], "bank_replica_hours": bank_use,
        "operator_margin": {**money(margin), "share_of_revenue": share},
        "operator": {"servers": operator_servers, "cost": money(cost), "charged": money(Money(charged, currency)),
                     "of_which_bank": money(Money(bank_charged, currency)),
                     "revenue_after_credits": money(revenue), "utilization": utilization},
        "contributor_credits": contributors,
        "ledger_balanced": unbalanced == 0, "usage_records": records, "charges": charges,
        "per_factory": rows,
    }  # fmt: skip
    figures["targets"] = {
        "seed_plant_saving_vs_dedicated >= 0.30": (seed["saving_vs_dedicated"] or 0) >= 0.30,
        "slo_met_share == 1.0": slo == 1.0,
        "operator_margin >= 0": margin.minor >= 0,
        "bank_utilization_in_windows >= 0.70": (bank_use["utilization"] or 0) >= 0.70,
    }
    return figures


# --- the run ---------------------------------------------------------------------------------------


def measure(
    days: int | None = None, factories: int | None = None, assumptions: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One simulated month (or its first ``days``, for the first ``factories``: the seed plant always first),
    under ``assumptions`` as ``load`` reads them (default: the checked-in file)."""
    started = time.perf_counter()
    a = assumptions or load()
    days = days or a["month"]["days"]
    if not 1 <= days <= a["month"]["days"]:
        raise ValueError(f"days must be 1 to {a['month']['days']} (the month in the assumptions), not {days}")
    entries = a["factories"][: factories or len(a["factories"])]
    start = datetime.combine(a["month"]["start"], clock())
    plants = [Factory(e["slug"], e["name"], Residency(e["residency"]), demand(e, a, start, days)) for e in entries]
    peak = max(sum(f.hours[k][0] for f in plants) for k in range(days * 24))
    operator_servers = max(1, math.ceil(peak / slots_per_server(a["server"])))
    workdir = Path(tempfile.mkdtemp(prefix="lineside-bench-economics-"))
    url = f"sqlite:///{workdir / 'economics.db'}"
    engine = make_engine(url)
    quiet = [logging.getLogger(name) for name in ("control_plane", "alembic")]  # holds and credits per charge
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        settings = ControlPlaneSettings(data_dir=workdir, database_url=url, monitor_sites=False)
        nodes = setup(engine, settings, a, plants, operator_servers, start)
        tally = simulate(engine, a, plants, nodes, start, days)
        result = results(engine, a, plants, nodes, start, days, operator_servers, tally)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
    result["site_peak_replicas"] = peak
    result["run_s"] = round(time.perf_counter() - started, 1)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "database": "SQLite (temporary)"}
    return result
