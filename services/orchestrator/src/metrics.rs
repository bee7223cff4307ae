//! The orchestrator's own Prometheus metrics (the kit adds the gRPC ones):
//! runs and their steps.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_runs_started_total` | counter | `agent` |
//! | `agentmesh_runs_finished_total` | counter | `agent`, `state` (`succeeded`, `failed`, `cancelled`) |
//! | `agentmesh_runs_active` | gauge | `agent` |
//! | `agentmesh_run_duration_seconds` | histogram | `agent`, `state` |
//! | `agentmesh_run_steps_total` | counter | `agent` |
//! | `agentmesh_run_step_duration_seconds` | histogram | `agent` |
//! | `agentmesh_run_queue_depth` | gauge | — |
//! | `agentmesh_runs_deleted_total` | counter | — |
//!
//! plus the replicas' metrics ([`replicas`]) and the run callbacks'
//! ([`callbacks`], registered by the callbacks' start-up).
//!
//! `agent` is a configured agent profile; a run of a profile that is no
//! longer configured (resumed after a configuration change) counts as
//! `other`.
//!
//! # Data flow
//!
//! [`RunMetrics::new`] resolves every label child of every configured agent
//! once. The engine's task driving a run holds a [`Queued`] guard while the
//! run waits for its place (QUEUED), then counts it started and holds a
//! [`Running`] guard while it runs; guards release the gauges however the
//! task ends. Each completed step is counted with its duration, and the run's
//! end once it is stored (by the instance that stored it, as for the audit
//! event), with the run's duration from its start (or its creation, for a
//! run cancelled while queued) to its end.

