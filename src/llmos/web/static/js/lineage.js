// Lineage (/v1/lineage/...) drawn as a graph: upstream on the left, downstream on the
// right. The API's tree (a node's `inputs` are what it was made from; `served_by` and
// `used_by` point downstream; a step's `job` and `outputs`; a run's `steps`) is flattened
// into nodes and edges, each node put in the layer one past its furthest input (a longest-
// path layering), ordered in its layer by where its inputs sit, and drawn as SVG built
// element by element (names go in as text). A model, dataset, job or deployment node is a
// link to its page; a hidden node (another team's) shows only its kind.

import { seg } from "./api.js";
import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const COL_W = 230, NODE_W = 190, NODE_H = 46, ROW_H = 60, PAD = 12;

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const qualified = (n) => (n.team ? `${n.team}/${n.name}` : n.name);

// The link of a node (a dashboard route) and its two lines of text.
function describe(n) {
  if (n.hidden) return { title: n.kind, label: "hidden (another team)", href: null };
  if (n.missing) return { title: n.kind, label: "missing", href: null };
  const v = n.version !== undefined && n.version !== null ? `:${n.version}` : "";
  switch (n.kind) {
    case "model":
      return { title: "model", label: `${qualified(n)}${v}`,
        href: `#/models/${seg(qualified(n))}/v/${seg(n.version)}` };
    case "dataset":
      return { title: "dataset", label: `${qualified(n)}${v}`,
        href: `#/datasets/${seg(qualified(n))}/v/${seg(n.version)}` };
    case "deployment":
      return { title: `deployment${n.serves ? ` (${n.serves} ${n.weight}%)` : ""}`,
        label: qualified(n), href: `#/deployments/${seg(qualified(n))}` };
    case "job":
      return { title: `job${n.state ? ` · ${n.state}` : ""}`,
        label: `${n.id} ${n.program || ""}`.trim(), href: `#/jobs/${seg(n.id)}` };
    case "step":
      return { title: `step · ${n.pipeline || ""} run ${n.run ?? ""}`, label: n.name,
        href: n.job && n.job.id ? `#/jobs/${seg(n.job.id)}` : null };
    case "run":
      return { title: "pipeline run", label: `${n.pipeline} #${n.id}`, href: null };
    case "file": {
      const path = String(n.path || "");
      return { title: "file", label: path.split("/").pop() || path, href: null,
        full: `${path} sha256 ${n.sha256 || ""}` };
    }
    default:
      return { title: String(n.kind || "?"), label: String(n.name || n.id || ""), href: null };
  }
}

function keyOf(n, fresh) {
  if (n.hidden || n.missing) return `${n.kind}:?:${fresh()}`;
  switch (n.kind) {
    case "job": return `job:${n.id}`;
    case "file": return `file:${n.sha256 || n.path}`;
    case "step": return `step:${n.run}:${n.name}`;
    case "run": return `run:${n.id}`;
    default: return `${n.kind}:${n.team || ""}/${n.name}:${n.version ?? ""}`;
  }
}

// The tree as {nodes: Map(key -> node), edges: [[from, to]]} (from upstream to downstream).
export function flatten(root) {
  const nodes = new Map(), edges = [];
  let counter = 0;
  const fresh = () => (counter += 1);
  const edge = (a, b) => { if (a !== b) edges.push([a, b]); };
  const walk = (n) => {
    if (!n || typeof n !== "object") return null;
    const key = keyOf(n, fresh);
    const seen = nodes.get(key);
    if (!seen || (seen.repeat && !n.repeat)) nodes.set(key, n);
    for (const i of n.inputs || []) edge(walk(i), key);
    if (n.kind === "step" && n.job && typeof n.job === "object") edge(walk(n.job), key);
    for (const o of n.outputs || []) edge(key, walk(o));
    for (const s of n.steps || []) edge(walk(s), key);
    for (const d of n.served_by || []) edge(key, walk(d));
    for (const m of n.used_by || []) edge(key, walk(m));
    return key;
  };
  const rootKey = walk(root);
  const unique = new Map(edges.filter(([a, b]) => a && b).map((e) => [e.join("\u0000"), e]));
  return { nodes, edges: [...unique.values()], root: rootKey };
}

// Layer per node (longest path from a source) and order within layers.
export function layout(graph) {
  const preds = new Map([...graph.nodes.keys()].map((k) => [k, []]));
  for (const [a, b] of graph.edges) preds.get(b).push(a);
  const layer = new Map(), visiting = new Set();
  const depth = (k) => {
    if (layer.has(k)) return layer.get(k);
    if (visiting.has(k)) return 0; // a cycle in recorded lineage: cut it here
    visiting.add(k);
    const d = Math.max(-1, ...preds.get(k).map(depth)) + 1;
    visiting.delete(k);
    layer.set(k, d);
    return d;
  };
  for (const k of graph.nodes.keys()) depth(k);
  const columns = [];
  for (const [k, d] of layer) (columns[d] = columns[d] || []).push(k);
  const row = new Map();
  columns.forEach((keys, d) => {
    if (d > 0) {
      const centre = (k) => {
        const ps = preds.get(k).filter((p) => row.has(p));
        return ps.length ? ps.reduce((s, p) => s + row.get(p), 0) / ps.length : 0;
      };
      keys.sort((a, b) => centre(a) - centre(b));
    }
    keys.forEach((k, i) => row.set(k, i));
  });
  return { layer, row, columns };
}

function cut(text, max = 26) {
  const s = String(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

// The graph of `tree` as an element (an SVG in a scrolling box).
export function lineageGraph(tree) {
  const graph = flatten(tree);
  const { layer, row, columns } = layout(graph);
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const width = columns.length * COL_W + PAD * 2 - (COL_W - NODE_W);
  const height = rows * ROW_H + PAD * 2 - (ROW_H - NODE_H);
  const pos = (k) => ({ x: PAD + layer.get(k) * COL_W, y: PAD + row.get(k) * ROW_H });
  const root = svg("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "lineage graph" });
  const edges = svg("g", { class: "edges" });
  for (const [a, b] of graph.edges) {
    const p = pos(a), q = pos(b);
    const x1 = p.x + NODE_W, y1 = p.y + NODE_H / 2, x2 = q.x, y2 = q.y + NODE_H / 2;
    const mid = (x1 + x2) / 2;
    edges.append(svg("path", { d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}` }));
  }
  root.append(edges);
  for (const [k, n] of graph.nodes) {
    const { x, y } = pos(k);
    const d = describe(n);
    const cls = ["node", `k-${/^[a-z]+$/.test(n.kind) ? n.kind : "other"}`];
    if (k === graph.root) cls.push("root");
    if (n.hidden || n.missing) cls.push("hidden");
    const g = svg("g", { class: cls.join(" "), transform: `translate(${x},${y})`,
      "data-kind": n.kind, "data-label": d.label },
    svg("title", null, d.full || `${d.title}: ${d.label}`),
    svg("rect", { width: NODE_W, height: NODE_H, rx: 6 }),
    svg("text", { x: 10, y: 17, class: "kind" }, cut(d.title, 30)),
    svg("text", { x: 10, y: 35, class: "name" }, cut(d.label)));
    if (d.href) {
      const a = svg("a", { href: d.href, class: "node-link" });
      a.append(g);
      root.append(a);
    } else {
      root.append(g);
    }
  }
  return h("div", { class: "lineage-box" }, root);
}
