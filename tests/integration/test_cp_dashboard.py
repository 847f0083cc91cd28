"""The dashboard's data: logins with session cookies, telemetry from a real broker, tenant isolation.

Telemetry is published with the slice ingress's own broker credential, as a
running slice does, onto a real Mosquitto with the dynamic-security plugin;
the control plane's site monitor must pick it up and the dashboard routes
must show it to the line's tenant only.
"""

from __future__ import annotations

import base64
import io
import time
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image
from sqlmodel import Session, select

from contracts import wire
from control_plane import broker_sync
from control_plane.models import ApiToken
from control_plane.security import derived_secret
from tests.integration.cp_fixtures import ControlPlane, Tenancy, ok
from tests.integration.test_cp_broker import Probe
from tests.waiting import wait_until

PASSWORD = "correct horse battery"


def _login(cp: ControlPlane, who: dict[str, str], email: str) -> None:
    ok(cp.client.put("/auth/password", json={"password": PASSWORD}, headers=who), 204)
    ok(cp.client.post("/auth/login", json={"email": email, "password": PASSWORD}))


def test_login_gives_a_session_cookie_that_acts_as_the_user(control_plane: ControlPlane) -> None:
    cp, c = control_plane, control_plane.client
    email = "plant_manager@acme.example"
    ok(c.put("/auth/password", json={"password": PASSWORD}, headers=cp.a.pm), 204)
    wrong = c.post("/auth/login", json={"email": email, "password": "not the password"})
    assert wrong.status_code == 401 and "wrong e-mail or password" in wrong.json()["detail"]
    assert "lineside_session" not in c.cookies
    me = ok(c.post("/auth/login", json={"email": email.upper(), "password": PASSWORD}))
    assert me["role"] == "plant_manager"
    assert ok(c.get("/users/me"))["email"] == email  # the cookie alone
    assert [line["slug"] for line in ok(c.get("/lines"))] == ["line-1"]
    scale = {"min_replicas": 1, "max_replicas": 2}
    refused = c.post(f"/slices/{cp.a.ids['slice']}/scale", json=scale)
    assert refused.status_code == 403 and "X-Lineside-Request" in refused.json()["detail"]
    ok(c.post(f"/slices/{cp.a.ids['slice']}/scale", json=scale, headers={"X-Lineside-Request": "1"}))
    ok(c.post("/auth/logout", headers={"X-Lineside-Request": "1"}), 204)
    assert c.get("/users/me").status_code == 401


def test_expired_session_is_refused_with_a_reason(control_plane: ControlPlane) -> None:
    cp = control_plane
    _login(cp, cp.a.it, "factory_it@acme.example")
    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        row = session.exec(select(ApiToken).where(ApiToken.name == "dashboard")).one()
        assert row.expires_at is not None
        row.expires_at = row.expires_at - timedelta(days=2)
        session.add(row)
        session.commit()
    refused = cp.client.get("/users/me")
    assert refused.status_code == 401 and "expired" in refused.json()["detail"]


