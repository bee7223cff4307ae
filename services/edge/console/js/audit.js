// The audit trail: search (type, run, tenant, tool, model, time range),
// the hash chain's verification, and a usage and cost chart over time from
// AuditService.Report.

import { html, useEffect, useState } from "../vendor/preact-htm.js";
import { api } from "./api.js";
import { cost, enumName, time } from "./format.js";
import { Link } from "./nav.js";

const TYPES = [
  "RUN_STARTED", "RUN_FINISHED", "RUN_FAILED", "RUN_CANCELLED", "LLM_CALL", "TOOL_CALL", "AUTHENTICATION",
  "AUTHORIZATION", "RATE_LIMITED", "CIRCUIT_OPENED", "CIRCUIT_CLOSED", "CONFIG_LOADED", "ERROR", "RETENTION",
  "NOTIFICATION", "RUN_CALLBACK",
];
const HOUR_MS = 3600 * 1000;
const HOURS = 24;

/** A datetime-local value as RFC 3339, or "". */
function rfc3339(local) {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}

function params(search) {
  return {
    "filter.types": search.type ? `EVENT_TYPE_${search.type}` : "",
    "filter.run_ids": search.run.trim(),
    "filter.tenants": search.tenant.trim(),
    "filter.tools": search.tool.trim(),
    "filter.models": search.model.trim(),
    "filter.start_time": rfc3339(search.from),
    "filter.end_time": rfc3339(search.to),
  };
}

function detail(event) {
  if (event.llm_call) {
    const call = event.llm_call;
    return `${call.model || call.route} · ${call.input_tokens || 0}+${call.output_tokens || 0} tokens${
      call.estimated_cost_usd !== undefined && call.estimated_cost_usd !== null ? ` · ${cost(call.estimated_cost_usd)}` : ""
    }`;
  }
  if (event.tool_call) return `${event.tool_call.tool}${event.tool_call.is_error ? ` · ${event.tool_call.error}` : ""}`;
  if (event.access) return event.access.method || "";
  return event.reason || "";
}

