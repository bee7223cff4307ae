//! The tool runner's own Prometheus metrics (the kit adds the gRPC ones,
//! and the service's `ResilienceReporter` the circuit, refusal, retry and
//! bulkhead families, with targets named `tool:<name>`): tool executions by
//! tool and outcome, their duration, and those running. An execution is one
//! attempt: a retried call counts each.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `agentmesh_tool_executions_total` | counter | `tool`, `outcome` |
//! | `agentmesh_tool_execution_duration_seconds` | histogram | `tool` |
//! | `agentmesh_tool_executions_in_flight` | gauge | `tool` |
//! | `agentmesh_tool_sandbox_info` | gauge (1) | `filesystem`, `network`, `user` |
//! | `agentmesh_tool_sandbox_landlock_abi` | gauge | — |
//!
//! The sandbox series say which isolation is in force for command tools,
//! from a fixed set of words: `filesystem` is `landlock`,
//! `landlock_partial` or `none`; `network` is `namespace`, `landlock_tcp`
//! or `none`; `user` is `unprivileged` or `service`.
//!
//! `outcome` is what the runner distinguishes: `ok`; `invalid_arguments`
//! (the arguments break the tool's schema); `timeout`; `invalid_output` (the
//! tool's output is not JSON or breaks its output schema); `denied` (refused
//! by policy); `error` (the tool ran and failed); `cancelled` (the caller
//! went away while the tool ran, so it was stopped). `tool` is a registered
//! tool (built-in, configured command or pipeline, or an MCP server's tool,
//! whose series appear when the server first lists it); anything else would
//! be `other`, though only registered tools ever execute. Calls refused before they
//! execute (unknown tool, malformed request, a full bulkhead, an open
//! circuit) are gRPC errors, counted by the kit's `grpc_server_handled_total`.
//!
//! # Data flow
//!
//! [`ToolMetrics::new`] resolves every label child of every registered tool
//! once. Each attempt of [`crate::runner::ToolRunner::execute`] takes an
//! [`Execution`] guard when the tool starts (in flight) and finishes it with
//! the outcome; a guard
//! dropped unfinished — the execution future was dropped because the caller
//! went away — counts as `cancelled`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use agentmesh_kit::metrics::prometheus::{
    self, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use agentmesh_proto::tools::v1::ToolErrorKind;

/// The label value of a tool that is not registered.
const OTHER: &str = "other";

/// Execution-duration buckets, in seconds: an inline calculation up to a
/// command running for minutes.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How a tool execution ended, as the `outcome` label spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
    InvalidArguments,
    InvalidOutput,
    Denied,
    Cancelled,
}

impl Outcome {
    const ALL: [Self; 7] = [
        Self::Ok,
        Self::Error,
        Self::Timeout,
        Self::InvalidArguments,
        Self::InvalidOutput,
        Self::Denied,
        Self::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::InvalidArguments => "invalid_arguments",
            Self::InvalidOutput => "invalid_output",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::Timeout => 2,
            Self::InvalidArguments => 3,
            Self::InvalidOutput => 4,
            Self::Denied => 5,
            Self::Cancelled => 6,
        }
    }

    /// The outcome of a failed execution of this kind.
    pub(crate) fn of_failure(kind: ToolErrorKind) -> Self {
        match kind {
            ToolErrorKind::Timeout => Self::Timeout,
            ToolErrorKind::InvalidArguments => Self::InvalidArguments,
            ToolErrorKind::InvalidOutput => Self::InvalidOutput,
            ToolErrorKind::Denied => Self::Denied,
            _ => Self::Error,
        }
    }
}

/// Tools with series of their own at most: an MCP server that keeps
/// renaming its tools cannot grow the metrics without bound (later ones
/// count as `other`).
const MAX_TOOL_SERIES: usize = 10_000;

/// The tool metrics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ToolMetrics {
    families: Arc<Families>,
    /// Grows when an MCP server lists a new tool; read by every execution
    /// (never held across an await).
    by_tool: Arc<RwLock<HashMap<String, Arc<ToolSeries>>>>,
    other: Arc<ToolSeries>,
}

#[derive(Debug)]
struct Families {
    executions: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
}

impl Families {
    fn series(&self, tool: &str) -> Arc<ToolSeries> {
        Arc::new(ToolSeries {
            outcomes: Outcome::ALL
                .map(|outcome| self.executions.with_label_values(&[tool, outcome.label()])),
            duration: self.duration.with_label_values(&[tool]),
            in_flight: self.in_flight.with_label_values(&[tool]),
        })
    }
}

/// The label children of one tool.
#[derive(Debug)]
pub(crate) struct ToolSeries {
    outcomes: [IntCounter; 7],
    duration: Histogram,
    in_flight: IntGauge,
}

