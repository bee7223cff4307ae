//! `agentmesh audit query|export|report|verify`: the audit log from the
//! command line.
//!
//! Each command talks to the audit service at `--audit` (`AGENTMESH_AUDIT`);
//! with none, it starts the audit service alone in this process on a free
//! loopback port over the data directory's database, waits until it is
//! SERVING, runs, and stops it. A failed call prints `error: CODE: message`
//! with the field violations the server named, and exits non-zero.
//!
//! The pieces that decide what is asked and shown — the TIME parser, the
//! filter built from the flags, the event lines, the report table and the
//! verdict of a verification — are plain functions, tested below.

use std::fmt::Write as _;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_proto::audit::v1::{
    self as pb, audit_event::Details, audit_service_client::AuditServiceClient, report_row,
};
use anyhow::Context as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use tonic::transport::Channel;

use crate::commands::{Embedded, print_status, wait_serving};
use crate::mesh::{self, EmbeddedAudit, Ports};
use crate::output::ProtoJson;

/// The audit service's fully-qualified gRPC name (its health status key).
const AUDIT_SERVICE: &str = "agentmesh.audit.v1.AuditService";

/// Largest page the audit service returns for a Query.
const MAX_QUERY_PAGE: u32 = 1000;

/// Largest message accepted from the audit service: a page of events with
/// captured content can be far larger than tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

// === flags ===

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
    address: Option<String>,
    #[command(flatten)]
    embedded: Embedded,
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
    runs: Vec<String>,
    /// Only events of this tenant.
    #[arg(long = "tenant", value_name = "TENANT")]
    tenants: Vec<String>,
    /// Only events of this subject (user, service account, peer).
    #[arg(long = "subject", value_name = "SUBJECT")]
    subjects: Vec<String>,
    /// Only events of this type: run_started, run_finished, run_failed,
    /// run_cancelled, llm_call, tool_call, authentication, authorization,
    /// rate_limited, circuit_opened, circuit_closed, config_loaded, error,
    /// retention, notification (comma-separated or repeated).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_event_type, value_delimiter = ',')]
    types: Vec<pb::EventType>,
    /// Only events with this outcome: success, failure, denied.
    #[arg(long = "outcome", value_name = "OUTCOME", value_parser = parse_outcome, value_delimiter = ',')]
    outcomes: Vec<pb::Outcome>,
    /// Only events produced by this service (e.g. llm-gateway).
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// Only calls of this tool.
    #[arg(long = "tool", value_name = "TOOL")]
    tools: Vec<String>,
    /// Only model calls of this model (as the provider names it) or route.
    #[arg(long = "model", value_name = "MODEL")]
    models: Vec<String>,
    /// Only model calls served by this provider instance (e.g. openai).
    #[arg(long = "provider", value_name = "PROVIDER")]
    providers: Vec<String>,
}

/// A time range whose both ends are optional.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct Range {
    /// Only events at or after TIME: RFC 3339 (2026-11-21T10:00:00Z) or a
    /// duration ago (30m, 1h, 7d).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Option<Timestamp>,
    /// Only events before TIME (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<Timestamp>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    selectors: Selectors,
    #[command(flatten)]
    range: Range,
    /// Oldest events first (default: newest first).
    #[arg(long)]
    oldest_first: bool,
    /// Most events to show; 0 = all (fetched page by page).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line (canonical protobuf JSON, proto field names).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: AuditTarget,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// File format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Write to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    selectors: Selectors,
    #[command(flatten)]
    range: Range,
    #[command(flatten)]
    target: AuditTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// RFC 4180 CSV with a header line; nested fields flattened to columns.
    Csv,
    /// JSON Lines: one event per line, canonical protobuf JSON.
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    kind: ReportKind,
    /// Start of the range: RFC 3339 (2026-11-21T10:00:00Z) or a duration ago
    /// (30m, 1h, 7d).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    since: Timestamp,
    /// End of the range (same forms as --since); default: now.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    until: Option<Timestamp>,
    /// One row per hour or per day (default: one row over the whole range).
    #[arg(long, value_enum)]
    bucket: Option<Bucket>,
    /// Group rows by these dimensions, in order (comma-separated).
    #[arg(
        long = "by",
        value_enum,
        value_delimiter = ',',
        value_name = "DIMENSION"
    )]
    by: Vec<Dimension>,
    /// IANA time zone of day buckets, e.g. Europe/Berlin (default: UTC).
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// The whole report as one JSON object (canonical protobuf JSON).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    selectors: Selectors,
    #[command(flatten)]
    target: AuditTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ReportKind {
    /// Runs, model calls, tokens, tool calls and cost.
    Usage,
    /// Authentication failures, authorization denials, rate limiting.
    Security,
    /// Estimated cost and the tokens behind it.
    Cost,
}

