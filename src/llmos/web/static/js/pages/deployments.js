// Deployments: the list, and one deployment — its facts, workers, canary, and latency and
// throughput charts. The charts are honest about their source: llmos keeps serving figures
// as Prometheus counters and histograms (/metrics, already limited to the caller's teams),
// so this page reads them every few seconds and charts what changed between two reads —
// requests per second and the p50/p95 latency of the requests in that interval — from the
// moment the page was opened. Queue depth comes from /v1/monitor/overview.

import { api, maybe, seg } from "../api.js";
import { Chart } from "../charts.js";
import { badge, bytes, facts, fill, h, json, link, num, section, table, when } from "../dom.js";
import { qualified } from "./data.js";

const KEEP = 360; // points kept per chart (30 minutes at one read per 5 s)

export async function list(view) {
  const box = h("div");
  view.body.append(h("h1", null, "Deployments"), box);
  await view.every(5000, async () => {
    const r = await api("/v1/deployments");
    fill(box, table([
      { label: "name", get: (d) => link(`#/deployments/${seg(qualified(d))}`, d.name) },
      { label: "team", get: (d) => d.team },
      { label: "model", get: (d) => link(`#/models/${seg(d.team ? `${d.team}/${d.model}`
        : d.model)}/v/${seg(d.version)}`, `${d.model}:${d.version}`) },
      { label: "task", get: (d) => d.task },
      { label: "engine", get: (d) => d.engine },
      { label: "ready / replicas", get: (d) => `${d.ready_workers} / ${d.replicas}` },
      { label: "canary", get: (d) => (d.canary ? `v${d.canary.version} at ${d.canary.weight}%` : "") },
      { label: "problem", get: (d) => d.problem, class: "wide" },
    ], r.deployments, "no deployment (llmos deploy)"));
  });
}

// Prometheus text -> [{name, labels, value}]
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\"/g, '"').replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

// One read of a deployment's serving series: requests, 5xx, latency buckets {le: count}.
function reading(samples, d) {
  const mine = (s) => s.labels.deployment === d.name && (s.labels.team || null) === (d.team || null);
  const r = { at: Date.now() / 1000, requests: 0, errors: 0, buckets: new Map() };
  for (const s of samples) {
    if (!mine(s)) continue;
    if (s.name === "llmos_serving_requests_total") {
      r.requests += s.value;
      if (String(s.labels.status || "").startsWith("5")) r.errors += s.value;
    } else if (s.name === "llmos_serving_request_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      r.buckets.set(le, (r.buckets.get(le) || 0) + s.value);
    }
  }
  return r;
}

// The q-quantile of a cumulative histogram {le: count} (Prometheus' linear interpolation).
export function quantile(q, buckets) {
  const les = [...buckets.keys()].sort((a, b) => a - b);
  const total = les.length ? buckets.get(les.at(-1)) : 0;
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const le of les) {
    const c = buckets.get(le);
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((rank - prevCount) / Math.max(1e-12, c - prevCount));
    }
    prevLe = le;
    prevCount = c;
  }
  return prevLe;
}

function delta(a, b) {
  const out = new Map();
  for (const [le, c] of b.buckets) out.set(le, Math.max(0, c - (a.buckets.get(le) || 0)));
  return out;
}

function workersTable(workers) {
  return table([
    { label: "job", get: (w) => link(`#/jobs/${seg(w.job_id)}`, String(w.job_id)) },
    { label: "resident models", get: (w) => w.resident.map((m) => m.deployment || m.model || "?")
      .join(", ") },
    { label: "memory", get: (w) => `${bytes(w.used_bytes)} / ${bytes(w.budget_bytes)}` },
    { label: "loads", get: (w) => w.loads },
    { label: "evictions", get: (w) => w.evictions },
  ], workers || [], "no worker is up");
}

