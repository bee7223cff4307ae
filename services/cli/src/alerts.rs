//! `agentmesh alerts list|watch`: the alerting service's alerts from the
//! command line, in the manner of Alertmanager's `amtool alert query`.
//!
//! Each command connects to the alerting service at `--alerting`
//! (`AGENTMESH_ALERTING`, default `http://localhost:50055`, where `agentmesh
//! up` serves it). The connection is made before the first call so that a
//! service that is not running gives one clear line naming the address,
//! rather than a transport error. The flags become a `ListAlertsRequest` or
//! `WatchAlertsRequest` (label matchers are parsed here, in Alertmanager's
//! text form; the server checks the regular expressions); the answers are
//! printed as an aligned table or as protobuf JSON lines. A failed call
//! prints `error: CODE: message` with the field violations the server named,
//! and exits non-zero.
//!
//! This module also holds what `agentmesh silences` (see `silences.rs`)
//! shares: the target flag and connection, the matcher parser, the output
//! choice and the table and time formatting. The pieces that decide what is
//! asked and shown are plain functions, tested below.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{ErrorKind, Write};
use std::process::ExitCode;
use std::time::Duration;

use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use jiff::Timestamp;
use tonic::transport::{Channel, Endpoint};

use crate::commands::{print_status, status_text};
use crate::output::ProtoJson;

/// Where `agentmesh up` serves the alerting service.
const DEFAULT_ALERTING: &str = "http://localhost:50055";

/// Largest page the alerting service returns.
pub(crate) const MAX_PAGE: u32 = 1000;

/// Largest message accepted: a page of 1000 alerts with long annotations can
/// pass tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

// === flags ===

/// Where to find the alerting service.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AlertingTarget {
    /// Address of the alerting service (`agentmesh up` serves it on port
    /// 50055).
    #[arg(
        long = "alerting",
        env = "AGENTMESH_ALERTING",
        value_name = "ADDR",
        default_value = DEFAULT_ALERTING
    )]
    pub(crate) address: String,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One object per line: canonical protobuf JSON, proto field names.
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum AlertsCommand {
    /// List the current alerts (pending, firing, recently resolved), critical
    /// first, then newest first.
    List(ListArgs),
    /// Show the current alerts, then every change as it happens, until Ctrl-C.
    Watch(WatchArgs),
}

/// An alert state, as a flag value.
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
    states: Vec<StateArg>,
    /// Only alerts of this severity: critical, warning, info (comma-separated
    /// or repeated).
    #[arg(
        long = "severity",
        value_name = "SEVERITY",
        value_enum,
        value_delimiter = ','
    )]
    severities: Vec<SeverityArg>,
    /// Only alerts whose labels match, in Alertmanager's syntax:
    /// alertname="ToolFailing", tool=~"fi.*", severity!=info, x!~"a|b"
    /// (quotes optional). A first MATCHER without an operator means
    /// alertname=MATCHER.
    #[arg(value_name = "MATCHER")]
    matchers: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    filters: AlertFilters,
    /// Only silenced (true) or only not silenced (false) alerts.
    #[arg(long, value_name = "true|false")]
    silenced: Option<bool>,
    /// Only inhibited (true) or only not inhibited (false) alerts.
    #[arg(long, value_name = "true|false")]
    inhibited: Option<bool>,
    /// Most alerts to show (default: all, fetched page by page).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    target: AlertingTarget,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    filters: AlertFilters,
    /// Show only changes from now on, not the current alerts first.
    #[arg(long)]
    skip_snapshot: bool,
    /// Output format (json: every message but heartbeats, including the end
    /// of the snapshot).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    target: AlertingTarget,
}

// === matchers ===

/// True for a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one matcher in Alertmanager's text form: a label name, an
/// operator (`=`, `!=`, `=~`, `!~`) and a value, optionally in double
/// quotes. Spaces around the operator and the value are ignored. In the
/// value, `\"` is a quote, `\\` a backslash and `\n` a newline; any other
/// backslash is kept as is, as Alertmanager does, so that regular
/// expressions such as `"a\.b"` mean what they say.
pub(crate) fn parse_matcher(text: &str) -> Result<pb::Matcher, String> {
    let trimmed = text.trim();
    let no_operator = || {
        format!(
            "`{trimmed}` is not a matcher: use NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX"
        )
    };
    let at = trimmed.find(['=', '!']).ok_or_else(no_operator)?;
    let name = trimmed[..at].trim_end();
    let rest = &trimmed[at..];
    let (match_type, value) = if let Some(value) = rest.strip_prefix("=~") {
        (pb::MatchType::Regex, value)
    } else if let Some(value) = rest.strip_prefix("!~") {
        (pb::MatchType::NotRegex, value)
    } else if let Some(value) = rest.strip_prefix("!=") {
        (pb::MatchType::NotEqual, value)
    } else if let Some(value) = rest.strip_prefix('=') {
        (pb::MatchType::Equal, value)
    } else {
        return Err(no_operator());
    };
    if !is_label_name(name) {
        return Err(format!(
            "`{trimmed}`: {name:?} is not a label name (letters, digits and _, not starting with a digit)"
        ));
    }
    let value = parse_value(value.trim_start()).map_err(|why| format!("`{trimmed}`: {why}"))?;
    Ok(pb::Matcher {
        name: name.to_owned(),
        value,
        r#type: match_type.into(),
    })
}

/// A matcher's value after the operator: quoted or bare, unescaped.
fn parse_value(raw: &str) -> Result<String, String> {
    let (body, quoted) = match raw.strip_prefix('"') {
        Some(body) => (body, true),
        None => (raw, false),
    };
    let mut value = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            '"' if quoted => {
                // The closing quote: only spaces may follow it.
                if !body[index + 1..].trim().is_empty() {
                    return Err(
                        "text follows the value's closing quote (escape a quote inside the value as \\\")"
                            .to_owned(),
                    );
                }
                return Ok(value);
            }
            '"' => {
                return Err(
                    "a quote inside the value must be escaped as \\\", or the value quoted"
                        .to_owned(),
                );
            }
            other => value.push(other),
        }
    }
    if quoted {
        return Err("the value's closing quote is missing".to_owned());
    }
    Ok(value.trim_end().to_owned())
}

