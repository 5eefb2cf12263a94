// The overview: nodes (capacity, what is allocated, what is measured, GPUs, a chart of the
// last hour), running jobs with what they use, pending jobs with the reason each waits,
// deployments. From /v1/monitor/overview (lists already filtered to the caller's teams by
// the API); on a daemon without it, from /v1/nodes, /v1/jobs and /v1/deployments.

import { api, maybe, query, seg } from "../api.js";
import { UsageChart } from "../charts.js";
import { badge, bar, bytes, count, duration, fill, h, link, num, section, since, table }
  from "../dom.js";

async function fallback() {
  const [nodes, running, pending, deps] = await Promise.all([
    api("/v1/nodes"),
    api(`/v1/jobs${query({ state: "RUNNING", limit: 200 })}`),
    api(`/v1/jobs${query({ state: "PENDING", limit: 200 })}`),
    api("/v1/deployments"),
  ]);
  const now = Date.now();
  return {
    nodes: nodes.map((n) => ({
      name: n.name, state: n.state, capacity: n.capacity, usage: null,
      allocated: Object.fromEntries(Object.keys(n.capacity).map(
        (k) => [k, n.capacity[k] - (n.free[k] ?? 0)])),
      gpus: (n.gpus || []).map((g) => ({ ...g, allocated: g.free === false })),
    })),
    running: running.jobs.map((j) => ({ ...j, usage: null })),
    pending: pending.jobs.map((j) => ({ ...j, waiting_s: (now - new Date(j.created_at)) / 1000,
      reason: j.reason || "" })),
    deployments: deps.deployments.map((d) => ({ name: d.name, team: d.team,
      state: d.problem ? "failing" : d.ready_workers ? "ready" : "starting",
      replicas: d.replicas, ready: d.ready_workers, queue_depth: null })),
  };
}

// The API lists at most a few hundred running and pending jobs and counts them all.
function more(rows, total) {
  const hidden = (Number(total) || 0) - rows.length;
  return hidden > 0 ? h("p", { class: "more" }, `… and ${hidden} more`) : null;
}

function gpuRow(g) {
  const util = g.util === null || g.util === undefined ? "–" : `${Math.round(g.util * 100)} %`;
  const mem = g.memory_used_mb === null || g.memory_used_mb === undefined ? ""
    : ` · ${bytes(g.memory_used_mb * 1048576)} / ${bytes((g.memory_mb || 0) * 1048576)}`;
  return h("li", null, `GPU ${g.index} ${g.name || ""} — ${g.allocated ? "allocated" : "free"}`,
    ` · util ${util}${mem}`);
}

function nodeCard(n, chartBox) {
  const cap = n.capacity || {}, alloc = n.allocated || {}, used = n.usage;
  const mem = (mb) => bytes((mb || 0) * 1048576);
  return h("article", { class: "node card", dataset: { node: n.name } },
    h("h3", null, n.name, " ", badge(n.state)),
    bar(alloc.cpu, cap.cpu, `cpu allocated ${num(alloc.cpu)} / ${num(cap.cpu)}`),
    used ? bar(used.cpu, cap.cpu, `cpu used ${num(used.cpu)} cores`) : null,
    bar(alloc.memory_mb, cap.memory_mb,
      `memory allocated ${mem(alloc.memory_mb)} / ${mem(cap.memory_mb)}`),
    used ? bar(used.memory_mb, cap.memory_mb, `memory used ${mem(used.memory_mb)}`) : null,
    cap.gpu ? bar(alloc.gpu, cap.gpu, `gpus allocated ${alloc.gpu} / ${cap.gpu}`) : null,
    n.gpus && n.gpus.length ? h("ul", { class: "gpus" }, n.gpus.map(gpuRow)) : null,
    chartBox);
}

const jobLink = (j) => link(`#/jobs/${seg(j.id)}`, String(j.id));

export async function render(view) {
  const b = view.body;
  const nodesBox = h("div", { class: "grid" });
  const runningBox = h("div"), pendingBox = h("div"), depBox = h("div");
  b.append(h("h1", null, "Overview"), section("Nodes", nodesBox),
    section("Running jobs", runningBox), section("Pending jobs", pendingBox),
    section("Deployments", depBox));
  const charts = new Map();
  const chartBox = (name) => {
    if (!charts.has(name)) {
      const box = h("div", { class: "node-chart" });
      charts.set(name, { box, chart: view.own(new UsageChart(box, `${name}: last hour`)) });
    }
    return charts.get(name).box;
  };
  let names = [];
  await view.every(3000, async () => {
    const o = (await maybe("/v1/monitor/overview")) || (await fallback());
    names = o.nodes.map((n) => n.name);
    fill(nodesBox, o.nodes.map((n) => nodeCard(n, chartBox(n.name))));
    fill(runningBox, table([
      { label: "id", get: jobLink },
      { label: "name", get: (j) => j.name },
      { label: "team", get: (j) => j.team },
      { label: "program", get: (j) => j.program, class: "wide" },
      { label: "node", get: (j) => j.node },
      { label: "running for", get: (j) => since(j.started_at) },
      { label: "cpu", get: (j) => (j.usage ? num(j.usage.cpu) : "") },
      { label: "memory", get: (j) => (j.usage ? bytes(j.usage.memory_mb * 1048576) : "") },
    ], o.running, "no job is running"), more(o.running, o.running_total));
    fill(pendingBox, table([
      { label: "id", get: jobLink },
      { label: "name", get: (j) => j.name },
      { label: "team", get: (j) => j.team },
      { label: "priority", get: (j) => j.priority },
      { label: "waiting", get: (j) => duration(j.waiting_s) },
      { label: "why it waits", get: (j) => j.reason || "next in line", class: "wide" },
    ], o.pending, "no job is waiting"), more(o.pending, o.pending_total));
    fill(depBox, table([
      { label: "name", get: (d) => link(`#/deployments/${seg(d.team ? `${d.team}/${d.name}`
        : d.name)}`, d.name) },
      { label: "team", get: (d) => d.team },
      { label: "state", get: (d) => badge(d.state) },
      { label: "ready / replicas", get: (d) => `${d.ready} / ${d.replicas}` },
      { label: "queue", get: (d) => (d.queue_depth === null ? "" : count(d.queue_depth)) },
    ], o.deployments, "no deployment"));
  });
  view.every(10000, async () => {
    await Promise.all(names.map(async (name) => {
      const usage = await maybe(`/v1/monitor/usage${query({ kind: "node", subject: name,
        window_s: 3600 })}`);
      if (charts.has(name)) charts.get(name).chart.update(usage);
    }));
  });
}