mod callbacks;
mod replicas;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::metrics::prometheus::{
    self, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use agentmesh_proto::orchestrator::v1::RunState;

pub(crate) use callbacks::{AttemptOutcome, CallbackMetrics};
pub(crate) use replicas::ReplicaMetrics;

/// The label value of an agent that is not configured.
const OTHER: &str = "other";

/// Run-duration buckets, in seconds: a quick answer to a long agent run.
const RUN_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Step-duration buckets, in seconds: one model call and its tool calls.
const STEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How a run ended, as the `state` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunEnd {
    /// A final answer.
    Succeeded,
    /// An error, a limit or the timeout.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl RunEnd {
    const ALL: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Cancelled];

    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Succeeded => 0,
            Self::Failed => 1,
            Self::Cancelled => 2,
        }
    }

    /// The end of a run in a terminal state; `None` for any other state.
    pub(crate) fn of(state: RunState) -> Option<Self> {
        match state {
            RunState::Succeeded => Some(Self::Succeeded),
            RunState::Failed => Some(Self::Failed),
            RunState::Cancelled => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// The run metrics of one orchestrator; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RunMetrics {
    by_agent: Arc<HashMap<String, Arc<AgentSeries>>>,
    other: Arc<AgentSeries>,
    queue_depth: IntGauge,
    deleted: IntCounter,
    replicas: ReplicaMetrics,
}

/// The label children of one agent.
#[derive(Debug)]
pub(crate) struct AgentSeries {
    started: IntCounter,
    active: IntGauge,
    steps: IntCounter,
    step_duration: Histogram,
    finished: [IntCounter; 3],
    duration: [Histogram; 3],
}

struct Families {
    started: IntCounterVec,
    finished: IntCounterVec,
    active: IntGaugeVec,
    duration: HistogramVec,
    steps: IntCounterVec,
    step_duration: HistogramVec,
}

impl RunMetrics {
    /// Creates and registers the metrics, with the series of every agent in
    /// `agents` (and `other`) resolved — and exported, at zero — at once.
    pub(crate) fn new<'a>(
        registry: &Registry,
        agents: impl IntoIterator<Item = &'a str>,
    ) -> prometheus::Result<Self> {
        let families = Families {
            started: IntCounterVec::new(
                Opts::new(
                    "agentmesh_runs_started_total",
                    "Runs that started running (left the queue for their first step).",
                ),
                &["agent"],
            )?,
            finished: IntCounterVec::new(
                Opts::new(
                    "agentmesh_runs_finished_total",
                    "Runs that ended, by final state (succeeded, failed or cancelled).",
                ),
                &["agent", "state"],
            )?,
            active: IntGaugeVec::new(
                Opts::new(
                    "agentmesh_runs_active",
                    "Runs this instance is driving now (past the queue, not yet ended).",
                ),
                &["agent"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "agentmesh_run_duration_seconds",
                    "Duration of ended runs, from their start (or creation, when they never started) to their end.",
                )
                .buckets(RUN_BUCKETS.to_vec()),
                &["agent", "state"],
            )?,
            steps: IntCounterVec::new(
                Opts::new(
                    "agentmesh_run_steps_total",
                    "Completed steps of runs (one model call and the tool calls it asked for).",
                ),
                &["agent"],
            )?,
            step_duration: HistogramVec::new(
                HistogramOpts::new(
                    "agentmesh_run_step_duration_seconds",
                    "Duration of completed steps: the model call, its tool calls and storing the step.",
                )
                .buckets(STEP_BUCKETS.to_vec()),
                &["agent"],
            )?,
        };
        let queue_depth = IntGauge::new(
            "agentmesh_run_queue_depth",
            "Runs waiting for a place (QUEUED, not yet picked up; see max_concurrent_runs).",
        )?;
        registry.register(Box::new(families.started.clone()))?;
        registry.register(Box::new(families.finished.clone()))?;
        registry.register(Box::new(families.active.clone()))?;
        registry.register(Box::new(families.duration.clone()))?;
        registry.register(Box::new(families.steps.clone()))?;
        registry.register(Box::new(families.step_duration.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        let deleted = IntCounter::new(
            "agentmesh_runs_deleted_total",
            "Finished runs deleted by retention (with their events and checkpoints).",
        )?;
        registry.register(Box::new(deleted.clone()))?;
        let by_agent = agents
            .into_iter()
            .map(|agent| (agent.to_owned(), Arc::new(families.series(agent))))
            .collect();
        Ok(Self {
            by_agent: Arc::new(by_agent),
            other: Arc::new(families.series(OTHER)),
            queue_depth,
            deleted,
            replicas: ReplicaMetrics::new(registry)?,
        })
    }

    /// Runs deleted by retention.
    pub(crate) fn deleted(&self) -> IntCounter {
        self.deleted.clone()
    }

    /// The replicas' metrics.
    pub(crate) fn replicas(&self) -> &ReplicaMetrics {
        &self.replicas
    }

    /// The series of `agent` (`other` when it is not configured).
    pub(crate) fn agent(&self, agent: &str) -> &Arc<AgentSeries> {
        self.by_agent.get(agent).unwrap_or(&self.other)
    }

    /// A run starts waiting for its place; it stops when the guard is dropped.
    pub(crate) fn queued(&self) -> Queued {
        self.queue_depth.inc();
        Queued(self.queue_depth.clone())
    }
}

impl Families {
    fn series(&self, agent: &str) -> AgentSeries {
        let by_state = |family: &IntCounterVec| {
            RunEnd::ALL.map(|end| family.with_label_values(&[agent, end.label()]))
        };
        AgentSeries {
            started: self.started.with_label_values(&[agent]),
            active: self.active.with_label_values(&[agent]),
            steps: self.steps.with_label_values(&[agent]),
            step_duration: self.step_duration.with_label_values(&[agent]),
            finished: by_state(&self.finished),
            duration: RunEnd::ALL.map(|end| self.duration.with_label_values(&[agent, end.label()])),
        }
    }
}

impl AgentSeries {
    /// A run leaves the queue and starts running: counted, and active until
    /// the guard is dropped.
    pub(crate) fn running(&self, first_start: bool) -> Running {
        if first_start {
            self.started.inc();
        }
        self.active.inc();
        Running(self.active.clone())
    }

    /// A step completed in `took`.
    pub(crate) fn step(&self, took: Duration) {
        self.steps.inc();
        self.step_duration.observe(took.as_secs_f64());
    }

    /// A run ended as `end` after `took`.
    pub(crate) fn finished(&self, end: RunEnd, took: Duration) {
        let index = end.index();
        if let Some(counter) = self.finished.get(index) {
            counter.inc();
        }
        if let Some(histogram) = self.duration.get(index) {
            histogram.observe(took.as_secs_f64());
        }
    }
}

/// Holds a place in `agentmesh_run_queue_depth`.
#[derive(Debug)]
pub(crate) struct Queued(IntGauge);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Holds a place in `agentmesh_runs_active`.
#[derive(Debug)]
pub(crate) struct Running(IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_moves_through_queue_active_steps_and_end() {
        let registry = Registry::new();
        let metrics = RunMetrics::new(&registry, ["default", "researcher"]).unwrap();
        let queued = metrics.queued();
        assert_eq!(metrics.queue_depth.get(), 1);
        let series = metrics.agent("default");
        drop(queued);
        assert_eq!(metrics.queue_depth.get(), 0);

        let running = series.running(true);
        assert_eq!(series.started.get(), 1);
        assert_eq!(series.active.get(), 1);
        series.step(Duration::from_millis(20));
        series.step(Duration::from_millis(30));
        assert_eq!(series.steps.get(), 2);
        assert_eq!(series.step_duration.get_sample_count(), 2);
        series.finished(RunEnd::Succeeded, Duration::from_secs(1));
        drop(running);
        assert_eq!(series.active.get(), 0);
        assert_eq!(series.finished[0].get(), 1);
        assert_eq!(series.duration[0].get_sample_count(), 1);
        assert_eq!(series.finished[1].get(), 0);

        // A resumed run is active again without being started twice.
        let resumed = series.running(false);
        assert_eq!(series.started.get(), 1);
        assert_eq!(series.active.get(), 1);
        drop(resumed);

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"agentmesh_runs_finished_total{agent="default",state="succeeded"} 1"#),
            "{text}"
        );
        // Every configured agent and state is exported from the start.
        assert!(
            text.contains(
                r#"agentmesh_runs_finished_total{agent="researcher",state="cancelled"} 0"#
            ),
            "{text}"
        );
        assert!(text.contains("agentmesh_run_queue_depth 0"), "{text}");
    }

    #[test]
    fn unconfigured_agents_are_other() {
        let registry = Registry::new();
        let metrics = RunMetrics::new(&registry, ["default"]).unwrap();
        metrics
            .agent("removed-profile")
            .finished(RunEnd::Failed, Duration::ZERO);
        assert_eq!(metrics.other.finished[1].get(), 1);
        assert_eq!(RunEnd::of(RunState::Cancelled), Some(RunEnd::Cancelled));
        assert_eq!(RunEnd::of(RunState::Running), None);
    }
}
