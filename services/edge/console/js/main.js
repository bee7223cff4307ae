// The console's shell: the navigation, the sign-in, and the view the path
// names (/runs, /runs/{run_id}, /audit, /alerts, /health), so that every
// view is a link that can be shared and reloaded.

import { html, render, useEffect, useState } from "../vendor/preact-htm.js";
import { loadSession, onUnauthenticated, signIn, signOut } from "./api.js";
import { Link } from "./nav.js";
import { RunsPage } from "./runs.js";
import { RunPage } from "./run.js";
import { AuditPage } from "./audit.js";
import { AlertsPage } from "./alerts.js";
import { HealthPage } from "./health.js";

function usePath() {
  const [path, setPath] = useState(window.location.pathname);
  useEffect(() => {
    const onPop = () => setPath(window.location.pathname);
    window.addEventListener("popstate", onPop);
    return () => window.removeEventListener("popstate", onPop);
  }, []);
  return path;
}

function SignIn({ reason, onSignedIn }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const submit = async (event) => {
    event.preventDefault();
    setError("");
    try {
      await signIn(key);
      setKey("");
      onSignedIn();
    } catch (err) {
      setError(err.message);
    }
  };
  return html`<section class="signin" aria-labelledby="signin-title">
    <h1 id="signin-title">Sign in to agentmesh</h1>
    <p>${reason || "The mesh asks for a credential."} Your API key is exchanged for a session cookie
      that scripts cannot read; it is not stored in the browser.</p>
    <form onSubmit=${submit}>
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" value=${key}
        onInput=${(event) => setKey(event.target.value)} required />
      <button type="submit">Sign in</button>
      ${error && html`<p class="error" role="alert">${error}</p>`}
    </form>
  </section>`;
}

function View({ path }) {
  const run = path.match(/^\/runs\/([^/]+)$/);
  if (run) {
    let runId;
    try {
      runId = decodeURIComponent(run[1]);
    } catch (_) {
      return html`<p class="error" role="alert">This is not a run's address.</p>`;
    }
    return html`<${RunPage} runId=${runId} />`;
  }
  switch (path) {
    case "/audit":
      return html`<${AuditPage} />`;
    case "/alerts":
      return html`<${AlertsPage} />`;
    case "/health":
      return html`<${HealthPage} />`;
    default:
      return html`<${RunsPage} />`;
  }
}

function App() {
  const path = usePath();
  const [session, setSession] = useState(null);
  const [refused, setRefused] = useState("");
  const [generation, setGeneration] = useState(0);
  const reload = () =>
    loadSession()
      .then(setSession)
      .catch(() => setSession({ signed_in: false }));
  useEffect(() => {
    reload();
    return onUnauthenticated((error) => setRefused(error.message));
  }, []);
  if (!session) return html`<p class="loading">Loading…</p>`;
  if (refused) {
    return html`<${SignIn} reason=${refused}
      onSignedIn=${() => {
        setRefused("");
        setGeneration(generation + 1);
        reload();
      }} />`;
  }
  const section = path.startsWith("/runs") || path === "/" ? "/runs" : path;
  const item = (href, label) =>
    html`<li><${Link} href=${href} aria-current=${section === href ? "page" : undefined}>${label}<//></li>`;
  return html`<header class="top">
      <${Link} href="/runs" class="brand">agentmesh<//>
      <nav aria-label="Console">
        <ul>
          ${item("/runs", "Runs")} ${item("/audit", "Audit")} ${item("/alerts", "Alerts")}
          ${item("/health", "Health")}
        </ul>
      </nav>
      ${session.signed_in &&
      html`<button class="link" onClick=${() => signOut().then(() => window.location.reload())}>Sign out</button>`}
    </header>
    <main id="main" key=${generation}><${View} path=${path} /></main>`;
}

render(html`<${App} />`, document.getElementById("app"));
