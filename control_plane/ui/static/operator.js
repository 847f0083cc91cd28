/* Edge operator: sites and nodes (status, utilization, placement), join tokens, contribution windows, drain, alerts;
 * money: revenue per site and product, receivables, voucher programmes, top-ups. */
"use strict";
const { api, flash, poll, el, fmt, joinTokenForm } = Lineside;
const day = (iso) => new Date(iso).toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
let sites = [];

function bar(share, label) {
  const pct = Math.round((share || 0) * 100);
  return el("span", {}, el("span", { class: "bar", role: "meter", "aria-valuenow": pct, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": label },
    el("span", { style: `width:${pct}%` })), ` ${pct} %`);
}

async function setStatus(node, status) {
  try {
    const done = await api("POST", `/nodes/${node.id}/status`, { status });
    const until = done.held_until ? `its replicas stay until ${fmt.time(done.held_until)} while replacements start elsewhere` : "its replicas move";
    flash(`${node.hostname}: ${status === "draining" ? `draining, ${until}` : status}`);
    await refresh();
  } catch (e) { flash(e.message, true); }
}

function nodeRow(node) {
  const util = node.utilization || {};
  const gpus = (util.gpus || []).map((g, i) => bar(g, `GPU ${i} utilization`));
  const placed = node.placement.map((p) => `${p.slice} × ${p.replicas} (${p.priority})`).join(", ") || "–";
  const actions = node.status === "online" ? el("button", { type: "button", class: "quiet", onclick: () => setStatus(node, "draining") }, "Drain")
    : ["draining", "drained"].includes(node.status) ? el("button", { type: "button", class: "quiet", onclick: () => setStatus(node, "online") }, "Undrain") : "";
  return el("tr", { "data-node": node.id },
    el("td", {}, node.hostname, el("br"), el("span", { class: "hint" }, `node ${node.id}${node.contributed ? " · contributed" : ""}`)),
    el("td", { "data-field": "status" }, el("span", { class: `dot ${node.status === "online" ? "online" : node.status === "offline" ? "offline" : "unknown"}`, "aria-hidden": "true" }), node.status,
      node.held_until && node.status === "draining" ? el("span", { class: "hint", "data-field": "held-until" }, ` · replicas until ${fmt.time(node.held_until)}`) : ""),
    el("td", {}, bar(util.cpu, "CPU utilization"), el("br"), el("span", { class: "hint" }, `${node.cpus} CPUs, ${Math.round(node.memory_mb / 1024)} GiB`)),
    el("td", {}, gpus.length ? gpus : node.gpus.length ? node.gpus.map((g) => g.model).join(", ") : "no GPU"),
    el("td", { "data-field": "placement" }, placed),
    el("td", {}, node.last_heartbeat_s === null ? "–" : `${node.last_heartbeat_s} s ago`), el("td", {}, actions));
}

async function refresh() {
  sites = await api("GET", "/dashboard/sites");
  document.getElementById("sites").replaceChildren(...sites.map((site) => el("div", { "data-testid": `site-${site.name}` },
    el("h3", {}, `${site.name} · broker ${site.broker}`),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Node", "Status", "CPU", "GPU", "Slices placed", "Heartbeat", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...site.nodes.map(nodeRow))))));
  const joinSite = document.getElementById("join-site");
  if (joinSite.options.length !== sites.length) joinSite.replaceChildren(...sites.map((s) => el("option", { value: s.id }, s.name)));
  const nodes = sites.flatMap((s) => s.nodes);
  const nodeSelect = document.getElementById("contrib-node");
  if (nodeSelect.options.length !== nodes.length) {
    nodeSelect.replaceChildren(...nodes.map((n) => el("option", { value: n.id }, `${n.hostname} (node ${n.id})`)));
    loadContribution();
  }
  const alerts = await api("GET", "/alerts");
  document.querySelector("#alerts tbody").replaceChildren(...alerts.slice(0, 30).map((a) =>
    el("tr", {}, el("td", {}, fmt.time(a.at)), el("td", {}, String(a.slice_id)), el("td", {}, a.reason))));
  document.getElementById("alerts-empty").hidden = alerts.length > 0;
  document.getElementById("sites-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refreshMoney() {
  const [revenue, tenants, programmes] = await Promise.all([api("GET", "/billing/revenue"), api("GET", "/tenants"),
    api("GET", "/voucher-programmes")]);
  const names = Object.fromEntries(tenants.map((t) => [t.id, `${t.name} (${t.slug})`]));
  document.getElementById("revenue-period").textContent = `this month: ${revenue.period}`;
  document.querySelector("#revenue tbody").replaceChildren(...revenue.products.map((p) => el("tr", { "data-sku": p.sku },
    el("td", {}, p.site), el("td", {}, p.sku), el("td", { class: "num" }, p.this_month.text), el("td", { class: "num" }, p.all_time.text))));
  document.getElementById("revenue-empty").hidden = revenue.products.length > 0;
  document.querySelector("#receivables tbody").replaceChildren(...revenue.receivables.map((r) => el("tr", {},
    el("td", {}, names[r.tenant_id] || `tenant ${r.tenant_id}`), el("td", { class: "num bad" }, r.owed.text))));
  document.getElementById("receivables-empty").hidden = revenue.receivables.length > 0;
  const select = document.getElementById("topup-tenant");
  if (select.options.length !== tenants.length) select.replaceChildren(...tenants.map((t) => el("option", { value: t.id }, names[t.id])));
  const reports = await Promise.all(programmes.map((p) => api("GET", `/voucher-programmes/${p.id}/report`)));
  document.querySelector("#programmes tbody").replaceChildren(...reports.map(({ programme: p, totals }) => {
    const used = p.budget.minor ? Math.round((100 * totals.granted.minor) / p.budget.minor) : 0;
    return el("tr", { "data-programme": p.name }, el("td", {}, p.name), el("td", {}, p.funder),
      el("td", { class: "num" }, p.budget.formatted), el("td", { class: "num" }, `${totals.granted.formatted} (${used} %)`),
      el("td", { class: "num" }, totals.spent.formatted), el("td", { class: "num" }, String(totals.redemptions)),
      el("td", {}, day(p.expires_at)), el("td", {}, el("a", { href: `/voucher-programmes/${p.id}/report?format=csv`, download: "" }, "CSV")));
  }));
  document.getElementById("programmes-empty").hidden = programmes.length > 0;
}

function loadContribution() {
  const node = sites.flatMap((s) => s.nodes).find((n) => String(n.id) === document.getElementById("contrib-node").value);
  if (!node) return;
  const window = node.windows[0] || { days: [0, 1, 2, 3, 4], start: "20:00", end: "06:00" };
  document.getElementById("contributed").checked = node.contributed;
  document.getElementById("win-start").value = window.start;
  document.getElementById("win-end").value = window.end;
  document.querySelectorAll("#win-days input").forEach((c) => (c.checked = window.days.includes(Number(c.value))));
  document.getElementById("holidays").value = node.holidays.join(", ");
  document.getElementById("notice").value = Math.round((node.notice_s || 0) / 60);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("win-days").append(...DAYS.map((d, i) => el("label", {}, el("input", { type: "checkbox", value: i, checked: i < 5 }), " ", d)));
  document.getElementById("contrib-node").addEventListener("change", loadContribution);
  joinTokenForm();
  document.getElementById("contrib-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("contrib-error");
    error.textContent = "";
    const days = [...document.querySelectorAll("#win-days input:checked")].map((c) => Number(c.value));
    const holidays = document.getElementById("holidays").value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = { contributed: document.getElementById("contributed").checked, holidays,
      notice_s: 60 * Number(document.getElementById("notice").value || 0),
      windows: days.length ? [{ days, start: document.getElementById("win-start").value, end: document.getElementById("win-end").value }] : [] };
    try {
      await api("PUT", `/nodes/${document.getElementById("contrib-node").value}/contribution`, body);
      flash("Contribution saved; slices are re-placed");
      await refresh();
    } catch (err) { error.textContent = err.message; }
  });
  document.getElementById("topup-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("topup-error");
    error.textContent = "";
    const value = (id) => document.getElementById(id).value.trim();
    try {
      const done = await api("POST", "/billing/top-ups", { tenant_id: Number(value("topup-tenant")), amount: value("topup-amount"),
        currency: value("topup-currency"), reference: value("topup-reference") });
      flash(`Top-up of ${done.amount} recorded; prepaid balance ${done.funds.prepaid.text}`);
      document.getElementById("topup-reference").value = "";
      await refreshMoney();
    } catch (err) { error.textContent = err.message; }
  });
  poll(refresh, 3000);
  poll(refreshMoney, 10000);
});
