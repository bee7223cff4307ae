//! `agentmesh silences add|list|expire`: the alerting service's silences
//! from the command line, in the manner of Alertmanager's `amtool silence`.
//!
//! Each command connects to the alerting service at `--alerting` (see
//! `alerting`, which also holds the matcher parser shared with `agentmesh
//! alerts`; tables and times are formatted by `output` and `time`). `add` turns its matchers and
//! flags into a `CreateSilenceRequest` (the end from `--end`, or from the
//! start plus `--duration`; the start left unset means "now" on the server)
//! and prints the new silence's id; `list` follows every page and prints a
//! table or JSON lines; `expire` expires each id in turn, one line each, and
//! exits non-zero if any failed. Failed calls print like the audit commands:
//! `error: CODE: message` and the field violations.

use std::io::Write;
use std::process::ExitCode;

use crate::credential::CliChannel;
use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use jiff::{SignedDuration, Timestamp};

use crate::alerting::matchers::{matcher_text, parse_matchers};
use crate::alerting::{AlertingTarget, MAX_PAGE, Output};
use crate::commands::{print_status, status_text};
use crate::output::{ProtoJson, one_line, quiet_on_broken_pipe, table};
use crate::time::{proto_utc_text, to_proto};

/// The author of a silence when neither `--author` nor `$USER` says.
const DEFAULT_AUTHOR: &str = "agentmesh-cli";

/// How long a silence lasts when neither `--duration` nor `--end` says (as
/// in amtool).
const DEFAULT_DURATION: SignedDuration = SignedDuration::from_hours(1);

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SilencesCommand {
    /// Silence the alerts matching all MATCHERs: they stay listed, marked
    /// silenced, but are not notified. Prints the new silence's id.
    Add(AddArgs),
    /// List silences, newest first.
    List(ListArgs),
    /// Expire silences now; they stay listed as expired.
    Expire(ExpireArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// The alerts to silence, in Alertmanager's syntax: alertname="ToolFailing",
    /// tool=~"fi.*", severity!=info (quotes optional). A first MATCHER without
    /// an operator means alertname=MATCHER.
    #[arg(value_name = "MATCHER", required = true)]
    matchers: Vec<String>,
    /// Why (e.g. a ticket link). Required.
    #[arg(long)]
    comment: String,
    /// Who creates the silence (default: $USER, else agentmesh-cli).
    #[arg(long, value_name = "WHO")]
    author: Option<String>,
    /// How long the silence lasts from its start: 30m, 2h, 1d, 1h30m
    /// (default: 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "end")]
    duration: Option<SignedDuration>,
    /// When the silence ends, RFC 3339 (2026-11-21T18:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    end: Option<Timestamp>,
    /// When the silence starts, RFC 3339 (default: now).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    start: Option<Timestamp>,
    /// Output format (json: the created silence).
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    target: AlertingTarget,
}

/// A silence state, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SilenceStateArg {
    Active,
    Pending,
    Expired,
}

