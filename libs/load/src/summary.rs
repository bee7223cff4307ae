//! What a load test measured: latency percentiles, errors by class,
//! throughput; as JSON and as a table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::plan::{Load, Plan};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// How many.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Stats {
    /// The stats of `micros` (sorted here); `None` when empty.
    fn of(micros: &mut [u64]) -> Option<Self> {
        micros.sort_unstable();
        let count = micros.len();
        let last = count.checked_sub(1)?;
        let at = |quantile: f64| {
            // Nearest rank: the smallest value with at least `quantile` of
            // the values at or below it.
            let rank = (quantile * count as f64).ceil() as usize;
            micros
                .get(rank.saturating_sub(1).min(last))
                .map_or(0.0, |&value| value as f64 / 1000.0)
        };
        let total: u64 = micros.iter().sum();
        Some(Self {
            count: count as u64,
            mean: total as f64 / count as f64 / 1000.0,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// The result of a load test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The fixed rate asked for (calls/s), for an open loop.
    pub rate: Option<f64>,
    /// The calls kept in flight, for a closed loop.
    pub concurrency: Option<usize>,
    /// How long calls were sent for, as planned.
    pub duration_s: f64,
    /// From the first send to the last call's end.
    pub elapsed_s: f64,
    /// Calls made.
    pub sent: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Failed calls by class (gRPC code name, `HTTP 503`, `run_failed`,
    /// `timeout` …).
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second of `elapsed_s`.
    pub throughput: f64,
    /// Latency of the successful calls (open loop: from their scheduled
    /// send time).
    pub latency_ms: Option<Stats>,
    /// Time to the first streamed message, for streams (open loop: from
    /// the scheduled send time).
    pub first_event_ms: Option<Stats>,
    /// Time to the first token of a model's answer, for calls that stream
    /// one (open loop: from the scheduled send time).
    #[serde(default)]
    pub first_token_ms: Option<Stats>,
    /// Gaps between successive tokens of one answer.
    #[serde(default)]
    pub token_gap_ms: Option<Stats>,
    /// Runs: from each model step's start, as the orchestrator stamped it,
    /// to the step's first token at the client (needs the two clocks to
    /// agree).
    #[serde(default)]
    pub step_first_token_ms: Option<Stats>,
    /// How far behind its schedule the open loop sent a call, at worst: a
    /// large figure means the load client itself could not keep the rate.
    pub max_send_lag_ms: f64,
}

/// Calls as they end, before they are summarised.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    latencies: Vec<u64>,
    first_events: Vec<u64>,
    first_tokens: Vec<u64>,
    token_gaps: Vec<u64>,
    step_first_tokens: Vec<u64>,
    errors: BTreeMap<String, u64>,
    sent: u64,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl Recorded {
    pub(crate) fn add(&mut self, latency: Duration, outcome: Outcome) {
        self.sent += 1;
        match outcome.result {
            Ok(()) => {
                self.latencies.push(micros(latency));
                self.first_events.extend(outcome.first_event.map(micros));
                let tokens = outcome.tokens;
                self.first_tokens.extend(tokens.first.map(micros));
                self.token_gaps.extend(tokens.gaps.into_iter().map(micros));
                self.step_first_tokens
                    .extend(tokens.step_to_first.into_iter().map(micros));
            }
            Err(class) => *self.errors.entry(class).or_default() += 1,
        }
    }

    pub(crate) fn summarise(
        mut self,
        plan: Plan,
        elapsed: Duration,
        max_send_lag: Duration,
    ) -> Summary {
        let ok = self.latencies.len() as u64;
        let (rate, concurrency) = match plan.load {
            Load::Rate(rate) => (Some(rate), None),
            Load::Concurrency(workers) => (None, Some(workers)),
        };
        Summary {
            rate,
            concurrency,
            duration_s: plan.duration.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            sent: self.sent,
            ok,
            errors: self.errors,
            throughput: ok as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            latency_ms: Stats::of(&mut self.latencies),
            first_event_ms: Stats::of(&mut self.first_events),
            first_token_ms: Stats::of(&mut self.first_tokens),
            token_gap_ms: Stats::of(&mut self.token_gaps),
            step_first_token_ms: Stats::of(&mut self.step_first_tokens),
            max_send_lag_ms: max_send_lag.as_secs_f64() * 1000.0,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => writeln!(f, "load        {rate} calls/s (open loop)")?,
            (_, Some(workers)) => writeln!(f, "load        {workers} in flight (closed loop)")?,
            _ => {}
        }
        writeln!(
            f,
            "calls       {} sent, {} ok, {} failed in {:.2} s: {:.1} ok/s",
            self.sent,
            self.ok,
            self.sent - self.ok,
            self.elapsed_s,
            self.throughput
        )?;
        writeln!(
            f,
            "{:<16}{:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"
        )?;
        for (name, stats) in [
            ("latency", self.latency_ms),
            ("first event", self.first_event_ms),
            ("first token", self.first_token_ms),
            ("token gap", self.token_gap_ms),
            ("step to token", self.step_first_token_ms),
        ] {
            if let Some(stats) = stats {
                writeln!(
                    f,
                    "{name:<16}{:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    stats.p50, stats.p90, stats.p99, stats.max, stats.mean
                )?;
            }
        }
        for (class, count) in &self.errors {
            writeln!(f, "error       {class}: {count}")?;
        }
        if self.rate.is_some() && self.max_send_lag_ms > 10.0 {
            writeln!(
                f,
                "note        the load client fell up to {:.1} ms behind its schedule (latencies still count from it)",
                self.max_send_lag_ms
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let stats = Stats::of(&mut values).unwrap();
        assert_eq!(
            (stats.p50, stats.p90, stats.p99, stats.max),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!((stats.mean - 50.5).abs() < 1e-9);
        assert_eq!(Stats::of(&mut []), None);
        let one = Stats::of(&mut [1500]).unwrap();
        assert_eq!((one.p50, one.max), (1.5, 1.5));
    }
}