/// The matchers given as arguments. As with `amtool`, a first argument
/// without an operator is the alert's name: `ToolFailing` means
/// `alertname="ToolFailing"`.
pub(crate) fn parse_matchers(texts: &[String]) -> Result<Vec<pb::Matcher>, String> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let bare = text.trim();
            if index == 0 && !bare.is_empty() && !bare.contains(['=', '!', '~', '"', ' ']) {
                Ok(pb::Matcher {
                    name: "alertname".to_owned(),
                    value: bare.to_owned(),
                    r#type: pb::MatchType::Equal.into(),
                })
            } else {
                parse_matcher(text)
            }
        })
        .collect()
}

/// A value as Alertmanager writes it between quotes.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A matcher in its text form, value quoted: `tool=~"fi.*"`.
pub(crate) fn matcher_text(matcher: &pb::Matcher) -> String {
    let operator = match pb::MatchType::try_from(matcher.r#type) {
        Ok(pb::MatchType::NotEqual) => "!=",
        Ok(pb::MatchType::Regex) => "=~",
        Ok(pb::MatchType::NotRegex) => "!~",
        Ok(pb::MatchType::Equal | pb::MatchType::Unspecified) | Err(_) => "=",
    };
    format!("{}{operator}\"{}\"", matcher.name, escape(&matcher.value))
}

// === requests ===

