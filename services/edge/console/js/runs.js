// The runs: start one, and the list (state, agent, tenant, labels,
// duration, tokens, cost) with filters and paging, refreshed every two
// seconds while the page is visible.

import { html, useEffect, useState } from "../vendor/preact-htm.js";
import { api, newTraceparent } from "./api.js";
import { between, cost, duration, enumName, labels, tokens } from "./format.js";
import { Link, navigate } from "./nav.js";
import { usePolled } from "./poll.js";

const STATES = ["RUN_STATE_QUEUED", "RUN_STATE_RUNNING", "RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELLED"];
const PAGE_SIZE = 25;
const REFRESH_MS = 2000;

function StartRun() {
  const [agents, setAgents] = useState([]);
  const [agent, setAgent] = useState("");
  const [objective, setObjective] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    api("/v1/agents")
      .then((answer) => {
        const list = answer.agents || [];
        setAgents(list);
        if (list.length && !agent) setAgent(list[0].name);
      })
      .catch((err) => setError(err.message));
  }, []);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError("");
    try {
      const answer = await api("/v1/runs", {
        method: "POST",
        body: { agent, objective },
        headers: { traceparent: newTraceparent() },
      });
      navigate(`/runs/${encodeURIComponent(answer.run_id)}`);
    } catch (err) {
      setError(err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="start" onSubmit=${submit} aria-labelledby="start-title">
    <h2 id="start-title">Start a run</h2>
    <div class="fields">
      <label>Agent
        <select name="agent" value=${agent} onChange=${(event) => setAgent(event.target.value)}>
          ${agents.map((one) => html`<option value=${one.name}>${one.name}</option>`)}
        </select>
      </label>
      <label class="grow">Objective
        <input name="objective" value=${objective} onInput=${(event) => setObjective(event.target.value)}
          placeholder="What is 17 * 23 + sqrt(144)?" required />
      </label>
      <button type="submit" disabled=${busy || !objective}>Start</button>
    </div>
    ${error && html`<p class="error" role="alert">${error}</p>`}
  </form>`;
}

function Filters({ filters, onChange }) {
  const set = (key) => (event) => onChange({ ...filters, [key]: event.target.value });
  return html`<form class="filters" onSubmit=${(event) => event.preventDefault()} aria-label="Filter runs">
    <label>State
      <select value=${filters.state} onChange=${set("state")}>
        <option value="">any</option>
        ${STATES.map((state) => html`<option value=${state}>${enumName(state, "RUN_STATE_")}</option>`)}
      </select>
    </label>
    <label>Agent <input value=${filters.agent} onInput=${set("agent")} /></label>
    <label>Label <input value=${filters.label} onInput=${set("label")} placeholder="team=search" /></label>
  </form>`;
}

function query(filters, pageToken) {
  const query = { page_size: PAGE_SIZE, page_token: pageToken, states: filters.state, agent: filters.agent };
  const split = filters.label.indexOf("=");
  const key = split > 0 ? filters.label.slice(0, split).trim() : "";
  if (key) query[`labels[${key}]`] = filters.label.slice(split + 1).trim();
  return query;
}

export function RunsPage() {
  const [filters, setFilters] = useState({ state: "", agent: "", label: "" });
  const [pages, setPages] = useState([""]); // the tokens of the pages visited
  const token = pages[pages.length - 1];
  const asked = query(filters, token);
  const [polled, error] = usePolled("/v1/runs", asked, REFRESH_MS, JSON.stringify(asked));
  const answer = polled || { runs: [] };
  const changeFilters = (next) => {
    setFilters(next);
    setPages([""]);
  };
  const runs = answer.runs || [];
  const showTenant = new Set(runs.map((run) => run.tenant)).size > 1;
  return html`<${StartRun} />
    <section aria-labelledby="runs-title">
      <h1 id="runs-title">Runs</h1>
      <${Filters} filters=${filters} onChange=${changeFilters} />
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <div class="table-wrap">
      <table class="runs">
        <thead><tr>
          <th scope="col">Run</th><th scope="col">State</th><th scope="col">Agent</th>
          ${showTenant && html`<th scope="col">Tenant</th>`}
          <th scope="col">Objective</th><th scope="col">Labels</th><th scope="col">Duration</th>
          <th scope="col">Tokens</th><th scope="col">Cost</th>
        </tr></thead>
        <tbody>
          ${runs.map(
            (run) => html`<tr key=${run.run_id}>
              <td><${Link} href=${`/runs/${encodeURIComponent(run.run_id)}`}>${run.run_id.slice(0, 8)}<//>
                ${run.parent_run_id && html` <span class="muted">(sub-run)</span>`}</td>
              <td><span class=${`state ${enumName(run.state, "RUN_STATE_")}`}>${enumName(run.state, "RUN_STATE_")}</span></td>
              <td>${run.agent}</td>
              ${showTenant && html`<td>${run.tenant}</td>`}
              <td class="objective">${run.objective}</td>
              <td>${labels(run.labels)}</td>
              <td>${duration(between(run.start_time || run.create_time, run.end_time))}</td>
              <td>${tokens(run.usage)}</td>
              <td>${cost(run.usage && run.usage.estimated_cost_usd)}</td>
            </tr>`,
          )}
        </tbody>
      </table>
      </div>
      ${runs.length === 0 && html`<p class="muted">No runs match.</p>`}
      <div class="pager">
        <button disabled=${pages.length < 2} onClick=${() => setPages(pages.slice(0, -1))}>Previous</button>
        <button disabled=${!answer.next_page_token} onClick=${() => setPages([...pages, answer.next_page_token])}>Next</button>
      </div>
    </section>`;
}
