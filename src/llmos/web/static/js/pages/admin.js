// For administrators: the audit log (/v1/audit, with a check of its hash chain) and the
// alerts (/v1/alerts: the rules in force and what fires now). The navigation shows these
// pages to administrators only; the API decides what anyone may read all the same.

import { api, query } from "../api.js";
import { badge, fill, h, message, num, section, table, when } from "../dom.js";

export async function audit(view, _params, q) {
  const fields = ["actor", "action", "target"];
  const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { type: "search",
    name: f, placeholder: f, "aria-label": f, value: q.get(f) || "" })]));
  const apply = (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const f of fields) if (inputs[f].value.trim()) p.set(f, inputs[f].value.trim());
    location.hash = `#/audit${p.toString() ? `?${p}` : ""}`;
  };
  const verdict = h("div");
  const verify = h("button", { type: "button" }, "Verify the chain");
  verify.addEventListener("click", async () => {
    try {
      const v = await api("/v1/audit/verify");
      fill(verdict, message(v.ok ? "info" : "error",
        `${v.ok ? "Intact" : "BROKEN"}: ${num(v.records)} records. ${v.message}`));
    } catch (e) {
      fill(verdict, message("error", e.message));
    }
  });
  const box = h("div");
  view.body.append(h("h1", null, "Audit log"),
    h("form", { class: "filters", onsubmit: apply }, Object.values(inputs),
      h("button", { type: "submit" }, "Filter"), verify), verdict, box);
  await view.every(10000, async () => {
    const r = await api(`/v1/audit${query({ actor: q.get("actor"), action: q.get("action"),
      target: q.get("target"), limit: 200 })}`);
    fill(box, table([
      { label: "id", get: (x) => x.id },
      { label: "at", get: (x) => when(x.at) },
      { label: "actor", get: (x) => x.actor },
      { label: "action", get: (x) => x.action, class: "wide" },
      { label: "target", get: (x) => x.target, class: "wide" },
      { label: "outcome", get: (x) => x.outcome },
      { label: "detail", get: (x) => (Object.keys(x.detail || {}).length
        ? JSON.stringify(x.detail) : ""), class: "wide mono" },
    ], r.records, "no record matches"));
  });
}

export async function alerts(view) {
  const firing = h("div"), rules = h("div");
  view.body.append(h("h1", null, "Alerts"), section("Firing now", firing),
    section("Rules in force", rules));
  await view.every(5000, async () => {
    const r = await api("/v1/alerts");
    fill(firing, table([
      { label: "rule", get: (f) => f.rule },
      { label: "about", get: (f) => f.key },
      { label: "since", get: (f) => when(f.since) },
      { label: "value", get: (f) => num(f.value) },
      { label: "team", get: (f) => f.team },
      { label: "message", get: (f) => f.message, class: "wide" },
    ], r.firing, "nothing is firing"));
    fill(rules, table([
      { label: "name", get: (x) => x.name },
      { label: "kind", get: (x) => x.kind },
      { label: "severity", get: (x) => badge(x.severity) },
      { label: "params", get: (x) => JSON.stringify(x.params || {}), class: "wide mono" },
      { label: "webhook", get: (x) => (x.webhook ? "yes" : "") },
    ], r.rules, "no rule loaded (PUT /v1/alerts/rules)"));
  });
}