def test_pages_need_a_login_and_the_right_role(control_plane: ControlPlane) -> None:
    cp, c = control_plane, control_plane.client
    anonymous = c.get("/ui/plant", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ui/login?next=/ui/plant"
    _login(cp, cp.a.it, "factory_it@acme.example")
    assert c.get("/ui/", follow_redirects=False).headers["location"] == "/ui/it"
    page = c.get("/ui/it")
    assert page.status_code == 200 and "Connect a robot" in page.text
    assert c.get("/ui/plant").status_code == 403
    assert c.get("/ui/operator").status_code == 403
    assert c.get("/ui/static/lineside.js").status_code == 200


def test_assets_are_all_served_by_the_control_plane(control_plane: ControlPlane) -> None:
    """Air-gapped plants: no page or asset refers to another host."""
    c = control_plane.client
    from control_plane.ui import HERE

    for path in sorted((HERE / "pages").glob("*.html")) + sorted((HERE / "static").glob("*")):
        text = path.read_text()
        for scheme in ("http://", "https://", "//fonts.", "//cdn"):
            hits = [line for line in text.splitlines() if scheme in line and "www.w3.org/2000/svg" not in line]
            assert not hits, f"{path.name} refers to an outside address: {hits[:1]}"
    assert c.get("/ui/login").status_code == 200


def _ingress(cp: ControlPlane, t: Tenancy) -> tuple[str, str]:
    """The slice ingress's results-out login (rank 0), as the control plane derives it."""
    base = derived_secret(cp.settings.key, f"ingress:{t.ids['slice']}:1")
    return broker_sync.ingress_connection(f"s.t{t.tenant_id}-inspect", base, 0, out=True)


def _jpeg(color: tuple[int, int, int]) -> str:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(out, format="JPEG")
    return base64.b64encode(out.getvalue()).decode()


def _report(frames: int, fails: int, *, latency_ms: float, robot: str = "cam-1") -> bytes:
    now = time.time()
    histogram = [0] * (len(wire.LATENCY_BUCKETS_MS) + 1)
    histogram[wire.latency_bucket(latency_ms)] = frames
    parts = [wire.FailedPart(robot=robot, frame_id=f"f{k}", at=now, defect_class="crack", score=0.9,
                             thumbnail_jpeg_b64=_jpeg((200, 30, 30))) for k in range(fails)]  # fmt: skip
    report = wire.Telemetry(replica="test", start=now - 2, end=now, frames=frames, fails=fails, errors=1,
                            latency_ms_histogram=histogram,
                            robots={robot: wire.RobotActivity(frames=frames, last_frame_at=now)},
                            failed_parts=parts)  # fmt: skip
    return report.model_dump_json().encode()


def _publish(cp: ControlPlane, t: Tenancy, topic: str, payload: bytes) -> Probe:
    username, password = _ingress(cp, t)
    probe = Probe(cp, username, password, username)
    assert probe.connect_reason == "Success"
    probe.client.publish(topic, payload, qos=1).wait_for_publish(5)
    return probe


@pytest.fixture
def acme_line(control_plane: ControlPlane) -> dict[str, Any]:
    """acme's line after its slice reported 40 verdicts (4 fails) at ~40 ms and its robot said online."""
    cp, a = control_plane, control_plane.a
    monitors = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the control plane to subscribe to the site's telemetry")
    robot = ok(cp.client.post(f"/robots/{a.ids['robot']}/rotate", headers=a.it))
    status = Probe(cp, robot["mqtt_username"], robot["mqtt_password"], robot["client_id"])
    status.client.publish(robot["topics"]["status"], b"online", qos=1, retain=True).wait_for_publish(5)
    status.close()
    _publish(cp, a, wire.telemetry_topic("acme", "line-1", "t1-inspect"), _report(40, 4, latency_ms=40)).close()

    def arrived() -> dict[str, Any] | None:
        tiles = ok(cp.client.get("/dashboard/lines", headers=a.pm))
        return tiles[0] if tiles[0]["frames_5min"] == 40 and tiles[0]["robots_online"] == 1 else None

    tile = wait_until(arrived, 20, "the monitor to store acme's telemetry")
    assert tile is not None
    return tile


def test_telemetry_reaches_the_line_tiles(control_plane: ControlPlane, acme_line: dict[str, Any]) -> None:
    cp, a = control_plane, control_plane.a
    assert acme_line["defect_rate"] == 0.1
    assert acme_line["p50_ms"] == 50 and acme_line["p99_ms"] == 50  # the 30-50 ms bucket's upper bound
    assert acme_line["within_budget"] is True and acme_line["errors_5min"] == 1
    assert acme_line["frames_per_s"] > 0
    parts = ok(cp.client.get(f"/lines/{a.line_id}/failed-parts", headers=a.pm))
    assert len(parts) == 4 and {p["defect_class"] for p in parts} == {"crack"}
    thumb = cp.client.get(f"/failed-parts/{parts[0]['id']}/thumbnail", headers=a.pm)
    assert thumb.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.content)).size == (32, 32)
    robot = ok(cp.client.get(f"/robots/{a.ids['robot']}", headers=a.it))
    assert robot["connected"] is True and robot["last_frame_at"] is not None
    series = ok(cp.client.get(f"/lines/{a.line_id}/series?hours=1", headers=a.pm))
    assert sum(point["frames_per_s"] for point in series) > 0
    metrics = cp.client.get("/metrics").text
    assert 'lineside_telemetry_messages_total{kind="telemetry"} 1.0' in metrics
    assert "lineside_monitored_sites 1.0" in metrics


