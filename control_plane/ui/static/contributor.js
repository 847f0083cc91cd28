/* Compute bank contributor (edge operator of a lab or a factory lending its servers): hours offered and used,
 * credits earned, spent and left, its nodes with their terms (windows, notice), join tokens, payouts. */
"use strict";
const { api, flash, poll, el, fmt, joinTokenForm } = Lineside;
const DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
let nodes = [];

async function setStatus(node, status) {
  try {
    const done = await api("POST", `/nodes/${node.id}/status`, { status });
    flash(status === "online" ? `${node.hostname} is lent again`
      : done.held_until ? `${node.hostname}: taken back; bank replicas leave by ${fmt.time(done.held_until)}, their replacements start elsewhere first`
        : `${node.hostname}: taken back`);
    await refresh();
  } catch (e) { flash(e.message, true); }
}

function nodeRow(node, hours) {
  const h = hours[node.id] || { hours_offered: 0, hours_used: 0, utilization: 0 };
  const action = node.status === "online" ? el("button", { type: "button", class: "quiet", onclick: () => setStatus(node, "draining") }, "Take back")
    : ["draining", "drained"].includes(node.status) ? el("button", { type: "button", class: "quiet", onclick: () => setStatus(node, "online") }, "Lend again") : "";
  const terms = node.contributed ? `lent ${node.windows.map((w) => `${w.days.map((d) => DAYS[d]).join(" ")} ${w.start}–${w.end}`).join("; ") || "on whole days"} · notice ${Math.round(node.notice_s / 60)} min`
    : "not lent: runs your own slices only";
  return el("tr", { "data-node": node.id },
    el("td", {}, node.hostname, el("br"), el("span", { class: "hint" }, terms)),
    el("td", { "data-field": "status" }, node.status, node.held_until && node.status === "draining" ? el("span", { class: "hint" }, ` · until ${fmt.time(node.held_until)}`) : ""),
    el("td", { class: "num", "data-field": "offered" }, String(h.hours_offered)),
    el("td", { class: "num", "data-field": "used" }, String(h.hours_used)),
    el("td", { class: "num" }, `${Math.round(100 * h.utilization)} %`), el("td", {}, action));
}

async function refresh() {
  const [page, listed] = await Promise.all([api("GET", "/bank/contributor"), api("GET", "/nodes")]);
  nodes = listed;
  document.getElementById("bank-period").textContent = `month of ${page.period}`;
  const text = (id, value) => (document.querySelector(`[data-testid=${id}]`).textContent = value);
  text("hours-offered", String(page.hours_offered));
  text("hours-used", String(page.hours_used));
  text("utilization", `${Math.round(100 * page.utilization)} %`);
  text("ran", `${page.ran.slices} slice(s), ${page.ran.replica_hours} replica-hours`);
  for (const [key, value] of [["earned", page.credits.earned], ["spent", page.credits.spent], ["left", page.credits.left], ["owed", page.payable.owed]]) {
    document.querySelector(`[data-credit=${key}]`).textContent = value.text;
  }
  const hours = Object.fromEntries(page.nodes.map((n) => [n.node_id, n]));
  document.querySelector("#nodes tbody").replaceChildren(...nodes.map((n) => nodeRow(n, hours)));
  document.getElementById("nodes-empty").hidden = nodes.length > 0;
  const select = document.getElementById("lend-node");
  if (select.options.length !== nodes.length) {
    select.replaceChildren(...nodes.map((n) => el("option", { value: n.id }, `${n.hostname} (node ${n.id})`)));
    loadTerms();
  }
  document.getElementById("nodes-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function loadTerms() {
  const node = nodes.find((n) => String(n.id) === document.getElementById("lend-node").value);
  if (!node) return;
  const window = node.windows[0] || { days: [0, 1, 2, 3, 4], start: "20:00", end: "07:00" };
  document.getElementById("lend-start").value = window.start;
  document.getElementById("lend-end").value = window.end;
  document.querySelectorAll("#lend-days input").forEach((c) => (c.checked = window.days.includes(Number(c.value))));
  document.getElementById("lend-holidays").value = node.holidays.join(", ");
  document.getElementById("lend-notice").value = Math.round((node.notice_s || 0) / 60);
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("lend-days").append(...DAYS.map((d, i) => el("label", {}, el("input", { type: "checkbox", value: i, checked: i < 5 }), " ", d)));
  document.getElementById("lend-node").addEventListener("change", loadTerms);
  const sites = await api("GET", "/sites");
  document.getElementById("join-site").replaceChildren(...sites.map((s) => el("option", { value: s.id }, s.name)));
  joinTokenForm(" --ray-address <the site's Ray head>");  // a tenant's server joins as a Ray worker
  document.getElementById("lend-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("lend-error");
    error.textContent = "";
    const days = [...document.querySelectorAll("#lend-days input:checked")].map((c) => Number(c.value));
    const holidays = document.getElementById("lend-holidays").value.split(",").map((s) => s.trim()).filter(Boolean);
    const body = { contributed: true, holidays, notice_s: 60 * Number(document.getElementById("lend-notice").value || 0),
      windows: days.length ? [{ days, start: document.getElementById("lend-start").value, end: document.getElementById("lend-end").value }] : [] };
    try {
      await api("PUT", `/nodes/${document.getElementById("lend-node").value}/contribution`, body);
      flash("Lent on these terms; the bank may use the node inside its windows");
      await refresh();
    } catch (err) { error.textContent = err.message; }
  });
  document.getElementById("payout-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("payout-error");
    error.textContent = "";
    const value = (id) => document.getElementById(id).value.trim();
    try {
      const summary = await api("GET", "/bank/contributor");
      const done = await api("POST", "/bank/payouts", { amount: value("payout-amount"), currency: summary.credits.left.currency, reference: value("payout-reference") });
      flash(`Payout of ${done.amount} requested; credits left ${done.credits.left.text}`);
      await refresh();
    } catch (err) { error.textContent = err.message; }
  });
  poll(refresh, 5000);
});