impl ReportKind {
    fn proto(self) -> pb::ReportKind {
        match self {
            Self::Usage => pb::ReportKind::Usage,
            Self::Security => pb::ReportKind::Security,
            Self::Cost => pb::ReportKind::Cost,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    fn proto(self) -> pb::TimeBucket {
        match self {
            Self::Hour => pb::TimeBucket::Hour,
            Self::Day => pb::TimeBucket::Day,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dimension {
    Tenant,
    Subject,
    Model,
    Provider,
    Tool,
    Service,
}

impl Dimension {
    fn proto(self) -> pb::ReportDimension {
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
    fn key(self) -> &'static str {
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
    chain: Option<String>,
    #[command(flatten)]
    range: Range,
    #[command(flatten)]
    target: AuditTarget,
}

// === parsing flags ===

/// Parses a TIME: RFC 3339 (`2026-11-21T10:00:00Z`, `…+01:00`), a date
/// (`2026-11-21`, midnight UTC), `now`, or a duration before `now`: one or
/// more of a whole number and a unit, `s`, `m` (minutes), `h`, `d` (24 h) or
/// `w` (`90s`, `30m`, `1h`, `7d`, `1h30m`).
fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z) or a duration ago (30m, 1h, 7d)"
        )
    };
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    // A date alone (a date with a time but no offset is ambiguous: refused).
    if let Some(date) = (!text.contains(['T', 't', ' ', ':']))
        .then(|| text.parse::<jiff::civil::Date>().ok())
        .flatten()
    {
        return date
            .to_zoned(TimeZone::UTC)
            .map(|zoned| zoned.timestamp())
            .map_err(|_| invalid());
    }
    let seconds = parse_ago(text).ok_or_else(invalid)?;
    now.checked_sub(jiff::SignedDuration::from_secs(seconds))
        .map_err(|_| format!("{text:?} reaches too far back"))
}

/// The seconds of a duration like `1h30m`; `None` when it is not one.
fn parse_ago(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "s" | "sec" | "secs" => 1,
            "m" | "min" | "mins" => 60,
            "h" | "hr" | "hrs" => 3600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(number.checked_mul(unit)?)?;
    }
    Some(total)
}

fn time_arg(text: &str) -> Result<Timestamp, String> {
    parse_time(text, Timestamp::now())
}

/// The lowercase names of an enum's values after `prefix`, from 1 on.
fn names<E: TryFrom<i32>>(name: impl Fn(&E) -> &'static str, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|value| E::try_from(value).ok())
        .map(|e| name(&e).trim_start_matches(prefix).to_lowercase())
        .collect()
}

fn parse_event_type(text: &str) -> Result<pb::EventType, String> {
    let name = format!(
        "EVENT_TYPE_{}",
        text.trim().to_uppercase().replace('-', "_")
    );
    pb::EventType::from_str_name(&name)
        .filter(|t| *t != pb::EventType::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown event type {text:?}; use one of {}",
                names(pb::EventType::as_str_name, "EVENT_TYPE_").join(", ")
            )
        })
}

fn parse_outcome(text: &str) -> Result<pb::Outcome, String> {
    let name = format!("OUTCOME_{}", text.trim().to_uppercase());
    pb::Outcome::from_str_name(&name)
        .filter(|o| *o != pb::Outcome::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown outcome {text:?}; use one of {}",
                names(pb::Outcome::as_str_name, "OUTCOME_").join(", ")
            )
        })
}

fn timestamp(time: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.as_second(),
        nanos: time.subsec_nanosecond(),
    }
}

/// The `EventFilter` the flags ask for.
fn build_filter(
    selectors: &Selectors,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<pb::EventFilter, String> {
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(format!(
            "--since ({}) must be before --until ({})",
            utc_text(since),
            utc_text(until)
        ));
    }
    Ok(pb::EventFilter {
        start_time: since.map(timestamp),
        end_time: until.map(timestamp),
        tenants: selectors.tenants.clone(),
        subjects: selectors.subjects.clone(),
        run_ids: selectors.runs.clone(),
        types: selectors.types.iter().map(|t| i32::from(*t)).collect(),
        outcomes: selectors.outcomes.iter().map(|o| i32::from(*o)).collect(),
        services: selectors.services.clone(),
        trace_id: String::new(),
        tools: selectors.tools.clone(),
        models: selectors.models.clone(),
        providers: selectors.providers.clone(),
    })
}

// === the connection ===

/// A channel to the audit service, and the service itself when it runs in
/// this process.
struct Connection {
    channel: Channel,
    embedded: Option<EmbeddedAudit>,
}

impl Connection {
    async fn open(target: &AuditTarget) -> anyhow::Result<Self> {
        if let Some(address) = &target.address {
            let uri = if address.contains("://") {
                address.clone()
            } else {
                format!("http://{address}")
            };
            let channel = agentmesh_kit::client::plain_channel(&uri)
                .with_context(|| format!("bad audit service address {address:?}"))?;
            return Ok(Self {
                channel,
                embedded: None,
            });
        }
        let embedded = &target.embedded;
        embedded.init_logging();
        let config = mesh::load_audit(
            embedded.config.as_deref(),
            Ports::Ephemeral,
            &embedded.data_dir,
        )
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        let audit = EmbeddedAudit::start(config).await?;
        let channel = agentmesh_kit::client::plain_channel(&format!("http://{}", audit.addr))?;
        let ready = tokio::select! {
            ready = wait_serving(&channel, AUDIT_SERVICE) => ready,
            () = audit.failed() => Err(anyhow::anyhow!("the embedded audit service stopped")),
        };
        if let Err(err) = ready {
            // The service's own failure says more than the wait did.
            return Err(match audit.stop().await {
                Err(failure) => failure.context("the embedded audit service did not start"),
                Ok(()) => err,
            });
        }
        Ok(Self {
            channel,
            embedded: Some(audit),
        })
    }