def test_robots_cannot_read_telemetry(control_plane: ControlPlane) -> None:
    cp, a = control_plane, control_plane.a
    robot = ok(cp.client.post(f"/robots/{a.ids['robot']}/rotate", headers=a.it))
    probe = Probe(cp, robot["mqtt_username"], robot["mqtt_password"], robot["client_id"])
    try:
        assert probe.subscribe(f"{wire.TELEMETRY_ROOT}/#") == ["Not authorized"]
        assert probe.subscribe(wire.telemetry_topic("acme", "line-1", "t1-inspect")) == ["Not authorized"]
    finally:
        probe.close()


def test_another_tenant_sees_none_of_it(control_plane: ControlPlane, acme_line: dict[str, Any]) -> None:
    cp, a, b = control_plane, control_plane.a, control_plane.b
    part = ok(cp.client.get(f"/lines/{a.line_id}/failed-parts", headers=a.pm))[0]
    globex_tiles = ok(cp.client.get("/dashboard/lines", headers=b.pm))
    assert [t["id"] for t in globex_tiles] == [b.line_id] and globex_tiles[0]["frames_5min"] == 0
    for path in (f"/lines/{a.line_id}/series", f"/lines/{a.line_id}/failed-parts",
                 f"/failed-parts/{part['id']}/thumbnail", f"/slices/{a.ids['slice']}/capacity"):  # fmt: skip
        assert cp.client.get(path, headers=b.pm).status_code == 404, path
    assert cp.client.get("/dashboard/sites", headers=b.pm).status_code == 403
    preview = cp.client.post(f"/lines/{a.line_id}/order-plan/preview", json=_plan(100), headers=b.pm)
    assert preview.status_code == 404


def test_a_slice_cannot_write_another_tenants_telemetry(control_plane: ControlPlane, acme_line: dict[str, Any]) -> None:
    cp, a, b = control_plane, control_plane.a, control_plane.b
    forger = _publish(cp, b, wire.telemetry_topic("acme", "line-1", "t1-inspect"), _report(1000, 0, latency_ms=3))
    assert forger.disconnected.wait(5), "the broker let globex's slice publish on acme's telemetry topic"
    forger.client.loop_stop()
    # globex's own telemetry still arrives, and acme's numbers are unchanged.
    _publish(cp, b, wire.telemetry_topic("globex", "line-1", f"t{b.tenant_id}-inspect"), _report(7, 0, latency_ms=3))
    globex_frames = lambda: ok(cp.client.get("/dashboard/lines", headers=b.pm))[0]["frames_5min"]  # noqa: E731
    wait_until(lambda: globex_frames() == 7, 20, "globex's telemetry")
    assert ok(cp.client.get("/dashboard/lines", headers=a.pm))[0]["frames_5min"] == 40


def _plan(parts: int) -> dict[str, Any]:
    return {
        "views_per_part": 4, "headroom": 0.25, "idle_floor": 0,
        "shifts": [{"name": "day", "days": [0, 1, 2, 3, 4, 5, 6], "start": "06:00", "end": "14:00"}],
        "volumes": [{"effective_from": "2026-01-01", "parts_per_shift": parts}],
    }  # fmt: skip


