// Alerts (pending, firing, recently resolved, with labels and
// annotations), silences (create with matchers, expire), and the rules in
// effect. Refreshed every five seconds.

import { html, useState } from "../vendor/preact-htm.js";
import { api } from "./api.js";
import { enumName, labels, time } from "./format.js";
import { usePolled } from "./poll.js";

const REFRESH_MS = 5000;
const OPERATORS = { "=": "MATCH_TYPE_EQUAL", "!=": "MATCH_TYPE_NOT_EQUAL", "=~": "MATCH_TYPE_REGEX", "!~": "MATCH_TYPE_NOT_REGEX" };

/** "name=value" lines (or !=, =~, !~) as matchers; throws naming a bad line. */
function parseMatchers(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean)
    .map((line) => {
      const found = line.match(/^([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*)$/);
      if (!found) throw new Error(`"${line}" is not name=value (or !=, =~, !~)`);
      let value = found[3].trim();
      if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
      return { name: found[1], type: OPERATORS[found[2]], value };
    });
}

function Pairs({ entries }) {
  const list = Object.entries(entries || {});
  if (!list.length) return null;
  return html`<dl class="pairs">${list.map(([key, value]) => html`<div><dt>${key}</dt><dd>${value}</dd></div>`)}</dl>`;
}

function NewSilence({ matchers, setMatchers, onCreated }) {
  const [hours, setHours] = useState("2");
  const [createdBy, setCreatedBy] = useState("console");
  const [comment, setComment] = useState("");
  const [error, setError] = useState("");
  const submit = async (event) => {
    event.preventDefault();
    setError("");
    try {
      const silence = {
        matchers: parseMatchers(matchers),
        starts_at: new Date().toISOString(),
        ends_at: new Date(Date.now() + Number(hours) * 3600 * 1000).toISOString(),
        created_by: createdBy,
        comment,
      };
      await api("/v1/silences", { method: "POST", body: { silence } });
      setMatchers("");
      setComment("");
      onCreated();
    } catch (err) {
      setError(err.message);
    }
  };
  return html`<form class="silence-form" onSubmit=${submit} aria-labelledby="new-silence-title">
    <h3 id="new-silence-title">New silence</h3>
    <label>Matchers, one per line
      <textarea name="matchers" rows="3" value=${matchers} onInput=${(event) => setMatchers(event.target.value)}
        placeholder="alertname=ToolFailing" required></textarea>
    </label>
    <div class="fields">
      <label>Hours <input name="hours" type="number" min="0.1" step="0.1" value=${hours} onInput=${(event) => setHours(event.target.value)} /></label>
      <label>Created by <input name="created_by" value=${createdBy} onInput=${(event) => setCreatedBy(event.target.value)} required /></label>
      <label class="grow">Comment <input name="comment" value=${comment} onInput=${(event) => setComment(event.target.value)} required /></label>
      <button type="submit">Create silence</button>
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

export function AlertsPage() {
  const [alerts, alertsError, reloadAlerts] = usePolled("/v1/alerts", {}, REFRESH_MS);
  const [silences, silencesError, reloadSilences] = usePolled("/v1/silences", {}, REFRESH_MS);
  const [rules, rulesError] = usePolled("/v1/rules", { page_size: 1000 }, REFRESH_MS);
  const [matchers, setMatchers] = useState("");
  const [error, setError] = useState("");
  const reload = () => {
    reloadAlerts();
    reloadSilences();
  };
  const expire = (id) =>
    api(`/v1/silences/${encodeURIComponent(id)}`, { method: "DELETE" })
      .then(reload)
      .catch((err) => setError(err.message));
  const silenceAlert = (alert) => {
    setMatchers(Object.entries(alert.labels || {}).map(([key, value]) => `${key}="${value}"`).join("\n"));
    document.getElementById("new-silence-title")?.scrollIntoView();
  };
  return html`<h1>Alerts</h1>
    ${[alertsError, silencesError, rulesError, error].filter(Boolean).map((message) => html`<p class="error" role="alert">${message}</p>`)}
    <section aria-labelledby="alerts-title">
      <h2 id="alerts-title">Alerts</h2>
      ${alerts && (alerts.alerts || []).length === 0 && html`<p class="muted">No alerts.</p>`}
      <ul class="alerts">
        ${((alerts && alerts.alerts) || []).map(
          (alert) => html`<li key=${alert.fingerprint} class=${`alert ${enumName(alert.state, "ALERT_STATE_")} ${enumName(alert.severity, "SEVERITY_")}`}
            data-rule=${alert.rule} data-silenced=${alert.silenced ? "true" : "false"}>
            <div class="alert-head"><strong>${(alert.labels && alert.labels.alertname) || alert.rule}</strong>
              <span class="badge">${enumName(alert.state, "ALERT_STATE_")}</span>
              <span class="badge">${enumName(alert.severity, "SEVERITY_")}</span>
              ${alert.silenced && html`<span class="badge silenced">silenced</span>`}
              <span class="muted"> since ${time(alert.starts_at)}</span>
              <button class="link" onClick=${() => silenceAlert(alert)}>Silence…</button>
            </div>
            <${Pairs} entries=${alert.labels} />
            <${Pairs} entries=${alert.annotations} />
          </li>`,
        )}
      </ul>
    </section>
    <section aria-labelledby="silences-title">
      <h2 id="silences-title">Silences</h2>
      <${NewSilence} matchers=${matchers} setMatchers=${setMatchers} onCreated=${reload} />
      <table class="silences" aria-label="Silences">
        <thead><tr><th scope="col">Matchers</th><th scope="col">State</th><th scope="col">Ends</th><th scope="col">By</th><th scope="col">Comment</th><th scope="col"></th></tr></thead>
        <tbody>
          ${((silences && silences.silences) || []).map(
            (silence) => html`<tr key=${silence.id} data-silence=${silence.id}>
              <td>${(silence.matchers || []).map((m) => `${m.name}${Object.keys(OPERATORS).find((op) => OPERATORS[op] === m.type) || "="}${m.value}`).join(", ")}</td>
              <td>${enumName(silence.state, "SILENCE_STATE_")}</td><td>${time(silence.ends_at)}</td>
              <td>${silence.created_by}</td><td>${silence.comment}</td>
              <td>${silence.state !== "SILENCE_STATE_EXPIRED" && html`<button onClick=${() => expire(silence.id)}>Expire</button>`}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </section>
    <section aria-labelledby="rules-title">
      <h2 id="rules-title">Rules</h2>
      <table class="rules" aria-label="Rules">
        <thead><tr><th scope="col">Rule</th><th scope="col">Severity</th><th scope="col">For</th><th scope="col">Origin</th><th scope="col">Description</th><th scope="col">Labels</th></tr></thead>
        <tbody>
          ${((rules && rules.rules) || []).map(
            (rule) => html`<tr key=${rule.name} class=${rule.enabled ? "" : "muted"}>
              <td>${rule.name}</td><td>${enumName(rule.severity, "SEVERITY_")}</td><td>${rule.for_duration || ""}</td>
              <td>${rule.builtin ? "shipped" : "configured"}${rule.enabled ? "" : " (disabled)"}</td>
              <td>${rule.description}</td><td>${labels(rule.labels)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </section>`;
}
