//! The flags of `agentmesh audit`: where the audit service is, which
//! events (selectors and a time range), and what each command does with
//! them. Their values are parsed by `filter.rs`, which also turns them into
//! the `EventFilter` every request carries.

use std::path::PathBuf;

use agentmesh_proto::audit::v1 as pb;
use jiff::Timestamp;

use super::filter::{parse_event_type, parse_outcome, time_arg};
use crate::commands::Embedded;
use crate::credential::CredentialArgs;

/// Where to find the audit service.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AuditTarget {
    /// Address of a running audit service (e.g. http://localhost:50054).
    /// Unset: start the audit service in this process over the data
    /// directory.
    #[arg(
        long = "audit",
        env = "AGENTMESH_AUDIT",
        value_name = "ADDR",
        global = true
    )]
    pub(super) address: Option<String>,
    #[command(flatten)]
    pub(super) embedded: Embedded,
    #[command(flatten)]
    pub(super) credential: CredentialArgs,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit events, newest first.
    Query(QueryArgs),
    /// Write the matching events to a file (CSV or JSON Lines), oldest first,
    /// as they stream in.
    Export(ExportArgs),
    /// Compute a usage, security or cost report over a time range.
    Report(ReportArgs),
    /// Check that the audit log's hash chains are intact; exit code 1 if not.
    Verify(VerifyArgs),
}

/// Which events: each flag may be repeated (values of one flag combine with
/// OR, different flags with AND).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Selectors {
    /// Only events of this run.
    #[arg(long = "run", value_name = "RUN_ID")]
    pub(super) runs: Vec<String>,
    /// Only events of this tenant.
    #[arg(long = "tenant", value_name = "TENANT")]
    pub(super) tenants: Vec<String>,
    /// Only events of this subject (user, service account, peer).
    #[arg(long = "subject", value_name = "SUBJECT")]
    pub(super) subjects: Vec<String>,
    /// Only events of this type: run_started, run_finished, run_failed,
    /// run_cancelled, llm_call, tool_call, authentication, authorization,
    /// rate_limited, circuit_opened, circuit_closed, config_loaded, error,
    /// retention, notification, run_callback (comma-separated or repeated).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_type, value_delimiter = ',')]
    pub(super) types: Vec<pb::EventType>,
    /// Only events with this outcome: success, failure, denied.
    #[arg(long = "outcome", value_name = "OUTCOME", value_parser = parse_outcome, value_delimiter = ',')]
    pub(super) outcomes: Vec<pb::Outcome>,
    /// Only events produced by this service (e.g. llm-gateway).
    #[arg(long = "service", value_name = "SERVICE")]
    pub(super) services: Vec<String>,
    /// Only calls of this tool.
    #[arg(long = "tool", value_name = "TOOL")]
    pub(super) tools: Vec<String>,
    /// Only model calls of this model (as the provider names it) or route.
    #[arg(long = "model", value_name = "MODEL")]
    pub(super) models: Vec<String>,
    /// Only model calls served by this provider instance (e.g. openai).
    #[arg(long = "provider", value_name = "PROVIDER")]
    pub(super) providers: Vec<String>,
}

/// A time range whose both ends are optional.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Range {
    /// Only events at or after TIME: RFC 3339 (2026-11-21T10:00:00Z) or a
    /// duration ago (30m, 1h, 7d, 1h30m, PT2H).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub(super) since: Option<Timestamp>,
    /// Only events before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub(super) until: Option<Timestamp>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    pub(super) selectors: Selectors,
    #[command(flatten)]
    pub(super) range: Range,
    /// Oldest events first (default: newest first).
    #[arg(long)]
    pub(super) oldest_first: bool,
    /// Most events to show; 0 = all (fetched page by page).
    #[arg(long, default_value_t = 100)]
    pub(super) limit: u32,
    /// One JSON object per line (canonical protobuf JSON, proto field names).
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) target: AuditTarget,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// File format.
    #[arg(long, value_enum)]
    pub(super) format: ExportFormat,
    /// Write to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    #[command(flatten)]
    pub(super) selectors: Selectors,
    #[command(flatten)]
    pub(super) range: Range,
    #[command(flatten)]
    pub(super) target: AuditTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ExportFormat {
    /// RFC 4180 CSV with a header line; nested fields flattened to columns.
    Csv,
    /// JSON Lines: one event per line, canonical protobuf JSON.
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    pub(super) kind: ReportKind,
    /// Start of the range: RFC 3339 (2026-11-21T10:00:00Z) or a duration ago
    /// (30m, 1h, 7d, 1h30m, PT2H).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub(super) since: Timestamp,
    /// End of the range (same forms as --since); default: now.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    pub(super) until: Option<Timestamp>,
    /// One row per hour or per day (default: one row over the whole range).
    #[arg(long, value_enum)]
    pub(super) bucket: Option<Bucket>,
    /// Group rows by these dimensions, in order (comma-separated).
    #[arg(
        long = "by",
        value_enum,
        value_delimiter = ',',
        value_name = "DIMENSION"
    )]
    pub(super) by: Vec<Dimension>,
    /// IANA time zone of day buckets, e.g. Europe/Berlin (default: UTC).
    #[arg(long, value_name = "ZONE")]
    pub(super) time_zone: Option<String>,
    /// The whole report as one JSON object (canonical protobuf JSON).
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) selectors: Selectors,
    #[command(flatten)]
    pub(super) target: AuditTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ReportKind {
    /// Runs, model calls, tokens, tool calls and cost.
    Usage,
    /// Authentication failures, authorization denials, rate limiting.
    Security,
    /// Estimated cost and the tokens behind it.
    Cost,
}

impl ReportKind {
    pub(super) fn proto(self) -> pb::ReportKind {
        match self {
            Self::Usage => pb::ReportKind::Usage,
            Self::Security => pb::ReportKind::Security,
            Self::Cost => pb::ReportKind::Cost,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub(super) fn proto(self) -> pb::TimeBucket {
        match self {
            Self::Hour => pb::TimeBucket::Hour,
            Self::Day => pb::TimeBucket::Day,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Dimension {
    Tenant,
    Subject,
    Model,
    Provider,
    Tool,
    Service,
}

impl Dimension {
    pub(super) fn proto(self) -> pb::ReportDimension {
        match self {
            Self::Tenant => pb::ReportDimension::Tenant,
            Self::Subject => pb::ReportDimension::Subject,
            Self::Model => pb::ReportDimension::Model,
            Self::Provider => pb::ReportDimension::Provider,
            Self::Tool => pb::ReportDimension::Tool,
            Self::Service => pb::ReportDimension::Service,
        }
    }

    /// Its key in `ReportRow.group`.
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Subject => "subject",
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Tool => "tool",
            Self::Service => "service",
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The chain to verify (default: every chain).
    #[arg(long)]
    pub(super) chain: Option<String>,
    #[command(flatten)]
    pub(super) range: Range,
    #[command(flatten)]
    pub(super) target: AuditTarget,
}
