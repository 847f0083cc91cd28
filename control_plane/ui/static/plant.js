/* Plant manager: line health, failed parts, capacity chart, scaling, order plans, scale events (money: money.js). */
"use strict";
const { api, flash, poll, el, fmt, chart, legend } = Lineside;

const SERIES = [
  { key: "demand", name: "Planned demand", color: "#8a5a00", dash: "6 4" },
  { key: "floor", name: "Replica floor", color: "#0b5cad", step: true },
  { key: "actual", name: "Running replicas", color: "#17692e", step: true, width: 3 },
  { key: "lease", name: "Lease limit", color: "#b3261e", dash: "2 3", step: true },
];
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
let slices = [], currentSlice = null, lines = [], shownParts = "";

function tile(line) {
  const budget = line.within_budget === null ? "" : line.within_budget ? "ok" : "bad";
  return el("article", { class: "tile", "data-testid": `line-${line.slug}` },
    el("h3", {}, line.name, " ", el("span", { class: "hint" }, `(${line.slug})`)),
    el("dl", { class: "metrics" },
      el("dt", {}, "Robots online"), el("dd", { "data-metric": "robots" }, `${line.robots_online} / ${line.robots}`),
      el("dt", {}, "Frames/s"), el("dd", { "data-metric": "fps" }, fmt.num(line.frames_per_s)),
      el("dt", {}, "Latency p50"), el("dd", { "data-metric": "p50" }, fmt.ms(line.p50_ms)),
      el("dt", {}, `p99 (budget ${Math.round(line.latency_budget_ms)} ms)`),
      el("dd", { "data-metric": "p99", class: budget }, line.p99_beyond_ms ? "> " : "", fmt.ms(line.p99_ms),
        line.within_budget === false ? " over" : ""),
      el("dt", {}, "Verdicts (5 min)"), el("dd", { "data-metric": "verdicts" }, String(line.frames_5min)),
      el("dt", {}, "Defect rate (5 min)"), el("dd", { "data-metric": "defects" }, fmt.pct(line.defect_rate)),
      el("dt", {}, "Errors (5 min)"), el("dd", { "data-metric": "errors" }, String(line.errors_5min))));
}

async function refreshLines() {
  lines = await api("GET", "/dashboard/lines");
  document.getElementById("lines").replaceChildren(...(lines.length ? lines.map(tile)
    : [el("p", { class: "hint" }, "No lines yet: factory IT creates them when connecting robots.")]));
  document.getElementById("lines-updated").textContent = "updated " + new Date().toLocaleTimeString();
  const select = document.getElementById("plan-line");
  if (select.options.length !== lines.length) {
    select.replaceChildren(...lines.map((l) => el("option", { value: l.id }, l.name)));
    loadPlan();
  }
}

/* A failed part's thumbnail, with where the defect is when its verdict said: the anomaly region or defect box
   (outlined) or the anomaly map's peak (a ring). ``location`` is in 0..1 of the frame; the overlay's viewBox is
   the image's own size once it loads, so "slice" crops it exactly as the gallery's object-fit: cover crops the image. */
function partThumbnail(p) {
  const img = el("img", { src: `/failed-parts/${p.id}/thumbnail`, alt: `Failed part from ${p.robot}: ${p.defect_class || "defect"}`, loading: "lazy", width: 160, height: 160 });
  const where = p.location;
  if (!where) return img;
  const mark = (tag, attrs) => {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  };
  const overlay = mark("svg", { "data-testid": "defect-location", preserveAspectRatio: "xMidYMid slice", "aria-hidden": "true" });
  overlay.style.cssText = "position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none";
  img.addEventListener("load", () => {
    const w = img.naturalWidth, h = img.naturalHeight, stroke = Math.max(w, h) / 60;
    overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
    const common = { fill: "none", stroke: "#ff2d2d", "stroke-width": stroke };
    if (where.box) {
      const [x1, y1, x2, y2] = where.box;
      overlay.append(mark("rect", { ...common, x: x1 * w, y: y1 * h, width: Math.max((x2 - x1) * w, stroke), height: Math.max((y2 - y1) * h, stroke) }));
    } else {
      overlay.append(mark("circle", { ...common, cx: where.x * w, cy: where.y * h, r: stroke * 4 }));
    }
  }, { once: true });
  const frame = el("div", { title: where.box ? "Outlined: where the defect is" : "Ringed: where the defect is" }, img, overlay);
  frame.style.cssText = "position: relative";
  return frame;
}

