// A view's data, fetched now and again every few seconds while the page is
// visible; a newer answer replaces the older one, and a view that goes away
// stops asking.

import { useEffect, useState } from "../vendor/preact-htm.js";
import { api } from "./api.js";

/**
 * GET `path` with `query` every `intervalMs`; asks again at once when `key`
 * (a string naming what is asked) changes. Returns `[answer, error, reload]`.
 */
export function usePolled(path, query, intervalMs, key = "") {
  const [answer, setAnswer] = useState(null);
  const [error, setError] = useState("");
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stopped = false;
    const load = () =>
      api(path, { query })
        .then((next) => !stopped && (setAnswer(next), setError("")))
        .catch((err) => !stopped && setError(err.message));
    load();
    const timer = setInterval(() => document.visibilityState === "visible" && load(), intervalMs);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, [path, key, tick]);
  return [answer, error, () => setTick(tick + 1)];
}
