"""Dashboard page load: the plant manager's page with 100 robots and a week of history, in headless Chromium.

The database is seeded the way a week of running leaves it: 4 lines of 25
robots, one telemetry row per line and minute (40,320 rows), 200 failed parts
with thumbnails per line, a week of scale events, order plans and a measured
profile. A load is timed from navigation until the page shows its data: every
line tile, the failed-part thumbnails decoded, the capacity chart and the scale
events drawn. Baseline in the same run: the same page for a tenant with one
line and no history (same assets, same server), so the difference is what the
history costs. Target: under 1 s.

    lineside bench dashboard --json
"""

from __future__ import annotations

import io
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from sqlmodel import Session, select

from contracts import wire
from control_plane import models as m
from control_plane.app import create_app
from control_plane.security import hash_password
from control_plane.server import BackgroundServer
from control_plane.settings import ControlPlaneSettings
from edge_node.broker import free_port

PASSWORD = "bench-password-1"
RENDERED = """() => {
  const tiles = document.querySelectorAll('#lines .tile').length;
  const images = [...document.querySelectorAll('#failed img')];
  return tiles >= Number(document.body.dataset.expectLines || 1)
    && images.every((img) => img.complete && img.naturalWidth > 0)
    && document.querySelector('#cap-chart path[data-series=floor]') !== null
    && document.querySelectorAll('#events tbody tr').length >= Number(document.body.dataset.expectEvents || 0);
}"""
PLAN = {
    "views_per_part": 4, "headroom": 0.25, "idle_floor": 1, "target_latency_ms": None,
    "shifts": [{"name": "early", "days": [0, 1, 2, 3, 4], "start": "06:00", "end": "14:00"},
               {"name": "late", "days": [0, 1, 2, 3, 4], "start": "14:00", "end": "22:00"}],
    "volumes": [{"effective_from": "2026-01-01", "parts_per_shift": 20_000}],
}  # fmt: skip