async function refreshFailed() {
  const parts = (await Promise.all(lines.map((l) => api("GET", `/lines/${l.id}/failed-parts?limit=8`)))).flat();
  parts.sort((a, b) => (a.at < b.at ? 1 : -1));
  const slugs = Object.fromEntries(lines.map((l) => [l.id, l.slug]));
  const key = parts.slice(0, 12).map((p) => p.id).join(",");
  if (key === shownParts) return;  // unchanged: keep the images as they are (no flicker, no reloads)
  shownParts = key;
  document.getElementById("failed").replaceChildren(...parts.slice(0, 12).map((p) => el("figure", { "data-testid": "failed-part" },
    partThumbnail(p),
    el("figcaption", {}, el("strong", {}, p.defect_class || "defect"), ` ${(p.score * 100).toFixed(0)} %`, el("br"),
      `${p.robot} · ${slugs[p.line_id] || ""}`, el("br"), fmt.time(p.at)))));
  document.getElementById("failed-empty").hidden = parts.length > 0;
}

async function refreshSlices() {
  slices = (await api("GET", "/slices")).filter((s) => s.status !== "deleted");
  const select = document.getElementById("slice");
  const chosen = select.value;
  select.replaceChildren(...slices.map((s) => el("option", { value: s.id }, `${s.slug} (${s.status})`)));
  if (chosen) select.value = chosen;
  currentSlice = slices.find((s) => String(s.id) === select.value) || slices[0] || null;
  // The first fill (or a chosen slice that went away) changes the choice: the cards that follow the slice
  // (lease, rollout) refresh now, not at their next poll.
  if (select.value !== chosen) select.dispatchEvent(new Event("change"));
}

function drawCapacity(data) {
  chart(document.getElementById("cap-chart"), data.points, SERIES, { marker: data.now, label: data.summary });
  document.getElementById("cap-summary").textContent = data.summary;
}

async function refreshCapacity() {
  await refreshSlices();
  if (!currentSlice) { document.getElementById("cap-summary").textContent = "No slice rented yet."; return; }
  drawCapacity(await api("GET", `/slices/${currentSlice.id}/capacity`));
  const floor = document.getElementById("floor");
  floor.max = currentSlice.max_replicas;
  if (document.activeElement !== floor) floor.value = currentSlice.min_replicas;
  const lease = (await api("GET", `/leases?slice_id=${currentSlice.id}`)).filter((l) => l.running).pop();
  document.getElementById("lease").textContent = `Lease: up to ${currentSlice.max_replicas} replicas, ` +
    (lease ? `${lease.product} (${lease.sku}) from ${fmt.time(lease.starts_at)}` : "no product leased");
  const events = await api("GET", `/slices/${currentSlice.id}/events`);
  document.getElementById("events-empty").hidden = events.length > 0;
  document.querySelector("#events tbody").replaceChildren(...events.slice(0, 30).map((e) => el("tr", { "data-kind": e.kind },
    el("td", {}, fmt.time(e.at)), el("td", {}, e.kind), el("td", { class: "num" }, `${e.min_before} → ${e.min_after}`),
    el("td", { class: "num" }, `${e.max_before} → ${e.max_after}`),
    el("td", { class: "num" }, e.running_after === null ? "" : `${e.running_before} → ${e.running_after}`), el("td", {}, e.reason))));
}

function shiftRow(shift = { name: "early", days: [0, 1, 2, 3, 4], start: "06:00", end: "14:00" }) {
  const index = document.querySelectorAll(".shift").length;
  const id = (part) => `shift-${index}-${part}`;
  return el("fieldset", { class: "shift" }, el("legend", {}, `Shift ${index + 1}`),
    el("div", { class: "row" },
      el("label", { for: id("name") }, "Name"), el("input", { id: id("name"), name: "name", value: shift.name, required: true, size: 8 }),
      el("label", { for: id("start") }, "Starts"), el("input", { id: id("start"), name: "start", type: "time", value: shift.start, required: true }),
      el("label", { for: id("end") }, "Ends"), el("input", { id: id("end"), name: "end", type: "time", value: shift.end, required: true }),
      el("button", { type: "button", class: "quiet", "aria-label": `Remove shift ${index + 1}`, onclick: (e) => e.target.closest("fieldset").remove() }, "Remove")),
    el("div", { class: "days", role: "group", "aria-label": "Days" }, ...DAYS.map((d, i) => el("label", {},
      el("input", { type: "checkbox", name: "day", value: i, checked: shift.days.includes(i) }), " ", d))));
}

