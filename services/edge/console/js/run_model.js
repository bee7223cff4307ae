// What the run page shows, folded from the run's events (and its sub-runs'):
// the transcript of the run (answer text by step, tool calls with their
// arguments and results, progress, restarts), the plan, the sub-runs, the
// spans of the timeline, usage and the outcome. Pure: the page feeds it
// batches of events, the same events twice change nothing (a resumed or
// reloaded stream may repeat some), and a restart marker drops what it
// abandons.

/** An empty model of run `runId`. */
export function emptyModel(runId) {
  return {
    runId,
    seen: new Set(),
    events: [], // every accepted event, for a rebuild after an abandon
    items: [], // the transcript: {kind: "text"|"tool"|"progress"|"restart", …}
    tools: new Map(), // call id → its transcript item
    plan: null,
    subRuns: new Map(), // run id → {runId, agent, objective, state, output, step}
    spans: [], // {key, runId, kind: "model"|"tool", label, start, end}
    openModel: new Map(), // run id → its open model span
    boundary: new Map(), // run id → when its next model call starts
    state: "",
    output: null,
    error: null,
    usage: null,
    steps: 0,
    lastSequence: 0,
    progress: null,
  };
}

/** Every kind of RunEvent (the names of its `event` oneof's fields). */
export const EVENT_KINDS = [
  "run_started",
  "token_delta",
  "tool_call_started",
  "tool_call_finished",
  "progress",
  "run_finished",
  "run_failed",
  "run_cancelled",
  "plan_created",
  "plan_updated",
  "plan_step_started",
  "plan_step_finished",
  "recovery_decided",
  "evaluation",
  "sub_run_started",
  "sub_run_finished",
];

function kindOf(event) {
  return EVENT_KINDS.find((kind) => event[kind]) || "event";
}

/** The plan step `stepId` of the model's plan, if any. */
function planStep(model, stepId) {
  return model.plan && (model.plan.steps || []).find((step) => step.id === stepId);
}

function ms(text) {
  const value = Date.parse(text || "");
  return Number.isNaN(value) ? Date.now() : value;
}

function textItem(model, step) {
  const last = model.items[model.items.length - 1];
  if (last && last.kind === "text" && last.step === step) return last;
  const item = { kind: "text", step, text: "" };
  model.items.push(item);
  return item;
}

function modelSpan(model, runId, step, at, label) {
  const open = model.openModel.get(runId);
  if (open && open.step === step) {
    open.end = Math.max(open.end, at);
    return;
  }
  const start = model.boundary.get(runId) ?? at;
  const span = { key: `${runId}:m${step}`, runId, kind: "model", step, label, start, end: Math.max(at, start) };
  model.spans.push(span);
  model.openModel.set(runId, span);
}

function subRun(model, runId) {
  let run = model.subRuns.get(runId);
  if (!run) {
    run = { runId, agent: "", objective: "", state: "running", output: "", step: 0 };
    model.subRuns.set(runId, run);
  }
  return run;
}

