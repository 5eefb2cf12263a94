// Models: the list; one model's versions and one version (facts, metrics, model card,
// lineage as a graph whose dataset node links to that dataset); two versions compared side
// by side. From /v1/registry/models and /v1/lineage/models with the user's token.

import { api, seg } from "../api.js";
import { bytes, count, facts, fill, h, link, message, num, section, table, when }
  from "../dom.js";
import { lineageGraph } from "../lineage.js";
import { qualified } from "./data.js";

export async function list(view) {
  const box = h("div");
  view.body.append(h("h1", null, "Models"), box);
  await view.every(10000, async () => {
    const r = await api("/v1/registry/models");
    fill(box, table([
      { label: "name", get: (m) => link(`#/models/${seg(qualified(m))}`, m.name) },
      { label: "team", get: (m) => m.team },
      { label: "owner", get: (m) => m.owner },
      { label: "versions", get: (m) => m.versions.length },
      { label: "aliases", get: (m) => Object.entries(m.aliases).map(([a, v]) => `${a} → ${v}`)
        .join(", ") },
      { label: "task (latest)", get: (m) => (m.versions.at(-1) || {}).task },
      { label: "parameters", get: (m) => count((m.versions.at(-1) || {}).parameters) },
      { label: "created", get: (m) => when(m.created_at) },
    ], r.models, "no model yet (llmos models import)"));
  });
}

// {a: {b: 1}} -> [["a · b", 1]]
export function flat(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix} · ${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) out.push(...flat(v, key));
    else out.push([key, v]);
  }
  return out;
}

function metricsTable(metrics) {
  return table([
    { label: "metric", get: (r) => r[0], class: "wide" },
    { label: "value", get: (r) => (typeof r[1] === "number" ? num(r[1], 4) : JSON.stringify(r[1])) },
  ], flat(metrics), "no metric recorded");
}

function about(v) {
  const lin = v.lineage || {};
  const ds = lin.dataset && typeof lin.dataset === "object" ? lin.dataset : null;
  return facts([
    ["task", v.task], ["architecture", v.architecture], ["parameters", count(v.parameters)],
    ["size", bytes(v.size_bytes)], ["dtype", v.dtype], ["context length", v.context_length],
    ["aliases", v.aliases.join(", ")], ["owner", v.owner], ["created", when(v.created_at)],
    ["made by job", v.job_id ? link(`#/jobs/${seg(v.job_id)}`, String(v.job_id)) : null],
    ["method", typeof lin.method === "string" ? lin.method : null],
    ["trained on", ds ? `${ds.name}:${ds.version}` : null],
  ]);
}

export async function detail(view, params) {
  const name = params.name;
  const m = await api(`/v1/registry/models/${seg(name)}`);
  const versions = m.versions || [];
  const ref = params.version || (versions.length ? String(versions.at(-1).version) : null);
  const picked = new Set();
  const compareBtn = h("button", { id: "compare", disabled: true }, "Compare the two chosen");
  compareBtn.addEventListener("click", () => {
    const [a, b] = [...picked].sort((x, y) => x - y);
    location.hash = `#/models/${seg(name)}/compare/${seg(a)}/${seg(b)}`;
  });
  const pick = (v) => {
    const box = h("input", { type: "checkbox", "aria-label": `choose version ${v.version}` });
    box.addEventListener("change", () => {
      if (box.checked) picked.add(v.version);
      else picked.delete(v.version);
      compareBtn.disabled = picked.size !== 2;
    });
    return box;
  };
  view.body.append(h("h1", null, `Model ${qualified(m)}`),
    facts([["team", m.team], ["owner", m.owner], ["created", when(m.created_at)],
      ["aliases", Object.entries(m.aliases).map(([a, v]) => `${a} → ${v}`).join(", ")]]),
    section("Versions", table([
      { label: "", get: pick },
      { label: "version", get: (v) => link(`#/models/${seg(name)}/v/${seg(v.version)}`,
        String(v.version), String(v.version) === ref ? " (shown)" : "") },
      { label: "task", get: (v) => v.task },
      { label: "parameters", get: (v) => count(v.parameters) },
      { label: "size", get: (v) => bytes(v.size_bytes) },
      { label: "job", get: (v) => (v.job_id ? link(`#/jobs/${seg(v.job_id)}`, String(v.job_id)) : "") },
      { label: "created", get: (v) => when(v.created_at) },
    ], versions, "no version"), versions.length > 1 ? compareBtn : null));
  if (ref === null) return;
  const base = `/v1/registry/models/${seg(name)}/versions/${seg(ref)}`;
  const v = await api(base);
  const card = h("pre", { class: "card-text" }, "loading…");
  const lineage = h("div", null, h("p", { class: "muted" }, "loading…"));
  view.body.append(h("h2", null, `Version ${v.version}`), section("About", about(v)),
    section("Metrics", metricsTable(v.metrics)), section("Lineage", lineage),
    section("Model card", card));
  const [text, tree] = await Promise.all([
    api(`${base}/card`, { text: true }).catch((e) => e),
    api(`/v1/lineage/models/${seg(`${name}:${v.version}`)}`).catch((e) => e),
  ]);
  card.textContent = text instanceof Error ? text.message : text;
  fill(lineage, tree instanceof Error ? message("error", tree.message) : lineageGraph(tree));
}

