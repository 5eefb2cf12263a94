// Building the page. Every string that came from the API goes in as a text node
// (textContent): a job called `<img src=x onerror=alert(1)>` is shown as those
// characters, never parsed as HTML. Nothing here uses innerHTML.

// h("div", {class: "x", onclick: fn, href: "#/jobs/1"}, "text", child, [more]) -> element
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "href") el.setAttribute("href", safeHref(v));
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Only links inside the dashboard (hash routes) or to this origin's paths: `/x`, never
// `//host/x` (another site, same scheme) nor `/\host` (which browsers read as `//host`).
export function safeHref(v) {
  const s = String(v);
  return s.startsWith("#") || /^\/(?![/\\])/.test(s) ? s : "#/";
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Replace el's children.
export function fill(el, ...children) {
  clear(el);
  return append(el, children);
}

export const link = (href, ...children) => h("a", { href }, ...children);

// A table: columns [{label, get: row => node|string, class}], rows; empty: a line.
export function table(columns, rows, empty = "nothing yet") {
  if (!rows || rows.length === 0) return h("p", { class: "empty" }, empty);
  const head = h("tr", null, columns.map((c) => h("th", { class: c.class }, c.label)));
  const body = rows.map((r) => h("tr", null, columns.map((c) => {
    const v = c.get(r);
    return h("td", { class: c.class }, v === undefined || v === null ? "" : v);
  })));
  return h("div", { class: "table-wrap" }, h("table", null, h("thead", null, head),
    h("tbody", null, body)));
}

// Key/value pairs as a definition list (values null/undefined left out).
export function facts(pairs) {
  const dl = h("dl", { class: "facts" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(h("dt", null, k), h("dd", null, v));
  }
  return dl;
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

const STATES = new Set(["PENDING", "QUEUED", "SCHEDULED", "RUNNING", "SUCCEEDED", "FAILED",
  "CANCELLED", "PREEMPTED", "RETRYING", "ready", "draining", "lost", "firing"]);

// A state as a coloured label (the class comes from a fixed set, not from the data).
export function badge(state) {
  const s = String(state ?? "");
  const cls = STATES.has(s) ? `badge s-${s.toLowerCase()}` : "badge";
  return h("span", { class: cls }, s || "?");
}

export function bar(used, total, label) {
  const frac = total > 0 ? Math.max(0, Math.min(1, used / total)) : 0;
  const fillEl = h("span", { class: "bar-fill" });
  fillEl.style.width = `${(frac * 100).toFixed(1)}%`; // CSSOM: allowed by the CSP
  if (frac > 0.9) fillEl.classList.add("hot");
  return h("div", { class: "bar", title: label },
    h("div", { class: "bar-track" }, fillEl), h("span", { class: "bar-label" }, label));
}

export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function since(iso, until) {
  if (!iso) return "";
  const end = until ? new Date(until) : new Date();
  return duration((end - new Date(iso)) / 1000);
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = Number(n), i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function num(n, digits = 3) {
  if (n === null || n === undefined || n === "") return "";
  const v = Number(n);
  if (!Number.isFinite(v)) return String(n);
  if (Number.isInteger(v)) return v.toLocaleString("en");
  return Number(v.toPrecision(digits)).toString();
}

export function count(n) {
  if (n === null || n === undefined) return "";
  const v = Number(n);
  if (v >= 1e9) return `${(v / 1e9).toFixed(1)} B`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} k`;
  return String(v);
}

// A horizontal bar per entry of {key: count}, largest first.
export function counts(obj, limit = 20) {
  const entries = Object.entries(obj || {}).sort((a, b) => b[1] - a[1]);
  if (entries.length === 0) return h("p", { class: "empty" }, "none recorded");
  const top = entries[0][1] || 1;
  const rows = entries.slice(0, limit).map(([k, v]) => {
    const fillEl = h("span", { class: "bar-fill" });
    fillEl.style.width = `${((v / top) * 100).toFixed(1)}%`;
    return h("div", { class: "count-row" }, h("span", { class: "count-key" }, k),
      h("div", { class: "bar-track" }, fillEl), h("span", { class: "count-val" }, num(v)));
  });
  const more = entries.length > limit ? h("p", { class: "muted" },
    `and ${entries.length - limit} more`) : null;
  return h("div", { class: "counts" }, rows, more);
}

// A JSON value, shown as indented text.
export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function message(kind, text) {
  return h("p", { class: `msg ${kind === "error" ? "error" : "info"}` }, text);
}
