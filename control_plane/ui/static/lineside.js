/* Lineside dashboard helpers shared by every page: API calls, live polling, formatting, SVG charts. */
"use strict";

const Lineside = (() => {
  class ApiError extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }

  /** JSON API call with the session cookie; changes carry the header the control plane requires. */
  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") headers["X-Lineside-Request"] = "1";
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401 && document.body.dataset.page !== "login") {
      location.href = "/ui/login?next=" + encodeURIComponent(location.pathname);
      throw new ApiError(401, "session expired");
    }
    if (response.status === 204) return null;
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      let detail = data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
      throw new ApiError(response.status, detail || response.statusText);
    }
    // Lists come a page at a time: without an explicit limit, follow Link rel="next" to the end.
    const next = (response.headers.get("Link") || "").match(/<([^>]+)>;\s*rel="next"/);
    if (method === "GET" && next && Array.isArray(data) && !/[?&]limit=/.test(path)) {
      return data.concat(await api("GET", next[1]));
    }
    return data;
  }

  function flash(text, isError = false) {
    const p = el("p", { class: isError ? "error" : "" }, text);
    document.getElementById("flash").append(p);
    setTimeout(() => p.remove(), isError ? 8000 : 4000);
  }

  /** Run ``fn`` now and every ``ms``; errors are shown once per kind, and polling goes on. */
  function poll(fn, ms) {
    let lastError = "";
    const tick = async () => {
      try { await fn(); lastError = ""; }
      catch (e) { if (e.status !== 401 && String(e) !== lastError) { lastError = String(e); flash(String(e.message || e), true); } }
      finally { setTimeout(tick, ms); }
    };
    tick();
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the CSP, unlike style= attributes
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const fmt = {
    num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
    pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + " %"),
    ms: (v) => (v === null || v === undefined ? "–" : Math.round(v) + " ms"),
    time: (iso) => (iso ? new Date(iso).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "–"),
    ago: (iso) => {
      if (!iso) return "never";
      const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
      return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
    },
  };

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /**
   * Line chart over time in ``container`` (an <svg class="chart">): ``series`` = [{name, color, key, dash, step}]
   * over ``points`` = [{t: iso, <key>: number|null}]. ``marker`` draws a vertical "now" line.
   */
  function chart(container, points, series, { marker, label, yMin = 0 } = {}) {
    const width = container.clientWidth || 800, height = container.clientHeight || 260;
    const pad = { l: 44, r: 12, t: 10, b: 26 };
    container.replaceChildren();
    container.setAttribute("viewBox", `0 0 ${width} ${height}`);
    container.setAttribute("role", "img");
    if (label) container.setAttribute("aria-label", label);
    if (!points.length) { container.append(svg("text", { x: pad.l, y: height / 2 }, "No data yet")); return; }
    const times = points.map((p) => new Date(p.t).getTime());
    const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1);
    const values = points.flatMap((p) => series.map((s) => p[s.key])).filter((v) => v !== null && v !== undefined);
    const yMax = Math.max(1, ...values) * 1.12;
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const y = (v) => height - pad.b - ((v - yMin) / (yMax - yMin)) * (height - pad.t - pad.b);
    for (let i = 0; i <= 4; i++) {
      const v = yMin + ((yMax - yMin) * i) / 4;
      container.append(svg("line", { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), stroke: "#e3e8ee" }));
      container.append(svg("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, v >= 10 ? Math.round(v) : v.toFixed(1)));
    }
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = t0 + ((t1 - t0) * i) / ticks;
      const text = new Date(t).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
      container.append(svg("text", { x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, text));
    }
    for (const s of series) {
      let d = "", pen = false, prevY = null;
      points.forEach((p, i) => {
        const v = p[s.key];
        if (v === null || v === undefined) { pen = false; return; }
        const px = x(times[i]), py = y(v);
        if (!pen) d += `M${px},${py}`;
        else d += s.step ? `H${px}V${py}` : `L${px},${py}`;
        pen = true; prevY = py;
      });
      if (d) container.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": s.width || 2,
        "stroke-dasharray": s.dash || "", "data-series": s.key }));
    }
    if (marker) {
      const mx = x(new Date(marker).getTime());
      container.append(svg("line", { x1: mx, x2: mx, y1: pad.t, y2: height - pad.b, stroke: "#4a5360", "stroke-dasharray": "2 3" }));
      container.append(svg("text", { x: mx + 4, y: pad.t + 10 }, "now"));
    }
  }

  function legend(container, series) {
    container.replaceChildren(...series.map((s) => el("span", { style: `--c:${s.color}` }, s.name)));
  }

  function copyButton(getText, label = "Copy") {
    return el("button", { type: "button", class: "quiet", onclick: async (e) => {
      try { await navigator.clipboard.writeText(getText()); e.target.textContent = "Copied"; }
      catch { e.target.textContent = "Select and copy"; }
      setTimeout(() => (e.target.textContent = label), 1500);
    } }, label);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const logout = document.getElementById("logout");
    if (logout) logout.addEventListener("click", async () => { await api("POST", "/auth/logout"); location.href = "/ui/login"; });
  });

  /** The "Add a node" card (operators and contributors): a one-time join token for the chosen site and the
   * command that joins a server with it; ``extra`` is appended to the command. */
  function joinTokenForm(extra = "") {
    document.getElementById("join-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        const issued = await api("POST", `/sites/${document.getElementById("join-site").value}/join-tokens`);
        const command = `lineside edge-node join --control-plane ${location.origin} --token ${issued.token}${extra}`;
        document.getElementById("join-token").replaceChildren(el("div", { class: "secret" },
          el("p", {}, `One-time token, valid until ${fmt.time(issued.expires_at)}. Run on the new server:`),
          el("pre", { "data-testid": "join-command" }, command), copyButton(() => command)));
      } catch (err) { flash(err.message, true); }
    });
  }

  return { api, flash, poll, el, fmt, chart, legend, copyButton, joinTokenForm, ApiError };
})();
