// One run, live: its events over Server-Sent Events (the browser's
// EventSource resumes a dropped stream with Last-Event-ID by itself, and
// the model ignores any event seen twice), folded by run_model and drawn
// once per animation frame however fast tokens come. The transcript, the
// plan and sub-runs as a tree, a timeline, usage and cost, the trace link,
// and Cancel.

import { html, useEffect, useState } from "../vendor/preact-htm.js";
import { api, hasTraceUi, traceUrl } from "./api.js";
import { cost, duration, enumName, labels, prettyJson, time, tokens } from "./format.js";
import { Link } from "./nav.js";
import { EVENT_KINDS, answerText, applyEvents, emptyModel, planLayers } from "./run_model.js";

const TERMINAL = new Set(["RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELLED"]);

/** The run's events, folded; `connected` says whether the stream is up. */
function useRunEvents(runId) {
  const [model, setModel] = useState(() => emptyModel(runId));
  const [connected, setConnected] = useState(false);
  useEffect(() => {
    let current = emptyModel(runId);
    setModel(current);
    let pending = [];
    let frame = 0;
    let ended = false; // the run's terminal event has arrived
    const flush = () => {
      frame = 0;
      current = applyEvents(current, pending);
      pending = [];
      setModel(current);
    };
    const source = new EventSource(`/v1/runs/${encodeURIComponent(runId)}/events?include_sub_runs=true`);
    const onEvent = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      pending.push(event);
      if (message.type.startsWith("run_") && message.type !== "run_started" && event.run_id === runId) ended = true;
      if (!frame) frame = requestAnimationFrame(flush);
    };
    // Named events reach only their own listeners.
    for (const kind of EVENT_KINDS) source.addEventListener(kind, onEvent);
    source.addEventListener("open", () => setConnected(true));
    source.addEventListener("error", (message) => {
      setConnected(false);
      // A stream that ended after the run's last event is not reopened.
      if (message.data || ended) {
        source.close();
        return;
      }
      // EventSource hides the HTTP status: ask once more, so that a
      // refused credential brings up the sign-in.
      api(`/v1/runs/${encodeURIComponent(runId)}`).catch(() => {});
    });
    return () => {
      source.close();
      if (frame) cancelAnimationFrame(frame);
    };
  }, [runId]);
  return [model, connected];
}

function ToolCall({ item }) {
  const state = item.output === null ? "running" : item.isError ? "error" : "done";
  return html`<li class=${`tool ${state}`} data-tool=${item.tool}>
    <div class="tool-head"><span class="tool-name">${item.tool}</span> <span class="muted">step ${item.step} · ${state}</span>
      ${item.progress && item.output === null && html` <span class="muted">${Math.round(item.progress.tool_percent || 0)}% ${item.progress.message || ""}</span>`}
    </div>
    <div class="tool-io">
      <div><h4>Arguments</h4><pre class="tool-args">${prettyJson(item.args)}</pre></div>
      ${item.output !== null &&
      html`<div><h4>${item.isError ? "Error" : "Result"}</h4><pre class="tool-result">${item.isError ? item.error || prettyJson(item.output) : prettyJson(item.output)}</pre></div>`}
    </div>
  </li>`;
}

function Transcript({ model }) {
  return html`<ol class="transcript" aria-live="polite" aria-label="Transcript">
    ${model.items.map((item, index) => {
      switch (item.kind) {
        case "text":
          return html`<li class="text" key=${`t${index}`}><span class="muted">model · step ${item.step}</span><p class="tokens">${item.text}</p></li>`;
        case "tool":
          return html`<${ToolCall} key=${item.callId} item=${item} />`;
        case "restart":
          return html`<li class="restart" key=${`r${index}`}>↻ ${item.message}</li>`;
        default:
          return html`<li class="progress" key=${`p${index}`}>${item.message}</li>`;
      }
    })}
  </ol>`;
}

function PlanTree({ model }) {
  const layers = planLayers(model.plan);
  const subRuns = [...model.subRuns.values()];
  if (!layers.length && !subRuns.length) return null;
  return html`<section aria-labelledby="plan-title" class="plan">
    <h2 id="plan-title">Plan and sub-runs</h2>
    ${layers.length > 0 &&
    html`<ol class="plan-layers">
      ${layers.map(
        (layer, depth) => html`<li class="layer"><span class="muted">stage ${depth + 1}</span>
          <ul>${layer.map(
            (step) => html`<li class=${`plan-step ${enumName(step.state, "PLAN_STEP_STATE_")}`}>
              <strong>${step.id}</strong> ${step.description}
              <span class="muted"> · ${enumName(step.state, "PLAN_STEP_STATE_")}
                ${(step.depends_on || []).length > 0 && ` · after ${step.depends_on.join(", ")}`}</span>
            </li>`,
          )}</ul></li>`,
      )}
    </ol>`}
    ${subRuns.length > 0 &&
    html`<ul class="sub-runs">
      ${subRuns.map(
        (run) => html`<li class=${`sub-run ${run.state}`}>
          <${Link} href=${`/runs/${encodeURIComponent(run.runId)}`}>${run.runId.slice(0, 8)}<//>
          ${" "}${run.agent} · ${run.state} <span class="muted">${run.objective}</span>
        </li>`,
      )}
    </ul>`}
  </section>`;
}

