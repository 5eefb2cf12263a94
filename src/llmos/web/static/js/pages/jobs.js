// Jobs: the list (filtered by state and name) and one job — its facts, progress, metric
// charts (the loss curve...), what it used, its state history, its live log, and a cancel
// button. Everything comes from /v1/jobs and /v1/monitor/usage with the user's token: a
// job of another team is "not found" here as in the API.

import { api, ApiError, maybe, query, seg } from "../api.js";
import { Chart, seconds, UsageChart } from "../charts.js";
import { badge, bytes, facts, fill, h, json, link, message, num, section, since, table, when }
  from "../dom.js";

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const STATES = ["", "PENDING", "SCHEDULED", "RUNNING", "PREEMPTED", "SUCCEEDED", "FAILED",
  "CANCELLED"];

export async function list(view, _params, q) {
  const state = q.get("state") || "";
  const name = q.get("name") || "";
  const select = h("select", { id: "state-filter", "aria-label": "state" },
    STATES.map((s) => h("option", { value: s, selected: s === state }, s || "every state")));
  const search = h("input", { type: "search", id: "name-filter", value: name,
    placeholder: "name", "aria-label": "name" });
  const apply = (ev) => {
    if (ev) ev.preventDefault();
    const params = new URLSearchParams();
    if (select.value) params.set("state", select.value);
    if (search.value.trim()) params.set("name", search.value.trim());
    const qs = params.toString();
    location.hash = `#/jobs${qs ? `?${qs}` : ""}`;
  };
  select.addEventListener("change", apply);
  const box = h("div"), total = h("p", { class: "muted" });
  view.body.append(h("h1", null, "Jobs"),
    h("form", { class: "filters", onsubmit: apply }, select, search,
      h("button", { type: "submit" }, "Filter")), total, box);
  await view.every(3000, async () => {
    const r = await api(`/v1/jobs${query({ state: state || undefined, name: name || undefined,
      limit: 200 })}`);
    total.textContent = `${r.total} job${r.total === 1 ? "" : "s"}` +
      (r.total > r.jobs.length ? ` (newest ${r.jobs.length} shown)` : "");
    fill(box, table([
      { label: "id", get: (j) => link(`#/jobs/${seg(j.id)}`, String(j.id)) },
      { label: "name", get: (j) => link(`#/jobs/${seg(j.id)}`, j.name || "(no name)"),
        class: "wide" },
      { label: "state", get: (j) => badge(j.state) },
      { label: "team", get: (j) => j.team },
      { label: "owner", get: (j) => j.owner },
      { label: "program", get: (j) => j.program, class: "wide" },
      { label: "created", get: (j) => when(j.created_at) },
      { label: "ran", get: (j) => (j.started_at ? since(j.started_at, j.ended_at) : "") },
    ], r.jobs, "no job matches"));
  });
}

function resources(r) {
  const parts = [`${num(r.cpu)} cpu`, bytes(r.memory_mb * 1048576)];
  if (r.gpu) parts.push(`${r.gpu} gpu`);
  return parts.join(" · ");
}

function progress(p) {
  if (!p) return null;
  const frac = p.total ? Math.min(1, p.done / p.total) : null;
  const text = `${num(p.done)}${p.total ? ` / ${num(p.total)}` : ""} ${p.unit || ""}`;
  const el = h("progress", { max: 1 });
  if (frac !== null) el.value = frac;
  return h("div", { class: "progress" }, el, h("span", null, text));
}

// Metric series by name, as chart data: x = step when every point has one, else time.
function series(metrics) {
  const by = new Map();
  for (const m of metrics) (by.get(m.name) || by.set(m.name, []).get(m.name)).push(m);
  const out = [];
  for (const [name, pts] of by) {
    const steps = pts.every((p) => p.step !== null && p.step !== undefined);
    const sorted = steps ? [...pts].sort((a, b) => a.step - b.step) : pts;
    out.push({ name, steps, data: [sorted.map((p) => (steps ? p.step : seconds(p.at))),
      sorted.map((p) => p.value)] });
  }
  // the loss first, then the others by name
  return out.sort((a, b) => (a.name === "loss" ? -1 : b.name === "loss" ? 1
    : a.name.localeCompare(b.name)));
}