function Search({ onResults }) {
  const [search, setSearch] = useState({ type: "", run: new URLSearchParams(window.location.search).get("run") || "", tenant: "", tool: "", model: "", from: "", to: "" });
  const [error, setError] = useState("");
  const set = (key) => (event) => setSearch({ ...search, [key]: event.target.value });
  const submit = async (event) => {
    if (event) event.preventDefault();
    setError("");
    try {
      const answer = await api("/v1/audit/events", { query: { ...params(search), page_size: 100 } });
      onResults(answer.events || []);
    } catch (err) {
      setError(err.message);
      onResults([]);
    }
  };
  useEffect(() => {
    submit();
  }, []);
  return html`<form class="filters" onSubmit=${submit} aria-label="Search the audit trail">
    <label>Type
      <select name="type" value=${search.type} onChange=${set("type")}>
        <option value="">any</option>
        ${TYPES.map((type) => html`<option value=${type}>${type.toLowerCase().replace(/_/g, " ")}</option>`)}
      </select>
    </label>
    <label>Run <input name="run" value=${search.run} onInput=${set("run")} /></label>
    <label>Tenant <input name="tenant" value=${search.tenant} onInput=${set("tenant")} /></label>
    <label>Tool <input name="tool" value=${search.tool} onInput=${set("tool")} /></label>
    <label>Model <input name="model" value=${search.model} onInput=${set("model")} /></label>
    <label>From <input name="from" type="datetime-local" value=${search.from} onInput=${set("from")} /></label>
    <label>To <input name="to" type="datetime-local" value=${search.to} onInput=${set("to")} /></label>
    <button type="submit">Search</button>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

function Chain() {
  const [answer, setAnswer] = useState(null);
  const [error, setError] = useState("");
  const verify = () => {
    setError("");
    api("/v1/audit:verifyChain")
      .then(setAnswer)
      .catch((err) => setError(err.message));
  };
  useEffect(verify, []);
  const broken = answer && !answer.ok;
  return html`<section aria-labelledby="chain-title" class="chain">
    <h2 id="chain-title">Hash chain</h2>
    ${answer &&
    html`<p class=${broken ? "error" : "ok"} data-testid="chain-result">
      ${broken
        ? `Broken at event ${answer.first_bad_event ? answer.first_bad_event.event_id : "?"}: ${answer.first_bad_event ? answer.first_bad_event.message : ""}`
        : `Intact: ${answer.events_checked} events in ${answer.chains_checked} chain(s) checked.`}
    </p>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    <button onClick=${verify}>Verify again</button>
  </section>`;
}

/** Cost (or, unpriced, tokens) per hour over the last day, as bars. */
function CostChart() {
  const [rows, setRows] = useState(null);
  const [error, setError] = useState("");
  const [range] = useState(() => {
    const end = Math.ceil(Date.now() / HOUR_MS) * HOUR_MS;
    return { start: end - HOURS * HOUR_MS, end };
  });
  useEffect(() => {
    api("/v1/audit/report", {
      query: {
        kind: "REPORT_KIND_COST",
        bucket: "TIME_BUCKET_HOUR",
        "filter.start_time": new Date(range.start).toISOString(),
        "filter.end_time": new Date(range.end).toISOString(),
      },
    })
      .then((answer) => setRows(answer.rows || []))
      .catch((err) => setError(err.message));
  }, []);
  if (error) return html`<p class="error" role="alert">${error}</p>`;
  if (!rows) return null;
  // Hours without calls have no row: each row goes to its own hour's slot.
  const points = rows.map((row) => ({
    at: row.bucket_start,
    slot: Math.floor((Date.parse(row.bucket_start) - range.start) / HOUR_MS),
    cost: Number((row.cost && row.cost.estimated_cost_usd) || 0),
    tokens: Number((row.cost && row.cost.input_tokens) || 0) + Number((row.cost && row.cost.output_tokens) || 0),
    calls: Number((row.cost && row.cost.llm_calls) || 0),
  }));
  const priced = points.some((point) => point.cost > 0);
  const value = (point) => (priced ? point.cost : point.tokens);
  const top = Math.max(1e-9, ...points.map(value));
  const [width, height, gap] = [640, 160, 4];
  const bar = width / HOURS;
  return html`<section aria-labelledby="cost-title">
    <h2 id="cost-title">${priced ? "Cost" : "Tokens"} per hour, last 24 hours</h2>
    ${points.length === 0
      ? html`<p class="muted">No model calls in the last 24 hours.</p>`
      : html`<svg class="chart" viewBox=${`0 0 ${width} ${height + 20}`} role="img" data-testid="cost-chart"
          aria-label=${`${priced ? "cost" : "tokens"} per hour`}>
          ${points.map((point) => {
            const h = Math.max((value(point) / top) * height, 1);
            return html`<rect class="bar" x=${point.slot * bar + gap / 2} y=${height - h} width=${Math.max(bar - gap, 1)} height=${h}>
              <title>${time(point.at)}: ${priced ? cost(point.cost) : `${point.tokens} tokens`}, ${point.calls} calls</title>
            </rect>`;
          })}
          <text x="0" y=${height + 16} class="axis">${time(new Date(range.start).toISOString())}</text>
          <text x=${width} y=${height + 16} class="axis" text-anchor="end">now</text>
        </svg>
        <p class="muted">${points.reduce((sum, point) => sum + point.calls, 0)} model calls,
          ${priced ? cost(points.reduce((sum, point) => sum + point.cost, 0)) : `${points.reduce((sum, point) => sum + point.tokens, 0)} tokens (no prices configured)`}.</p>`}
  </section>`;
}

export function AuditPage() {
  const [events, setEvents] = useState([]);
  return html`<h1>Audit</h1>
    <${Search} onResults=${setEvents} />
    <div class="table-wrap">
    <table class="audit" aria-label="Audit events">
      <thead><tr><th scope="col">Time</th><th scope="col">Type</th><th scope="col">Outcome</th><th scope="col">Service</th>
        <th scope="col">Tenant</th><th scope="col">Run</th><th scope="col">Detail</th></tr></thead>
      <tbody>
        ${events.map(
          (event) => html`<tr key=${event.event_id} data-type=${event.type}>
            <td>${time(event.time)}</td><td>${enumName(event.type, "EVENT_TYPE_")}</td>
            <td>${enumName(event.outcome, "OUTCOME_")}</td><td>${event.service}</td><td>${event.tenant}</td>
            <td>${event.run_id && html`<${Link} href=${`/runs/${encodeURIComponent(event.run_id)}`}>${event.run_id.slice(0, 8)}<//>`}</td>
            <td>${detail(event)}</td>
          </tr>`,
        )}
      </tbody>
    </table>
    </div>
    ${events.length === 0 && html`<p class="muted">No events match.</p>`}
    <${CostChart} />
    <${Chain} />`;
}
