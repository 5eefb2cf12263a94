// The dashboard's shell: sign in and out, the hash router (`#/jobs/12`: the token is never
// in a URL, and a route is only a view), the live loop of the page shown (it polls, and a
// change announced on /v1/events makes it refresh at once), and the navigation.

import { api, followEvents, session, whenUnauthorized } from "./api.js";
import { fill, h, message } from "./dom.js";
import * as admin from "./pages/admin.js";
import * as data from "./pages/data.js";
import * as deployments from "./pages/deployments.js";
import * as jobs from "./pages/jobs.js";
import * as models from "./pages/models.js";
import * as overview from "./pages/overview.js";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
let current = null; // the View shown
let events = null; // the AbortController of the /v1/events follower

// One page's lifetime: its refresh loops, its charts, its requests; all end on leaving it.
export class View {
  constructor() {
    this.alive = true;
    this.loops = [];
    this.owned = [];
    this.abort = new AbortController();
    this.banner = h("div", { class: "banner" });
    this.body = h("div", { class: "page" });
    fill(main, this.banner, this.body);
  }

  // Run fn now and every ms while the page is shown; fn returning false ends the loop.
  every(ms, fn) {
    const loop = { timer: null, busy: false, stopped: false };
    loop.run = async () => {
      if (!this.alive || loop.stopped || loop.busy) return;
      clearTimeout(loop.timer);
      loop.busy = true;
      try {
        const more = await fn();
        if (more === false) loop.stopped = true;
        fill(this.banner);
        statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
      } catch (e) {
        if (this.alive && e.status !== 401) fill(this.banner, message("error", e.message));
      } finally {
        loop.busy = false;
      }
      if (this.alive && !loop.stopped) loop.timer = setTimeout(loop.run, ms);
    };
    this.loops.push(loop);
    return loop.run();
  }

  // Something changed (an event): refresh soon, once for a burst of events.
  poke() {
    clearTimeout(this.poked);
    this.poked = setTimeout(() => this.loops.forEach((l) => l.run()), 250);
  }

  own(thing) {
    this.owned.push(thing);
    return thing;
  }

  close() {
    this.alive = false;
    clearTimeout(this.poked);
    this.loops.forEach((l) => clearTimeout(l.timer));
    this.abort.abort();
    this.owned.forEach((t) => t.destroy());
  }
}

const ROUTES = [
  [[""], overview.render],
  [["jobs"], jobs.list],
  [["jobs", ":id"], jobs.detail],
  [["datasets"], data.list],
  [["datasets", ":name"], data.detail],
  [["datasets", ":name", "v", ":version"], data.detail],
  [["models"], models.list],
  [["models", ":name"], models.detail],
  [["models", ":name", "v", ":version"], models.detail],
  [["models", ":name", "compare", ":a", ":b"], models.compare],
  [["deployments"], deployments.list],
  [["deployments", ":name"], deployments.detail],
  [["audit"], admin.audit],
  [["alerts"], admin.alerts],
];

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q] = raw.split("?", 2);
  let parts;
  try {
    parts = path.split("/").filter((p, i) => p !== "" || i === 0).map(decodeURIComponent);
  } catch (_) {
    parts = ["?"];
  }
  if (parts.length === 0) parts = [""];
  return { parts, query: new URLSearchParams(q || "") };
}

// What a route parameter must look like (others: any text, always sent through seg()).
// A job id is digits only: `#/jobs/..%2Fpipelines%2Fruns%2F3` is "not found", never a
// path outside /v1/jobs/.
const PARAM_FORMS = { id: /^\d+$/ };

function match(parts) {
  for (const [pattern, page] of ROUTES) {
    if (pattern.length !== parts.length) continue;
    const params = {};
    const fits = (p, i) => {
      if (!p.startsWith(":")) return p === parts[i];
      const form = PARAM_FORMS[p.slice(1)];
      params[p.slice(1)] = parts[i];
      return !form || form.test(parts[i]);
    };
    if (pattern.every(fits)) return { page, params };
  }
  return null;
}

async function route() {
  if (current) current.close();
  current = null;
  const { parts, query } = parseHash();
  if (parts[0] === "signin" || !session.token()) return signInPage();
  if (!session.me) {
    try {
      session.me = await api("/v1/auth/whoami", { quiet: true });
    } catch (e) {
      if (e.status === 401) session.signOut();
      return signInPage(e.status === 401 ? "Your session ended: sign in again." : e.message);
    }
    shell();
  }
  highlight(parts[0]);
  delete main.dataset.ready;
  const found = match(parts);
  const view = (current = new View());
  if (!found) {
    view.body.append(h("h1", null, "Not found"), h("p", null, "No such page. ",
      h("a", { href: "#/" }, "Back to the overview")));
    main.dataset.ready = "1";
    return;
  }
  try {
    await found.page(view, found.params, query);
  } catch (e) {
    if (view.alive) fill(view.banner, message("error", e.message));
  } finally {
    if (view.alive) main.dataset.ready = "1"; // the first data is shown (tests wait for it)
  }
}

function highlight(first) {
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.route === (first || "overview"));
  }
  document.getElementById("nav").classList.remove("open");
}

function shell() {
  const me = session.me;
  document.body.classList.toggle("signed-in", Boolean(me));
  for (const a of document.querySelectorAll(".admin-only")) a.hidden = !(me && me.is_admin);
  document.getElementById("who").textContent = me
    ? `${me.name}${me.team ? ` · ${me.team}` : ""}${me.is_admin ? " · admin" : ""}` : "";
  if (me && !events) {
    events = new AbortController();
    followEvents(() => current && current.poke(), events.signal);
  }
}

function signOut(note) {
  session.signOut();
  session.me = null;
  if (events) events.abort();
  events = null;
  shell();
  signInPage(note);
}

function signInPage(note) {
  if (current) current.close();
  current = null;
  session.me = null;
  shell();
  if (location.hash !== "#/signin") history.replaceState(null, "", "#/signin");
  const input = h("input", { type: "password", id: "token", name: "token", required: true,
    autocomplete: "off", spellcheck: "false", placeholder: "llmos_…" });
  const out = h("div", { class: "signin-msg" }, note ? message("error", note) : null);
  const form = h("form", { class: "signin card", method: "post", id: "signin-form" },
    h("h1", null, "Sign in to llmos"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { class: "muted" }, "The token stays in this browser tab (session storage) and is " +
      "sent only in request headers. Make one with `llmos tokens create`."),
    h("button", { type: "submit" }, "Sign in"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    session.signIn(token);
    try {
      session.me = await api("/v1/auth/whoami", { quiet: true });
    } catch (e) {
      session.signOut();
      fill(out, message("error", e.status === 401 ? "That token is not valid." : e.message));
      return;
    }
    input.value = "";
    shell();
    location.hash = "#/";
  });
  fill(main, form);
  input.focus();
}

whenUnauthorized(() => signOut("Your session ended (the token was refused): sign in again."));
document.getElementById("signout").addEventListener("click", () => signOut());
document.getElementById("menu-toggle").addEventListener("click", () => {
  const nav = document.getElementById("nav");
  nav.classList.toggle("open");
});
window.addEventListener("hashchange", route);
route();
