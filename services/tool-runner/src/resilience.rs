//! The guards around a tool's runs, so that one slow or broken tool cannot
//! take the service down with it: a bulkhead per tool (a concurrency limit
//! with a bounded queue), a circuit breaker per tool, and retries for the
//! tools declared idempotent. [`crate::runner::ToolRunner`] drives them; this
//! module holds the pieces and the rules.
//!
//! ```text
//! admit     circuit open?                  yes ─▶ UNAVAILABLE (RetryInfo: when it is probed)
//!             │ no
//!           a place in the tool's bulkhead? queue full ─▶ RESOURCE_EXHAUSTED (RetryInfo: 1s)
//!             │ else waits, until the call's deadline at most ─▶ DEADLINE_EXCEEDED
//!           leave from the circuit          refused ─▶ UNAVAILABLE
//!             ▼ Admission (the place, held until the result; the leave for attempt 1)
//! execute   attempt under the call's deadline ─▶ outcome ─▶ circuit: success, failure
//!             │                                              (TIMEOUT, a command's
//!             │                                              EXECUTION_FAILED) or neither
//!             │ failed, idempotent, retryable, attempts left, the backoff ends before
//!             │ the deadline, the budget allows, the circuit gives leave
//!             └─▶ sleep(backoff) ─▶ attempt again
//! ```
//!
//! Admission is a plain step rather than a tower layer: ExecuteToolStream
//! must answer a refusal as a gRPC status before its stream starts, while
//! the attempts run later, in a task that relays the tool's progress. The
//! attempts are the shared attempt loop's (`agentmesh_resilience::attempt`),
//! which starts on the circuit's leave taken at admission; this module gives
//! it the tool's rules ([`retry_reason`], [`health_failure`]).
//!
//! Every refusal and retry is reported through the service's
//! [`ResilienceReporter`]: circuit changes (CIRCUIT_OPENED / CIRCUIT_CLOSED
//! audit events, `agentmesh_circuit_state{target="tool:<name>"}`), full
//! bulkheads (RATE_LIMITED events, `agentmesh_rate_limited_total{scope="tool"}`),
//! retries (`agentmesh_retries_total`) and, as the bulkhead's observer, its
//! gauges (`agentmesh_bulkhead_in_use` / `_queue_depth{bulkhead="tool:<name>"}`).

use std::time::Duration;

use agentmesh_audit_client::resilience::{Refusal, ResilienceReporter};
use agentmesh_proto::tools::v1::ToolErrorKind;
use agentmesh_resilience::{BulkheadFull, BulkheadPermit, CallPermit, CircuitOpen};
use tonic::{Code, Status};

use crate::config::format_duration;
use crate::mcp::McpServer;
use crate::outcome::ToolFailure;
use crate::registry::{Implementation, RegisteredTool};

/// How long a caller refused by a full bulkhead is told to wait.
pub(crate) const QUEUE_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A call let through its tool's guards: it holds a place in the bulkhead
/// until it is dropped (after the result), and leave from the circuit for
/// its first attempt.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) place: BulkheadPermit,
    pub(crate) permit: CallPermit,
    /// How long the call waited in the queue (it counts against its
    /// timeout).
    pub(crate) waited: Duration,
}

// === statuses of refused calls ===

/// RESOURCE_EXHAUSTED for a call refused by a full bulkhead, reported as a
/// refusal (RATE_LIMITED audit event and counter).
pub(crate) fn queue_full(
    tool: &RegisteredTool,
    full: &BulkheadFull,
    method: &str,
    reporter: Option<&ResilienceReporter>,
) -> Status {
    if let Some(reporter) = reporter {
        reporter.refused(&Refusal {
            scope: "tool",
            key: tool.name(),
            resource: "concurrency",
            limit: full.max_concurrent as f64,
            period: None,
            retry_after: QUEUE_FULL_RETRY_AFTER,
            method,
        });
    }
    with_retry_info(
        Code::ResourceExhausted,
        format!(
            "tool `{}` is at its concurrency limit: {} call(s) run at once and {} may wait, and all are taken; retry in {}",
            tool.name(),
            full.max_concurrent,
            full.max_queued,
            format_duration(QUEUE_FULL_RETRY_AFTER)
        ),
        QUEUE_FULL_RETRY_AFTER,
    )
}

/// UNAVAILABLE for a call refused by an open circuit; RetryInfo says when
/// the tool is probed again.
pub(crate) fn circuit_open(tool: &RegisteredTool, open: &CircuitOpen) -> Status {
    // Whole milliseconds: the sub-millisecond part is noise to a person.
    let retry_in =
        Duration::from_millis(u64::try_from(open.retry_in.as_millis()).unwrap_or(u64::MAX));
    let when = if retry_in.is_zero() {
        "a probe call is running; retry shortly".to_owned()
    } else {
        format!("it is probed again in {}", format_duration(retry_in))
    };
    with_retry_info(
        Code::Unavailable,
        format!(
            "tool `{}` is unavailable: its runs kept failing or timing out, so its circuit is open and calls are refused; {when}",
            tool.name()
        ),
        retry_in,
    )
}

/// UNAVAILABLE for a call of `tool` while its MCP server is down, with
/// RetryInfo: when the server is tried again; `None` while it is up.
pub(crate) fn server_down(server: &McpServer, tool: &str) -> Option<Status> {
    let (reason, retry_in) = server.down()?;
    let (when, retry_in) = match retry_in {
        Some(retry_in) => {
            let retry_in = Duration::from_secs(retry_in.as_secs().max(1));
            (
                format!(
                    "it is {} again in about {}",
                    server.comes_back(),
                    format_duration(retry_in)
                ),
                retry_in,
            )
        }
        None => (
            format!("it is being {} now", server.comes_back()),
            Duration::from_secs(1),
        ),
    };
    Some(with_retry_info(
        Code::Unavailable,
        format!(
            "tool `{tool}` is unavailable: its MCP server `{}` is down ({reason}); {when}",
            server.name
        ),
        retry_in,
    ))
}