impl SilenceStateArg {
    fn proto(self) -> pb::SilenceState {
        match self {
            Self::Active => pb::SilenceState::Active,
            Self::Pending => pb::SilenceState::Pending,
            Self::Expired => pb::SilenceState::Expired,
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Only silences in this state: active, pending, expired (comma-separated
    /// or repeated).
    #[arg(
        long = "state",
        value_name = "STATE",
        value_enum,
        value_delimiter = ','
    )]
    states: Vec<SilenceStateArg>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    target: AlertingTarget,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExpireArgs {
    /// The silences to expire.
    #[arg(value_name = "ID", required = true)]
    ids: Vec<String>,
    #[command(flatten)]
    target: AlertingTarget,
}

// === parsing flags ===

/// A positive duration in the CLI's one grammar (`30m`, `2h`, `1h30m`, `1d`,
/// `1w`, `PT2H`; see `time::parse_duration`).
fn parse_duration(text: &str) -> Result<SignedDuration, String> {
    let duration = crate::time::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration: use e.g. 30m, 2h, 1h30m, 1d, PT2H"))?;
    if duration.is_positive() {
        Ok(duration)
    } else {
        Err(format!("{text:?}: the duration must be positive"))
    }
}

fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a time: use RFC 3339, e.g. 2026-11-21T18:00:00Z"))
}

/// The `CreateSilenceRequest` the arguments ask for, at `now`; `user` is
/// `$USER`, the author when `--author` is not given.
fn create_request(
    args: &AddArgs,
    now: Timestamp,
    user: Option<String>,
) -> Result<pb::CreateSilenceRequest, String> {
    let matchers = parse_matchers(&args.matchers)?;
    if matchers.is_empty() {
        return Err("give at least one MATCHER (e.g. alertname=ToolFailing)".to_owned());
    }
    let comment = args.comment.trim();
    if comment.is_empty() {
        return Err("--comment must say why (e.g. a ticket link)".to_owned());
    }
    let author = args
        .author
        .as_deref()
        .or(user.as_deref())
        .map(str::trim)
        .filter(|author| !author.is_empty())
        .unwrap_or(DEFAULT_AUTHOR);
    let from = args.start.unwrap_or(now);
    let ends_at = match args.end {
        Some(end) => end,
        None => from
            .checked_add(args.duration.unwrap_or(DEFAULT_DURATION))
            .map_err(|_| "--duration reaches too far".to_owned())?,
    };
    if ends_at <= from {
        let start = match args.start {
            Some(_) => format!("--start ({from})"),
            None => "now".to_owned(),
        };
        return Err(format!("--end ({ends_at}) must be after {start}"));
    }
    Ok(pb::CreateSilenceRequest {
        silence: Some(pb::Silence {
            matchers,
            // Unset: the server starts the silence at its own "now".
            starts_at: args.start.map(to_proto),
            ends_at: Some(to_proto(ends_at)),
            created_by: author.to_owned(),
            comment: comment.to_owned(),
            ..pb::Silence::default()
        }),
    })
}

// === commands ===

pub(crate) async fn silences(command: SilencesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SilencesCommand::Add(args) => add(args).await,
        SilencesCommand::List(args) => list(args).await,
        SilencesCommand::Expire(args) => expire(args).await,
    }
}

async fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let user = std::env::var("USER").ok();
    let request = create_request(&args, Timestamp::now(), user).map_err(anyhow::Error::msg)?;
    let mut client = args.target.connect().await?;
    add_to(&mut client, request, args.output, &mut std::io::stdout()).await
}

