/* Plant manager's model rollout, for the slice chosen under Capacity: its steps (shadow, canary shares, full),
 * the comparison of the current and the new model in this step, advance or abort, and starting a new one. */
"use strict";
(() => {
  const { api, flash, poll, el, fmt } = Lineside;
  let shown = null;  // the rollout on screen
  const $ = (id) => document.getElementById(id);
  const chosenSlice = () => $("slice").value;
  const stepText = (s) => (s.stage === "canary" ? `canary ${Math.round(s.share * 100)} %` : s.stage);

  /* What a finished step showed, in a few words: shadow agreement, or the new model's verdicts and fail rate. */
  function stepOutcome(done) {
    const c = done.comparison || {}, candidate = c.candidate || {}, current = c.current || {};
    if (done.stage === "shadow" && c.compared) return `${c.compared} frames judged by both, ${fmt.pct(c.disagreement_rate)} disagreed`;
    if (!candidate.frames) return "";
    return `${candidate.frames} verdicts by the new model, fail rate ${fmt.pct(candidate.fail_rate)} (current ${fmt.pct(current.fail_rate)})`;
  }

  function showSteps(rollout) {
    const finished = Object.fromEntries(rollout.history.map((h) => [h.step, h]));
    $("rollout-steps").replaceChildren(...rollout.steps.map((s, i) => {
      const ended = rollout.state !== "running" && i === rollout.step;
      const state = i < rollout.step || rollout.state === "completed" ? "done"
        : i === rollout.step && rollout.state === "running" ? "now" : ended ? "stopped" : "";
      const outcome = finished[i] ? stepOutcome(finished[i]) : "";
      return el("li", { "data-state": state, "aria-current": state === "now" ? "step" : "false" },
        el("strong", {}, stepText(s)), outcome ? el("span", { class: "hint" }, ` · ${outcome}`) : "");
    }));
  }

  function showComparison(c, models) {
    const row = (label, m) => el("tr", {}, el("td", {}, label), el("td", { class: "num" }, String(m.frames)),
      el("td", { class: "num" }, fmt.pct(m.fail_rate)), el("td", { class: "num" }, fmt.pct(m.error_rate)),
      el("td", { class: "num" }, m.p99_over_ms ? `> ${m.p99_over_ms} ms` : fmt.ms(m.p99_ms)));
    $("rollout-compare").querySelector("tbody").replaceChildren(row(`Current (${models.current})`, c.current),
      row(`New (${models.candidate})`, c.candidate));
    $("rollout-compare").hidden = false;
    const a = c.agreement || {};
    $("rollout-agreement").textContent = c.compared ? `Shadow: ${c.compared} frames judged by both; they disagreed on ` +
      `${fmt.pct(c.disagreement_rate)} (current pass / new fail: ${a["pass/fail"] || 0}, current fail / new pass: ` +
      `${a["fail/pass"] || 0})` + (c.shadow_skipped ? `; ${c.shadow_skipped} frames skipped while the new model lagged` : "")
      : "";
  }

  async function refreshRollout() {
    const slice = chosenSlice();
    if (!slice) return;
    const [rollout] = await api("GET", `/rollouts?slice_id=${slice}&limit=1`);
    shown = rollout || null;
    $("rollout-form").hidden = Boolean(rollout && rollout.state === "running");
    $("rollout-actions").hidden = !(rollout && rollout.state === "running");
    if (!rollout) {
      $("rollout-summary").textContent = "No rollout on this slice yet.";
      $("rollout-steps").replaceChildren();
      $("rollout-compare").hidden = true;
      $("rollout-agreement").textContent = "";
      return;
    }
    const models = Object.fromEntries((await api("GET", "/models")).map((m) => [m.id, `${m.name} ${m.version}`]));
    const names = { current: models[rollout.from_model_version_id], candidate: models[rollout.model_version_id] };
    const state = rollout.state === "running"
      ? `${stepText(rollout)} since ${fmt.time(rollout.step_started_at)} (watched ${rollout.window_s} s)`
      : rollout.state.replace("_", " ");
    const why = rollout.reason.startsWith(state) ? rollout.reason : `${state}. ${rollout.reason}`;  // "completed: ..."
    $("rollout-summary").textContent = `${names.current} → ${names.candidate}: ${why}`;
    showSteps(rollout);
    const figures = rollout.state === "running" || !rollout.history.length ? rollout.comparison
      : rollout.history[rollout.history.length - 1].comparison;
    showComparison(figures, names);
  }

  async function refreshModels() {
    const select = $("rollout-model");
    const models = await api("GET", "/models");
    const key = models.map((m) => m.id).join(",");
    if (select.dataset.key === key) return;
    select.dataset.key = key;
    select.replaceChildren(...models.map((m) => el("option", { value: m.id }, `${m.name} ${m.version}`)));
  }

  async function steer(move) {
    if (!shown) return;
    try {
      await api("POST", `/rollouts/${shown.id}/${move}`);
      flash(move === "abort" ? "Rollout aborted: back to the current model" : "Rollout advanced");
      await refreshRollout();
    } catch (e) { $("rollout-error").textContent = e.message; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("rollout-advance").addEventListener("click", () => steer("advance"));
    $("rollout-abort").addEventListener("click", () => steer("abort"));
    $("slice").addEventListener("change", refreshRollout);
    $("rollout-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("rollout-error").textContent = "";
      const shares = $("rollout-shares").value.split(",").map((v) => v.trim()).filter(Boolean).map((v) => Number(v) / 100);
      try {
        await api("POST", "/rollouts", { slice_id: Number(chosenSlice()), model_version_id: Number($("rollout-model").value),
          shadow: $("rollout-shadow").checked, canary_shares: shares, window_s: Number($("rollout-window").value) });
        flash("Rollout started");
        await refreshRollout();
      } catch (e) { $("rollout-error").textContent = e.message; }
    });
    poll(refreshModels, 30000);
    poll(refreshRollout, 3000);
  });
})();