export async function compare(view, params) {
  const name = params.name;
  const [a, b] = await Promise.all([params.a, params.b].map((r) =>
    api(`/v1/registry/models/${seg(name)}/versions/${seg(r)}`)));
  const rows = [
    ["task", (v) => v.task], ["architecture", (v) => v.architecture],
    ["parameters", (v) => count(v.parameters)], ["size", (v) => bytes(v.size_bytes)],
    ["dtype", (v) => v.dtype], ["context length", (v) => v.context_length],
    ["aliases", (v) => v.aliases.join(", ")], ["created", (v) => when(v.created_at)],
    ["job", (v) => v.job_id], ["method", (v) => (v.lineage || {}).method],
    ["trained on", (v) => { const d = (v.lineage || {}).dataset;
      return d && typeof d === "object" ? `${d.name}:${d.version}` : ""; }],
    ["base", (v) => { const d = (v.lineage || {}).base;
      return d && typeof d === "object" ? `${d.model}:${d.version}` : ""; }],
  ].map(([label, get]) => [label, get(a), get(b)]);
  const ma = new Map(flat(a.metrics)), mb = new Map(flat(b.metrics));
  const show = (x) => (x === undefined ? "–" : typeof x === "number" ? num(x, 4) : JSON.stringify(x));
  for (const key of [...new Set([...ma.keys(), ...mb.keys()])].sort()) {
    rows.push([key, show(ma.get(key)), show(mb.get(key))]);
  }
  const cols = [
    { label: "", get: (r) => r[0], class: "wide" },
    { label: `version ${a.version}`, get: (r) => (r[1] === null || r[1] === undefined ? "" : String(r[1])) },
    { label: `version ${b.version}`, get: (r) => (r[2] === null || r[2] === undefined ? "" : String(r[2])) },
    { label: "", get: (r) => (String(r[1] ?? "") !== String(r[2] ?? "") ? "differs" : "") },
  ];
  view.body.append(h("h1", null, `Model ${name}: version ${a.version} and ${b.version}`),
    h("p", null, link(`#/models/${seg(name)}`, "Back to the model")),
    section("Side by side", table(cols, rows)),
    h("div", { class: "grid two" },
      section(`Lineage of version ${a.version}`, h("div", { id: "lin-a" })),
      section(`Lineage of version ${b.version}`, h("div", { id: "lin-b" }))));
  const trees = await Promise.all([a, b].map((v) =>
    api(`/v1/lineage/models/${seg(`${name}:${v.version}`)}`).catch((e) => e)));
  for (const [i, tree] of trees.entries()) {
    const box = view.body.querySelector(i === 0 ? "#lin-a" : "#lin-b");
    fill(box, tree instanceof Error ? message("error", tree.message) : lineageGraph(tree));
  }
}