function planBody() {
  const shifts = [...document.querySelectorAll(".shift")].map((f) => ({
    name: f.querySelector("[name=name]").value, start: f.querySelector("[name=start]").value,
    end: f.querySelector("[name=end]").value,
    days: [...f.querySelectorAll("[name=day]:checked")].map((c) => Number(c.value)),
  }));
  const value = (id) => document.getElementById(id).value;
  return { views_per_part: Number(value("views")), headroom: Number(value("headroom")), idle_floor: Number(value("idle")),
    shifts, volumes: [{ effective_from: value("from"), parts_per_shift: Number(value("parts")) }] };
}

async function loadPlan() {
  const lineId = document.getElementById("plan-line").value;
  const container = document.getElementById("shifts");
  container.replaceChildren();
  try {
    const { plan } = await api("GET", `/lines/${lineId}/order-plan`);
    plan.shifts.forEach((s) => container.append(shiftRow(s)));
    const latest = plan.volumes[plan.volumes.length - 1];
    if (latest) { document.getElementById("parts").value = latest.parts_per_shift; document.getElementById("from").value = latest.effective_from; }
    document.getElementById("views").value = plan.views_per_part;
    document.getElementById("headroom").value = plan.headroom;
    document.getElementById("idle").value = plan.idle_floor;
  } catch (e) {
    if (e.status !== 404) throw e;
    container.append(shiftRow());
  }
}

function showPreview(result) {
  const rows = [], summaries = [];
  for (const s of result.slices) {
    for (const windows of Object.values(s.lines)) {
      for (const w of windows.filter((w) => new Date(w.end) > new Date()).slice(0, 14)) {
        rows.push(el("tr", {}, el("td", {}, w.shift), el("td", {}, fmt.time(w.start)), el("td", { class: "num" }, String(w.parts)),
          el("td", { class: "num" }, fmt.num(w.required_fps, 2)), el("td", { class: "num" }, String(w.floor)),
          el("td", { class: "num" + (w.shortfall ? " bad" : "") }, w.shortfall ? `${w.shortfall} (${w.shortfall_cost_per_hour}/h)` : "0")));
      }
    }
    if (s.cost_7_days) summaries.push(`Slice ${s.slug}: ${s.cost_7_days.replica_hours} replica-hours over the shifts shown, cost ${s.cost_7_days.cost}` +
      (s.cost_7_days.shortfall_replica_hours > 0 ? `; the lease lacks capacity worth ${s.cost_7_days.shortfall_cost}` : "") + ".");
    if (!s.profile) summaries.push(`Slice ${s.slug}: the model has no measured profile yet, so no floors can be computed.`);
  }
  document.querySelector("#preview-table tbody").replaceChildren(...rows);
  document.getElementById("preview-summary").textContent = summaries.join(" ") || "No slice serves this line yet.";
  const own = result.slices.find((s) => currentSlice && s.slice_id === currentSlice.id);
  if (own && own.capacity) drawCapacity(own.capacity);
}

async function submitPlan(save) {
  const error = document.getElementById("plan-error");
  error.textContent = "";
  const lineId = document.getElementById("plan-line").value;
  try {
    const body = planBody();
    const result = await api(save ? "PUT" : "POST", save ? `/lines/${lineId}/order-plan` : `/lines/${lineId}/order-plan/preview`, body);
    if (save) { flash("Order plan saved"); await refreshCapacity(); result.slices.forEach((s) => (s.capacity = null)); }
    showPreview(result);
  } catch (e) { error.textContent = e.message; }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("from").value = new Date().toISOString().slice(0, 10);
  document.getElementById("plan-line").addEventListener("change", loadPlan);
  document.getElementById("add-shift").addEventListener("click", () =>
    document.getElementById("shifts").append(shiftRow({ name: "late", days: [0, 1, 2, 3, 4], start: "14:00", end: "22:00" })));
  document.getElementById("preview").addEventListener("click", () => submitPlan(false));
  document.getElementById("plan-form").addEventListener("submit", (e) => { e.preventDefault(); submitPlan(true); });
  document.getElementById("slice").addEventListener("change", refreshCapacity);
  document.getElementById("scale-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const floor = Number(document.getElementById("floor").value);
    try {
      await api("POST", `/slices/${currentSlice.id}/scale`, { min_replicas: floor, max_replicas: currentSlice.max_replicas });
      flash(`Replica floor set to ${floor}`);
      await refreshCapacity();
    } catch (err) { flash(err.message, true); }
  });
  legend(document.getElementById("cap-legend"), SERIES);
  poll(async () => { await refreshLines(); await refreshFailed(); }, 2000);
  poll(refreshCapacity, 5000);
});
