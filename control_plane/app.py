"""The control plane's FastAPI application: ``create_app(settings)``."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from control_plane import (
    billing,
    billing_cycle,
    capacity,
    db,
    errors,
    metering,
    placement,
    registry,
    sites,
    ui,
    web_headers,
)
from control_plane.api.routes import (
    agent,
    alerts,
    auth,
    catalogue,
    dashboard,
    failed_parts,
    health,
    leases,
    lines,
    models,
    nodes,
    robots,
    rollouts,
    slices,
    tenants,
    users,
    voucher_programmes,
    vouchers,
)
from control_plane.api.routes import bank as bank_routes
from control_plane.api.routes import billing as billing_routes
from control_plane.api.routes import invoices as invoice_routes
from control_plane.api.routes import sites as site_routes
from control_plane.login_guard import LoginGuard
from control_plane.models import ApiToken, ModelVersion, Role, User
from control_plane.monitor import SiteMonitors
from control_plane.security import new_token, token_hash, write_secret_file
from control_plane.settings import ControlPlaneSettings
from models import BUNDLED_MANIFEST

log = logging.getLogger(__name__)
BILLING_FAILURES = [0]

BOOTSTRAP_EMAIL = "admin@lineside.local"


class _LoopCollector:
    """The background loops' running totals (site monitors, planning) as Prometheus metrics."""

    def __init__(self, monitors: SiteMonitors) -> None:
        self.monitors = monitors

    def collect(self) -> Iterator[Metric]:
        totals = self.monitors.totals
        family = CounterMetricFamily("lineside_telemetry_messages", "Site broker messages stored or refused",
                                     labels=["kind"])  # fmt: skip
        for kind in ("telemetry", "status", "rejected", "failed_parts"):
            family.add_metric([kind], getattr(totals, kind))
        family.add_metric(["dropped"], self.monitors.dropped)
        yield family
        yield GaugeMetricFamily("lineside_monitored_sites", "Site brokers the control plane is subscribed to",
                                value=len(self.monitors.subscribed))  # fmt: skip
        yield CounterMetricFamily("lineside_planning_failures", "Slices whose order-plan pass raised (logged)",
                                  value=capacity.PLANNING_FAILURES[0])  # fmt: skip
        yield CounterMetricFamily("lineside_metering_failures", "Usage records that could not be stored (logged)",
                                  value=metering.FAILURES[0])  # fmt: skip
        yield CounterMetricFamily("lineside_billing_failures", "Billing passes that raised (logged; retried)",
                                  value=BILLING_FAILURES[0])  # fmt: skip


class _MoneyCollector:
    """Budget alerts and held tenants as Prometheus metrics, read from the database at each scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            alerts, held = billing.alert_counts(session)
        family = CounterMetricFamily("lineside_budget_alerts", "Monthly budget alerts raised, by threshold (%)",
                                     labels=["threshold_pct"])  # fmt: skip
        for pct in billing.BUDGET_THRESHOLDS:
            family.add_metric([str(pct)], alerts.get(pct, 0))
        yield family
        yield GaugeMetricFamily("lineside_tenants_held", "Tenants out of funds: burst and bank slices held at floor",
                                value=held)  # fmt: skip


class Metrics:
    """The control plane's own Prometheus registry (one per app, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lineside_http_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram("lineside_http_request_seconds", "HTTP request duration", ["route"],
                                 registry=self.registry)  # fmt: skip
        self.nodes_marked_offline = Counter("lineside_nodes_marked_offline", "Nodes that missed heartbeats",
                                            registry=self.registry)  # fmt: skip


def bootstrap(engine: Engine, settings: ControlPlaneSettings) -> str | None:
    """First start: an operator with an API token (returned, shown once) and the bundled public model."""
    with Session(engine) as session:
        token = None
        if session.exec(select(User).where(User.role == Role.OPERATOR)).first() is None:
            given = settings.bootstrap_token
            token = given.get_secret_value() if given else new_token("api")
            user = User(email=BOOTSTRAP_EMAIL, role=Role.OPERATOR)
            session.add(user)
            session.flush()
            assert user.id is not None
            session.add(ApiToken(user_id=user.id, name="bootstrap", token_hash=token_hash(token), prefix=token[:8]))
        if session.exec(select(ModelVersion).where(col(ModelVersion.tenant_id).is_(None))).first() is None:
            _register_bundled(session, settings, BUNDLED_MANIFEST)
        session.commit()
        return token


BOOTSTRAP_TOKEN_FILE = "bootstrap-token"


def _announce_bootstrap(settings: ControlPlaneSettings, token: str) -> None:
    """Say how to get the first operator's token without writing it to the log (logs are copied around)."""
    if settings.bootstrap_token is not None:
        log.warning("first start: operator %s created with the API token LINESIDE_BOOTSTRAP_TOKEN gives (%s...)",
                    BOOTSTRAP_EMAIL, token[:8])  # fmt: skip
        return
    path = settings.data_dir / BOOTSTRAP_TOKEN_FILE
    write_secret_file(path, token)
    log.warning("first start: operator %s created with API token %s... saved in %s (readable by this user only); "
                "read it, then delete the file", BOOTSTRAP_EMAIL, token[:8], path)  # fmt: skip


