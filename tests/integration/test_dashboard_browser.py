"""The dashboard in a real headless Chromium against a running ``lineside demo`` (live slice, robots).

Each role logs in and works its page: live numbers that change, a robot
created and connected with the credentials the page shows, an order plan that
changes the floor chart, a node drained, and a user of another tenant who sees
none of it. The tests run in file order against one demo.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts import wire
from models import synth
from robots.sdk import RobotClient
from tests.integration.browser import RunningDemo, chromium_path, login
from tests.waiting import wait_until

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = chromium_path()
if CHROMIUM is None and os.environ.get("LINESIDE_REQUIRE_BROWSER") == "1":
    raise RuntimeError("LINESIDE_REQUIRE_BROWSER=1 but no Chromium is installed (make browser)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (make browser installs Debian's)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    running = RunningDemo.start(tmp_path_factory.mktemp("demo"))
    yield running
    code, output = running.stop()
    assert code == 0, f"the demo lost frames or failed:\n{output[-3000:]}"
    assert "ok: every one of" in output
    assert running.leftover_brokers() == [], "the demo left its broker running"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(30_000)
    yield page
    context.close()
    assert errors == [], f"script errors in the page: {errors}"


def _as(page: Any, demo: RunningDemo, role: str) -> Any:
    login(page, demo.url, *demo.logins[role])
    return page


def _number(text: str) -> float:
    found = re.search(r"-?\d+(\.\d+)?", text.replace(",", ""))
    assert found, text
    return float(found.group())


def test_plant_manager_sees_live_numbers_and_failed_parts(page: Any, demo: RunningDemo) -> None:
    _as(page, demo, "plant_manager")
    tile = page.get_by_test_id("line-line-1")
    verdicts = tile.locator("[data-metric=verdicts]")
    expect(verdicts).not_to_have_text("0", timeout=30_000)
    first = _number(verdicts.inner_text())
    expect(tile.locator("[data-metric=robots]")).to_have_text("4 / 4")
    page.wait_for_function(  # live: the number grows without a reload (tiles are re-rendered, so look each time)
        "before => Number(document.querySelector('[data-testid=line-line-1] [data-metric=verdicts]').textContent)"
        " > before", arg=first, timeout=20_000,
    )  # fmt: skip
    assert _number(tile.locator("[data-metric=fps]").inner_text()) > 0
    assert _number(tile.locator("[data-metric=p99]").inner_text()) > 0
    part = page.get_by_test_id("failed-part").first
    expect(part).to_be_visible(timeout=30_000)
    page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=failed-part] img');"
        " return img && img.complete && img.naturalWidth > 0; }"
    )  # the thumbnail decodes
    assert re.search(r"robot-\d{3}", part.inner_text())
    expect(page.locator("#cap-chart path[data-series=actual]")).to_have_count(1)
    expect(page.locator("#cap-summary")).to_contain_text("replicas running now")
    assert page.locator("#cap-chart").get_attribute("aria-label")  # the chart's text summary for screen readers


def test_plant_manager_watches_the_line_move_to_its_fitted_model_through_a_canary(page: Any, demo: RunningDemo) -> None:
    """The demo fits a model on its line's good parts and rolls it out on the slice: the Model rollout card shows
    the steps as they pass with what each showed, and both models' figures; once the fitted model judges, a
    failed part's thumbnail marks where the defect is."""
    _as(page, demo, "plant_manager")
    card = page.get_by_test_id("rollout")
    summary = card.locator("#rollout-summary")
    expect(summary).to_contain_text("part-inspector 1.0.0 → printed-labels-fitted 1.0.0", timeout=120_000)
    steps = card.get_by_role("list", name="Rollout steps").locator("li")
    expect(steps.locator("strong")).to_have_text(["shadow", re.compile(r"canary \d+ %"), "full"])
    rows = card.locator("#rollout-compare tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("Current (part-inspector 1.0.0)")
    expect(rows.nth(1)).to_contain_text("New (printed-labels-fitted 1.0.0)")
    # shadow, canary, then the slice's model; on a loaded machine the shadow step may lag past the line's
    # budget, and then the card must say it rolled back and why (the demo's documented behaviour at load)
    expect(summary).to_contain_text(re.compile("completed|rolled back"), timeout=180_000)
    if "rolled back" in summary.inner_text():
        expect(summary).to_contain_text(re.compile(r"rolled back in [^:]+: .+"))
        expect(page.locator("#events tbody tr[data-kind=rollout]").first).to_contain_text("rolled back")
        expect(card.get_by_role("button", name="Start rollout")).to_be_visible()
        return
    expect(card.locator("#rollout-steps li[data-state=done]")).to_have_count(3)
    expect(steps.nth(0)).to_contain_text(re.compile(r"\d+ frames judged by both, \d+\.\d % disagreed"))
    expect(steps.nth(1)).to_contain_text(re.compile(r"\d+ verdicts by the new model, fail rate \d+\.\d %"))
    assert _number(rows.nth(1).locator("td").nth(1).inner_text()) > 0  # the new model's verdicts in the canary
    expect(card.get_by_role("button", name="Start rollout")).to_be_visible()  # none running: a new one can start
    expect(card.get_by_role("button", name="Advance now")).to_be_hidden()  # nothing left to advance or abort
    expect(page.locator("#events tbody tr[data-kind=rollout]").first).to_contain_text("completed")
    # The fitted model says where the anomaly is: its failed parts' thumbnails outline or ring it.
    marked = page.wait_for_function(  # in one pass: the gallery re-renders as new failed parts arrive
        """() => {
          for (const shape of document.querySelectorAll('[data-testid=failed-part] [data-testid=defect-location] *')) {
            const img = shape.closest('figure').querySelector('img').getBoundingClientRect();
            const box = shape.getBoundingClientRect(), x = box.x + box.width / 2, y = box.y + box.height / 2;
            if (box.width > 0 && box.height > 0 && img.width > 0
                && img.left <= x && x <= img.right && img.top <= y && y <= img.bottom)
              return { stroke: shape.getAttribute('stroke'), title: shape.closest('[title]').title };
          }
          return null;
        }""",
        timeout=60_000,
    ).json_value()  # fmt: skip
    assert marked["stroke"] == "#ff2d2d", marked  # a red outline or ring on the picture, where the defect is
    assert "where the defect is" in marked["title"]


def test_factory_it_creates_a_robot_and_connects_it_with_the_shown_credentials(page: Any, demo: RunningDemo) -> None:
    _as(page, demo, "factory_it")
    expect(page.get_by_test_id("robots-line-1").locator("tbody tr")).to_have_count(4)
    page.get_by_label("Robot name").fill("cam-new")
    page.get_by_role("button", name="Create robot").click()
    panel = page.get_by_test_id("credentials")
    expect(panel).to_contain_text("shown once")
    cred = {
        name: panel.locator(f"[data-cred='{name}']").inner_text()
        for name in ("username", "password", "broker", "client id")
    }
    assert cred["username"] == "r.acme.line-1.cam-new"
    examples = " ".join(page.locator("pre[data-example]").all_inner_texts())
    assert "mosquitto_pub" in examples and cred["password"] in examples
    host, port = cred["broker"].rsplit(":", 1)
    robot = RobotClient(host, int(port), tenant="acme", line="line-1", robot="cam-new", username=cred["username"],
                        password=cred["password"], client_id=cred["client id"]).connect()  # fmt: skip
    try:
        answer = robot.inspect(synth.generate(99, 1, "crack").data, timeout_s=20)
        assert isinstance(answer, wire.Result)
        row = page.locator("tr[data-robot=cam-new]")
        expect(row.locator("[data-field=connection]")).to_contain_text("online", timeout=20_000)
        expect(row.locator("[data-field=last-frame]")).to_contain_text("s ago", timeout=20_000)
    finally:
        robot.close()
    expect(page.locator("tr[data-robot=cam-new] [data-field=connection]")).to_contain_text("offline", timeout=20_000)
    row = page.locator("tr[data-robot=cam-new]")
    row.get_by_role("button", name="Rotate").click()
    expect(panel).to_contain_text("rotated")
    assert panel.locator("[data-cred=password]").inner_text() != cred["password"]
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")


def _wait_for_a_profile(demo: RunningDemo, timeout_s: float = 90) -> None:
    """Until the tenant's slice's model has a measured profile (no plan has floors before: the agent measures a
    model when it first serves it, or while it rolls out, and the demo rolls out a fitted model)."""
    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {demo.tokens['plant_manager']}"}) as api:

        def profiled() -> bool:
            [item] = api.get("/slices").json()
            return bool(api.get(f"/models/{item['model_version_id']}/profiles").json())

        wait_until(profiled, timeout_s, "a measured profile of the slice's model", interval=1)


def test_plant_manager_enters_an_order_plan_and_the_floor_chart_changes(page: Any, demo: RunningDemo) -> None:
    """Regression (CI, 1 December): with the slice's new model not yet measured, the preview said "the lease
    lacks capacity worth 0.00 EUR" (a zero shortfall, shown) and had no rows; it now says only what it knows."""
    _wait_for_a_profile(demo)
    _as(page, demo, "plant_manager")
    floor = page.locator("#cap-chart path[data-series=floor]")
    expect(floor).to_have_count(1)
    before = floor.get_attribute("d")
    start = datetime.now() + timedelta(hours=3)  # the control plane's clock is this machine's local time
    shift = page.locator(".shift").first
    shift.get_by_label("Starts").fill(f"{start:%H}:00")
    shift.get_by_label("Ends").fill(f"{(start + timedelta(hours=1)):%H}:00")
    page.get_by_label("Parts per shift").fill(
        "5000000"
    )  # 5,555 frames/s in one hour: more than a lease of 2 replicas serves
    page.get_by_role("button", name="Preview plan and cost").click()
    expect(page.locator("#preview-summary")).to_contain_text("the lease lacks capacity")
    try:
        expect(page.locator("#preview-table tbody tr").first).to_be_visible()
    except AssertionError as e:  # seen once in CI (1 December), not reproduced: say what the page held
        shown = page.evaluate("""() => ({summary: document.getElementById('preview-summary').textContent,
            form: [...document.querySelectorAll('#plan-form input')].map((i) => i.id + "=" + i.value),
            browser_now: new Date().toString()})""")  # fmt: skip
        raise AssertionError(f"no preview rows; the page held {shown} (test's start {start:%a %H:%M})") from e
    page.get_by_role("button", name="Save plan").click()
    expect(page.locator("#flash")).to_contain_text("Order plan saved")
    page.wait_for_function("d => document.querySelector('#cap-chart path[data-series=floor]').getAttribute('d') !== d",
                           arg=before)  # fmt: skip
    expect(page.locator("#cap-summary")).to_contain_text("more than the lease allows")
    # The demo's plan follows its robots with headroom, so on a loaded machine (a low profile) its floor may
    # already be 2 (CI, 1 December: "2 → 2"): the manual floor goes to the other of 1 and 2.
    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {demo.tokens['plant_manager']}"}) as api:
        [item] = api.get("/slices").json()
    target = 1 if item["min_replicas"] == 2 else 2
    page.get_by_label("Replica floor").fill(str(target))
    page.get_by_role("button", name="Apply floor").click()
    expect(page.locator("#events tbody tr[data-kind=manual]").first).to_contain_text(
        f"{item['min_replicas']} → {target}", timeout=15_000
    )
    page.get_by_label("Parts per shift").fill("10")  # a volume the lease serves: no shortfall is mentioned
    page.get_by_role("button", name="Preview plan and cost").click()
    expect(page.locator("#preview-summary")).not_to_contain_text("lacks capacity")
    expect(page.locator("#preview-summary")).to_contain_text("replica-hours over the shifts shown")


def test_plant_manager_sees_spend_and_funds_and_buys_a_lease_at_the_quoted_price(page: Any, demo: RunningDemo) -> None:
    """The demo bought a subscription and redeemed a voucher: its fee shows as spend, the voucher paid its share.
    Buying another product shows the price first; a price changed meanwhile is refused until quoted again."""
    _as(page, demo, "plant_manager")
    expect(page.locator("#spent")).to_contain_text(re.compile(r"[1-9]\d*\.\d\d EUR"), timeout=90_000)  # the fee
    assert _number(page.locator("[data-fund=vouchers]").inner_text()) < 100  # the voucher paid part of it
    expect(page.locator("tr[data-voucher=demo-district-sme]")).to_contain_text("EUR")
    expect(page.locator("[data-fund=prepaid]")).to_contain_text("EUR")
    expect(page.locator("#line-costs tr[data-line=line-1]")).to_be_visible()
    expect(page.get_by_test_id("lease-now")).to_contain_text("Inspection subscription")
    standard = page.locator("#product option", has_text="Standard replica").get_attribute("value")
    page.get_by_label("Product").select_option(standard)
    page.get_by_role("button", name="Get quote").click()
    expect(page.get_by_test_id("quote")).to_contain_text("hour at min replicas")
    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {demo.tokens['operator']}"}) as api:
        terms = {"kind": "capacity", "reserved_per_hour": "0.95", "burst_per_hour": "0.95", "bank_per_hour": "0.40"}
        price = {"effective_from": datetime.now(UTC).date().isoformat(), "currency": "EUR", "terms": terms}
        assert api.post(f"/catalogue/{standard}/prices", json=price).status_code == 201  # repriced meanwhile
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#lease-error")).to_contain_text("quote again")
    page.get_by_role("button", name="Get quote").click()
    expect(page.get_by_test_id("quote")).to_contain_text("0.95")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#flash")).to_contain_text("Lease confirmed")
    expect(page.get_by_test_id("lease-now")).to_contain_text("Standard replica")
    expect(page.locator("#lease")).to_contain_text("Standard replica", timeout=15_000)  # the capacity card's lease


def test_the_chosen_slices_lease_shows_without_waiting_for_a_poll(page: Any, demo: RunningDemo) -> None:
    """Regression (CI, 30 November): the lease card stayed "–" for more than 5 s on a loaded machine. Its first
    refresh ran before the slice list had loaded, found no slice, and waited for its next poll. With the page's
    timers frozen (no poll runs twice), the lease must still show once the slice list is filled."""
    now = datetime.now(UTC)  # installed a little earlier than the pause: pausing "now" on a clock that already
    page.clock.install(time=now - timedelta(seconds=10))  # ran past it fails with "fast-forward to the past" (CI)
    page.clock.pause_at(now)
    _as(page, demo, "plant_manager")
    expect(page.locator("#slice option").first).to_be_attached()
    expect(page.get_by_test_id("lease-now")).not_to_have_text("–")


def test_a_user_of_another_tenant_sees_none_of_it(page: Any, demo: RunningDemo) -> None:
    op = {"Authorization": f"Bearer {demo.tokens['operator']}"}
    with httpx.Client(base_url=demo.url, headers=op) as api:
        tenant = api.post("/tenants", json={"slug": "globex", "name": "Globex"}).json()
        body = {"email": "pm@globex.example", "role": "plant_manager", "tenant_id": tenant["id"],
                "password": "globex-password-1"}  # fmt: skip
        assert api.post("/users", json=body).status_code == 201
    login(page, demo.url, "pm@globex.example", "globex-password-1")
    expect(page.locator("#lines")).to_contain_text("No lines yet")
    expect(page.locator("#cap-summary")).to_contain_text("No slice rented yet")
    assert page.get_by_test_id("failed-part").count() == 0
    assert page.locator("#slice option").count() == 0
    for path in ("/lines/1/failed-parts", "/lines/1/series", "/slices/1/capacity", "/failed-parts/1/thumbnail"):
        status = page.evaluate("path => fetch(path).then(r => r.status)", path)
        assert status == 404, f"{path} answered {status} to another tenant"
    page.goto(f"{demo.url}/ui/operator")
    expect(page.locator("body")).to_contain_text("needs the operator role")


def test_operator_sees_the_node_issues_a_join_token_and_drains_it(page: Any, demo: RunningDemo) -> None:
    _as(page, demo, "operator")
    node = page.locator("tr[data-node]").first
    expect(node.locator("[data-field=status]")).to_contain_text("online")
    expect(node.locator("[data-field=placement]")).to_contain_text("t1-inspect")
    expect(node.get_by_role("meter", name="CPU utilization")).to_have_count(1)
    # Contribution windows and a notice: saved and shown again (not contributed, so the demo's reserved slice
    # stays). With a notice the drain below keeps the demo's only replica serving: its robots lose nothing.
    page.get_by_label("Available from").fill("20:00")
    page.get_by_label("until").fill("06:00")
    page.get_by_label("Whole days available (YYYY-MM-DD, comma separated)").fill("2026-12-24, 2026-12-25")
    page.get_by_label("Notice before its replicas leave (minutes)").fill("10")
    page.get_by_role("button", name="Save contribution").click()
    expect(page.locator("#flash")).to_contain_text("Contribution saved")
    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {demo.tokens['operator']}"}) as api:
        saved = api.get("/nodes").json()[0]
    assert saved["holidays"] == ["2026-12-24", "2026-12-25"] and saved["windows"][0]["start"] == "20:00"
    assert saved["notice_s"] == 600
    page.get_by_role("button", name="Create join token").click()
    expect(page.get_by_test_id("join-command")).to_contain_text(f"--control-plane {demo.url} --token lsj_")
    node.get_by_role("button", name="Drain").click()
    expect(page.locator("#flash")).to_contain_text("its replicas stay until")
    expect(node.locator("[data-field=status]")).to_contain_text("draining")
    expect(node.locator("[data-field=placement]")).to_contain_text("t1-inspect")  # still serving
    expect(page.locator("#alerts tbody tr").first).to_contain_text("once the notice ends", timeout=20_000)
    expect(page.locator("#alerts tbody tr").first).to_contain_text("add or undrain nodes")
    node.get_by_role("button", name="Undrain").click()  # give the demo its node back
    expect(node.locator("[data-field=status]")).to_contain_text("online")


def test_operator_sees_revenue_receivables_and_voucher_programmes(page: Any, demo: RunningDemo) -> None:
    _as(page, demo, "operator")
    subscription = page.locator("#revenue tr[data-sku=demo-inspect-monthly]")
    expect(subscription).to_contain_text("demo-site")
    assert _number(subscription.locator("td").nth(2).inner_text()) >= 49  # this month: at least the fee
    expect(page.locator("#programmes tr[data-programme=demo-district-sme]")).to_contain_text("100.00 EUR (10 %)")
    expect(page.get_by_label("Tenant")).to_contain_text("Acme Auto Parts")


def test_a_contributor_lends_its_server_sees_its_hours_and_takes_it_back(page: Any, demo: RunningDemo) -> None:
    """The demo's lab: its edge operator joins a server of its own (as its agent would, through the API), lends
    it on the contributor's page, is refused a payout it has no credits for, and takes the server back."""
    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {demo.tokens['edge_operator']}"}) as api:
        site = api.get("/sites").json()[0]["id"]
        token = api.post(f"/sites/{site}/join-tokens").json()["token"]
        body = {"token": token, "hostname": "lab-gpu-1", "cpus": 8, "memory_mb": 32000, "ray_address": "10.9.9.9:6379"}
        node = api.post("/agent/v1/join", json=body).json()
        agent = {"Authorization": f"Bearer {node['node_token']}"}
        assert api.post("/agent/v1/heartbeat", json={}, headers=agent).status_code == 200
    _as(page, demo, "edge_operator")
    row = page.locator(f"tr[data-node='{node['id']}']")
    expect(row).to_contain_text("lab-gpu-1")
    expect(row).to_contain_text("not lent")
    assert page.locator("tr[data-node]").count() == 1  # the operator's node is not the lab's to see
    page.get_by_label("Lent from").fill("00:00")
    page.get_by_label("until").fill("23:59")
    for day in ("Sat", "Sun"):
        page.get_by_role("group", name="Days lent").get_by_label(day).check()
    page.get_by_label("Notice when you take it back (minutes)").fill("15")
    page.get_by_role("button", name="Lend on these terms").click()
    expect(page.locator("#flash")).to_contain_text("Lent on these terms")
    expect(row).to_contain_text("notice 15 min")
    expect(page.get_by_test_id("hours-offered")).not_to_have_text("0")  # this hour, at least
    expect(page.locator("[data-credit=earned]")).to_contain_text("0.00 EUR")  # nothing ran on it yet
    page.get_by_label("Amount").fill("1.00")
    page.get_by_label("Reference").fill("first")
    page.get_by_role("button", name="Request payout").click()
    expect(page.locator("#payout-error")).to_contain_text("exceeds your bank credits of 0.00 EUR")
    row.get_by_role("button", name="Take back").click()
    expect(page.locator("#flash")).to_contain_text("taken back")
    expect(row.locator("[data-field=status]")).to_contain_text(re.compile("draining|drained"))
    row.get_by_role("button", name="Lend again").click()
    expect(row.locator("[data-field=status]")).to_contain_text("online")


@pytest.mark.parametrize("viewport", [(1280, 800), (1920, 1080)], ids=["laptop", "office-monitor"])
def test_every_page_fits_the_screen_and_labels_its_controls(browser: Any, demo: RunningDemo,
                                                            viewport: tuple[int, int]) -> None:  # fmt: skip
    """No sideways scrolling on a laptop or a factory-office monitor; every control has an accessible name."""
    for role in ("plant_manager", "factory_it", "operator", "edge_operator"):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        login(page, demo.url, *demo.logins[role])
        page.wait_for_timeout(2500)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{role}'s page scrolls sideways by {overflow}px at {viewport}"
        unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, textarea')]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !(el.textContent || '').trim() && el.type !== 'hidden')
            .map((el) => el.outerHTML.slice(0, 80))""")
        assert unnamed == [], f"controls without a label on {role}'s page: {unnamed}"
        context.close()


def test_screenshots_script_writes_one_per_role(tmp_path: Path, demo: RunningDemo, browser: Any) -> None:
    from docs.screenshots import take

    paths = take(browser, demo, tmp_path)
    assert sorted(p.name for p in paths) == ["edge_operator.png", "factory_it.png", "operator.png", "plant_manager.png"]
    assert all(p.stat().st_size > 20_000 for p in paths)


def test_page_load_benchmark_prints_json() -> None:
    """`lineside bench dashboard` (small): numbers for BENCHMARKS.md, not a gate on time."""
    import json
    import subprocess
    import sys

    lineside = str(Path(sys.executable).with_name("lineside"))
    done = subprocess.run([lineside, "bench", "dashboard", "--json", "--robots", "8", "--loads", "2"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-4000:]}"  # what it said, to diagnose
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["line_minutes"] == 4 * 7 * 24 * 60 and result["robots"] == 8
    assert result["page_load_week_of_history"]["median_ms"] > 0
    assert result["baseline_page_load_no_history"]["median_ms"] > 0