    fn client(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn close(self) {
        if let Some(audit) = self.embedded
            && let Err(err) = audit.stop().await
        {
            let _ = writeln!(
                std::io::stderr(),
                "agentmesh: stopping the embedded audit service: {err:#}"
            );
        }
    }
}

pub(crate) async fn audit(command: AuditCommand) -> anyhow::Result<ExitCode> {
    let target = match &command {
        AuditCommand::Query(args) => &args.target,
        AuditCommand::Export(args) => &args.target,
        AuditCommand::Report(args) => &args.target,
        AuditCommand::Verify(args) => &args.target,
    };
    let connection = Connection::open(target).await?;
    let client = connection.client();
    let result = match command {
        AuditCommand::Query(args) => query(client, args).await,
        AuditCommand::Export(args) => export(client, args).await,
        AuditCommand::Report(args) => report(client, args).await,
        AuditCommand::Verify(args) => verify(client, args).await,
    };
    connection.close().await;
    result
}

/// Stdout closed early (`| head`) ends a listing quietly.
fn quiet_on_broken_pipe(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

// === query ===

async fn query(
    mut client: AuditServiceClient<Channel>,
    args: QueryArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&args.selectors, args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let json = if args.json {
        Some(ProtoJson::new("agentmesh.audit.v1.AuditEvent")?)
    } else {
        None
    };
    let order = if args.oldest_first {
        pb::SortOrder::OldestFirst
    } else {
        pb::SortOrder::NewestFirst
    };
    let all = args.limit == 0;
    let mut remaining = args.limit;
    let mut page_token = String::new();
    let result = async {
        loop {
            let page_size = if all {
                MAX_QUERY_PAGE
            } else {
                remaining.min(MAX_QUERY_PAGE)
            };
            let page = match client
                .query(pb::QueryRequest {
                    filter: Some(filter.clone()),
                    order: order.into(),
                    page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
                    page_token: std::mem::take(&mut page_token),
                })
                .await
            {
                Ok(page) => page.into_inner(),
                Err(status) => return Ok(print_status(&status)),
            };
            let mut out = std::io::stdout().lock();
            for event in &page.events {
                if !all {
                    if remaining == 0 {
                        break;
                    }
                    remaining -= 1;
                }
                match &json {
                    Some(json) => json.write_line(&mut out, event)?,
                    None => writeln!(out, "{}", event_line(event))?,
                }
            }
            out.flush()?;
            if page.next_page_token.is_empty() || (!all && remaining == 0) {
                return anyhow::Ok(ExitCode::SUCCESS);
            }
            page_token = page.next_page_token;
        }
    }
    .await;
    quiet_on_broken_pipe(result)
}

/// Seconds-precision RFC 3339 in UTC, whatever the local time zone.
fn utc_text(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn proto_time_text(time: Option<&prost_types::Timestamp>) -> String {
    time.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .map_or_else(|| "-".to_owned(), utc_text)
}

/// An event type as shown: lowercase, without the `EVENT_TYPE_` prefix.
fn type_name(value: i32) -> String {
    pb::EventType::try_from(value).map_or_else(
        |_| value.to_string(),
        |t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_lowercase()
        },
    )
}

fn outcome_name(value: i32) -> String {
    match pb::Outcome::try_from(value) {
        // Unset means success (see the contract).
        Ok(pb::Outcome::Unspecified) => "success".to_owned(),
        Ok(outcome) => outcome
            .as_str_name()
            .trim_start_matches("OUTCOME_")
            .to_lowercase(),
        Err(_) => value.to_string(),
    }
}

/// A run id short enough for a column: its last 8 characters (the front of
/// a UUIDv7 is a timestamp that runs started together share; the end is
/// random).
fn short_run_id(run_id: &str) -> String {
    let count = run_id.chars().count();
    if run_id.is_empty() {
        "-".to_owned()
    } else if count <= 9 {
        run_id.to_owned()
    } else {
        let tail: String = run_id.chars().skip(count - 8).collect();
        format!("…{tail}")
    }
}

/// `850ms`, `1.2s`, `<1ms`; empty when unset.
fn duration_text(duration: Option<&prost_types::Duration>) -> String {
    let Some(duration) = duration.and_then(|d| Duration::try_from(*d).ok()) else {
        return String::new();
    };
    if duration < Duration::from_millis(1) {
        "<1ms".to_owned()
    } else if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

fn cost_text(cost: Option<f64>) -> String {
    cost.map_or_else(|| "-".to_owned(), |c| format!("${c:.6}"))
}

/// Joins the non-empty parts with spaces.
fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// One event as a line: time, type, service, outcome, run, and what happened.
fn event_line(event: &pb::AuditEvent) -> String {
    let service = if event.service.is_empty() {
        "-"
    } else {
        &event.service
    };
    format!(
        "{:<20}  {:<14}  {:<12}  {:<7}  {:<9}  {}",
        proto_time_text(event.time.as_ref()),
        type_name(event.r#type),
        service,
        outcome_name(event.outcome),
        short_run_id(&event.run_id),
        event_summary(event)
    )
    .trim_end()
    .to_owned()
}

/// What happened, by type; the reason of a failure or denial at the end.
fn event_summary(event: &pb::AuditEvent) -> String {
    let reason = event.reason.as_str();
    let with_reason = |details: String| match (details.is_empty(), reason.is_empty()) {
        (_, true) => details,
        (true, false) => reason.to_owned(),
        (false, false) => format!("{details}: {reason}"),
    };
    match &event.details {
        Some(Details::LlmCall(call)) => {
            let target = match (call.provider.is_empty(), call.model.is_empty()) {
                (false, false) => format!("{}/{}", call.provider, call.model),
                (false, true) => call.provider.clone(),
                (true, _) => call.model.clone(),
            };
            let summary = join(&[
                &target,
                &format!("in={}", call.input_tokens),
                &format!("out={}", call.output_tokens),
                &format!("cost={}", cost_text(call.estimated_cost_usd)),
                &duration_text(call.latency.as_ref()),
                &call.error_code,
            ]);
            with_reason(summary)
        }
        Some(Details::ToolCall(call)) => {
            let failed = call.is_error || event.outcome == i32::from(pb::Outcome::Failure);
            if failed {
                let error = [&call.error, &call.error_kind, &event.reason]
                    .into_iter()
                    .find(|e| !e.is_empty())
                    .map_or("failed", String::as_str);
                format!("{} error: {error}", call.tool)
            } else {
                with_reason(join(&[&call.tool, &duration_text(call.duration.as_ref())]))
            }
        }
        Some(Details::Run(run)) => with_reason(join(&[
            &run.agent,
            &format!("steps={}", run.steps),
            &format!("tokens={}/{}", run.input_tokens, run.output_tokens),
            &run.error_code,
        ])),
        Some(Details::Access(access)) => with_reason(join(&[
            &access.method,
            &access.permission,
            &access.resource,
        ])),
        Some(Details::RateLimit(limit)) => {
            let scope = match (limit.scope.is_empty(), limit.key.is_empty()) {
                (false, false) => format!("{}={}", limit.scope, limit.key),
                _ => format!("{}{}", limit.scope, limit.key),
            };
            with_reason(join(&[
                &scope,
                &limit.resource,
                &format!("limit={}", limit.limit),
                &limit.method,
            ]))
        }
        Some(Details::Circuit(circuit)) => with_reason(join(&[
            &circuit.target,
            &format!("{} -> {}", circuit.from_state, circuit.to_state),
            &circuit.last_error,
        ])),
        Some(Details::Config(config)) => with_reason(join(&[&config.source, &config.version])),
        Some(Details::Error(error)) => {
            let message = match (error.code.is_empty(), error.message.is_empty()) {
                (false, false) => format!("{}: {}", error.code, error.message),
                _ => format!("{}{}", error.code, error.message),
            };
            with_reason(join(&[&error.component, &message]))
        }
        Some(Details::Retention(retention)) => with_reason(format!(
            "deleted {} events before {}",
            retention.deleted_count,
            proto_time_text(retention.cutoff_time.as_ref())
        )),
        Some(Details::Notification(notification)) => with_reason(join(&[
            &notification.receiver,
            &notification.status,
            &format!("alerts={}", notification.alert_count),
            &notification.error,
        ])),
        None => reason.to_owned(),
    }
}

// === export ===

async fn export(
    mut client: AuditServiceClient<Channel>,
    args: ExportArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&args.selectors, args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let format = match args.format {
        ExportFormat::Csv => pb::ExportFormat::Csv,
        ExportFormat::Jsonl => pb::ExportFormat::Jsonl,
    };
    let mut stream = match client
        .export(pb::ExportRequest {
            filter: Some(filter),
            format: format.into(),
            order: pb::SortOrder::Unspecified.into(),
        })
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    // The file is created once the first chunk is in, so that a refused
    // export leaves no empty file behind.
    let first = match stream.message().await {
        Ok(first) => first,
        Err(status) => return Ok(print_status(&status)),
    };
    let mut sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout()),
    };
    let mut events: i64 = 0;
    let mut next = first;
    let broken = loop {
        let Some(chunk) = next else { break None };
        events = events.saturating_add(chunk.event_count);
        let written = sink.write_all(&chunk.data).and_then(|()| {
            // Stdout shows each chunk as it arrives; a file is flushed at the end.
            if args.output.is_none() {
                sink.flush()
            } else {
                Ok(())
            }
        });
        if let Err(err) = written {
            if args.output.is_none() && err.kind() == ErrorKind::BrokenPipe {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(anyhow::Error::new(err).context("cannot write the export"));
        }
        next = match stream.message().await {
            Ok(next) => next,
            Err(status) => break Some(status),
        };
    };
    sink.flush().context("cannot write the export")?;
    drop(sink);
    if let Some(status) = broken {
        let code = print_status(&status);
        let written_to = args
            .output
            .as_ref()
            .map_or_else(|| "the output".to_owned(), |p| p.display().to_string());
        let _ = writeln!(
            std::io::stderr(),
            "agentmesh: the export broke off after {events} events: {written_to} is incomplete"
        );
        return Ok(code);
    }
    if let Some(path) = &args.output {
        let _ = writeln!(
            std::io::stderr(),
            "exported {events} events to {}",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

// === report ===

async fn report(
    mut client: AuditServiceClient<Channel>,
    args: ReportArgs,
) -> anyhow::Result<ExitCode> {
    let until = args.until.unwrap_or_else(Timestamp::now);
    let filter =
        build_filter(&args.selectors, Some(args.since), Some(until)).map_err(anyhow::Error::msg)?;
    let time_zone_name = args.time_zone.clone().unwrap_or_default();
    // Bucket starts are shown in the report's time zone when this machine
    // knows it (the server checks the name either way).
    let time_zone = if time_zone_name.is_empty() {
        TimeZone::UTC
    } else {
        TimeZone::get(&time_zone_name).unwrap_or(TimeZone::UTC)
    };
    let mut request = pb::ReportRequest {
        kind: args.kind.proto().into(),
        filter: Some(filter),
        bucket: args
            .bucket
            .map_or(pb::TimeBucket::Unspecified, Bucket::proto)
            .into(),
        group_by: args.by.iter().map(|d| i32::from(d.proto())).collect(),
        time_zone: time_zone_name,
        page_size: 0,
        page_token: String::new(),
    };
    let mut whole = pb::ReportResponse {
        kind: request.kind,
        ..pb::ReportResponse::default()
    };
    loop {
        let page = match client.report(request.clone()).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(print_status(&status)),
        };
        whole.rows.extend(page.rows);
        whole.totals = page.totals;
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        ProtoJson::new("agentmesh.audit.v1.ReportResponse")
            .and_then(|json| json.write_line(&mut out, &whole))
    } else {
        let table = report_table(
            args.kind,
            args.bucket,
            &args.by,
            &time_zone,
            &whole.rows,
            &whole.totals.unwrap_or_default(),
        );
        write!(out, "{table}").map_err(anyhow::Error::from)
    };
    quiet_on_broken_pipe(written.and_then(|()| {
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    }))
}

fn metric_headers(kind: ReportKind) -> &'static [&'static str] {
    match kind {
        ReportKind::Usage => &[
            "RUNS",
            "SUCCEEDED",
            "FAILED",
            "CANCELLED",
            "LLM CALLS",
            "LLM FAILURES",
            "INPUT TOKENS",
            "OUTPUT TOKENS",
            "TOOL CALLS",
            "TOOL FAILURES",
            "COST",
        ],
        ReportKind::Security => &["AUTH FAILURES", "AUTHZ DENIALS", "RATE LIMITED", "DENIED"],
        ReportKind::Cost => &[
            "COST",
            "INPUT TOKENS",
            "OUTPUT TOKENS",
            "LLM CALLS",
            "UNPRICED",
        ],
    }
}

/// The row's metrics of `kind`, as shown (zeros when the row has none).
fn metric_values(kind: ReportKind, row: &pb::ReportRow) -> Vec<String> {
    let cost = |usd: f64| format!("${usd:.6}");
    match kind {
        ReportKind::Usage => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Usage(m)) => *m,
                _ => pb::UsageMetrics::default(),
            };
            vec![
                m.runs_started.to_string(),
                m.runs_succeeded.to_string(),
                m.runs_failed.to_string(),
                m.runs_cancelled.to_string(),
                m.llm_calls.to_string(),
                m.llm_call_failures.to_string(),
                m.input_tokens.to_string(),
                m.output_tokens.to_string(),
                m.tool_calls.to_string(),
                m.tool_call_failures.to_string(),
                cost(m.estimated_cost_usd),
            ]
        }
        ReportKind::Security => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Security(m)) => *m,
                _ => pb::SecurityMetrics::default(),
            };
            vec![
                m.authentication_failures.to_string(),
                m.authorization_denials.to_string(),
                m.rate_limited.to_string(),
                m.denied.to_string(),
            ]
        }
        ReportKind::Cost => {
            let m = match &row.metrics {
                Some(report_row::Metrics::Cost(m)) => *m,
                _ => pb::CostMetrics::default(),
            };
            vec![
                cost(m.estimated_cost_usd),
                m.input_tokens.to_string(),
                m.output_tokens.to_string(),
                m.llm_calls.to_string(),
                m.unpriced_llm_calls.to_string(),
            ]
        }
    }
}

