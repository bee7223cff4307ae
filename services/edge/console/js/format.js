// Small formatting helpers: every value shown is text (never HTML).

/** "RUN_STATE_RUNNING" → "running". */
export function enumName(value, prefix) {
  if (value === undefined || value === null) return "";
  const text = String(value);
  return (text.startsWith(prefix) ? text.slice(prefix.length) : text).toLowerCase().replace(/_/g, " ");
}

/** A number of milliseconds as text. */
export function duration(milliseconds) {
  if (milliseconds === undefined || milliseconds === null || Number.isNaN(milliseconds)) return "";
  if (milliseconds < 1000) return `${Math.round(milliseconds)} ms`;
  const seconds = milliseconds / 1000;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds % 60)} s`;
}

/** Milliseconds between two RFC 3339 times (the second defaults to now). */
export function between(start, end) {
  if (!start) return undefined;
  const from = Date.parse(start);
  const to = end ? Date.parse(end) : Date.now();
  return to - from;
}

export function time(text) {
  if (!text) return "";
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? String(text) : date.toLocaleString();
}

export function cost(usd) {
  if (usd === undefined || usd === null) return "";
  const value = Number(usd);
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toFixed(6)}` : `$${value.toFixed(4)}`;
}

export function tokens(usage) {
  if (!usage) return "";
  const total = usage.total_tokens || (usage.input_tokens || 0) + (usage.output_tokens || 0);
  return total ? String(total) : "0";
}

/** `{k: v}` → "k=v, …". */
export function labels(map) {
  if (!map) return "";
  return Object.entries(map)
    .map(([key, value]) => `${key}=${value}`)
    .join(", ");
}

/** Pretty JSON of a JSON text, or the text as it is. */
export function prettyJson(text) {
  if (!text) return "";
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (_) {
    return String(text);
  }
}