/** Folds one event into the model (mutates it). */
function apply(model, event) {
  const runId = event.run_id || model.runId;
  const root = runId === model.runId;
  const at = ms(event.time);
  const kind = kindOf(event);
  const label = root ? "" : `sub-run ${runId.slice(0, 8)} · `;
  if (root) model.lastSequence = Math.max(model.lastSequence, event.sequence || 0);
  switch (kind) {
    case "run_started": {
      model.boundary.set(runId, at);
      if (root) model.state = "running";
      else Object.assign(subRun(model, runId), { agent: event.run_started.agent, objective: event.run_started.objective });
      break;
    }
    case "token_delta": {
      const { text = "", step = 0 } = event.token_delta;
      modelSpan(model, runId, step, at, `${label}model · step ${step}`);
      if (root) textItem(model, step).text += text;
      else subRun(model, runId).step = step;
      break;
    }
    case "tool_call_started": {
      const call = event.tool_call_started;
      modelSpan(model, runId, call.step || 0, at, `${label}model · step ${call.step || 0}`);
      model.openModel.delete(runId);
      const span = { key: `${runId}:${call.call_id}`, runId, kind: "tool", label: `${label}${call.tool}`, start: at, end: null };
      model.spans.push(span);
      const item = { kind: "tool", runId, callId: call.call_id, tool: call.tool, step: call.step, args: call.arguments_json, output: null, isError: false, error: "", span, progress: null };
      model.tools.set(`${runId}:${call.call_id}`, item);
      if (root) model.items.push(item);
      break;
    }
    case "tool_call_finished": {
      const done = event.tool_call_finished;
      const item = model.tools.get(`${runId}:${done.call_id}`);
      if (item) {
        item.output = done.output_json || "";
        item.isError = Boolean(done.is_error);
        item.error = done.error_message || "";
        item.span.end = at;
      }
      model.boundary.set(runId, at);
      break;
    }
    case "progress": {
      const progress = event.progress;
      if (progress.tool_call_id) {
        const item = model.tools.get(`${runId}:${progress.tool_call_id}`);
        if (item) item.progress = progress;
        break;
      }
      if (!root) break;
      model.progress = progress;
      if (progress.step_restarted) {
        // The step's answer starts over: its text so far is dropped.
        model.items = model.items.filter((item) => !(item.kind === "text" && item.step === progress.step));
        model.items.push({ kind: "restart", step: progress.step, message: progress.message || `step ${progress.step} restarted` });
      } else if (progress.message) {
        model.items.push({ kind: "progress", step: progress.step, message: progress.message });
      }
      break;
    }
    case "plan_created":
    case "plan_updated": {
      if (root) model.plan = event[kind].plan || null;
      break;
    }
    case "plan_step_started":
    case "plan_step_finished": {
      const body = event[kind];
      const step = root && planStep(model, body.step_id);
      if (step) {
        step.state = kind === "plan_step_started" ? "PLAN_STEP_STATE_RUNNING" : body.state || step.state;
        step.attempts = body.attempt || step.attempts;
        if (kind === "plan_step_finished" && body.result) step.result = body.result;
      }
      break;
    }
    case "recovery_decided": {
      const body = event.recovery_decided;
      if (root) model.items.push({ kind: "progress", message: `step ${body.step_id}: ${body.action ? body.action.replace("RECOVERY_ACTION_", "").toLowerCase().replace(/_/g, " ") : "recovery"}${body.reason ? ` (${body.reason})` : ""}` });
      break;
    }
    case "sub_run_started":
    case "sub_run_finished": {
      const body = event[kind];
      const run = subRun(model, body.run_id);
      if (body.agent) run.agent = body.agent;
      if (body.objective) run.objective = body.objective;
      if (kind === "sub_run_finished" && run.state === "running") {
        run.state = (body.state || "").replace("RUN_STATE_", "").toLowerCase().replace("succeeded", "finished");
        run.output = body.output || run.output;
      }
      break;
    }
    case "run_finished":
    case "run_failed":
    case "run_cancelled": {
      const open = model.openModel.get(runId);
      if (open) open.end = Math.max(open.end, at);
      model.openModel.delete(runId);
      const state = kind.slice(4);
      const body = event[kind];
      if (root) {
        model.state = state;
        model.usage = body.usage || null;
        model.steps = body.steps || 0;
        if (kind === "run_finished") model.output = body.output || "";
        if (kind === "run_failed") model.error = body.error || null;
        if (kind === "run_cancelled") model.error = { message: body.reason || "cancelled" };
      } else {
        Object.assign(subRun(model, runId), { state, output: body.output || "" });
      }
      break;
    }
    default:
      break;
  }
}

/** The abandoned range an event declares, if any. */
function abandoned(event) {
  const progress = event.progress;
  if (!progress || !progress.abandoned_last_sequence) return null;
  return [progress.abandoned_first_sequence || 0, progress.abandoned_last_sequence];
}

/** Folds a batch of events into `model`; returns a new model object. */
export function applyEvents(model, events) {
  let next = model;
  for (const event of events) {
    const runId = event.run_id || model.runId;
    const key = `${runId}:${event.sequence}`;
    if (next.seen.has(key)) continue;
    next.seen.add(key);
    const range = abandoned(event);
    if (range) {
      // Rebuild without the events of that run the marker abandons.
      const kept = next.events.filter(
        (old) => (old.run_id || model.runId) !== runId || old.sequence < range[0] || old.sequence > range[1],
      );
      const rebuilt = emptyModel(next.runId);
      rebuilt.seen = next.seen;
      for (const old of kept) {
        rebuilt.events.push(old);
        apply(rebuilt, old);
      }
      next = rebuilt;
    }
    next.events.push(event);
    apply(next, event);
  }
  return { ...next };
}

/** The text the run's last answering step streamed. */
export function answerText(model) {
  for (let i = model.items.length - 1; i >= 0; i -= 1) {
    if (model.items[i].kind === "text") return model.items[i].text;
  }
  return "";
}

/** The plan's steps in layers: each step after the steps it depends on. */
export function planLayers(plan) {
  if (!plan || !plan.steps) return [];
  const layerOf = new Map();
  const byId = new Map(plan.steps.map((step) => [step.id, step]));
  const depth = (step, guard = 0) => {
    if (layerOf.has(step.id)) return layerOf.get(step.id);
    if (guard > byId.size) return 0;
    const parents = (step.depends_on || []).map((id) => byId.get(id)).filter(Boolean);
    const layer = parents.length ? 1 + Math.max(...parents.map((parent) => depth(parent, guard + 1))) : 0;
    layerOf.set(step.id, layer);
    return layer;
  };
  const layers = [];
  for (const step of plan.steps) {
    const layer = depth(step);
    (layers[layer] ||= []).push(step);
  }
  return layers.filter(Boolean);
}