def _thumbnail(rng: random.Random) -> bytes:
    out = io.BytesIO()
    image = Image.new("RGB", (160, 160), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def _tenant(session: Session, site: m.Site, model: m.ModelVersion, slug: str, lines: int, robots_per_line: int,
            history: bool, now: datetime, rng: random.Random) -> dict[str, int]:  # fmt: skip
    """A tenant with a plant manager, lines, robots, a slice and (``history``) a week of what it did."""
    tenant = m.Tenant(slug=slug, name=slug.title())
    session.add(tenant)
    session.flush()
    assert tenant.id is not None
    assert site.id is not None
    assert model.id is not None
    session.add(m.User(email=f"pm@{slug}.example", role=m.Role.PLANT_MANAGER, tenant_id=tenant.id,
                     password_hash=hash_password(PASSWORD)))  # fmt: skip
    line_rows = [m.Line(tenant_id=tenant.id, site_id=site.id, slug=f"line-{k + 1}", name=f"Line {k + 1}")
                 for k in range(lines)]  # fmt: skip
    session.add_all(line_rows)
    session.flush()
    line_ids = [line.id for line in line_rows if line.id is not None]
    item = m.Slice(tenant_id=tenant.id, site_id=site.id, slug="inspect", line_ids=line_ids, model_version_id=model.id,
                 min_replicas=2, max_replicas=6, placement={"1": 2},
                 actual={"replicas": {"model": {"RUNNING": 2}}})  # fmt: skip
    session.add(item)
    session.flush()
    assert item.id is not None
    for line_id in line_ids:
        session.add(m.OrderPlan(tenant_id=tenant.id, line_id=line_id, plan=PLAN))
        for r in range(robots_per_line):
            session.add(m.Robot(tenant_id=tenant.id, line_id=line_id, slug=f"cam-{r:03d}", connected=True,
                              mqtt_username=f"r.{slug}.l{line_id}.cam-{r:03d}", last_frame_at=now))  # fmt: skip
    counts = {"tenant_id": tenant.id, "line_minutes": 0, "failed_parts": 0, "scale_events": 0}
    if not history:
        return counts
    start = now.replace(second=0, microsecond=0) - timedelta(days=7)
    for line_id in line_ids:
        rows = []
        for minute in range(7 * 24 * 60):
            frames = rng.randint(1200, 1800)
            histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
            for _ in range(20):
                histogram[rng.choices(range(8), weights=[1, 8, 20, 12, 5, 2, 1, 1])[0]] += frames // 20
            rows.append({"tenant_id": tenant.id, "line_id": line_id, "minute": start + timedelta(minutes=minute),
                         "source": "bench", "frames": frames, "fails": frames // 50, "errors": rng.randint(0, 2),
                         "latency_histogram": histogram})  # fmt: skip
        session.bulk_insert_mappings(m.LineMinute, rows)
        counts["line_minutes"] += len(rows)
        thumbs = [_thumbnail(rng) for _ in range(20)]
        session.add_all(m.FailedPart(tenant_id=tenant.id, line_id=line_id, robot=f"cam-{rng.randrange(25):03d}",
                                   frame_id=f"f{k}", at=now - timedelta(seconds=30 * k), defect_class="crack",
                                   score=0.9, thumbnail=thumbs[k % 20]) for k in range(200))  # fmt: skip
        counts["failed_parts"] += 200
    running = 2
    for hour in range(7 * 24):
        at = start + timedelta(hours=hour)
        for _ in range(2):  # reactive changes, a few an hour
            after = max(2, min(6, running + rng.choice([-1, 1])))
            session.add(m.ScaleEvent(tenant_id=tenant.id, slice_id=item.id, at=at, kind=m.ScaleKind.REACTIVE,
                                   min_before=2, min_after=2, max_before=6, max_after=6, running_before=running,
                                   running_after=after, reason="Serve's autoscaler"))  # fmt: skip
            running = after
            counts["scale_events"] += 1
    return counts


def seed(settings: ControlPlaneSettings, robots: int) -> dict[str, Any]:
    """The busy tenant (history) and the empty one (baseline); returns what was written."""
    app = create_app(settings)
    rng, now = random.Random(7), datetime.now(UTC)
    with Session(app.state.engine) as session:
        site = m.Site(name="north", broker_host="127.0.0.1", broker_port=1883)
        session.add(site)
        session.flush()
        assert site.id is not None
        model = session.exec(select(m.ModelVersion)).first()
        assert model is not None
        session.add(m.ModelProfile(site_id=site.id, model_sha256=model.sha256, hardware="cpu x1",
                                   frames_per_s_per_replica=300, cold_start_s=20))  # fmt: skip
        session.flush()
        busy = _tenant(session, site, model, "acme", 4, robots // 4, True, now, rng)
        _tenant(session, site, model, "empty", 1, 1, False, now, rng)
        session.commit()
    app.state.engine.dispose()
    return busy


def _time_loads(browser: Any, url: str, email: str, loads: int, expect_lines: int, expect_events: int) -> list[float]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    login = context.request.post(f"{url}/auth/login", data={"email": email, "password": PASSWORD})
    assert login.ok, login.text()
    times = []
    for _ in range(loads):
        page = context.new_page()
        started = time.perf_counter()
        page.goto(f"{url}/ui/plant", wait_until="commit")
        page.evaluate(f"() => {{ document.body.dataset.expectLines = {expect_lines};"
                      f" document.body.dataset.expectEvents = {expect_events}; }}")  # fmt: skip
        page.wait_for_function(RENDERED, timeout=30_000, polling="raf")
        times.append((time.perf_counter() - started) * 1000)
        page.close()
    context.close()
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(max(times), 1)}  # fmt: skip


def _api_ms(url: str, email: str, calls: int = 10) -> dict[str, float]:
    """Median time of each JSON call the page makes, as the plant manager."""
    with httpx.Client(base_url=url) as client:
        client.post("/auth/login", json={"email": email, "password": PASSWORD}).raise_for_status()
        lines = client.get("/dashboard/lines").json()
        slice_id = client.get("/slices").json()[0]["id"]
        paths = ["/dashboard/lines", f"/lines/{lines[0]['id']}/failed-parts?limit=8", f"/slices/{slice_id}/capacity",
                 f"/slices/{slice_id}/events", f"/lines/{lines[0]['id']}/order-plan", "/slices"]  # fmt: skip
        result = {}
        for path in paths:
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                client.get(path).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
            result[path.split("?")[0]] = round(statistics.median(samples), 1)
        return result


def chromium_path() -> str | None:
    """The Chromium binary to drive (Debian's, or ``LINESIDE_CHROMIUM``), or None when none is installed.

    Here, not in the tests, because the installed ``lineside bench dashboard`` cannot import ``tests``;
    the browser tests and ``docs.screenshots`` use it through ``tests.integration.browser``.
    """
    given = os.environ.get("LINESIDE_CHROMIUM")
    if given:
        return given
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


def measure(robots: int = 100, loads: int = 10, database_url: str | None = None,
            chromium: str | None = None) -> dict[str, Any]:  # fmt: skip
    from playwright.sync_api import sync_playwright

    executable = chromium or chromium_path()
    if executable is None:
        raise SystemExit("no Chromium found: run `make browser` or set LINESIDE_CHROMIUM")
    workdir = Path(tempfile.mkdtemp(prefix="lineside-bench-dashboard-"))
    settings = ControlPlaneSettings(data_dir=workdir, database_url=database_url, monitor_sites=False)
    started = time.perf_counter()
    written = seed(settings, robots)
    seed_s = time.perf_counter() - started
    server = BackgroundServer(create_app(settings), "127.0.0.1", free_port()).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            busy = _time_loads(browser, server.url, "pm@acme.example", loads, 4, 30)
            empty = _time_loads(browser, server.url, "pm@empty.example", loads, 1, 0)
            browser.close()
        api = _api_ms(server.url, "pm@acme.example")
    finally:
        server.stop()
    result = {
        "robots": robots, "lines": 4, **{k: v for k, v in written.items() if k != "tenant_id"},
        "database": "postgresql" if database_url else "sqlite", "seed_s": round(seed_s, 1),
        "page_load_week_of_history": _summary(busy), "baseline_page_load_no_history": _summary(empty),
        "history_cost_ms": round(statistics.median(busy) - statistics.median(empty), 1),
        "api_median_ms": api, "target_ms": 1000, "meets_target": max(busy) < 1000,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }  # fmt: skip
    return result
