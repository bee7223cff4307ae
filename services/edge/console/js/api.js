// The console's only way to the mesh: the edge's own routes, same origin.
// The session cookie is HttpOnly (script never sees a credential); changes
// carry the session's CSRF token. A 401 anywhere asks for a sign-in.

let csrfToken = "";
let traceTemplate = "";
const unauthenticatedListeners = new Set();

/** An error answered by the mesh: the HTTP status and the message it gave. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls `listener` whenever a call is refused for want of a credential. */
export function onUnauthenticated(listener) {
  unauthenticatedListeners.add(listener);
  return () => unauthenticatedListeners.delete(listener);
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = "";
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") message = body.message;
    if (body && body.code !== undefined) code = String(body.code);
  } catch (_) {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, message, code);
}

/** A JSON call to the edge: GET by default; `body` is sent as JSON. */
export async function api(path, { method = "GET", body, query, headers: extra } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      const values = Array.isArray(value) ? value : [value];
      for (const one of values) {
        if (one !== undefined && one !== null && one !== "") params.append(key, String(one));
      }
    }
    const text = params.toString();
    if (text) url += (url.includes("?") ? "&" : "?") + text;
  }
  const headers = { Accept: "application/json", ...(extra || {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) unauthenticatedListeners.forEach((listener) => listener(error));
    throw error;
  }
  if (response.status === 204) return {};
  return response.json();
}

/**
 * A new W3C `traceparent` (a random trace id, sampled), so that a run started
 * here is one trace from the click on: the mesh continues it, and the run's
 * audit events name it.
 */
export function newTraceparent() {
  const hex = (bytes) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `00-${hex(16)}-${hex(8)}-01`;
}

/** Reads the session: whether signed in, and the edge's console settings. */
export async function loadSession() {
  const session = await api("/console/session");
  csrfToken = session.csrf_token || "";
  traceTemplate = session.trace_url_template || "";
  return session;
}

/** Exchanges an API key for the session cookie. */
export async function signIn(apiKey) {
  const answer = await api("/console/login", { method: "POST", body: { api_key: apiKey } });
  csrfToken = answer.csrf_token || "";
  return answer;
}

export async function signOut() {
  await api("/console/logout", { method: "POST" });
  csrfToken = "";
}

/** Whether the edge names a trace UI to link runs to. */
export function hasTraceUi() {
  return Boolean(traceTemplate);
}

/** The trace UI's link for `traceId`, or "" when none is configured. */
export function traceUrl(traceId) {
  if (!traceTemplate || !traceId) return "";
  return traceTemplate.split("{trace_id}").join(encodeURIComponent(traceId));
}
