"""Fixtures for control-plane tests: a real database (SQLite file and PostgreSQL), a real
Mosquitto with the dynamic-security plugin, and a populated app with two tenants.

PostgreSQL: ``LINESIDE_TEST_POSTGRES`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
is the server; each test session creates and drops its own database there. Without a
server the PostgreSQL cases skip, unless ``LINESIDE_REQUIRE_POSTGRES=1`` (CI) makes that an error.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from contracts.slice_spec import SliceSpec
from control_plane.app import create_app
from control_plane.settings import ControlPlaneSettings
from edge_node.broker import MosquittoBroker, free_port

BOOT = "ls_test-operator-token"
PG_SERVER = os.environ.get("LINESIDE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _admin_conninfo() -> str:
    url = make_url(PG_SERVER)
    return f"host={url.host} port={url.port or 5432} user={url.username or 'postgres'} dbname={url.database}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    name = f"lineside_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("LINESIDE_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL at {PG_SERVER}: {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(PG_SERVER).set(database=name).render_as_string(hide_password=False)
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each control-plane test runs on SQLite and on PostgreSQL (a clean schema per test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cp.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    _reset_schema(url)
    yield url


def _reset_schema(url: str) -> None:
    parsed = make_url(url)
    with psycopg.connect(
        f"host={parsed.host} port={parsed.port or 5432} user={parsed.username or 'postgres'} dbname={parsed.database}",
        autocommit=True,
    ) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@dataclass
class Tenancy:
    """One factory's users and objects, as created through the API."""

    slug: str
    tenant_id: int
    pm: dict[str, str]
    it: dict[str, str]
    line_id: int
    ids: dict[str, int] = field(default_factory=dict)


@dataclass
class ControlPlane:
    client: TestClient
    settings: ControlPlaneSettings
    broker: MosquittoBroker
    site_id: int
    op: dict[str, str]
    a: Tenancy
    b: Tenancy


@dataclass
class RecordedServe:
    """Ray left out of an agent under test: what it applied, and Serve's applications as it would see them."""

    applied: list[SliceSpec] = field(default_factory=list)
    present: set[str] = field(default_factory=set)

    def apply(self, spec: SliceSpec) -> None:
        self.applied.append(spec)
        self.present.add(spec.name)

    def agent_options(self) -> dict[str, Any]:
        """``Agent`` keyword arguments: apply records, every application runs, no Ray resources."""
        return {"apply": self.apply, "applications": lambda: set(self.present), "ray_resources": list,
                "status": lambda _name: {"status": "RUNNING", "deployments": {}}}  # fmt: skip


def coming_monday(hour: int) -> datetime:
    """Next Monday (1 to 7 days ahead, UTC, naive) at ``hour``: a control plane clock for tests that need a weekday.

    Never before the day the fixture seeded the site's prices (today): a fixed date in the past found no price
    in force once the real date passed it (CI on 1 December). Strictly after today, so a run that crosses
    midnight still has its prices."""
    today = datetime.now(UTC).date()
    return datetime.combine(today + timedelta(days=7 - today.weekday()), time(hour))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _tenancy(c: TestClient, op: dict[str, str], slug: str, site_id: int) -> Tenancy:
    tenant = ok(c.post("/tenants", json={"slug": slug, "name": slug.title()}, headers=op), 201)
    users = {}
    for role in ("plant_manager", "factory_it"):
        body = {"email": f"{role}@{slug}.example", "role": role, "tenant_id": tenant["id"]}
        users[role] = bearer(ok(c.post("/users", json=body, headers=op), 201)["token"])
    line = ok(c.post("/lines", json={"slug": "line-1", "site_id": site_id}, headers=users["factory_it"]), 201)
    t = Tenancy(slug, tenant["id"], users["plant_manager"], users["factory_it"], line["id"])
    robot = ok(c.post("/robots", json={"slug": "cam-1", "line_id": line["id"]}, headers=t.it), 201)
    public_model = next(m for m in ok(c.get("/models", headers=t.pm)) if m["tenant_id"] is None)
    body = {"slug": "inspect", "line_ids": [line["id"]], "model_version_id": public_model["id"]}
    slice_ = ok(c.post("/slices", json=body, headers=t.pm), 201)
    t.ids = {"tenant": tenant["id"], "line": line["id"], "robot": robot["id"], "slice": slice_["id"]}
    t.ids["robot_password"] = robot["mqtt_password"]
    return t


@pytest.fixture
def cp_overrides() -> dict[str, object]:
    """Settings a test module wants different in ``control_plane`` (override this fixture there)."""
    return {}


@pytest.fixture
def control_plane(database_url: str, tmp_path: Path, cp_overrides: dict[str, object]) -> Iterator[ControlPlane]:
    """The app on ``database_url`` with a dynsec Mosquitto as its one site and tenants ``acme`` and ``globex``."""
    # Nodes stay online between a test's heartbeats, however loaded the machine: a 1 s default marked test nodes
    # offline mid-test in CI three times (test_rollout_ray, test_bank_notice, test_ownership). A test about
    # silent nodes sets its own timeout through ``cp_overrides``.
    base: dict[str, object] = {"heartbeat_timeout_s": 3600.0, **cp_overrides}
    settings = ControlPlaneSettings(data_dir=tmp_path / "data", database_url=database_url, bootstrap_token=BOOT,
                                    **base)  # type: ignore[arg-type]  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as c:
        op = bearer(BOOT)
        port = free_port()
        site = ok(c.post("/sites", json={"name": "north", "broker_port": port}, headers=op), 201)
        admin = ok(c.get(f"/sites/{site['id']}/broker-admin", headers=op))
        with MosquittoBroker(tmp_path / "cp-broker", port, admin_password=admin["password"]) as broker:
            a = _tenancy(c, op, "acme", site["id"])
            b = _tenancy(c, op, "globex", site["id"])
            yield ControlPlane(c, settings, broker, site["id"], op, a, b)
    app.state.engine.dispose()


def monitor_away(cp: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's control plane monitor leaves the site broker and stays away (until ``monkeypatch.undo``
    and ``refresh``): its persistent session keeps the site's telemetry meanwhile."""
    from tests.waiting import wait_until

    monitors: Any = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the monitor to subscribe")
    monkeypatch.setattr(monitors, "refresh", lambda: None)
    client = monitors.clients.pop(cp.site_id)
    monitors.subscribed.discard(cp.site_id)
    client.disconnect()
    client.loop_stop()