/// A bucket's start in `time_zone`: the date for day buckets, else the time
/// to the second with its offset (`Z` in UTC).
fn bucket_text(
    start: Option<&prost_types::Timestamp>,
    bucket: Bucket,
    time_zone: &TimeZone,
) -> String {
    let Some(start) = start.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok()) else {
        return "-".to_owned();
    };
    let zoned = start.to_zoned(time_zone.clone());
    match bucket {
        Bucket::Day => zoned.strftime("%Y-%m-%d").to_string(),
        Bucket::Hour if zoned.offset() == jiff::tz::Offset::UTC => utc_text(start),
        Bucket::Hour => zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
    }
}

/// The report as aligned columns — the bucket start (with `--bucket`), the
/// group values (one column per `--by`), then the kind's metrics — and a
/// totals line.
fn report_table(
    kind: ReportKind,
    bucket: Option<Bucket>,
    by: &[Dimension],
    time_zone: &TimeZone,
    rows: &[pb::ReportRow],
    totals: &pb::ReportRow,
) -> String {
    // The left (text) columns: the bucket, then the groups; at least one,
    // to hold the TOTAL label.
    let mut text_headers: Vec<String> = Vec::new();
    if bucket.is_some() {
        text_headers.push("BUCKET".to_owned());
    }
    text_headers.extend(by.iter().map(|d| d.key().to_uppercase()));
    if text_headers.is_empty() {
        text_headers.push(String::new());
    }
    let text_of = |row: &pb::ReportRow| {
        let mut cells = Vec::new();
        if let Some(bucket) = bucket {
            cells.push(bucket_text(row.bucket_start.as_ref(), bucket, time_zone));
        }
        for dimension in by {
            let value = row
                .group
                .get(dimension.key())
                .filter(|v| !v.is_empty())
                .map_or("-", String::as_str);
            cells.push(value.to_owned());
        }
        if cells.is_empty() {
            cells.push(String::new());
        }
        cells
    };

    let mut lines: Vec<(Vec<String>, Vec<String>)> = Vec::with_capacity(rows.len() + 2);
    lines.push((
        text_headers.clone(),
        metric_headers(kind)
            .iter()
            .map(|h| (*h).to_owned())
            .collect(),
    ));
    for row in rows {
        lines.push((text_of(row), metric_values(kind, row)));
    }
    let mut total_label = vec![String::new(); text_headers.len()];
    total_label[0] = "TOTAL".to_owned();
    lines.push((total_label, metric_values(kind, totals)));

    let text_widths = column_widths(lines.iter().map(|line| &line.0));
    let metric_widths = column_widths(lines.iter().map(|line| &line.1));

    let mut table = String::new();
    for (text, metrics) in &lines {
        let mut line = String::new();
        for (cell, width) in text.iter().zip(&text_widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        for (cell, width) in metrics.iter().zip(&metric_widths) {
            let _ = write!(line, "{cell:>width$}  ");
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

/// The widest cell (in characters) of each column.
fn column_widths<'a>(rows: impl Iterator<Item = &'a Vec<String>>) -> Vec<usize> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(widest) => *widest = (*widest).max(width),
                None => widths.push(width),
            }
        }
    }
    widths
}