function Timeline({ model }) {
  const spans = model.spans;
  if (!spans.length) return null;
  const start = Math.min(...spans.map((span) => span.start));
  const end = Math.max(...spans.map((span) => span.end ?? Date.now()), start + 1);
  const width = end - start;
  return html`<section aria-labelledby="timeline-title">
    <h2 id="timeline-title">Timeline <span class="muted">(${duration(width)})</span></h2>
    <ol class="timeline">
      ${spans.map((span) => {
        const spanEnd = span.end ?? Date.now();
        const style = {
          left: `${((span.start - start) / width) * 100}%`,
          width: `${Math.max(((spanEnd - span.start) / width) * 100, 0.5)}%`,
        };
        return html`<li key=${span.key} class=${`span ${span.kind}`}>
          <span class="span-label">${span.label}</span>
          <span class="span-track"><span class="span-bar" style=${style} title=${duration(spanEnd - span.start)}></span></span>
          <span class="span-time muted">${duration(spanEnd - span.start)}</span>
        </li>`;
      })}
    </ol>
  </section>`;
}

export function RunPage({ runId }) {
  const [model, connected] = useRunEvents(runId);
  const [run, setRun] = useState(null);
  const [error, setError] = useState("");
  const [trace, setTrace] = useState("");
  const terminal = ["finished", "failed", "cancelled"].includes(model.state);
  useEffect(() => {
    api(`/v1/runs/${encodeURIComponent(runId)}`)
      .then((answer) => setRun(answer.run || null))
      .catch((err) => setError(err.message));
  }, [runId, terminal]);
  useEffect(() => {
    // The run's audit events name its trace; they are recorded a moment
    // after the fact, so ask again every second until one does.
    let stopped = false;
    let timer = 0;
    const look = (triesLeft) =>
      api("/v1/audit/events", { query: { "filter.run_ids": runId, page_size: 1, order: "SORT_ORDER_OLDEST_FIRST" } })
        .then((answer) => (answer.events || []).map((event) => event.trace_id).find(Boolean))
        .catch(() => undefined)
        .then((traceId) => {
          if (stopped) return;
          if (traceId) setTrace(traceUrl(traceId));
          else if (triesLeft > 0) timer = setTimeout(() => look(triesLeft - 1), 1000);
        });
    if (hasTraceUi()) look(30);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [runId]);
  useEffect(() => {
    api("/v1/audit/events", { query: { "filter.run_ids": runId, page_size: 1, order: "SORT_ORDER_OLDEST_FIRST" } })
      .then((answer) => {
        const traceId = (answer.events || []).map((event) => event.trace_id).find(Boolean);
        setTrace(traceUrl(traceId));
      })
      .catch(() => setTrace(""));
    // Audit events are recorded a moment after the fact: ask again at the end.
  }, [runId, terminal]);
  const cancel = () =>
    api(`/v1/runs/${encodeURIComponent(runId)}:cancel`, { method: "POST", body: { reason: "cancelled from the console" } }).catch((err) =>
      setError(err.message),
    );
  const state = terminal ? model.state : run && !TERMINAL.has(run.state) ? enumName(run.state, "RUN_STATE_") : model.state || "…";
  const usage = model.usage || (run && run.usage);
  return html`<section aria-labelledby="run-title" class="run">
    <p><${Link} href="/runs">← Runs<//></p>
    <h1 id="run-title">Run <code>${runId}</code></h1>
    <dl class="facts">
      <div><dt>State</dt><dd><span class=${`state ${state}`} data-testid="run-state">${state}</span>
        <span class="muted">${connected ? " · live" : ""}</span></dd></div>
      ${run && html`<div><dt>Agent</dt><dd>${run.agent}</dd></div>
        <div><dt>Objective</dt><dd class="objective">${run.objective}</dd></div>
        <div><dt>Created</dt><dd>${time(run.create_time)}</dd></div>
        ${run.tenant && html`<div><dt>Tenant</dt><dd>${run.tenant}</dd></div>`}
        ${Object.keys(run.labels || {}).length > 0 && html`<div><dt>Labels</dt><dd>${labels(run.labels)}</dd></div>`}
        ${run.parent_run_id && html`<div><dt>Parent</dt><dd><${Link} href=${`/runs/${encodeURIComponent(run.parent_run_id)}`}>${run.parent_run_id}<//></dd></div>`}`}
      <div><dt>Tokens</dt><dd>${tokens(usage)}</dd></div>
      <div><dt>Cost</dt><dd>${usage && (usage.estimated_cost_usd === undefined || usage.estimated_cost_usd === null) ? "not priced" : cost(usage && usage.estimated_cost_usd)}</dd></div>
      ${model.progress && !terminal && html`<div><dt>Progress</dt><dd>step ${model.progress.step} of ${model.progress.max_steps}</dd></div>`}
      ${trace && html`<div><dt>Trace</dt><dd><a href=${trace} rel="noopener noreferrer" target="_blank">open the trace</a></dd></div>`}
    </dl>
    ${!terminal && html`<button class="danger" onClick=${cancel}>Cancel run</button>`}
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${model.output !== null &&
    html`<section aria-labelledby="output-title" class="output"><h2 id="output-title">Answer</h2><p data-testid="run-output">${model.output}</p></section>`}
    ${model.error && html`<p class="error" role="alert" data-testid="run-error">${model.error.message}</p>`}
    <${PlanTree} model=${model} />
    <section aria-labelledby="transcript-title">
      <h2 id="transcript-title">Transcript</h2>
      <p class="visually-hidden" data-testid="answer-text">${answerText(model)}</p>
      <${Transcript} model=${model} />
    </section>
    <${Timeline} model=${model} />
  </section>`;
}
