// The REST API as the dashboard reaches it: every request carries the signed-in token as
// `Authorization: Bearer` (never in a URL, never in a cookie), so the pages see exactly
// what that token may see. The token lives in sessionStorage: it goes when the tab closes
// or the user signs out.

const KEY = "llmos.token";

export const session = {
  token: () => sessionStorage.getItem(KEY),
  signIn: (token) => sessionStorage.setItem(KEY, token),
  signOut: () => sessionStorage.removeItem(KEY),
  me: null, // /v1/auth/whoami of the token, once signed in
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Called when the API refuses the token (expired, revoked): the app signs out.
let onUnauthorized = () => {};
export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

function headers(extra) {
  const h = { Authorization: `Bearer ${session.token() || ""}`, ...extra };
  return h;
}

async function errorOf(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    const err = body && body.error;
    message = typeof err === "string" ? err : (err && err.message) || message;
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(resp.status, message);
}

// GET (or another method with a JSON body) -> parsed JSON, or text with {text: true}.
// A refused token signs the tab out, unless {quiet: true} (the sign-in form's own check).
export async function api(path, { method = "GET", body, text = false, signal, quiet = false } = {}) {
  const init = { method, headers: headers(), cache: "no-store", credentials: "omit", signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    const err = await errorOf(resp);
    if (!quiet) onUnauthorized(err);
    throw err;
  }
  if (!resp.ok) throw await errorOf(resp);
  return text ? resp.text() : resp.json();
}

// The same, but null for a 404 (a route another part of llmos has not got, or a thing
// that is gone) instead of an error.
export async function maybe(path, opts) {
  try {
    return await api(path, opts);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

// A path segment: a name may be TEAM/NAME, which the API takes percent-encoded.
export const seg = (s) => encodeURIComponent(String(s));

// Query string from an object (undefined, null and "" left out).
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) q.append(k, String(one));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// Follow /v1/events (server-sent events) with fetch streaming: EventSource cannot send the
// Authorization header. Calls onEvent(event) per event; resumes from the last id after a
// dropped connection; gives up quietly while the route is missing (then pages poll only).
export function followEvents(onEvent, signal) {
  let last = null;
  const run = async () => {
    while (!signal.aborted) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (last !== null) h["Last-Event-ID"] = String(last);
        const resp = await fetch("/v1/events?follow=true", {
          headers: h, cache: "no-store", credentials: "omit", signal,
        });
        if (!resp.ok || !resp.body) {
          await pause(resp.status === 404 ? 60000 : 10000, signal);
          continue;
        }
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const event = parseBlock(block);
            if (event) {
              if (event.id !== undefined) last = event.id;
              onEvent(event.data);
            }
          }
        }
      } catch (_) {
        if (signal.aborted) return;
      }
      await pause(3000, signal);
    }
  };
  run();
}

function parseBlock(block) {
  let id, data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // keep-alive comment
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trimStart();
  }
  if (!data) return null;
  try {
    return { id, data: JSON.parse(data) };
  } catch (_) {
    return null;
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}