export async function detail(view, params) {
  const name = params.name;
  const head = h("div", { class: "title-row" });
  const about = h("div"), workers = h("div"), canary = h("div");
  const totals = h("div");
  const charts = h("div", { class: "grid charts" });
  view.body.append(head, section("About", about),
    section("Load", h("p", { class: "muted" }, "Read from /metrics every 5 s since this page " +
      "opened: requests per second, and the latency of the requests answered in each " +
      "interval."), totals, charts),
    section("Workers", workers), section("Canary", canary));
  const rate = view.own(new Chart(charts, { title: "throughput (requests/s)",
    series: [{ label: "requests/s" }, { label: "errors/s", color: "#d6336c" }], zero: true }));
  const lat = view.own(new Chart(charts, { title: "latency (s)",
    series: [{ label: "p50" }, { label: "p95" }], zero: true }));
  const queue = view.own(new Chart(charts, { title: "queue depth",
    series: [{ label: "waiting requests" }], zero: true }));
  const pts = { t: [], rps: [], eps: [], p50: [], p95: [], qt: [], q: [] };
  let prev = null;
  const trim = (arrs) => arrs.forEach((a) => a.splice(0, Math.max(0, a.length - KEEP)));

  await view.every(5000, async () => {
    const d = await api(`/v1/deployments/${seg(name)}`);
    fill(head, h("h1", null, `Deployment ${qualified(d)}`), " ",
      badge(d.problem ? "failing" : d.ready_workers ? "ready" : "starting"));
    fill(about, facts([
      ["model", link(`#/models/${seg(d.team ? `${d.team}/${d.model}` : d.model)}/v/${seg(d.version)}`,
        `${d.model}:${d.version}`)], ["ref", d.ref], ["task", d.task], ["route", d.route],
      ["engine", d.engine], ["replicas", `${d.ready_workers} ready of ${d.replicas}` +
        (d.min_replicas !== null && d.min_replicas !== undefined
          ? ` (autoscaling ${d.min_replicas}–${d.max_replicas})` : "")],
      ["scaling", d.scale_reason], ["pool", d.pool], ["priority", d.priority],
      ["max batch", d.max_batch], ["problem", d.problem], ["owner", d.owner],
      ["created", when(d.created_at)],
    ]));
    fill(workers, workersTable(d.workers));
    fill(canary, d.canary ? [facts([["version", d.canary.version],
      ["weight", `${d.canary.weight}%`]]), json(d.canary.stats)]
      : h("p", { class: "empty" }, "no canary in progress"));
    const [text, o] = await Promise.all([api("/metrics", { text: true }),
      maybe("/v1/monitor/overview")]);
    const now = reading(parseMetrics(text), d);
    fill(totals, facts([["requests since the daemon started", num(now.requests)],
      ["5xx answers", num(now.errors)],
      ["p50 / p95 latency since then", now.buckets.size ? `${num(quantile(0.5, now.buckets))} s /` +
        ` ${num(quantile(0.95, now.buckets))} s` : "no request yet"]]));
    if (prev) {
      const dt = Math.max(1e-3, now.at - prev.at);
      const inInterval = delta(prev, now);
      pts.t.push(now.at);
      pts.rps.push(Math.max(0, now.requests - prev.requests) / dt);
      pts.eps.push(Math.max(0, now.errors - prev.errors) / dt);
      pts.p50.push(quantile(0.5, inInterval));
      pts.p95.push(quantile(0.95, inInterval));
      trim([pts.t, pts.rps, pts.eps, pts.p50, pts.p95]);
      rate.update([pts.t, pts.rps, pts.eps]);
      lat.update([pts.t, pts.p50, pts.p95]);
    }
    prev = now;
    const mine = o && (o.deployments || []).find((x) => x.name === d.name && x.team === d.team);
    if (mine && mine.queue_depth !== null && mine.queue_depth !== undefined) {
      pts.qt.push(now.at);
      pts.q.push(mine.queue_depth);
      trim([pts.qt, pts.q]);
      queue.update([pts.qt, pts.q]);
    }
  });
}
