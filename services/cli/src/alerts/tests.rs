//! The alerts commands from flags to output: the flags become the requests,
//! and `list` and `watch` run against a fake alerting service.

use std::process::ExitCode;
use std::time::Duration;

use agentmesh_proto::alerting::v1 as pb;
use clap::Parser as _;
use jiff::Timestamp;

use super::list::list_to;
use super::watch::watch_to;
use super::*;
use crate::alerting::fake::{self, labels, matcher};
use crate::time::testing::{at, time};

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