/// The `ListAlertsRequest` the flags ask for (the first page; the caller
/// sets the page size).
fn list_request(args: &ListArgs) -> Result<pb::ListAlertsRequest, String> {
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
fn watch_request(args: &WatchArgs) -> Result<pb::WatchAlertsRequest, String> {
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

// === the connection ===

/// The last error of `err`'s source chain: the one that says what happened
/// ("Connection refused"), where tonic's own says "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

impl AlertingTarget {
    /// The address as a URI: `localhost:50055` gets `http://`.
    fn uri(&self) -> String {
        let address = self.address.trim();
        if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        }
    }

    /// A client of the alerting service, connected: a service that cannot be
    /// reached is one line naming the address.
    pub(crate) async fn connect(&self) -> anyhow::Result<AlertingServiceClient<Channel>> {
        let uri = self.uri();
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|err| {
                anyhow::anyhow!(
                    "bad alerting service address {:?}: {}",
                    self.address,
                    root_cause(&err)
                )
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            // A watch may stay idle for long: keep-alives notice a peer that
            // went away.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|err| {
            anyhow::anyhow!(
                "cannot reach the alerting service at {uri}: {}. Is the mesh running? Start it \
                 with `agentmesh up`, or give the service's address with --alerting or \
                 AGENTMESH_ALERTING",
                root_cause(&err)
            )
        })?;
        Ok(AlertingServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Stdout closed early (`| head`) ends a listing quietly.
pub(crate) fn quiet_on_broken_pipe(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
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

// === commands ===

pub(crate) async fn alerts(command: AlertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertsCommand::List(args) => list(args).await,
        AlertsCommand::Watch(args) => watch(args).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    // Bad flags are refused before anything is dialled.
    let request = list_request(&args).map_err(anyhow::Error::msg)?;
    let mut client = args.target.connect().await?;
    let mut out = std::io::stdout();
    quiet_on_broken_pipe(
        list_to(
            &mut client,
            request,
            args.limit,
            args.output,
            &mut out,
            Timestamp::now(),
        )
        .await,
    )
}

/// Lists the alerts `request` selects, page after page, to `out`: at most
/// `limit` (none or 0: all); a table with start times relative to `now`, or
/// JSON lines.
async fn list_to(
    client: &mut AlertingServiceClient<Channel>,
    mut request: pb::ListAlertsRequest,
    limit: Option<u32>,
    output: Output,
    out: &mut impl Write,
    now: Timestamp,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        Output::Json => Some(ProtoJson::new("agentmesh.alerting.v1.Alert")?),
        Output::Table => None,
    };
    let limit = limit.filter(|limit| *limit > 0);
    // The same page size on every page: the server wants the follow-up
    // requests to match the first.
    request.page_size = i32::try_from(limit.map_or(MAX_PAGE, |l| l.min(MAX_PAGE))).unwrap_or(0);
    let mut remaining = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    // The table needs every row for its column widths; JSON lines stream.
    let mut rows: Vec<pb::Alert> = Vec::new();
    loop {
        let page = match client.list_alerts(request.clone()).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(print_status(&status)),
        };
        let take = page.alerts.len().min(remaining);
        remaining -= take;
        match &json {
            Some(json) => {
                for alert in page.alerts.iter().take(take) {
                    json.write_line(out, alert)?;
                }
                out.flush()?;
            }
            None => rows.extend(page.alerts.into_iter().take(take)),
        }
        if page.next_page_token.is_empty() || remaining == 0 {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if json.is_none() {
        write!(out, "{}", alert_table(&rows, now))?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let request = watch_request(&args).map_err(anyhow::Error::msg)?;
    let mut client = args.target.connect().await?;
    let mut out = std::io::stdout();
    quiet_on_broken_pipe(
        watch_to(
            &mut client,
            request,
            args.output,
            &mut out,
            agentmesh_kit::shutdown::signal(),
        )
        .await,
    )
}

/// Follows the watch `request` opens, writing each message but heartbeats
/// to `out` as it comes, until `stop` resolves (Ctrl-C) or the server ends
/// the stream.
async fn watch_to(
    client: &mut AlertingServiceClient<Channel>,
    request: pb::WatchAlertsRequest,
    output: Output,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        Output::Json => Some(ProtoJson::new("agentmesh.alerting.v1.WatchAlertsResponse")?),
        Output::Table => None,
    };
    let mut stream = match client.watch_alerts(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Ok(print_status(&status)),
    };
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            message = stream.message() => message,
        };
        let change = match message {
            Ok(Some(change)) => change,
            // The server ended the stream cleanly.
            Ok(None) => return Ok(ExitCode::SUCCESS),
            Err(status) => return Ok(stream_broken(&status)),
        };
        let kind = pb::AlertChangeType::try_from(change.r#type);
        if kind == Ok(pb::AlertChangeType::Heartbeat) {
            continue;
        }
        match &json {
            Some(json) => json.write_line(out, &change)?,
            None => {
                if let Some(line) = change_line(&change) {
                    writeln!(out, "{line}")?;
                }
            }
        }
        // Each change shows as it happens, even through a pipe.
        out.flush()?;
        if json.is_none() && kind == Ok(pb::AlertChangeType::SnapshotEnd) {
            let _ = writeln!(std::io::stderr(), "watching for changes; Ctrl-C to stop");
        }
    }
}

/// A watch the server ended with an error. UNAVAILABLE mid-stream is the
/// service draining (or going away): said in those words.
fn stream_broken(status: &tonic::Status) -> ExitCode {
    if status.code() == tonic::Code::Unavailable {
        let _ = writeln!(
            std::io::stderr(),
            "error: the alerting service is shutting down ({})",
            status_text(status)
        );
        ExitCode::FAILURE
    } else {
        print_status(status)
    }
}

// === rendering ===

pub(crate) fn to_jiff(time: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    time.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
}

/// Seconds-precision RFC 3339 in UTC, whatever the local time zone; `-` when
/// unset.
pub(crate) fn utc_text(time: Option<&prost_types::Timestamp>) -> String {
    to_jiff(time).map_or_else(
        || "-".to_owned(),
        |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// A length of time in at most two units: `45s`, `3m`, `2h5m`, `3d4h`.
fn short_duration(seconds: i64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// `time` relative to `now`: `3m ago`, `in 2h`, `now`; `-` when unset.
pub(crate) fn relative_text(time: Option<&prost_types::Timestamp>, now: Timestamp) -> String {
    let Some(time) = to_jiff(time) else {
        return "-".to_owned();
    };
    let seconds = now.duration_since(time).as_secs();
    if seconds == 0 {
        "now".to_owned()
    } else if seconds > 0 {
        format!("{} ago", short_duration(seconds))
    } else {
        format!("in {}", short_duration(seconds.saturating_neg()))
    }
}

/// The lowercase name of an enum value after `prefix`, or the number.
fn enum_name(name: Option<&'static str>, prefix: &str, value: i32) -> String {
    name.map_or_else(
        || value.to_string(),
        |n| n.trim_start_matches(prefix).to_lowercase(),
    )
}

/// An alert state as shown: `FIRING`.
fn state_name(state: i32) -> String {
    enum_name(
        pb::AlertState::try_from(state)
            .ok()
            .map(|s| s.as_str_name()),
        "ALERT_STATE_",
        state,
    )
    .to_uppercase()
}

/// The state with the alert's marks: `FIRING (silenced, inhibited)`.
fn marked_state(alert: &pb::Alert) -> String {
    let marks: Vec<&str> = [(alert.silenced, "silenced"), (alert.inhibited, "inhibited")]
        .into_iter()
        .filter_map(|(on, mark)| on.then_some(mark))
        .collect();
    let state = state_name(alert.state);
    if marks.is_empty() {
        state
    } else {
        format!("{state} ({})", marks.join(", "))
    }
}

/// The severity as shown: its name, else the raw label, else `-`.
fn severity_text(alert: &pb::Alert) -> String {
    match pb::Severity::try_from(alert.severity) {
        Ok(pb::Severity::Unspecified) | Err(_) => alert
            .labels
            .get("severity")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "-".to_owned()),
        Ok(severity) => enum_name(Some(severity.as_str_name()), "SEVERITY_", alert.severity),
    }
}

fn alertname(alert: &pb::Alert) -> &str {
    alert
        .labels
        .get("alertname")
        .filter(|name| !name.is_empty())
        .map_or("-", String::as_str)
}

/// The labels but `skip`, sorted, as `k=v` separated by spaces; a value that
/// is empty or holds spaces, quotes, backslashes or commas is quoted.
fn labels_text(labels: &HashMap<String, String>, skip: &[&str]) -> String {
    let mut pairs: Vec<(&String, &String)> = labels
        .iter()
        .filter(|(name, _)| !skip.contains(&name.as_str()))
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(name, value)| {
            let plain = !value.is_empty()
                && !value.contains(|c: char| {
                    c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | ',')
                });
            if plain {
                format!("{name}={value}")
            } else {
                format!("{name}=\"{}\"", escape(value))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text for one cell: line breaks and tabs as spaces, so rows stay rows.
pub(crate) fn one_line(text: &str) -> String {
    text.split(char::is_whitespace)
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// When the alert started: `starts_at`, or, while pending (it has no start
/// yet), when its condition began to hold.
fn start_of(alert: &pb::Alert) -> Option<&prost_types::Timestamp> {
    alert.starts_at.as_ref().or(alert.active_at.as_ref())
}

fn alert_row(alert: &pb::Alert, now: Timestamp) -> Vec<String> {
    let summary = ["summary", "description"]
        .iter()
        .find_map(|key| alert.annotations.get(*key).filter(|text| !text.is_empty()))
        .map_or_else(String::new, |text| one_line(text));
    vec![
        marked_state(alert),
        severity_text(alert),
        alertname(alert).to_owned(),
        relative_text(start_of(alert), now),
        labels_text(&alert.labels, &["alertname", "severity"]),
        summary,
    ]
}

/// The alerts as a table: STATE, SEVERITY, ALERTNAME, STARTS (relative to
/// `now`), LABELS (the others), SUMMARY.
fn alert_table(alerts: &[pb::Alert], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = alerts.iter().map(|alert| alert_row(alert, now)).collect();
    table(
        &[
            "STATE",
            "SEVERITY",
            "ALERTNAME",
            "STARTS",
            "LABELS",
            "SUMMARY",
        ],
        &rows,
    )
}

/// Left-aligned columns two spaces apart, a header line first; trailing
/// spaces trimmed.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(widest) => *widest = (*widest).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut text = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// One watch message as a line: time, change, state (a transition for a
/// state change), alert name and the other labels. `None` for the messages
/// that carry no alert (end of snapshot, heartbeat).
fn change_line(change: &pb::WatchAlertsResponse) -> Option<String> {
    let kind = pb::AlertChangeType::try_from(change.r#type).ok()?;
    let alert = change.alert.as_ref()?;
    let new = kind == pb::AlertChangeType::StateChanged
        && change.previous_state == i32::from(pb::AlertState::Unspecified);
    let (what, state) = match kind {
        pb::AlertChangeType::Snapshot => ("snapshot", marked_state(alert)),
        pb::AlertChangeType::StateChanged if new => ("new", marked_state(alert)),
        pb::AlertChangeType::StateChanged => (
            "changed",
            format!(
                "{}→{}",
                state_name(change.previous_state),
                marked_state(alert)
            ),
        ),
        pb::AlertChangeType::Updated => ("updated", marked_state(alert)),
        pb::AlertChangeType::Removed => ("removed", marked_state(alert)),
        pb::AlertChangeType::SnapshotEnd
        | pb::AlertChangeType::Heartbeat
        | pb::AlertChangeType::Unspecified => return None,
    };
    let line = format!(
        "{:<20}  {:<8}  {:<18}  {:<20}  {}",
        utc_text(change.time.as_ref()),
        what,
        state,
        alertname(alert),
        labels_text(&alert.labels, &["alertname"])
    );
    Some(line.trim_end().to_owned())
}

/// An alerting service in the test process, answering from canned data and
/// recording what it was asked, so that the commands' calls (paging, the
/// watch loop, errors) are tested without the real service.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::{Arc, Mutex};

    use agentmesh_proto::alerting::v1::{
        self as pb,
        alerting_service_server::{AlertingService, AlertingServiceServer},
    };
    use futures::StreamExt as _;
    use futures::stream::BoxStream;
    use tonic::{Request, Response, Status};

    use super::AlertingTarget;

    #[derive(Debug, Default)]
    pub(crate) struct Fake {
        /// ListAlerts pages: the first for an empty token, page `n` for
        /// token `"n"`.
        pub(crate) alert_pages: Vec<Vec<pb::Alert>>,
        /// ListSilences pages, as `alert_pages`.
        pub(crate) silence_pages: Vec<Vec<pb::Silence>>,
        /// What WatchAlerts sends, in order; an error ends the stream.
        pub(crate) watch: Vec<Result<pb::WatchAlertsResponse, Status>>,
        /// Keep the watch open after the messages (until the client goes).
        pub(crate) watch_hangs: bool,
        /// ListAlerts answers this error instead.
        pub(crate) list_error: Option<Status>,
        pub(crate) list_requests: Mutex<Vec<pb::ListAlertsRequest>>,
        pub(crate) silence_requests: Mutex<Vec<pb::ListSilencesRequest>>,
        pub(crate) watch_requests: Mutex<Vec<pb::WatchAlertsRequest>>,
        pub(crate) created: Mutex<Vec<pb::CreateSilenceRequest>>,
        pub(crate) deleted: Mutex<Vec<String>>,
    }

    /// The page of `pages` that `token` asks for, and the next token.
    fn page<T: Clone>(pages: &[Vec<T>], token: &str) -> Result<(Vec<T>, String), Status> {
        let index: usize = if token.is_empty() {
            0
        } else {
            token
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let items = pages.get(index).cloned().unwrap_or_default();
        let next = if index + 1 < pages.len() {
            (index + 1).to_string()
        } else {
            String::new()
        };
        Ok((items, next))
    }

    struct Service(Arc<Fake>);

    #[tonic::async_trait]
    impl AlertingService for Service {
        type WatchAlertsStream = BoxStream<'static, Result<pb::WatchAlertsResponse, Status>>;

        async fn fire_alert(
            &self,
            _: Request<pb::FireAlertRequest>,
        ) -> Result<Response<pb::FireAlertResponse>, Status> {
            Err(Status::unimplemented("not in the fake"))
        }

        async fn list_alerts(
            &self,
            request: Request<pb::ListAlertsRequest>,
        ) -> Result<Response<pb::ListAlertsResponse>, Status> {
            let request = request.into_inner();
            self.0.list_requests.lock().unwrap().push(request.clone());
            if let Some(status) = &self.0.list_error {
                return Err(status.clone());
            }
            let (alerts, next_page_token) = page(&self.0.alert_pages, &request.page_token)?;
            Ok(Response::new(pb::ListAlertsResponse {
                alerts,
                next_page_token,
            }))
        }

        async fn watch_alerts(
            &self,
            request: Request<pb::WatchAlertsRequest>,
        ) -> Result<Response<Self::WatchAlertsStream>, Status> {
            self.0
                .watch_requests
                .lock()
                .unwrap()
                .push(request.into_inner());
            let messages = futures::stream::iter(self.0.watch.clone());
            let stream = if self.0.watch_hangs {
                messages.chain(futures::stream::pending()).boxed()
            } else {
                messages.boxed()
            };
            Ok(Response::new(stream))
        }

        async fn create_silence(
            &self,
            request: Request<pb::CreateSilenceRequest>,
        ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
            let request = request.into_inner();
            self.0.created.lock().unwrap().push(request.clone());
            Ok(Response::new(pb::CreateSilenceResponse {
                silence: Some(pb::Silence {
                    id: "s-new".to_owned(),
                    state: pb::SilenceState::Active.into(),
                    ..request.silence.unwrap_or_default()
                }),
            }))
        }

        async fn list_silences(
            &self,
            request: Request<pb::ListSilencesRequest>,
        ) -> Result<Response<pb::ListSilencesResponse>, Status> {
            let request = request.into_inner();
            self.0
                .silence_requests
                .lock()
                .unwrap()
                .push(request.clone());
            let (silences, next_page_token) = page(&self.0.silence_pages, &request.page_token)?;
            Ok(Response::new(pb::ListSilencesResponse {
                silences,
                next_page_token,
            }))
        }

        async fn delete_silence(
            &self,
            request: Request<pb::DeleteSilenceRequest>,
        ) -> Result<Response<pb::DeleteSilenceResponse>, Status> {
            let id = request.into_inner().id;
            self.0.deleted.lock().unwrap().push(id.clone());
            if id == "missing" {
                return Err(Status::not_found("no silence with id missing"));
            }
            Ok(Response::new(pb::DeleteSilenceResponse {
                silence: Some(pb::Silence {
                    id,
                    state: pb::SilenceState::Expired.into(),
                    ends_at: Some(prost_types::Timestamp {
                        seconds: 1_795_262_400, // 2026-11-21T12:00:00Z
                        nanos: 0,
                    }),
                    ..pb::Silence::default()
                }),
            }))
        }

        async fn list_rules(
            &self,
            _: Request<pb::ListRulesRequest>,
        ) -> Result<Response<pb::ListRulesResponse>, Status> {
            Err(Status::unimplemented("not in the fake"))
        }
    }

    /// Serves `fake` on a free loopback port (until the test's runtime
    /// ends); the target that reaches it.
    pub(crate) async fn serve(fake: Fake) -> (Arc<Fake>, AlertingTarget) {
        let fake = Arc::new(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = AlertingServiceServer::new(Service(Arc::clone(&fake)));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (
            fake,
            AlertingTarget {
                address: address.to_string(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn time(text: &str) -> Option<prost_types::Timestamp> {
        let t = at(text);
        Some(prost_types::Timestamp {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        })
    }

    fn matcher(name: &str, match_type: pb::MatchType, value: &str) -> pb::Matcher {
        pb::Matcher {
            name: name.to_owned(),
            value: value.to_owned(),
            r#type: match_type.into(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    // --- matchers ---

    #[test]
    fn the_four_operators() {
        use pb::MatchType::{Equal, NotEqual, NotRegex, Regex};
        for (text, expected) in [
            (
                r#"alertname="ToolFailing""#,
                matcher("alertname", Equal, "ToolFailing"),
            ),
            (r#"tool=~"fi.*""#, matcher("tool", Regex, "fi.*")),
            ("severity!=info", matcher("severity", NotEqual, "info")),
            (r#"x!~"a|b""#, matcher("x", NotRegex, "a|b")),
            ("x!~a|b", matcher("x", NotRegex, "a|b")),
            ("tool=files", matcher("tool", Equal, "files")),
            ("_x1=~.+", matcher("_x1", Regex, ".+")),
        ] {
            assert_eq!(parse_matcher(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn spaces_quotes_and_escapes() {
        use pb::MatchType::{Equal, NotEqual, Regex};
        for (text, expected) in [
            (r#"  tool = "files"  "#, matcher("tool", Equal, "files")),
            ("tool =  files ", matcher("tool", Equal, "files")),
            (
                r#"summary="a \"b\" c""#,
                matcher("summary", Equal, r#"a "b" c"#),
            ),
            (r#"x="back\\slash""#, matcher("x", Equal, r"back\slash")),
            (r#"x="two\nlines""#, matcher("x", Equal, "two\nlines")),
            // Other escapes stay, so that regular expressions work.
            (r#"host=~"a\.b""#, matcher("host", Regex, r"a\.b")),
            (r#"x="a=b,c!=d""#, matcher("x", Equal, "a=b,c!=d")),
            (r#"x="with spaces""#, matcher("x", Equal, "with spaces")),
            ("x=", matcher("x", Equal, "")),
            (r#"x!="""#, matcher("x", NotEqual, "")),
            (r#"x="ends\\""#, matcher("x", Equal, r"ends\")),
        ] {
            assert_eq!(parse_matcher(text), Ok(expected), "{text}");
        }
        // A trailing backslash in a bare value is kept.
        assert_eq!(parse_matcher(r"x=a\"), Ok(matcher("x", Equal, r"a\")));
    }

    #[test]
    fn malformed_matchers_say_what_is_wrong() {
        for (text, expected) in [
            ("tool", "is not a matcher"),
            ("", "is not a matcher"),
            ("tool~files", "is not a matcher"),
            ("tool!files", "is not a matcher"),
            ("=files", "is not a label name"),
            ("1tool=files", "is not a label name"),
            ("to-ol=files", "is not a label name"),
            ("tool.name=x", "is not a label name"),
            (r#"tool="files"#, "closing quote is missing"),
            (r#"tool="fi"les"#, "follows the value's closing quote"),
            (r#"tool=fi"les"#, "must be escaped"),
            (r#"tool="a\""#, "closing quote is missing"),
        ] {
            let err = parse_matcher(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(
            parse_matcher("tool")
                .unwrap_err()
                .contains("NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
        );
    }

    #[test]
    fn a_first_bare_word_is_the_alert_name() {
        let texts = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_matchers(&texts(&["ToolFailing", "tool=files"])),
            Ok(vec![
                matcher("alertname", pb::MatchType::Equal, "ToolFailing"),
                matcher("tool", pb::MatchType::Equal, "files"),
            ])
        );
        // Only the first: later ones must be matchers.
        assert!(parse_matchers(&texts(&["tool=files", "ToolFailing"])).is_err());
        // A typo of an operator is an error, not a name.
        assert!(parse_matchers(&texts(&["tool~files"])).is_err());
        assert_eq!(parse_matchers(&[]), Ok(Vec::new()));
    }

    #[test]
    fn matchers_print_as_they_parse() {
        for text in [
            r#"alertname="ToolFailing""#,
            r#"tool=~"fi.*""#,
            r#"severity!="info""#,
            r#"x!~"a|b""#,
            r#"x="a \"quoted\" back\\slash""#,
            r#"x="two\nlines""#,
        ] {
            let parsed = parse_matcher(text).unwrap();
            assert_eq!(matcher_text(&parsed), text);
            assert_eq!(parse_matcher(&matcher_text(&parsed)), Ok(parsed));
        }
        assert_eq!(
            matcher_text(&matcher("x", pb::MatchType::Unspecified, "y")),
            r#"x="y""#
        );
    }

    // --- flags to requests ---

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: AlertsCommand,
    }

    fn parse(args: &[&str]) -> Result<AlertsCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("alerts").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn list_args(args: &[&str]) -> ListArgs {
        match parse(&[&["list"], args].concat()).unwrap() {
            AlertsCommand::List(args) => args,
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn list_flags_become_the_request() {
        let args = list_args(&[
            "--state",
            "firing,pending",
            "--state",
            "resolved",
            "--severity",
            "critical",
            "--severity",
            "warning,info",
            "--silenced",
            "false",
            "--inhibited",
            "true",
            "ToolFailing",
            r#"tool=~"fi.*""#,
            "severity!=info",
            "--limit",
            "5",
            "--output",
            "json",
            "--alerting",
            "10.0.0.1:50055",
        ]);
        assert_eq!(
            list_request(&args),
            Ok(pb::ListAlertsRequest {
                page_size: 0,
                page_token: String::new(),
                states: vec![
                    pb::AlertState::Firing.into(),
                    pb::AlertState::Pending.into(),
                    pb::AlertState::Resolved.into(),
                ],
                severities: vec![
                    pb::Severity::Critical.into(),
                    pb::Severity::Warning.into(),
                    pb::Severity::Info.into(),
                ],
                matchers: vec![
                    matcher("alertname", pb::MatchType::Equal, "ToolFailing"),
                    matcher("tool", pb::MatchType::Regex, "fi.*"),
                    matcher("severity", pb::MatchType::NotEqual, "info"),
                ],
                silenced: Some(false),
                inhibited: Some(true),
            })
        );
        assert_eq!(args.limit, Some(5));
        assert_eq!(args.output, Output::Json);
        assert_eq!(args.target.uri(), "http://10.0.0.1:50055");
    }

    #[test]
    fn no_flags_ask_for_everything() {
        let args = list_args(&[]);
        assert_eq!(list_request(&args), Ok(pb::ListAlertsRequest::default()));
        assert_eq!(args.limit, None);
        assert_eq!(args.output, Output::Table);
        // The default address, unless AGENTMESH_ALERTING is set where the
        // tests run.
        if std::env::var_os("AGENTMESH_ALERTING").is_none() {
            assert_eq!(args.target.uri(), "http://localhost:50055");
        }
    }

    #[test]
    fn bad_list_flags_are_refused() {
        let err = parse(&["list", "--state", "active"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pending") && err.contains("resolved"), "{err}");
        let err = parse(&["list", "--severity", "page"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("critical"), "{err}");
        assert!(parse(&["list", "--silenced", "yes"]).is_err());
        assert!(parse(&["list", "--silenced"]).is_err());
        assert!(parse(&["list", "--output", "yaml"]).is_err());
        let err = list_request(&list_args(&["tool=files", "oops"])).unwrap_err();
        assert!(err.contains("`oops` is not a matcher"), "{err}");
    }

    #[test]
    fn watch_flags_become_the_request() {
        let AlertsCommand::Watch(args) = parse(&[
            "watch",
            "--state",
            "firing",
            "--severity",
            "critical",
            "--skip-snapshot",
            "tool=files",
        ])
        .unwrap() else {
            panic!("not a watch");
        };
        assert_eq!(
            watch_request(&args),
            Ok(pb::WatchAlertsRequest {
                states: vec![pb::AlertState::Firing.into()],
                severities: vec![pb::Severity::Critical.into()],
                matchers: vec![matcher("tool", pb::MatchType::Equal, "files")],
                skip_snapshot: true,
            })
        );
        let AlertsCommand::Watch(args) = parse(&["watch"]).unwrap() else {
            panic!("not a watch");
        };
        assert_eq!(watch_request(&args), Ok(pb::WatchAlertsRequest::default()));
    }

    #[test]
    fn addresses_get_a_scheme() {
        let target = |address: &str| AlertingTarget {
            address: address.to_owned(),
        };
        assert_eq!(target("localhost:1").uri(), "http://localhost:1");
        assert_eq!(
            target(" https://a.example:443 ").uri(),
            "https://a.example:443"
        );
    }

    #[tokio::test]
    async fn an_unreachable_service_is_one_line_naming_it() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = AlertingTarget {
            address: format!("127.0.0.1:{port}"),
        };
        let err = format!("{:#}", target.connect().await.unwrap_err());
        assert!(err.contains(&format!("http://127.0.0.1:{port}")), "{err}");
        assert!(err.contains("agentmesh up"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let bad = AlertingTarget {
            address: "http://bad host".to_owned(),
        };
        let err = format!("{:#}", bad.connect().await.unwrap_err());
        assert!(err.starts_with("bad alerting service address"), "{err}");
    }

    // --- rendering ---

    #[test]
    fn relative_times() {
        let now = at("2026-11-21T12:00:00Z");
        for (then, expected) in [
            ("2026-11-21T12:00:00Z", "now"),
            ("2026-11-21T11:59:59.5Z", "now"),
            ("2026-11-21T11:59:15Z", "45s ago"),
            ("2026-11-21T11:57:00Z", "3m ago"),
            ("2026-11-21T11:56:30Z", "3m ago"),
            ("2026-11-21T10:00:00Z", "2h ago"),
            ("2026-11-21T09:55:00Z", "2h5m ago"),
            ("2026-11-18T12:00:00Z", "3d ago"),
            ("2026-11-18T08:00:00Z", "3d4h ago"),
            ("2026-11-21T14:00:00Z", "in 2h"),
        ] {
            assert_eq!(relative_text(time(then).as_ref(), now), expected, "{then}");
        }
        assert_eq!(relative_text(None, now), "-");
    }

    fn firing_alert() -> pb::Alert {
        pb::Alert {
            fingerprint: "a1b2c3".to_owned(),
            labels: labels(&[
                ("alertname", "ToolFailing"),
                ("severity", "critical"),
                ("tool", "web_fetch"),
                ("tenant", "acme corp"),
            ]),
            annotations: labels(&[
                ("summary", "tool web_fetch failed 7 times\nin 5m"),
                ("description", "ignored: the summary wins"),
            ]),
            state: pb::AlertState::Firing.into(),
            severity: pb::Severity::Critical.into(),
            starts_at: time("2026-11-21T11:57:00Z"),
            active_at: time("2026-11-21T11:55:00Z"),
            silenced: true,
            silenced_by: vec!["s-1".to_owned()],
            inhibited: true,
            ..pb::Alert::default()
        }
    }

    #[test]
    fn an_alert_table() {
        let now = at("2026-11-21T12:00:00Z");
        let pending = pb::Alert {
            labels: labels(&[("alertname", "NoRuns"), ("severity", "page")]),
            annotations: labels(&[("description", "no run in 30m")]),
            state: pb::AlertState::Pending.into(),
            // Pending: no start yet; the table shows when it became active.
            active_at: time("2026-11-21T11:59:30Z"),
            ..pb::Alert::default()
        };
        let bare = pb::Alert {
            state: pb::AlertState::Resolved.into(),
            ..pb::Alert::default()
        };
        let expected = "\
STATE                         SEVERITY  ALERTNAME    STARTS   LABELS                             SUMMARY
FIRING (silenced, inhibited)  critical  ToolFailing  3m ago   tenant=\"acme corp\" tool=web_fetch  tool web_fetch failed 7 times in 5m
PENDING                       page      NoRuns       30s ago                                     no run in 30m
RESOLVED                      -         -            -
";
        assert_eq!(alert_table(&[firing_alert(), pending, bare], now), expected);
        assert_eq!(
            alert_table(&[], now),
            "STATE  SEVERITY  ALERTNAME  STARTS  LABELS  SUMMARY\n"
        );
    }

    #[test]
    fn marks_and_labels() {
        let mut alert = firing_alert();
        alert.inhibited = false;
        assert_eq!(marked_state(&alert), "FIRING (silenced)");
        alert.silenced = false;
        assert_eq!(marked_state(&alert), "FIRING");
        assert_eq!(state_name(42), "42");
        assert_eq!(
            labels_text(
                &labels(&[("b", ""), ("a", "x\"y"), ("c", "1,2"), ("d", "ok")]),
                &[]
            ),
            r#"a="x\"y" b="" c="1,2" d=ok"#
        );
    }

    #[test]
    fn watch_lines() {
        let change =
            |kind: pb::AlertChangeType, previous: pb::AlertState| pb::WatchAlertsResponse {
                r#type: kind.into(),
                alert: Some(pb::Alert {
                    silenced: false,
                    inhibited: false,
                    ..firing_alert()
                }),
                previous_state: previous.into(),
                time: time("2026-11-21T12:00:00Z"),
            };
        assert_eq!(
            change_line(&change(
                pb::AlertChangeType::StateChanged,
                pb::AlertState::Pending
            )),
            Some(
                "2026-11-21T12:00:00Z  changed   PENDING→FIRING      ToolFailing           \
                 severity=critical tenant=\"acme corp\" tool=web_fetch"
                    .to_owned()
            )
        );
        let new = change_line(&change(
            pb::AlertChangeType::StateChanged,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(
            new.starts_with("2026-11-21T12:00:00Z  new       FIRING    "),
            "{new}"
        );
        let mut silenced = change(pb::AlertChangeType::Updated, pb::AlertState::Unspecified);
        if let Some(alert) = silenced.alert.as_mut() {
            alert.silenced = true;
        }
        let updated = change_line(&silenced).unwrap();
        assert!(
            updated.starts_with("2026-11-21T12:00:00Z  updated   FIRING (silenced)   ToolFailing"),
            "{updated}"
        );
        let snapshot = change_line(&change(
            pb::AlertChangeType::Snapshot,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(snapshot.contains("  snapshot  FIRING  "), "{snapshot}");
        let removed = change_line(&change(
            pb::AlertChangeType::Removed,
            pb::AlertState::Unspecified,
        ))
        .unwrap();
        assert!(removed.contains("  removed   FIRING  "), "{removed}");
        // Nothing to show for messages without an alert.
        for kind in [
            pb::AlertChangeType::SnapshotEnd,
            pb::AlertChangeType::Heartbeat,
        ] {
            let message = pb::WatchAlertsResponse {
                r#type: kind.into(),
                ..pb::WatchAlertsResponse::default()
            };
            assert_eq!(change_line(&message), None);
        }
        let heartbeat_with_alert =
            change(pb::AlertChangeType::Heartbeat, pb::AlertState::Unspecified);
        assert_eq!(change_line(&heartbeat_with_alert), None);
    }

    #[test]
    fn an_alert_as_json() {
        let json = ProtoJson::new("agentmesh.alerting.v1.Alert").unwrap();
        let alert = pb::Alert {
            labels: labels(&[("alertname", "ToolFailing")]),
            state: pb::AlertState::Firing.into(),
            starts_at: time("2026-11-21T11:57:00Z"),
            ..pb::Alert::default()
        };
        let mut out = Vec::new();
        json.write_line(&mut out, &alert).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"labels\":{\"alertname\":\"ToolFailing\"},\"state\":\"ALERT_STATE_FIRING\",\
             \"starts_at\":\"2026-11-21T11:57:00Z\"}\n"
        );
        assert!(ProtoJson::new("agentmesh.alerting.v1.WatchAlertsResponse").is_ok());
    }

    // --- against a fake service ---

    fn named(name: &str) -> pb::Alert {
        pb::Alert {
            labels: labels(&[("alertname", name)]),
            state: pb::AlertState::Firing.into(),
            starts_at: time("2026-11-21T11:00:00Z"),
            ..pb::Alert::default()
        }
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn list_follows_the_pages_up_to_the_limit() {
        let (fake, target) = fake::serve(fake::Fake {
            alert_pages: vec![
                vec![named("A1"), named("A2")],
                vec![named("A3"), named("A4")],
                vec![named("A5")],
            ],
            ..fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let now = at("2026-11-21T12:00:00Z");
        let request = list_request(&list_args(&["--state", "firing", "tool=files"])).unwrap();

        // All, as JSON lines.
        let mut out = Vec::new();
        let code = list_to(
            &mut client,
            request.clone(),
            None,
            Output::Json,
            &mut out,
            now,
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let shown = lines(&out);
        assert_eq!(shown.len(), 5);
        assert!(shown[4].contains("\"alertname\":\"A5\""), "{}", shown[4]);
        let asked = std::mem::take(&mut *fake.list_requests.lock().unwrap());
        let tokens: Vec<&str> = asked.iter().map(|r| r.page_token.as_str()).collect();
        assert_eq!(tokens, ["", "1", "2"]);
        for request in &asked {
            // The filters and the page size stay the same on every page.
            assert_eq!(request.page_size, 1000);
            assert_eq!(request.states, [i32::from(pb::AlertState::Firing)]);
            assert_eq!(request.matchers.len(), 1);
        }

        // At most 3: two pages asked, the third alert's page cut.
        let mut out = Vec::new();
        list_to(
            &mut client,
            request.clone(),
            Some(3),
            Output::Table,
            &mut out,
            now,
        )
        .await
        .unwrap();
        let shown = lines(&out);
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert!(shown[0].starts_with("STATE"));
        assert!(
            shown[3].starts_with("FIRING  -         A3         1h ago"),
            "{}",
            shown[3]
        );
        let asked = std::mem::take(&mut *fake.list_requests.lock().unwrap());
        assert_eq!(asked.len(), 2);
        assert!(asked.iter().all(|r| r.page_size == 3));
    }

    #[tokio::test]
    async fn a_refused_list_prints_nothing_and_fails() {
        let (_fake, target) = fake::serve(fake::Fake {
            list_error: Some(agentmesh_kit::status::invalid_argument([(
                "matchers[0].value",
                "invalid regular expression",
            )])),
            ..fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let mut out = Vec::new();
        let code = list_to(
            &mut client,
            pb::ListAlertsRequest::default(),
            None,
            Output::Table,
            &mut out,
            Timestamp::now(),
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        assert!(out.is_empty());
    }

    fn watch_messages() -> Vec<Result<pb::WatchAlertsResponse, tonic::Status>> {
        let message = |kind: pb::AlertChangeType, alert: Option<pb::Alert>| {
            Ok(pb::WatchAlertsResponse {
                r#type: kind.into(),
                alert,
                previous_state: pb::AlertState::Pending.into(),
                time: time("2026-11-21T12:00:00Z"),
            })
        };
        vec![
            message(pb::AlertChangeType::Snapshot, Some(named("Old"))),
            message(pb::AlertChangeType::SnapshotEnd, None),
            message(pb::AlertChangeType::Heartbeat, None),
            message(pb::AlertChangeType::StateChanged, Some(named("New"))),
        ]
    }

    #[tokio::test]
    async fn watch_prints_all_but_heartbeats_until_the_stream_ends() {
        let (fake, target) = fake::serve(fake::Fake {
            watch: watch_messages(),
            ..fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let request = pb::WatchAlertsRequest {
            skip_snapshot: true,
            ..pb::WatchAlertsRequest::default()
        };
        let never = std::future::pending::<()>();

        let mut out = Vec::new();
        let code = watch_to(&mut client, request.clone(), Output::Table, &mut out, never)
            .await
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(
            lines(&out),
            [
                "2026-11-21T12:00:00Z  snapshot  FIRING              Old",
                "2026-11-21T12:00:00Z  changed   PENDING→FIRING      New",
            ]
        );
        assert_eq!(fake.watch_requests.lock().unwrap()[0], request);

        let mut out = Vec::new();
        let code = watch_to(
            &mut client,
            request,
            Output::Json,
            &mut out,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let shown = lines(&out);
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(
            shown[1].contains("ALERT_CHANGE_TYPE_SNAPSHOT_END"),
            "{}",
            shown[1]
        );
        assert!(shown.iter().all(|line| !line.contains("HEARTBEAT")));
    }

    #[tokio::test]
    async fn a_draining_service_ends_the_watch_with_a_failure() {
        let mut messages = watch_messages();
        messages.push(Err(tonic::Status::unavailable("the service is draining")));
        let (_fake, target) = fake::serve(fake::Fake {
            watch: messages,
            ..fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let mut out = Vec::new();
        let code = watch_to(
            &mut client,
            pb::WatchAlertsRequest::default(),
            Output::Table,
            &mut out,
            std::future::pending(),
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        // What came before the error was shown.
        assert_eq!(lines(&out).len(), 2);
    }

    #[tokio::test]
    async fn ctrl_c_ends_an_open_watch_cleanly() {
        let (_fake, target) = fake::serve(fake::Fake {
            watch: watch_messages(),
            watch_hangs: true,
            ..fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let mut out = Vec::new();
        let stop = tokio::time::sleep(Duration::from_millis(20));
        let code = watch_to(
            &mut client,
            pb::WatchAlertsRequest::default(),
            Output::Table,
            &mut out,
            stop,
        )
        .await
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }
}
