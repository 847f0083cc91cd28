/* Factory IT: robots per line with live connection status; create, rotate, revoke; credentials shown once;
   model fits (status, stage, progress, the model produced) with a cancel button. */
"use strict";
const { api, flash, poll, el, fmt, copyButton } = Lineside;
let lines = [];

function connection(robot) {
  if (robot.status !== "active") return ["offline", "revoked"];
  if (robot.connected === true) return ["online", "online"];
  if (robot.connected === false) return ["offline", "offline"];
  const recent = robot.last_frame_at && Date.now() - new Date(robot.last_frame_at).getTime() < 30000;
  return recent ? ["online", "sending frames"] : ["unknown", "no status yet"];
}

async function act(robot, action) {
  if (action === "revoke" && !confirm(`Revoke ${robot.slug}? It is disconnected at once and cannot reconnect.`)) return;
  try {
    const result = await api("POST", `/robots/${robot.id}/${action}`);
    if (action === "rotate") showCredentials(result, "rotated: the old password no longer works");
    flash(`${robot.slug} ${action === "rotate" ? "rotated" : "revoked"}`);
    await refresh();
  } catch (e) { flash(e.message, true); }
}

async function refresh() {
  if (!lines.length) {
    lines = await api("GET", "/lines");
    document.getElementById("robot-line").replaceChildren(...lines.map((l) => el("option", { value: l.id }, l.name || l.slug)));
  }
  const robots = await api("GET", "/robots");
  const byLine = lines.map((line) => {
    const own = robots.filter((r) => r.line_id === line.id);
    return el("div", {}, el("h3", {}, `${line.name || line.slug} (${own.filter((r) => connection(r)[0] === "online").length} of ${own.length} online)`),
      el("table", { "data-testid": `robots-${line.slug}` },
        el("thead", {}, el("tr", {}, el("th", {}, "Robot"), el("th", {}, "Connection"), el("th", {}, "Last frame"), el("th", {}, "MQTT user"), el("th", {}, ""))),
        el("tbody", {}, ...own.map((r) => {
          const [cls, text] = connection(r);
          return el("tr", { "data-robot": r.slug },
            el("td", {}, r.slug), el("td", { "data-field": "connection" }, el("span", { class: `dot ${cls}`, "aria-hidden": "true" }), text),
            el("td", { "data-field": "last-frame" }, fmt.ago(r.last_frame_at)), el("td", {}, el("code", {}, r.mqtt_username)),
            el("td", {}, r.status === "active" ? [
              el("button", { type: "button", class: "quiet", onclick: () => act(r, "rotate") }, "Rotate"), " ",
              el("button", { type: "button", class: "danger", onclick: () => act(r, "revoke") }, "Revoke")] : "revoked"));
        }))));
  });
  document.getElementById("robots").replaceChildren(...byLine);
  document.getElementById("robots-updated").textContent = "updated " + new Date().toLocaleTimeString();
  await refreshFits();
}

async function cancelFit(fit) {
  if (!confirm(`Cancel the fit of ${fit.name} ${fit.version}?`)) return;
  try {
    await api("POST", `/models/fits/${fit.id}/cancel`);
    flash(`fit of ${fit.name} ${fit.version} cancelled`);
    await refreshFits();
  } catch (e) { flash(e.message, true); }
}

async function refreshFits() {
  const fits = (await api("GET", "/models/fits")).reverse();
  const live = (f) => f.status === "queued" || f.status === "running";
  document.getElementById("fits").replaceChildren(fits.length ? el("table", { "data-testid": "fits" },
    el("thead", {}, el("tr", {}, ...["Model", "Photos", "Status", "Stage", "Progress", "Model produced", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...fits.map((f) => el("tr", { "data-fit": f.id },
      el("td", {}, `${f.name} ${f.version}`), el("td", {}, String(f.photos)),
      el("td", { "data-field": "status", title: f.message }, f.status.replace("_", " ")),
      el("td", { "data-field": "stage" }, f.stage),
      el("td", { "data-field": "progress" }, el("progress", { max: "1", value: String(f.progress) }), ` ${Math.round(f.progress * 100)}%`),
      el("td", { "data-field": "model" }, f.model_version_id ? `version ${f.model_version_id}` : (live(f) ? "" : f.message)),
      el("td", {}, live(f) ? el("button", { type: "button", class: "danger", onclick: () => cancelFit(f) }, "Cancel") : ""))))
  ) : el("p", { class: "hint" }, "No fits yet."));
}

function field(name, value) {
  return el("div", { class: "row" }, el("strong", {}, name + ":"), el("code", { "data-cred": name }, value), copyButton(() => value));
}

function showCredentials(robot, note) {
  const examples = Object.entries(robot.examples).map(([name, text]) =>
    el("div", {}, el("div", { class: "row" }, el("h3", {}, name), copyButton(() => text)), el("pre", { "data-example": name }, text)));
  document.getElementById("credentials").replaceChildren(el("div", { class: "secret", "data-testid": "credentials" },
    el("p", {}, el("strong", {}, `${robot.slug}: ${note}. `), "Copy the password now: it is shown once and not stored."),
    field("broker", `${robot.broker_host}:${robot.broker_port}`), field("username", robot.mqtt_username),
    field("password", robot.mqtt_password), field("client id", robot.client_id),
    field("watch username", robot.watch_username), field("watch password", robot.watch_password),
    field("frames topic", robot.topics.frames), field("results topic", robot.topics.results)), ...examples);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("robot-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const error = document.getElementById("robot-error");
    error.textContent = "";
    try {
      const robot = await api("POST", "/robots", { slug: document.getElementById("robot-slug").value,
        line_id: Number(document.getElementById("robot-line").value) });
      showCredentials(robot, "created");
      e.target.reset();
      await refresh();
    } catch (err) { error.textContent = err.message; }
  });
  poll(refresh, 2000);
});