/// Creates the silence and writes its id (or, as JSON, the silence) to
/// `out`.
async fn add_to(
    client: &mut AlertingServiceClient<CliChannel>,
    request: pb::CreateSilenceRequest,
    output: Output,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let silence = match client.create_silence(request).await {
        Ok(answer) => answer.into_inner().silence.unwrap_or_default(),
        Err(status) => return Ok(print_status(&status)),
    };
    match output {
        Output::Json => {
            ProtoJson::new("agentmesh.alerting.v1.Silence")?.write_line(out, &silence)?
        }
        Output::Table => writeln!(out, "{}", silence.id)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.target.connect().await?;
    let request = pb::ListSilencesRequest {
        page_size: 0,
        page_token: String::new(),
        states: args.states.iter().map(|s| i32::from(s.proto())).collect(),
    };
    quiet_on_broken_pipe(list_to(&mut client, request, args.output, &mut std::io::stdout()).await)
}

/// Lists every silence `request` selects, page after page, to `out`.
async fn list_to(
    client: &mut AlertingServiceClient<CliChannel>,
    mut request: pb::ListSilencesRequest,
    output: Output,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let json = match output {
        Output::Json => Some(ProtoJson::new("agentmesh.alerting.v1.Silence")?),
        Output::Table => None,
    };
    request.page_size = i32::try_from(MAX_PAGE).unwrap_or(0);
    let mut rows: Vec<pb::Silence> = Vec::new();
    loop {
        let page = match client.list_silences(request.clone()).await {
            Ok(page) => page.into_inner(),
            Err(status) => return Ok(print_status(&status)),
        };
        match &json {
            Some(json) => {
                for silence in &page.silences {
                    json.write_line(out, silence)?;
                }
                out.flush()?;
            }
            None => rows.extend(page.silences),
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if json.is_none() {
        write!(out, "{}", silence_table(&rows))?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn expire(args: ExpireArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.target.connect().await?;
    expire_to(&mut client, &args.ids, &mut std::io::stdout()).await
}

/// Expires each silence in turn: a line on `out` for each one expired, an
/// error line on stderr for each failure (and then a failed exit code).
async fn expire_to(
    client: &mut AlertingServiceClient<CliChannel>,
    ids: &[String],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    // Each id is tried, whatever became of the others.
    for id in ids {
        let answer = client
            .delete_silence(pb::DeleteSilenceRequest { id: id.clone() })
            .await;
        match answer {
            Ok(answer) => {
                let silence = answer.into_inner().silence.unwrap_or_default();
                writeln!(out, "{}", expired_line(id, &silence))?;
                out.flush()?;
            }
            Err(status) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: silence {id}: {}",
                    status_text(&status)
                );
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

// === rendering ===

/// What `expire` prints for a silence it expired.
fn expired_line(id: &str, silence: &pb::Silence) -> String {
    match silence.ends_at.as_ref() {
        Some(ends_at) => format!("expired {id} (ended {})", proto_utc_text(Some(ends_at))),
        None => format!("expired {id}"),
    }
}

/// A silence state as shown: `ACTIVE`.
fn state_name(state: i32) -> String {
    pb::SilenceState::try_from(state).map_or_else(
        |_| state.to_string(),
        |s| {
            s.as_str_name()
                .trim_start_matches("SILENCE_STATE_")
                .to_owned()
        },
    )
}

fn silence_row(silence: &pb::Silence) -> Vec<String> {
    let matchers: Vec<String> = silence.matchers.iter().map(matcher_text).collect();
    vec![
        silence.id.clone(),
        state_name(silence.state),
        one_line(&matchers.join(" ")),
        proto_utc_text(silence.starts_at.as_ref()),
        proto_utc_text(silence.ends_at.as_ref()),
        one_line(&silence.created_by),
        one_line(&silence.comment),
    ]
}

/// The silences as a table: ID, STATE, MATCHERS, STARTS, ENDS, CREATED BY,
/// COMMENT.
fn silence_table(silences: &[pb::Silence]) -> String {
    let rows: Vec<Vec<String>> = silences.iter().map(silence_row).collect();
    table(
        &[
            "ID",
            "STATE",
            "MATCHERS",
            "STARTS",
            "ENDS",
            "CREATED BY",
            "COMMENT",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::fake::matcher;
    use crate::time::testing::{at, time};
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: SilencesCommand,
    }

    fn parse(args: &[&str]) -> Result<SilencesCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("silences").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn add_args(args: &[&str]) -> AddArgs {
        match parse(&[&["add"], args].concat()).unwrap() {
            SilencesCommand::Add(args) => args,
            other => panic!("not an add: {other:?}"),
        }
    }

    #[test]
    fn durations() {
        let hours = |h| SignedDuration::from_hours(h);
        assert_eq!(parse_duration("2h"), Ok(hours(2)));
        assert_eq!(parse_duration("30m"), Ok(SignedDuration::from_mins(30)));
        assert_eq!(parse_duration("1h30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("1d"), Ok(hours(24)));
        assert_eq!(parse_duration("1w"), Ok(hours(168)));
        assert_eq!(parse_duration("2 hours"), Ok(hours(2)));
        assert_eq!(parse_duration("PT2H"), Ok(hours(2)));
        for bad in ["", "2", "soon", "1mo", "1y", "1h-"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("is not a duration"), "{bad:?}: {err}");
        }
        for bad in ["0s", "-1h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("must be positive"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_duration_counts_from_now_and_the_start_is_left_to_the_server() {
        let now = at("2026-11-21T12:00:00Z");
        let args = add_args(&[
            "ToolFailing",
            r#"tool=~"fi.*""#,
            "--comment",
            " INC-42 ",
            "--duration",
            "2h",
        ]);
        assert_eq!(
            create_request(&args, now, Some("alice".to_owned())),
            Ok(pb::CreateSilenceRequest {
                silence: Some(pb::Silence {
                    matchers: vec![
                        matcher("alertname", pb::MatchType::Equal, "ToolFailing"),
                        matcher("tool", pb::MatchType::Regex, "fi.*"),
                    ],
                    starts_at: None,
                    ends_at: time("2026-11-21T14:00:00Z"),
                    created_by: "alice".to_owned(),
                    comment: "INC-42".to_owned(),
                    ..pb::Silence::default()
                }),
            })
        );
    }

    #[test]
    fn a_duration_counts_from_the_start() {
        let now = at("2026-11-21T12:00:00Z");
        let args = add_args(&[
            "tool=files",
            "--comment",
            "maintenance",
            "--start",
            "2026-11-22T08:00:00+01:00",
            "--duration",
            "1d",
            "--author",
            "bob@example.com",
        ]);
        let silence = create_request(&args, now, Some("alice".to_owned()))
            .unwrap()
            .silence
            .unwrap();
        assert_eq!(silence.starts_at, time("2026-11-22T07:00:00Z"));
        assert_eq!(silence.ends_at, time("2026-11-23T07:00:00Z"));
        assert_eq!(silence.created_by, "bob@example.com");
    }

    #[test]
    fn an_end_time_and_the_defaults() {
        let now = at("2026-11-21T12:00:00Z");
        let args = add_args(&[
            "tool=files",
            "--comment",
            "c",
            "--end",
            "2026-11-21T18:30:00Z",
        ]);
        let silence = create_request(&args, now, None).unwrap().silence.unwrap();
        assert_eq!(silence.starts_at, None);
        assert_eq!(silence.ends_at, time("2026-11-21T18:30:00Z"));
        // No --author, no $USER.
        assert_eq!(silence.created_by, "agentmesh-cli");
        // Neither --duration nor --end: one hour, as amtool.
        let args = add_args(&["tool=files", "--comment", "c"]);
        let silence = create_request(&args, now, Some(String::new()))
            .unwrap()
            .silence
            .unwrap();
        assert_eq!(silence.ends_at, time("2026-11-21T13:00:00Z"));
        assert_eq!(silence.created_by, "agentmesh-cli");
    }

    #[test]
    fn bad_silences_are_refused_before_sending() {
        let now = at("2026-11-21T12:00:00Z");
        // clap: matchers and --comment are required; --duration and --end
        // exclude each other.
        assert!(parse(&["add", "--comment", "c"]).is_err());
        assert!(parse(&["add", "tool=files"]).is_err());
        let err = parse(&[
            "add",
            "tool=files",
            "--comment",
            "c",
            "--duration",
            "1h",
            "--end",
            "2026-11-21T18:00:00Z",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--end"), "{err}");
        let err = parse(&["add", "x=y", "--comment", "c", "--end", "tomorrow"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RFC 3339"), "{err}");
        assert!(parse(&["add", "x=y", "--comment", "c", "--duration", "0m"]).is_err());

        let refused = |args: &[&str]| create_request(&add_args(args), now, None).unwrap_err();
        let err = refused(&["x=y", "--comment", "  "]);
        assert!(err.contains("--comment"), "{err}");
        let err = refused(&["x=y", "oops", "--comment", "c"]);
        assert!(err.contains("`oops` is not a matcher"), "{err}");
        let err = refused(&["x=y", "--comment", "c", "--end", "2026-11-21T11:00:00Z"]);
        assert!(err.contains("must be after now"), "{err}");
        let err = refused(&[
            "x=y",
            "--comment",
            "c",
            "--start",
            "2026-11-21T13:00:00Z",
            "--end",
            "2026-11-21T13:00:00Z",
        ]);
        assert!(err.contains("must be after --start"), "{err}");
    }

    #[test]
    fn list_and_expire_flags() {
        let SilencesCommand::List(args) =
            parse(&["list", "--state", "active,pending", "-o", "json"]).unwrap()
        else {
            panic!("not a list");
        };
        assert_eq!(
            args.states,
            vec![SilenceStateArg::Active, SilenceStateArg::Pending]
        );
        assert_eq!(
            args.states.iter().map(|s| s.proto()).collect::<Vec<_>>(),
            vec![pb::SilenceState::Active, pb::SilenceState::Pending]
        );
        assert_eq!(args.output, Output::Json);
        assert!(parse(&["list", "--state", "gone"]).is_err());
        let SilencesCommand::Expire(args) = parse(&["expire", "s-1", "s-2"]).unwrap() else {
            panic!("not an expire");
        };
        assert_eq!(args.ids, ["s-1", "s-2"]);
        assert!(parse(&["expire"]).is_err());
    }

    #[test]
    fn a_silence_table() {
        let silence = pb::Silence {
            id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".to_owned(),
            matchers: vec![
                matcher("alertname", pb::MatchType::Equal, "ToolFailing"),
                matcher("tool", pb::MatchType::Regex, "fi.*"),
            ],
            starts_at: time("2026-11-21T12:00:00Z"),
            ends_at: time("2026-11-21T14:00:00Z"),
            created_by: "alice".to_owned(),
            comment: "INC-42:\nflaky upstream".to_owned(),
            state: pb::SilenceState::Active.into(),
            updated_at: time("2026-11-21T12:00:00Z"),
        };
        let expired = pb::Silence {
            id: "s-2".to_owned(),
            matchers: vec![matcher("severity", pb::MatchType::NotEqual, "info")],
            state: pb::SilenceState::Expired.into(),
            ..pb::Silence::default()
        };
        let expected = "\
ID                                    STATE    MATCHERS                              STARTS                ENDS                  CREATED BY  COMMENT
0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b  ACTIVE   alertname=\"ToolFailing\" tool=~\"fi.*\"  2026-11-21T12:00:00Z  2026-11-21T14:00:00Z  alice       INC-42: flaky upstream
s-2                                   EXPIRED  severity!=\"info\"                      -                     -
";
        assert_eq!(silence_table(&[silence.clone(), expired]), expected);
        assert_eq!(
            expired_line("s-1", &silence),
            "expired s-1 (ended 2026-11-21T14:00:00Z)"
        );
        assert_eq!(expired_line("s-1", &pb::Silence::default()), "expired s-1");
    }

    #[test]
    fn a_silence_as_json() {
        let json = ProtoJson::new("agentmesh.alerting.v1.Silence").unwrap();
        let silence = pb::Silence {
            id: "s-1".to_owned(),
            matchers: vec![matcher("tool", pb::MatchType::Regex, "fi.*")],
            state: pb::SilenceState::Active.into(),
            ..pb::Silence::default()
        };
        let mut out = Vec::new();
        json.write_line(&mut out, &silence).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"id\":\"s-1\",\"matchers\":[{\"name\":\"tool\",\"value\":\"fi.*\",\
             \"type\":\"MATCH_TYPE_REGEX\"}],\"state\":\"SILENCE_STATE_ACTIVE\"}\n"
        );
    }

    // --- against a fake service ---

    #[tokio::test]
    async fn add_prints_the_new_id_or_the_silence() {
        let (fake, target) =
            crate::alerting::fake::serve(crate::alerting::fake::Fake::default()).await;
        let mut client = target.connect().await.unwrap();
        let request = create_request(
            &add_args(&["ToolFailing", "--comment", "c", "--author", "al"]),
            at("2026-11-21T12:00:00Z"),
            None,
        )
        .unwrap();
        let mut out = Vec::new();
        let code = add_to(&mut client, request.clone(), Output::Table, &mut out)
            .await
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(String::from_utf8(out).unwrap(), "s-new\n");
        assert_eq!(fake.created.lock().unwrap()[0], request);

        let mut out = Vec::new();
        add_to(&mut client, request, Output::Json, &mut out)
            .await
            .unwrap();
        let json = String::from_utf8(out).unwrap();
        assert!(
            json.starts_with("{\"id\":\"s-new\",\"matchers\":[{\"name\":\"alertname\""),
            "{json}"
        );
        assert!(json.contains("\"created_by\":\"al\""), "{json}");
    }

    #[tokio::test]
    async fn list_follows_every_page() {
        let silence = |id: &str| pb::Silence {
            id: id.to_owned(),
            state: pb::SilenceState::Active.into(),
            ..pb::Silence::default()
        };
        let (fake, target) = crate::alerting::fake::serve(crate::alerting::fake::Fake {
            silence_pages: vec![vec![silence("s-1"), silence("s-2")], vec![silence("s-3")]],
            ..crate::alerting::fake::Fake::default()
        })
        .await;
        let mut client = target.connect().await.unwrap();
        let request = pb::ListSilencesRequest {
            states: vec![pb::SilenceState::Active.into()],
            ..pb::ListSilencesRequest::default()
        };
        let mut out = Vec::new();
        let code = list_to(&mut client, request, Output::Table, &mut out)
            .await
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let text = String::from_utf8(out).unwrap();
        let ids: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(ids, ["s-1", "s-2", "s-3"]);
        let asked = fake.silence_requests.lock().unwrap();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1].page_token, "1");
        assert!(
            asked
                .iter()
                .all(|r| r.page_size == 1000 && r.states == [i32::from(pb::SilenceState::Active)])
        );
    }

    #[tokio::test]
    async fn expire_tries_every_id_and_fails_if_one_failed() {
        let (fake, target) =
            crate::alerting::fake::serve(crate::alerting::fake::Fake::default()).await;
        let mut client = target.connect().await.unwrap();
        let ids = ["s-1", "missing", "s-2"].map(str::to_owned);
        let mut out = Vec::new();
        let code = expire_to(&mut client, &ids, &mut out).await.unwrap();
        assert_eq!(code, ExitCode::FAILURE);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "expired s-1 (ended 2026-11-21T12:00:00Z)\nexpired s-2 (ended 2026-11-21T12:00:00Z)\n"
        );
        assert_eq!(*fake.deleted.lock().unwrap(), ids);

        let mut out = Vec::new();
        let code = expire_to(&mut client, &ids[..1], &mut out).await.unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }
}