def test_order_plan_preview_shows_floors_and_cost_and_saves_nothing(control_plane: ControlPlane) -> None:
    cp, a = control_plane, control_plane.a
    body = {"model_sha256": "0" * 64, "hardware": "cpu x1", "frames_per_s_per_replica": 10.0, "cold_start_s": 30}
    _report_profile(cp, a, body)
    preview = ok(cp.client.post(f"/lines/{a.line_id}/order-plan/preview", json=_plan(144_000), headers=a.pm))
    entry = preview["slices"][0]
    windows = entry["lines"]["line-1"]
    # 144,000 parts x 4 views / 8 h = 20 frames/s; x 1.25 / 10 per replica = 3 wanted; the lease has 1.
    assert {w["wanted_replicas"] for w in windows} == {3} and {w["floor"] for w in windows} == {1}
    assert entry["cost_7_days"]["shortfall_replica_hours"] > 0 and entry["cost_7_days"]["replica_hours"] > 0
    shortfall = entry["cost_7_days"]["shortfall_cost"]
    assert shortfall.endswith(" EUR") and shortfall != "0.00 EUR"
    assert max(p["demand"] for p in entry["capacity"]["points"]) == 3
    assert "more than the lease allows" in entry["capacity"]["summary"]
    assert cp.client.get(f"/lines/{a.line_id}/order-plan", headers=a.pm).status_code == 404
    ok(cp.client.put(f"/lines/{a.line_id}/order-plan", json=_plan(144_000), headers=a.pm))
    chart = ok(cp.client.get(f"/slices/{a.ids['slice']}/capacity", headers=a.pm))
    future = [p for p in chart["points"] if p["actual"] is None]
    assert {p["lease"] for p in future} == {1} and max(p["floor"] for p in future) == 1
    assert max(p["demand"] for p in future) == 3


def _report_profile(cp: ControlPlane, t: Tenancy, body: dict[str, Any]) -> None:
    """A measured profile for the slice's model, as an agent reports it."""
    from control_plane.models import ModelProfile, ModelVersion, Slice

    with Session(cp.client.app.state.engine) as session:  # type: ignore[attr-defined]
        item = session.get(Slice, t.ids["slice"])
        assert item is not None
        model = session.get(ModelVersion, item.model_version_id)
        assert model is not None
        session.add(ModelProfile(**{**body, "site_id": item.site_id, "model_sha256": model.sha256}))
        session.commit()


def test_a_line_slower_than_the_histogram_shows_over_budget_not_a_blank(control_plane: ControlPlane) -> None:
    """Answers slower than the last latency bucket (5 s) once made p99 null and 'within budget' unknown: a line
    stalled for seconds showed a dash and no 'over'."""
    cp, a = control_plane, control_plane.a
    monitors = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the control plane to subscribe to the site's telemetry")
    _publish(cp, a, wire.telemetry_topic("acme", "line-1", "t1-inspect"), _report(30, 0, latency_ms=15_000)).close()
    tile = wait_until(
        lambda: next((t for t in ok(cp.client.get("/dashboard/lines", headers=a.pm)) if t["frames_5min"] == 30), None),
        20, "the monitor to store the slow window",
    )  # fmt: skip
    assert tile is not None
    assert tile["within_budget"] is False
    assert tile["p99_ms"] == wire.LATENCY_BUCKETS_MS[-1] and tile["p99_beyond_ms"] is True


def test_a_failed_parts_location_reaches_the_plant_page_list(control_plane: ControlPlane) -> None:
    cp, a = control_plane, control_plane.a
    monitors = cp.client.app.state.monitors  # type: ignore[attr-defined]
    wait_until(lambda: cp.site_id in monitors.subscribed, 20, "the control plane to subscribe to the site's telemetry")
    now = time.time()
    part = wire.FailedPart(robot="cam-1", frame_id="f-located", at=now, defect_class="anomaly", score=0.8,
                           location=wire.Location(x=0.25, y=0.75, box=(0.2, 0.7, 0.3, 0.8)))  # fmt: skip
    report = wire.Telemetry(replica="test", start=now - 2, end=now, frames=1, fails=1, errors=0,
                            latency_ms_histogram=[1] + [0] * len(wire.LATENCY_BUCKETS_MS),
                            robots={"cam-1": wire.RobotActivity(frames=1, last_frame_at=now)},
                            failed_parts=[part])  # fmt: skip
    _publish(cp, a, wire.telemetry_topic("acme", "line-1", "t1-inspect"), report.model_dump_json().encode()).close()
    parts = wait_until(lambda: ok(cp.client.get(f"/lines/{a.line_id}/failed-parts", headers=a.pm)) or None, 20,
                       "the monitor to store the failed part")  # fmt: skip
    assert parts is not None
    assert parts[0]["location"] == {"x": 0.25, "y": 0.75, "box": [0.2, 0.7, 0.3, 0.8]}
