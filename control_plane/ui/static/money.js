/* Plant manager's money: spend, forecast, budget and its alerts, funds, cost per 1,000 parts, vouchers,
 * invoices, and buying or changing the chosen slice's lease (quote first, then confirm that price). */
"use strict";
(() => {
  const { api, flash, poll, el, fmt } = Lineside;
  let quoted = null;  // the quote the plant manager is looking at: confirming sends its price_id
  let catalogue = [];  // the products of the chosen slice's site with a price in force
  const day = (iso) => new Date(iso).toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });

  /** A price version's terms in words (prices are decimal strings; nothing here does arithmetic on them). */
  function termsText(terms, currency) {
    if (terms.kind === "capacity") {
      return `per replica-hour: reserved ${terms.reserved_per_hour}, burst ${terms.burst_per_hour}, ` +
        `bank ${terms.bank_per_hour} ${currency} (billed per ${terms.billed_increment_s || 60} s)`;
    }
    if (terms.kind === "usage") {
      return "per 1,000 verdicts: " + terms.tiers.map((t) => `${t.per_1000} ${currency}` +
        (t.up_to ? ` up to ${t.up_to.toLocaleString()}` : " beyond")).join(", ");
    }
    return `${terms.monthly_fee} ${currency} a month with ${terms.replica_floor} replica(s) and ` +
      `${terms.included_verdicts.toLocaleString()} verdicts, then ${terms.overage_per_1000} ${currency} per 1,000`;
  }

  const chosenSlice = () => document.getElementById("slice").value;

  function showLease(lease) {
    const text = lease ? `${lease.product} (${lease.sku}, price version ${lease.price_version}) ` +
      `from ${fmt.time(lease.starts_at)}: ${termsText(lease.terms, lease.currency)}` : "No lease: choose a product below.";
    document.getElementById("lease-now").textContent = text;
  }

  async function refreshLease() {
    const slice = chosenSlice();
    if (!slice) return;
    const leases = await api("GET", `/leases?slice_id=${slice}`);
    showLease(leases.filter((l) => l.running).pop());
    const sliceRow = (await api("GET", "/slices")).find((s) => String(s.id) === slice);
    const products = await api("GET", `/catalogue?site_id=${sliceRow.site_id}`);
    const select = document.getElementById("product");
    const key = products.map((p) => `${p.id}:${p.price && p.price.price_id}`).join(",");
    if (select.dataset.key === key) return;
    const chosen = select.value;
    select.dataset.key = key;
    catalogue = products.filter((p) => p.price);
    select.replaceChildren(...catalogue.map((p) => el("option", { value: p.id }, `${p.name} (${p.unit})`)));
    if (chosen) select.value = chosen;
    showTerms();
  }

  function showTerms() {  // the chosen product's price in force, before any quote
    const product = catalogue.find((p) => String(p.id) === document.getElementById("product").value);
    document.getElementById("product-terms").textContent = product ? termsText(product.price.terms, product.price.currency) : "";
  }

  function showQuote(q) {
    quoted = q;
    const examples = Object.entries(q.examples).map(([k, v]) => el("li", {}, `${k.replaceAll("_", " ")}: `, el("strong", {}, v)));
    document.getElementById("quote").replaceChildren(el("div", { class: "secret", "data-testid": "quote" },
      el("p", {}, el("strong", {}, q.sku), ` price version ${q.version} (in force since ${q.effective_from}): `,
        termsText(q.terms, q.currency)),
      examples.length ? el("ul", {}, ...examples) : "",
      el("p", { class: "hint" }, `The lease starts at ${fmt.time(q.starts_at)}; the slice's current lease ends then.`),
      el("div", { class: "row" },
        el("button", { type: "button", id: "confirm-lease", onclick: confirm }, "Confirm"),
        el("button", { type: "button", class: "quiet", onclick: clearQuote }, "Cancel"))));
  }

  function clearQuote() { quoted = null; document.getElementById("quote").replaceChildren(); }

  async function getQuote(e) {
    e.preventDefault();
    const error = document.getElementById("lease-error");
    error.textContent = "";
    try {
      showQuote(await api("POST", "/leases/quote", { product_id: Number(document.getElementById("product").value),
        slice_id: Number(chosenSlice()) }));
    } catch (err) { error.textContent = err.message; }
  }

  async function confirm() {
    const error = document.getElementById("lease-error");
    error.textContent = "";
    try {
      const lease = await api("POST", "/leases", { slice_id: Number(chosenSlice()), product_id: quoted.product_id,
        price_id: quoted.price_id });
      clearQuote();
      showLease(lease);
      flash(`Lease confirmed: ${lease.product} from ${fmt.time(lease.starts_at)}`);
    } catch (err) {
      if (err.status === 409) clearQuote();  // price_changed (or no longer sold): the message says to quote again
      error.textContent = err.status === 409 ? `${err.message} Press "Get quote" again.` : err.message;
    }
  }

  function fundsRow(name, money, cls = "") {
    return el("tr", {}, el("th", { scope: "row" }, name), el("td", { class: `num ${cls}`, "data-fund": name.toLowerCase() }, money.text));
  }

  async function refreshMoney() {
    const s = await api("GET", "/billing/summary");
    const set = (id, text) => (document.getElementById(id).textContent = text);
    set("spent", s.spent.text);
    set("forecast", s.forecast_month_end.text);
    set("budget-used", s.budget ? `${s.budget.text} (${s.budget_used_pct} % used)` : "none set");
    const budget = document.getElementById("budget");
    if (document.activeElement !== budget && !budget.value) budget.value = s.budget ? s.budget.text.split(" ")[0] : "";
    document.getElementById("budget-currency").textContent = s.currency;
    document.getElementById("budget-alerts").replaceChildren(...s.alerts.map((a) => el("li", { class: a.threshold_pct >= 100 ? "bad" : "warn" },
      `${a.threshold_pct} % of the budget reached ${fmt.time(a.at)} (spent ${a.spent.text})`)));
    const held = document.getElementById("held");
    held.hidden = !s.held;
    held.textContent = s.held ? `Funds ran out: burst and bank slices are held at their floor. ${s.held_reason}` : "";
    const f = s.funds;
    document.querySelector("#funds tbody").replaceChildren(fundsRow("Prepaid", f.prepaid), fundsRow("Credit limit", f.credit_limit),
      fundsRow("Vouchers", f.vouchers), fundsRow("Bank credits", f.bank_credits),
      fundsRow("Debt", f.debt, f.debt.minor ? "bad" : ""), fundsRow("Available", f.available));
    document.querySelector("#line-costs tbody").replaceChildren(...s.lines.map((l) => el("tr", { "data-line": l.slug },
      el("td", {}, l.slug), el("td", { class: "num" }, l.parts.toLocaleString()), el("td", { class: "num" }, l.cost.text),
      el("td", { class: "num" }, l.cost_per_1000_parts ? l.cost_per_1000_parts.text : "–"))));
    const vouchers = await api("GET", "/vouchers");
    document.querySelector("#vouchers tbody").replaceChildren(...vouchers.map((v) => el("tr", { "data-voucher": v.programme },
      el("td", {}, v.programme, el("br"), el("span", { class: "hint" }, v.funder)),
      el("td", { class: "num" }, v.balance.formatted), el("td", {}, v.expired ? "expired" : day(v.expires_at)))));
    document.getElementById("vouchers-empty").hidden = vouchers.length > 0;
    document.getElementById("money-updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  async function refreshInvoices() {
    let invoices = [];
    try { invoices = await api("GET", "/invoices"); } catch (e) { if (e.status !== 404) throw e; }
    document.querySelector("#invoices tbody").replaceChildren(...invoices.map((i) => el("tr", {},
      el("td", {}, i.label), el("td", {}, i.period), el("td", { class: "num" }, i.total),
      el("td", {}, el("a", { href: `/invoices/${i.id}.csv`, download: "" }, "CSV"), " ",
        el("a", { href: `/invoices/${i.id}.pdf`, download: "" }, "PDF")))));
    document.getElementById("invoices-empty").hidden = invoices.length > 0;
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("quote-form").addEventListener("submit", getQuote);
    document.getElementById("product").addEventListener("change", () => { clearQuote(); showTerms(); });
    document.getElementById("slice").addEventListener("change", () => { clearQuote(); refreshLease(); });
    document.getElementById("budget-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const value = document.getElementById("budget").value.trim();
      try {
        await api("PUT", "/billing/budget", { monthly_budget: value || null });
        flash(value ? `Monthly budget set to ${value}` : "Monthly budget removed");
        await refreshMoney();
      } catch (err) { flash(err.message, true); }
    });
    document.getElementById("redeem-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const code = document.getElementById("voucher-code");
      try {
        const v = await api("POST", "/vouchers/redeem", { code: code.value.trim() });
        code.value = "";
        flash(`Voucher of ${v.funder} redeemed: ${v.balance.formatted}`);
        await refreshMoney();
      } catch (err) { flash(err.message, true); }
    });
    poll(refreshMoney, 5000);
    poll(refreshLease, 5000);
    poll(refreshInvoices, 60000);
  });
})();