def _register_bundled(session: Session, settings: ControlPlaneSettings, manifest_path: Path) -> None:
    manifest = registry.parse_manifest(manifest_path.read_text())
    path = manifest_path.parent / manifest.file
    validated = registry.validate_file(path, manifest, limits=registry.CheckLimits.of(settings), max_batch_size=64)
    registry.store(path, validated.sha256, settings.model_store, move=False)
    session.add(ModelVersion(
        tenant_id=None, name=manifest.name, version=manifest.version, sha256=validated.sha256,
        size_bytes=validated.size_bytes, fixed_batch=validated.fixed_batch, manifest=registry.manifest_json(validated),
    ))  # fmt: skip
    log.info("registered the bundled model %s %s as a public model", manifest.name, manifest.version)


def _apply_plans(engine: Engine, settings: ControlPlaneSettings, clock: Callable[[], datetime],
                 stop: threading.Event) -> None:  # fmt: skip
    while not stop.wait(settings.planner_period_s):
        try:
            with Session(engine) as session:
                capacity.apply_plans(session, clock())
                drained = placement.place_all(session, clock())  # windows open and close, notices end
                sites.rotate_after_drains(session, settings, drained)
        except Exception:  # keep planning; the next pass retries
            log.exception("applying order plans failed")


def _watch_heartbeats(engine: Engine, settings: ControlPlaneSettings, metrics: Metrics,
                      clock: Callable[[], datetime], stop: threading.Event) -> None:  # fmt: skip
    period = max(0.5, min(5.0, settings.heartbeat_timeout_s / 3))
    while not stop.wait(period):
        try:
            with Session(engine) as session:
                marked = sites.mark_silent_nodes_offline(session, settings.heartbeat_timeout_s)
                if marked:
                    sites.rotate_after_drains(session, settings, placement.place_all(session, clock()))
            metrics.nodes_marked_offline.inc(len(marked))
        except Exception:  # keep watching; the next pass retries
            log.exception("heartbeat watch failed")


def _bill(engine: Engine, settings: ControlPlaneSettings, clock: Callable[[], datetime],
          stop: threading.Event) -> None:  # fmt: skip
    """Rate new usage, expire vouchers and close last month's invoices, every ``billing_period_s``."""
    while not stop.wait(settings.billing_period_s):
        try:
            with Session(engine) as session:
                billing_cycle.run(session, clock().astimezone(UTC))
        except Exception:  # keep billing; what was not rated is rated next time, once
            BILLING_FAILURES[0] += 1
            log.exception("billing pass failed")


def create_app(settings: ControlPlaneSettings) -> FastAPI:
    """The app with its database migrated and bootstrapped; background loops run while it is served."""
    # One line, so an operator sees whether broker passwords hang on a configured or a generated key.
    log.log(logging.WARNING if settings.secret_key_source.startswith("generated") else logging.INFO,
            "secret key: %s", settings.secret_key_source)  # fmt: skip
    db.private_dir(settings.data_dir)  # the database, model store and uploads: 0700 whatever the umask
    engine = db.make_engine(settings.url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                            pool_timeout_s=settings.db_pool_timeout_s)  # fmt: skip
    db.migrate(engine)
    token = bootstrap(engine, settings)
    if token:
        _announce_bootstrap(settings, token)
    metrics = Metrics()
    stop = threading.Event()
    monitors = SiteMonitors(engine, settings)
    metrics.registry.register(_LoopCollector(monitors))
    metrics.registry.register(_MoneyCollector(engine))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        clock = lambda: app.state.clock()  # noqa: E731  (tests swap app.state.clock)
        for loop, args in ((_watch_heartbeats, (engine, settings, metrics, clock, stop)),
                           (_apply_plans, (engine, settings, clock, stop)),
                           (_bill, (engine, settings, clock, stop))):  # fmt: skip
            threading.Thread(target=loop, args=args, daemon=True).start()
        if settings.monitor_sites:
            threading.Thread(target=monitors.run, args=(stop,), name="site-monitors", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(
        title="Lineside control plane",
        version="0.1.0",
        lifespan=lifespan,
        description="Tenants, robots with broker credentials, models and slices of edge GPU capacity.",
        docs_url=None,  # served by ui.docs_router from local files: no CDN, no inline script
        redoc_url=None,
    )
    app.state.settings, app.state.engine, app.state.metrics = settings, engine, metrics
    app.state.bootstrap_token, app.state.monitors = token, monitors
    app.state.login_guard = LoginGuard(
        settings.login_attempts_per_minute, settings.login_max_failures, settings.login_lockout_s
    )
    app.state.clock = datetime.now  # plant-local wall clock; shift times are local
    errors.install(app)
    web_headers.install(app, settings)
    for module in (health, auth, tenants, users, site_routes, nodes, alerts, lines, robots, models, slices, rollouts,
                   catalogue, leases, billing_routes, voucher_programmes, vouchers, invoice_routes, bank_routes,
                   dashboard, failed_parts, agent, ui):  # fmt: skip
        app.include_router(module.router)
    app.mount("/ui/static", ui.static, name="static")
    app.include_router(ui.docs_router)
    app.mount(ui.SWAGGER_URL, ui.swagger_static, name="swagger")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    return app
