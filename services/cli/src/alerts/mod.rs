//! `agentmesh alerts list|watch`: the alerting service's alerts from the
//! command line, in the manner of Alertmanager's `amtool alert query`.
//!
//! The flags (here) become a `ListAlertsRequest` or `WatchAlertsRequest`
//! (label matchers parsed by `alerting::matchers`); `list` follows the pages
//! and `watch` the stream of changes, over the connection `alerting` makes;
//! `render` turns the answers into an aligned table or lines (or they are
//! printed as protobuf JSON lines). A failed call prints `error: CODE:
//! message` with the field violations the server named, and exits non-zero.
//! The pieces that decide what is asked and shown are plain functions,
//! tested beside them; `tests.rs` drives the commands against a fake
//! service.

use std::process::ExitCode;

use agentmesh_proto::alerting::v1 as pb;

use crate::alerting::matchers::parse_matchers;
use crate::alerting::{AlertingTarget, Output};

mod list;
mod render;
#[cfg(test)]
mod tests;
mod watch;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AlertsCommand {
    /// List the current alerts (pending, firing, recently resolved), critical
    /// first, then newest first.
    List(ListArgs),
    /// Show the current alerts, then every change as it happens, until Ctrl-C.
    Watch(WatchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StateArg {
    Pending,
    Firing,
    Resolved,
}

impl StateArg {
    fn proto(self) -> pb::AlertState {
        match self {
            Self::Pending => pb::AlertState::Pending,
            Self::Firing => pb::AlertState::Firing,
            Self::Resolved => pb::AlertState::Resolved,
        }
    }
}

/// A severity, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SeverityArg {
    Critical,
    Warning,
    Info,
}

impl SeverityArg {
    fn proto(self) -> pb::Severity {
        match self {
            Self::Critical => pb::Severity::Critical,
            Self::Warning => pb::Severity::Warning,
            Self::Info => pb::Severity::Info,
        }
    }
}

/// Which alerts: the flags of one kind combine with OR, the kinds and the
/// matchers with AND.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AlertFilters {
    /// Only alerts in this state: pending, firing, resolved (comma-separated
    /// or repeated).
    #[arg(
        long = "state",
        value_name = "STATE",
        value_enum,
        value_delimiter = ','
    )]
    pub(super) states: Vec<StateArg>,
    /// Only alerts of this severity: critical, warning, info (comma-separated
    /// or repeated).
    #[arg(
        long = "severity",
        value_name = "SEVERITY",
        value_enum,
        value_delimiter = ','
    )]
    pub(super) severities: Vec<SeverityArg>,
    /// Only alerts whose labels match, in Alertmanager's syntax:
    /// alertname="ToolFailing", tool=~"fi.*", severity!=info, x!~"a|b"
    /// (quotes optional). A first MATCHER without an operator means
    /// alertname=MATCHER.
    #[arg(value_name = "MATCHER")]
    pub(super) matchers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(super) filters: AlertFilters,
    /// Only silenced (true) or only not silenced (false) alerts.
    #[arg(long, value_name = "true|false")]
    pub(super) silenced: Option<bool>,
    /// Only inhibited (true) or only not inhibited (false) alerts.
    #[arg(long, value_name = "true|false")]
    pub(super) inhibited: Option<bool>,
    /// Most alerts to show (default: all, fetched page by page).
    #[arg(long, value_name = "N")]
    pub(super) limit: Option<u32>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub(super) output: Output,
    #[command(flatten)]
    pub(super) target: AlertingTarget,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(super) filters: AlertFilters,
    /// Show only changes from now on, not the current alerts first.
    #[arg(long)]
    pub(super) skip_snapshot: bool,
    /// Output format (json: every message but heartbeats, including the end
    /// of the snapshot).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub(super) output: Output,
    #[command(flatten)]
    pub(super) target: AlertingTarget,
}

// === requests ===

/// The `ListAlertsRequest` the flags ask for (the first page; the caller
/// sets the page size).
pub(super) fn list_request(args: &ListArgs) -> Result<pb::ListAlertsRequest, String> {
    Ok(pb::ListAlertsRequest {
        page_size: 0,
        page_token: String::new(),
        states: states(&args.filters),
        severities: severities(&args.filters),
        matchers: parse_matchers(&args.filters.matchers)?,
        silenced: args.silenced,
        inhibited: args.inhibited,
    })
}

/// The `WatchAlertsRequest` the flags ask for.
pub(super) fn watch_request(args: &WatchArgs) -> Result<pb::WatchAlertsRequest, String> {
    Ok(pb::WatchAlertsRequest {
        states: states(&args.filters),
        severities: severities(&args.filters),
        matchers: parse_matchers(&args.filters.matchers)?,
        skip_snapshot: args.skip_snapshot,
    })
}

fn states(filters: &AlertFilters) -> Vec<i32> {
    filters
        .states
        .iter()
        .map(|s| i32::from(s.proto()))
        .collect()
}

fn severities(filters: &AlertFilters) -> Vec<i32> {
    filters
        .severities
        .iter()
        .map(|s| i32::from(s.proto()))
        .collect()
}

pub(crate) async fn alerts(command: AlertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertsCommand::List(args) => list::list(args).await,
        AlertsCommand::Watch(args) => watch::watch(args).await,
    }
}