impl ToolMetrics {
    /// Creates and registers the metrics, with the series of every tool in
    /// `tools` resolved — and exported, at zero — at once.
    pub(crate) fn new<'a>(
        registry: &Registry,
        tools: impl IntoIterator<Item = &'a str>,
    ) -> prometheus::Result<Self> {
        let executions = IntCounterVec::new(
            Opts::new(
                "agentmesh_tool_executions_total",
                "Tool executions by tool and outcome (ok, error, timeout, invalid_arguments, invalid_output, denied, cancelled).",
            ),
            &["tool", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "agentmesh_tool_execution_duration_seconds",
                "Duration of tool executions, from the schema check to the result.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["tool"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "agentmesh_tool_executions_in_flight",
                "Tool executions running now.",
            ),
            &["tool"],
        )?;
        registry.register(Box::new(executions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let families = Families {
            executions,
            duration,
            in_flight,
        };
        let by_tool = tools
            .into_iter()
            .map(|tool| (tool.to_owned(), families.series(tool)))
            .collect();
        Ok(Self {
            other: families.series(OTHER),
            families: Arc::new(families),
            by_tool: Arc::new(RwLock::new(by_tool)),
        })
    }

    /// Gives `tool` (an MCP server's, listed after the start) series of its
    /// own, exported at zero from now on.
    pub(crate) fn add(&self, tool: &str) {
        let mut by_tool = self.by_tool.write().unwrap_or_else(PoisonError::into_inner);
        if by_tool.len() < MAX_TOOL_SERIES && !by_tool.contains_key(tool) {
            let series = self.families.series(tool);
            by_tool.insert(tool.to_owned(), series);
        }
    }

    /// An execution of `tool` starts.
    pub(crate) fn start(&self, tool: &str) -> Execution {
        let series = Arc::clone(
            self.by_tool
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(tool)
                .unwrap_or(&self.other),
        );
        series.in_flight.inc();
        Execution {
            series,
            started: Instant::now(),
            finished: false,
        }
    }
}

/// One execution, in flight until finished or dropped.
#[derive(Debug)]
pub(crate) struct Execution {
    series: Arc<ToolSeries>,
    started: Instant,
    finished: bool,
}

impl Execution {
    /// The execution ended with `outcome`.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.series.in_flight.dec();
        self.series
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(counter) = self.series.outcomes.get(outcome.index()) {
            counter.inc();
        }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        // Dropped unfinished: the caller went away and the tool was stopped.
        self.end(Outcome::Cancelled);
    }
}

/// Exports which isolation command tools get (see the table above).
pub(crate) fn export_sandbox(
    registry: &Registry,
    summary: &crate::sandbox::Summary,
) -> prometheus::Result<()> {
    let info = IntGaugeVec::new(
        Opts::new(
            "agentmesh_tool_sandbox_info",
            "The isolation command tools run with (always 1; the labels say which).",
        ),
        &["filesystem", "network", "user"],
    )?;
    let abi = IntGauge::new(
        "agentmesh_tool_sandbox_landlock_abi",
        "The kernel's Landlock ABI version as the sandbox found it (0: none or no helper).",
    )?;
    registry.register(Box::new(info.clone()))?;
    registry.register(Box::new(abi.clone()))?;
    info.with_label_values(&[summary.filesystem, summary.network, summary.user])
        .set(1);
    abi.set(i64::from(summary.landlock_abi));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (Registry, ToolMetrics) {
        let registry = Registry::new();
        let metrics = ToolMetrics::new(&registry, ["calculator", "current_time"]).unwrap();
        (registry, metrics)
    }

    #[test]
    fn executions_count_by_outcome_and_leave_flight() {
        let (registry, metrics) = metrics();
        let execution = metrics.start("calculator");
        let series = Arc::clone(&execution.series);
        assert_eq!(series.in_flight.get(), 1);
        execution.finish(Outcome::Ok);
        assert_eq!(series.in_flight.get(), 0);
        assert_eq!(series.outcomes[Outcome::Ok.index()].get(), 1);
        assert_eq!(series.duration.get_sample_count(), 1);

        metrics
            .start("calculator")
            .finish(Outcome::of_failure(ToolErrorKind::InvalidArguments));
        assert_eq!(series.outcomes[Outcome::InvalidArguments.index()].get(), 1);
        assert_eq!(
            Outcome::of_failure(ToolErrorKind::ExecutionFailed),
            Outcome::Error
        );
        assert_eq!(
            Outcome::of_failure(ToolErrorKind::Timeout),
            Outcome::Timeout
        );

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"agentmesh_tool_executions_total{outcome="ok",tool="calculator"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"agentmesh_tool_executions_total{outcome="timeout",tool="current_time"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_dropped_execution_is_cancelled_and_unknown_tools_are_other() {
        let (_, metrics) = metrics();
        let execution = metrics.start("no-such-tool");
        let series = Arc::clone(&execution.series);
        assert!(Arc::ptr_eq(&series, &metrics.other));
        drop(execution);
        assert_eq!(series.in_flight.get(), 0);
        assert_eq!(series.outcomes[Outcome::Cancelled.index()].get(), 1);
    }
}