export async function detail(view, params) {
  const id = Number(params.id);
  if (!Number.isInteger(id) || id < 1) {
    view.body.append(message("error", "A job's id is a positive number."));
    return;
  }
  const head = h("div", { class: "title-row" });
  const about = h("div"), prog = h("div"), result = h("div");
  const chartsBox = h("div", { class: "grid charts" });
  const usageBox = h("div");
  const history = h("div");
  const logs = h("pre", { class: "logs", id: "job-logs", tabindex: "0" });
  view.body.append(head, section("About", about, prog, result),
    section("Metrics", chartsBox), section("Resources used", usageBox),
    section("State history", history), section("Log", logs));
  const usage = view.own(new UsageChart(usageBox, "cpu and memory"));
  const charts = new Map();
  let lastLog = null;

  const cancel = async (btn) => {
    if (!window.confirm(`Cancel job ${id}?`)) return;
    btn.disabled = true;
    try {
      await api(`/v1/jobs/${seg(id)}/cancel`, { method: "POST" });
      view.poke();
    } catch (e) {
      btn.disabled = false;
      window.alert(e.message);
    }
  };

  await view.every(2000, async () => {
    let job;
    try {
      job = await api(`/v1/jobs/${seg(id)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        fill(head, h("h1", null, `Job ${id}`));
        fill(about, message("error", e.message));
        return false;
      }
      throw e;
    }
    const done = TERMINAL.has(job.state);
    const btn = !done && !job.cancel_requested
      ? h("button", { class: "danger", id: "cancel-job" }, "Cancel") : null;
    if (btn) btn.addEventListener("click", () => cancel(btn));
    fill(head, h("h1", null, `Job ${job.id}`, job.name ? ` · ${job.name}` : ""), " ",
      badge(job.state), job.cancel_requested && !done ? h("span", { class: "muted" },
        " cancelling…") : null, btn);
    fill(about, facts([
      ["program", job.program], ["owner", job.owner], ["team", job.team],
      ["priority", job.priority], ["resources", resources(job.resources)],
      ["node", job.node], ["attempt", `${job.attempt} (failures ${job.failures})`],
      ["created", when(job.created_at)], ["started", when(job.started_at)],
      ["ended", when(job.ended_at)],
      ["ran for", job.started_at ? since(job.started_at, job.ended_at) : null],
      ["exit code", job.exit_code], ["signal", job.signal], ["reason", job.reason],
      ["params", Object.keys(job.params || {}).length ? json(job.params) : null],
    ]));
    fill(prog, progress(job.progress));
    fill(result, job.result !== null && job.result !== undefined
      ? [h("h3", null, "Result"), json(job.result)] : null);
    fill(history, table([
      { label: "at", get: (t) => when(t.at) },
      { label: "from", get: (t) => (t.from_state ? badge(t.from_state) : "") },
      { label: "to", get: (t) => badge(t.to_state) },
      { label: "attempt", get: (t) => t.attempt },
      { label: "reason", get: (t) => t.reason, class: "wide" },
    ], job.transitions || []));

    const [metrics, text, used] = await Promise.all([
      api(`/v1/jobs/${seg(id)}/metrics`),
      api(`/v1/jobs/${seg(id)}/logs${query({ tail: 500 })}`, { text: true }),
      maybe(`/v1/monitor/usage${query({ kind: "job", subject: id, window_s: 86400 })}`),
    ]);
    const all = series(metrics.metrics);
    if (all.length === 0) fill(chartsBox, h("p", { class: "empty" }, "no metric reported"));
    for (const s of all) {
      if (!charts.has(s.name)) {
        if (charts.size === 0) fill(chartsBox);
        charts.set(s.name, view.own(new Chart(chartsBox, { title: s.name, time: !s.steps,
          series: [{ label: s.name }], xLabel: s.steps ? "step" : "time" })));
      }
      charts.get(s.name).update(s.data);
    }
    usage.update(used);
    if (text !== lastLog) {
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = text || "(nothing written yet)";
      if (atEnd) logs.scrollTop = logs.scrollHeight;
      lastLog = text;
    }
    return !done; // a finished job changes no more: stop polling it
  });
}