// === verify ===

async fn verify(
    mut client: AuditServiceClient<Channel>,
    args: VerifyArgs,
) -> anyhow::Result<ExitCode> {
    let filter = build_filter(&Selectors::default(), args.range.since, args.range.until)
        .map_err(anyhow::Error::msg)?;
    let answer = match client
        .verify_chain(pb::VerifyChainRequest {
            chain: args.chain.unwrap_or_default(),
            start_time: filter.start_time,
            end_time: filter.end_time,
        })
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    let (text, intact) = verdict(&answer);
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")?;
    out.flush()?;
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What a verification found, as text, and whether the chains are intact.
fn verdict(answer: &pb::VerifyChainResponse) -> (String, bool) {
    let checked = format!(
        "{} events in {} chains checked",
        answer.events_checked, answer.chains_checked
    );
    if answer.ok {
        return (format!("chain intact: {checked}\n"), true);
    }
    let bad = answer.first_bad_event.clone().unwrap_or_default();
    let kind = match pb::ChainBreakKind::try_from(bad.kind) {
        Ok(pb::ChainBreakKind::ContentMismatch) => {
            "content mismatch (the event was altered)".to_owned()
        }
        Ok(pb::ChainBreakKind::LinkMismatch) => {
            "link mismatch (an event was deleted, inserted or reordered)".to_owned()
        }
        Ok(pb::ChainBreakKind::Unspecified) => "unspecified".to_owned(),
        Err(_) => bad.kind.to_string(),
    };
    let mut text = format!(
        "chain broken: event {} in chain {}\n",
        bad.event_id, bad.chain
    );
    let _ = writeln!(text, "  kind:     {kind}");
    let _ = writeln!(text, "  expected: {}", bad.expected_hash);
    let _ = writeln!(text, "  actual:   {}", bad.actual_hash);
    let _ = writeln!(text, "  time:     {}", proto_time_text(bad.time.as_ref()));
    if !bad.cursor.is_empty() {
        let _ = writeln!(text, "  cursor:   {}", bad.cursor);
    }
    let _ = writeln!(text, "  message:  {}", bad.message);
    let _ = writeln!(text, "({checked})");
    (text, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn times_in_rfc_3339() {
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(
            parse_time("2026-11-21T10:00:00Z", now),
            Ok(at("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-11-21T11:00:00+01:00", now),
            Ok(at("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-11-21T10:00:00.250Z", now),
            Ok(at("2026-11-21T10:00:00.25Z"))
        );
        assert_eq!(
            parse_time("2026-11-20", now),
            Ok(at("2026-11-20T00:00:00Z"))
        );
        assert_eq!(parse_time("now", now), Ok(now));
    }

    #[test]
    fn times_as_durations_ago() {
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(parse_time("1h", now), Ok(at("2026-11-21T11:00:00Z")));
        assert_eq!(parse_time("30m", now), Ok(at("2026-11-21T11:30:00Z")));
        assert_eq!(parse_time("90s", now), Ok(at("2026-11-21T11:58:30Z")));
        assert_eq!(parse_time("7d", now), Ok(at("2026-11-14T12:00:00Z")));
        assert_eq!(parse_time("2w", now), Ok(at("2026-11-07T12:00:00Z")));
        assert_eq!(parse_time("1h30m", now), Ok(at("2026-11-21T10:30:00Z")));
        assert_eq!(parse_time(" 0s ", now), Ok(now));
    }

    #[test]
    fn bad_times_say_what_is_accepted() {
        let now = at("2026-11-21T12:00:00Z");
        for bad in [
            "",
            "h",
            "1",
            "1y",
            "-1h",
            "1.5h",
            "yesterday",
            "2026-11-21T10:00:00",
            "2026-13-01",
        ] {
            let err = parse_time(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad:?}: {err}");
        }
        assert!(parse_time("99999999999999w", now).is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        selectors: Selectors,
        #[command(flatten)]
        range: Range,
    }

    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    #[test]
    fn the_filter_follows_the_flags() {
        let parsed = flags(&[
            "--run",
            "r1",
            "--run",
            "r2",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "--type",
            "llm_call,tool-call",
            "--type",
            "RUN_STARTED",
            "--outcome",
            "failure",
            "--outcome",
            "denied",
            "--service",
            "llm-gateway",
            "--tool",
            "calculator",
            "--model",
            "gpt-4o",
            "--provider",
            "openai",
            "--since",
            "2026-11-21T10:00:00Z",
            "--until",
            "2026-11-21T11:00:00Z",
        ])
        .unwrap();
        let filter =
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until).unwrap();
        assert_eq!(
            filter,
            pb::EventFilter {
                start_time: Some(prost_types::Timestamp {
                    seconds: at("2026-11-21T10:00:00Z").as_second(),
                    nanos: 0
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: at("2026-11-21T11:00:00Z").as_second(),
                    nanos: 0
                }),
                tenants: vec!["acme".to_owned()],
                subjects: vec!["alice".to_owned()],
                run_ids: vec!["r1".to_owned(), "r2".to_owned()],
                types: vec![
                    pb::EventType::LlmCall.into(),
                    pb::EventType::ToolCall.into(),
                    pb::EventType::RunStarted.into(),
                ],
                outcomes: vec![pb::Outcome::Failure.into(), pb::Outcome::Denied.into()],
                services: vec!["llm-gateway".to_owned()],
                trace_id: String::new(),
                tools: vec!["calculator".to_owned()],
                models: vec!["gpt-4o".to_owned()],
                providers: vec!["openai".to_owned()],
            }
        );
    }

    #[test]
    fn no_flags_is_an_empty_filter() {
        let parsed = flags(&[]).unwrap();
        assert_eq!(
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until),
            Ok(pb::EventFilter::default())
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let err = flags(&["--type", "llm"]).unwrap_err().to_string();
        assert!(
            err.contains("llm_call") && err.contains("tool_call"),
            "{err}"
        );
        assert!(flags(&["--type", "unspecified"]).is_err());
        let err = flags(&["--outcome", "ok"]).unwrap_err().to_string();
        assert!(err.contains("success, failure, denied"), "{err}");
        assert!(flags(&["--since", "soon"]).is_err());
        let parsed = flags(&["--since", "1h", "--until", "2h"]).unwrap();
        let err =
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until).unwrap_err();
        assert!(err.contains("--since"), "{err}");
    }

    fn time(text: &str) -> Option<prost_types::Timestamp> {
        Some(timestamp(at(text)))
    }

    #[test]
    fn event_lines_by_type() {
        let llm = pb::AuditEvent {
            time: time("2026-11-21T10:00:00.900Z"),
            r#type: pb::EventType::LlmCall.into(),
            service: "llm-gateway".to_owned(),
            run_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned(),
            details: Some(Details::LlmCall(pb::LlmCallDetails {
                provider: "openai".to_owned(),
                model: "gpt-4o-mini".to_owned(),
                input_tokens: 120,
                output_tokens: 30,
                estimated_cost_usd: Some(0.000_123),
                latency: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 200_000_000,
                }),
                ..pb::LlmCallDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_line(&llm),
            "2026-11-21T10:00:00Z  llm_call        llm-gateway   success  …2e3f4a5b  \
             openai/gpt-4o-mini in=120 out=30 cost=$0.000123 1.2s"
        );

        let tool = pb::AuditEvent {
            time: time("2026-11-21T10:00:01Z"),
            r#type: pb::EventType::ToolCall.into(),
            service: "tool-runner".to_owned(),
            outcome: pb::Outcome::Success.into(),
            run_id: "run-1".to_owned(),
            details: Some(Details::ToolCall(pb::ToolCallDetails {
                tool: "calculator".to_owned(),
                duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 12_400_000,
                }),
                ..pb::ToolCallDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert!(event_line(&tool).ends_with("success  run-1      calculator 12ms"));

        let failed_tool = pb::AuditEvent {
            outcome: pb::Outcome::Failure.into(),
            details: Some(Details::ToolCall(pb::ToolCallDetails {
                tool: "web_fetch".to_owned(),
                is_error: true,
                error: "timed out after 30s".to_owned(),
                ..pb::ToolCallDetails::default()
            })),
            ..tool.clone()
        };
        assert_eq!(
            event_summary(&failed_tool),
            "web_fetch error: timed out after 30s"
        );

        let run = pb::AuditEvent {
            r#type: pb::EventType::RunFailed.into(),
            outcome: pb::Outcome::Failure.into(),
            reason: "the model is unavailable".to_owned(),
            details: Some(Details::Run(pb::RunDetails {
                agent: "default".to_owned(),
                steps: 3,
                input_tokens: 1200,
                output_tokens: 80,
                error_code: "UNAVAILABLE".to_owned(),
                ..pb::RunDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_line(&run),
            "-                     run_failed      -             failure  -          \
             default steps=3 tokens=1200/80 UNAVAILABLE: the model is unavailable"
        );

        let denied = pb::AuditEvent {
            r#type: pb::EventType::Authorization.into(),
            outcome: pb::Outcome::Denied.into(),
            reason: "runs.cancel is not granted".to_owned(),
            details: Some(Details::Access(pb::AccessDetails {
                method: "/agentmesh.orchestrator.v1.OrchestratorService/CancelRun".to_owned(),
                ..pb::AccessDetails::default()
            })),
            ..pb::AuditEvent::default()
        };
        assert_eq!(
            event_summary(&denied),
            "/agentmesh.orchestrator.v1.OrchestratorService/CancelRun: runs.cancel is not granted"
        );
        let bare = pb::AuditEvent {
            r#type: 99,
            reason: "spool full".to_owned(),
            ..pb::AuditEvent::default()
        };
        assert!(
            event_line(&bare)
                .ends_with("99              -             success  -          spool full")
        );
    }

    #[test]
    fn durations_and_short_ids() {
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(duration_text(d(0, 500_000).as_ref()), "<1ms");
        assert_eq!(duration_text(d(0, 999_000_000).as_ref()), "999ms");
        assert_eq!(duration_text(d(61, 0).as_ref()), "61.0s");
        assert_eq!(duration_text(None), "");
        assert_eq!(short_run_id(""), "-");
        assert_eq!(short_run_id("123456789"), "123456789");
        assert_eq!(short_run_id("1234567890"), "…34567890");
    }

    fn usage_row(
        bucket: Option<&str>,
        group: &[(&str, &str)],
        metrics: pb::UsageMetrics,
    ) -> pb::ReportRow {
        pb::ReportRow {
            bucket_start: bucket.and_then(time),
            group: group
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            metrics: Some(report_row::Metrics::Usage(metrics)),
        }
    }

    #[test]
    fn a_usage_table_by_day_and_model() {
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        let rows = [
            usage_row(
                Some("2026-11-20T23:00:00Z"),
                &[("tenant", "acme"), ("model", "gpt-4o")],
                pb::UsageMetrics {
                    runs_started: 12,
                    runs_succeeded: 11,
                    runs_failed: 1,
                    llm_calls: 40,
                    input_tokens: 123_456,
                    output_tokens: 7890,
                    tool_calls: 5,
                    estimated_cost_usd: 1.5,
                    ..pb::UsageMetrics::default()
                },
            ),
            usage_row(
                Some("2026-11-21T23:00:00Z"),
                &[("tenant", "globex-corporation")],
                pb::UsageMetrics {
                    runs_started: 1,
                    ..pb::UsageMetrics::default()
                },
            ),
        ];
        let totals = pb::ReportRow {
            metrics: Some(report_row::Metrics::Usage(pb::UsageMetrics {
                runs_started: 13,
                runs_succeeded: 11,
                runs_failed: 1,
                llm_calls: 40,
                input_tokens: 123_456,
                output_tokens: 7890,
                tool_calls: 5,
                estimated_cost_usd: 1.5,
                ..pb::UsageMetrics::default()
            })),
            ..pb::ReportRow::default()
        };
        let table = report_table(
            ReportKind::Usage,
            Some(Bucket::Day),
            &[Dimension::Tenant, Dimension::Model],
            &berlin,
            &rows,
            &totals,
        );
        let expected = "\
BUCKET      TENANT              MODEL   RUNS  SUCCEEDED  FAILED  CANCELLED  LLM CALLS  LLM FAILURES  INPUT TOKENS  OUTPUT TOKENS  TOOL CALLS  TOOL FAILURES       COST
2026-11-21  acme                gpt-4o    12         11       1          0         40             0        123456           7890           5              0  $1.500000
2026-11-22  globex-corporation  -          1          0       0          0          0             0             0              0           0              0  $0.000000
TOTAL                                     13         11       1          0         40             0        123456           7890           5              0  $1.500000
";
        assert_eq!(table, expected);
    }

    #[test]
    fn an_ungrouped_security_table_and_hour_buckets() {
        let totals = pb::ReportRow {
            metrics: Some(report_row::Metrics::Security(pb::SecurityMetrics {
                authentication_failures: 3,
                denied: 7,
                ..pb::SecurityMetrics::default()
            })),
            ..pb::ReportRow::default()
        };
        let table = report_table(
            ReportKind::Security,
            None,
            &[],
            &TimeZone::UTC,
            std::slice::from_ref(&totals),
            &totals,
        );
        assert_eq!(
            table,
            concat!(
                "       AUTH FAILURES  AUTHZ DENIALS  RATE LIMITED  DENIED\n",
                "                   3              0             0       7\n",
                "TOTAL              3              0             0       7\n",
            )
        );
        // No rows: the header and the totals line still show.
        let table = report_table(
            ReportKind::Cost,
            Some(Bucket::Hour),
            &[Dimension::Provider],
            &TimeZone::UTC,
            &[],
            &pb::ReportRow::default(),
        );
        assert_eq!(
            table,
            "\
BUCKET  PROVIDER       COST  INPUT TOKENS  OUTPUT TOKENS  LLM CALLS  UNPRICED
TOTAL             $0.000000             0              0          0         0
"
        );
        let start = time("2026-11-21T10:00:00Z");
        assert_eq!(
            bucket_text(start.as_ref(), Bucket::Hour, &TimeZone::UTC),
            "2026-11-21T10:00:00Z"
        );
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            bucket_text(start.as_ref(), Bucket::Hour, &berlin),
            "2026-11-21T11:00:00+01:00"
        );
    }

    #[test]
    fn verdicts() {
        let (text, intact) = verdict(&pb::VerifyChainResponse {
            ok: true,
            events_checked: 1234,
            chains_checked: 2,
            first_bad_event: None,
        });
        assert!(intact);
        assert_eq!(text, "chain intact: 1234 events in 2 chains checked\n");

        let (text, intact) = verdict(&pb::VerifyChainResponse {
            ok: false,
            events_checked: 10,
            chains_checked: 1,
            first_bad_event: Some(pb::ChainBreak {
                event_id: "e-7".to_owned(),
                cursor: String::new(),
                chain: "acme".to_owned(),
                kind: pb::ChainBreakKind::LinkMismatch.into(),
                expected_hash: "aa".to_owned(),
                actual_hash: "bb".to_owned(),
                time: time("2026-11-21T10:00:00Z"),
                message: "previous_hash does not match event e-6".to_owned(),
            }),
        });
        assert!(!intact);
        assert_eq!(
            text,
            "chain broken: event e-7 in chain acme
  kind:     link mismatch (an event was deleted, inserted or reordered)
  expected: aa
  actual:   bb
  time:     2026-11-21T10:00:00Z
  message:  previous_hash does not match event e-6
(10 events in 1 chains checked)
"
        );
    }
}
