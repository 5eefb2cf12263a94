// Datasets: the list, and one version — its statistics (documents, splits, per-label and
// per-language counts, what the cleaning removed), a sample of its rows, and its lineage
// as a graph (where it came from; the models trained on it). From /v1/datasets and
// /v1/lineage/datasets with the user's token.

import { api, seg } from "../api.js";
import { bytes, count, counts, facts, fill, h, link, message, num, section, table, when }
  from "../dom.js";
import { lineageGraph } from "../lineage.js";

export const qualified = (x) => (x.team ? `${x.team}/${x.name}` : x.name);

export async function list(view) {
  const box = h("div");
  view.body.append(h("h1", null, "Datasets"), box);
  await view.every(10000, async () => {
    const r = await api("/v1/datasets");
    fill(box, table([
      { label: "name", get: (d) => link(`#/datasets/${seg(qualified(d))}`, d.name) },
      { label: "team", get: (d) => d.team },
      { label: "owner", get: (d) => d.owner },
      { label: "versions", get: (d) => d.versions.length },
      { label: "documents (latest)", get: (d) => {
        const v = d.versions[d.versions.length - 1];
        return v ? num(v.documents) : "";
      } },
      { label: "created", get: (d) => when(d.created_at) },
    ], r.datasets, "no dataset yet (llmos data ingest)"));
  });
}

function splitsTable(splits) {
  const rows = Object.entries(splits || {}).map(([name, s]) => ({ name, ...s }));
  return table([
    { label: "split", get: (s) => s.name },
    { label: "documents", get: (s) => num(s.documents) },
    { label: "text", get: (s) => bytes(s.text_bytes) },
    { label: "tokens", get: (s) => (s.tokens === undefined ? "" : count(s.tokens)) },
  ], rows, "no split recorded");
}

function cell(value) {
  if (value === null || value === undefined) return "";
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s.length > 300 ? `${s.slice(0, 299)}…` : s;
}

function rowsTable(rows) {
  if (!rows.length) return h("p", { class: "empty" }, "no rows");
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))].filter((k) => k !== "id");
  return table(keys.map((k) => ({ label: k, get: (r) => cell(r[k]),
    class: k === "text" ? "wide text" : undefined })), rows);
}

export async function detail(view, params) {
  const name = params.name;
  const ds = await api(`/v1/datasets/${seg(name)}`);
  const versions = ds.versions || [];
  const chosen = params.version || (versions.length ? String(versions[versions.length - 1].version)
    : null);
  view.body.append(h("h1", null, `Dataset ${qualified(ds)}`),
    facts([["team", ds.team], ["owner", ds.owner], ["created", when(ds.created_at)]]),
    section("Versions", table([
      { label: "version", get: (v) => link(`#/datasets/${seg(name)}/v/${seg(v.version)}`,
        String(v.version), String(v.version) === chosen ? " (shown)" : "") },
      { label: "documents", get: (v) => num(v.documents) },
      { label: "content hash", get: (v) => v.content_hash.slice(0, 16), class: "mono" },
      { label: "job", get: (v) => (v.job_id ? link(`#/jobs/${seg(v.job_id)}`, String(v.job_id)) : "") },
      { label: "created", get: (v) => when(v.created_at) },
    ], versions, "no version yet")));
  if (chosen === null) return;
  const v = await api(`/v1/datasets/${seg(name)}/versions/${seg(chosen)}`);
  const st = v.stats || {};
  const about = facts([
    ["version", v.version], ["documents", num(st.documents)], ["text", bytes(st.text_bytes)],
    ["tokens", st.tokens === undefined ? null : count(st.tokens)],
    ["content hash", v.content_hash], ["shards", v.shards.length],
    ["made by job", v.job_id ? link(`#/jobs/${seg(v.job_id)}`, String(v.job_id)) : null],
    ["created", when(v.created_at)],
    ["columns", Object.entries(v.schema || {}).map(([k, t]) => `${k}: ${t}`).join(", ")],
    ["input", st.input ? `${num(st.input.files)} files, ${bytes(st.input.bytes)}, ` +
      `${num(st.input.documents)} documents read` : null],
  ]);
  const sample = h("div", null, h("p", { class: "muted" }, "loading…"));
  const lineage = h("div", null, h("p", { class: "muted" }, "loading…"));
  view.body.append(h("h2", null, `Version ${v.version}`),
    section("Statistics", about, h("h3", null, "Splits"), splitsTable(st.splits)),
    h("div", { class: "grid two" },
      section("Per label", counts(st.labels)), section("Per language", counts(st.languages))),
    h("div", { class: "grid two" },
      section("Removed (by step and reason)", counts(st.removed)),
      section("Changed (by cleaning step)", counts(st.changed))),
    section("Sample rows", sample), section("Lineage", lineage));
  const [rows, tree] = await Promise.all([
    api(`/v1/datasets/${seg(name)}/versions/${seg(v.version)}/head?n=20`).catch((e) => e),
    api(`/v1/lineage/datasets/${seg(`${name}:${v.version}`)}`).catch((e) => e),
  ]);
  fill(sample, rows instanceof Error ? message("error", rows.message) : rowsTable(rows.rows));
  fill(lineage, tree instanceof Error ? message("error", tree.message) : lineageGraph(tree));
}