/// DEADLINE_EXCEEDED for a call whose time ran out while it waited for a
/// place (it never ran).
pub(crate) fn queue_timeout(tool: &RegisteredTool, timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the call's timeout of {} passed while it waited for a place: tool `{}` runs at most {} call(s) at once and all were busy; the tool did not run",
        format_duration(timeout),
        tool.name(),
        tool.bulkhead.max_concurrent()
    ))
}

// === outcomes ===

/// The failure a failed attempt counts against the tool's circuit, if any: runs
/// that time out, and command tools that fail, speak about the tool's
/// health. Bad arguments, refusals and bad output are the caller's or the
/// program's contract, not its health; and a built-in's EXECUTION_FAILED
/// comes from its input (a file that does not exist, a division by zero),
/// so a confused model cannot open a built-in's circuit for everyone.
/// A pipeline's failures are its steps', already counted against their
/// own tools' circuits: counting them again would shut every pipeline that
/// uses a flaky tool, even for calls that would not reach it.
pub(crate) fn health_failure(tool: &RegisteredTool, failure: &ToolFailure) -> Option<String> {
    match (failure.kind, &tool.implementation) {
        (_, Implementation::Pipeline(_)) => None,
        (ToolErrorKind::Timeout, _)
        | (ToolErrorKind::ExecutionFailed, Implementation::Command(_)) => {
            Some(failure.message.clone())
        }
        // An MCP tool's error result is its answer; a server out of reach
        // is its health.
        (ToolErrorKind::ExecutionFailed, Implementation::Mcp(_)) if failure.unreachable => {
            Some(failure.message.clone())
        }
        _ => None,
    }
}

/// Why a failed attempt may be retried (the `reason` label of
/// `agentmesh_retries_total`), or `None` when it may not: only idempotent
/// tools, and only failures that may go away — a command's EXECUTION_FAILED,
/// and TIMEOUT (whose retry the deadline check then refuses unless time is
/// left, which with one deadline for the whole call it is not).
pub(crate) fn retry_reason(tool: &RegisteredTool, failure: &ToolFailure) -> Option<&'static str> {
    if !tool.descriptor.idempotent {
        return None;
    }
    match (failure.kind, &tool.implementation) {
        (ToolErrorKind::ExecutionFailed, Implementation::Command(_)) => Some("execution_failed"),
        (ToolErrorKind::ExecutionFailed, Implementation::Mcp(_)) if failure.unreachable => {
            Some("unreachable")
        }
        (ToolErrorKind::Timeout, _) => Some("timeout"),
        _ => None,
    }
}

/// A status carrying a `google.rpc.RetryInfo` detail with `delay`.
pub(crate) fn with_retry_info(code: Code, message: String, delay: Duration) -> Status {
    use tonic_types::StatusExt as _;
    Status::with_error_details(
        code,
        message,
        tonic_types::ErrorDetails::with_retry_info(Some(delay)),
    )
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;
    use crate::config::{CommandToolConfig, Config};
    use crate::registry::Registry;

    fn registry() -> Registry {
        let mut config = Config::default();
        for (name, idempotent) in [("fetch", true), ("send", false)] {
            config.commands.insert(
                name.into(),
                CommandToolConfig {
                    description: "d".into(),
                    command: vec!["true".into()],
                    idempotent,
                    ..CommandToolConfig::default()
                },
            );
        }
        Registry::from_config(&config).unwrap()
    }

    #[test]
    fn what_counts_against_a_circuit_and_what_is_retried() {
        let registry = registry();
        let failures = [
            ToolFailure::failed("exited with code 1"),
            ToolFailure::timeout("timed out after 1s"),
            ToolFailure::invalid_arguments("/x: required"),
            ToolFailure::invalid_output("not JSON"),
            ToolFailure::denied("outside the workspace"),
        ];
        // Per failure above: does it count against the tool's circuit, and
        // why is it retried.
        type Expected<'a> = (&'a str, [bool; 5], [Option<&'a str>; 5]);
        let expected: [Expected<'_>; 3] = [
            (
                "fetch",
                [true, true, false, false, false],
                [Some("execution_failed"), Some("timeout"), None, None, None],
            ),
            ("send", [true, true, false, false, false], [None; 5]),
            // A built-in's failures come from its input: only timeouts count.
            (
                "read_file",
                [false, true, false, false, false],
                [None, Some("timeout"), None, None, None],
            ),
        ];
        for (name, counts, retried) in expected {
            let tool = registry.get(name).unwrap();
            for (index, failure) in failures.iter().enumerate() {
                assert_eq!(
                    health_failure(tool, failure).is_some(),
                    counts[index],
                    "{name}: {failure:?}"
                );
                assert_eq!(
                    retry_reason(tool, failure),
                    retried[index],
                    "{name}: {failure:?}"
                );
            }
        }
    }

    #[test]
    fn retry_info_reads_back_with_the_standard_decoder() {
        for delay in [
            Duration::from_secs(1),
            Duration::from_millis(29_950),
            Duration::ZERO,
            Duration::from_secs(300),
        ] {
            let status = with_retry_info(Code::ResourceExhausted, "full: é".into(), delay);
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert_eq!(status.message(), "full: é");
            let retry = status.get_details_retry_info().unwrap();
            assert_eq!(retry.retry_delay, Some(delay), "{delay:?}");
        }
    }
}
