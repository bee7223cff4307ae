//! The Prometheus metrics of the real binaries: `agentmesh up` runs the mesh,
//! one agent run gives every service traffic, and each admin port's
//! `/metrics` must pass `promtool check metrics` (Prometheus' own linter)
//! and carry the metrics the dashboards and alert rules use.
//!
//! The names every service exports after that run are also kept in
//! `deploy/grafana/exported-metrics.txt`, which the dashboards' test
//! (`tests/python/test_dashboards.py`) checks every panel against. Set
//! `AGENTMESH_UPDATE_METRICS=1` to rewrite that file from what the mesh
//! exports; otherwise the test fails when a listed name is no longer
//! exported (names exported and not listed are fine: the list is what the
//! dashboards may use).

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use agentmesh_tests::{SERVICES, binary, channel, http_get, wait_serving, within};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The checked-in list of exported metric names, relative to the repository.
const EXPORTED_LIST: &str = "deploy/grafana/exported-metrics.txt";

/// The metrics each service must export once it has served one run.
fn expected(service: &str) -> &'static [&'static str] {
    const GRPC_SERVER: &[&str] = &[
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
        "grpc_server_in_flight_requests",
    ];
    match service {
        "orchestrator" => &[
            "grpc_client_started_total",
            "grpc_client_handled_total",
            "grpc_client_handling_seconds",
            "grpc_client_msg_received_total",
            "grpc_client_msg_sent_total",
            "agentmesh_runs_started_total",
            "agentmesh_runs_finished_total",
            "agentmesh_runs_active",
            "agentmesh_run_duration_seconds",
            "agentmesh_run_steps_total",
            "agentmesh_run_step_duration_seconds",
            "agentmesh_run_queue_depth",
            "agentmesh_audit_queue_depth",
            "agentmesh_audit_spool_bytes",
        ],
        "llm-gateway" => &[
            "gen_ai_client_token_usage",
            "gen_ai_client_operation_duration_seconds",
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai_server_time_per_output_token_seconds",
            "agentmesh_llm_cost_usd_total",
            "grpc_client_handled_total",
        ],
        "tool-runner" => &[
            "agentmesh_tool_executions_total",
            "agentmesh_tool_execution_duration_seconds",
            "agentmesh_tool_executions_in_flight",
            "grpc_client_handled_total",
        ],
        "audit" => &[
            "agentmesh_audit_events_ingested_total",
            "agentmesh_audit_events_duplicate_total",
            "agentmesh_audit_events_invalid_total",
            "agentmesh_audit_commit_duration_seconds",
            "agentmesh_audit_subscribers",
        ],
        "alerting" => &[
            "agentmesh_alerting_alerts",
            "agentmesh_alerting_audit_events_total",
            "grpc_client_started_total",
            "grpc_client_handled_total",
        ],
        _ => GRPC_SERVER,
    }
}

/// The names of the metric families in a text exposition (histograms by
/// their base name).
fn family_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// A sample's value: the line `name{…labels…} value` whose label part holds
/// every one of `labels` (`key="value"` each).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        if !labels.iter().all(|label| rest.contains(label)) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
}

/// `promtool check metrics` over `text`; returns (success, what it printed).
async fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let output = within(
        "promtool check metrics",
        Duration::from_secs(30),
        child.wait_with_output(),
    )
    .await
    .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test]
async fn every_service_exports_lint_clean_metrics_after_a_run() {
    let Some(promtool) = promtool() else {
        eprintln!(
            "SKIPPED: no promtool on PATH (install Debian's prometheus package: apt-get install -y --no-install-recommends prometheus; .ci/run does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = agentmesh_tests::free_base_port(21000, 41, 8500);
    let base_text = base.to_string();
    let mut up = Command::new(binary("agentmesh"))
        .args([
            "up",
            "--no-edge",
            "--base-port",
            &base_text,
            "--data-dir",
            "state",
        ])
        .current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for (index, (_, grpc_name)) in SERVICES.iter().enumerate() {
        let port = base + u16::try_from(index).unwrap();
        wait_serving(channel(([127, 0, 0, 1], port).into()), grpc_name).await;
    }

    // One run: the orchestrator calls the gateway (a stream) and the tool
    // runner (the calculator); every service audits; alerting follows.
    let orchestrator = format!("http://127.0.0.1:{base}");
    let run = within(
        "agentmesh run",
        Duration::from_secs(60),
        Command::new(binary("agentmesh"))
            .args([
                "run",
                "--orchestrator",
                &orchestrator,
                "What is 17 * 23 + sqrt(144)?",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("403"));

    let mut exported = BTreeSet::new();
    let mut texts = Vec::new();
    for (index, (name, _)) in SERVICES.iter().enumerate() {
        let admin = ([127, 0, 0, 1], base + 1000 + u16::try_from(index).unwrap()).into();
        let wanted: Vec<&str> = expected(name)
            .iter()
            .chain(expected("").iter())
            .copied()
            .collect();
        // The audit producers send in batches: wait until every metric has
        // shown up (each service's CONFIG_LOADED event makes a Record call).
        let text = agentmesh_testkit::eventually(
            &format!("{name} to export {wanted:?}"),
            Duration::from_secs(30),
            || async {
                let (status, text) = http_get(admin, "/metrics").await;
                let names = family_names(&text);
                (status == 200 && wanted.iter().all(|wanted| names.contains(*wanted)))
                    .then_some(text)
            },
        )
        .await;
        let (clean, problems) = promtool_check(&promtool, &text).await;
        assert!(
            clean && problems.trim().is_empty(),
            "{name}: promtool check metrics found problems:\n{problems}"
        );
        exported.extend(family_names(&text));
        texts.push((*name, text));
    }

    // The run shows in the values, not only in the names.
    let value = |service: &str, metric: &str, labels: &[&str]| {
        let text = &texts.iter().find(|(name, _)| *name == service).unwrap().1;
        sample(text, metric, labels)
            .unwrap_or_else(|| panic!("{service}: no {metric} {labels:?} in\n{text}"))
    };
    assert_eq!(
        value(
            "orchestrator",
            "agentmesh_runs_finished_total",
            &[r#"agent="default""#, r#"state="succeeded""#]
        ),
        1.0
    );
    assert_eq!(
        value(
            "orchestrator",
            "agentmesh_runs_started_total",
            &[r#"agent="default""#]
        ),
        1.0
    );
    assert_eq!(
        value(
            "orchestrator",
            "agentmesh_run_steps_total",
            &[r#"agent="default""#]
        ),
        2.0
    );
    assert_eq!(
        value(
            "orchestrator",
            "agentmesh_runs_active",
            &[r#"agent="default""#]
        ),
        0.0
    );
    assert_eq!(
        value(
            "orchestrator",
            "grpc_client_handled_total",
            &[r#"grpc_method="GenerateStream""#, r#"grpc_code="OK""#]
        ),
        2.0
    );
    assert!(
        value(
            "orchestrator",
            "grpc_client_msg_received_total",
            &[r#"grpc_method="GenerateStream""#]
        ) >= 2.0
    );
    assert_eq!(
        value(
            "llm-gateway",
            "gen_ai_client_token_usage_count",
            &[r#"gen_ai_token_type="output""#, r#"route="default""#]
        ),
        2.0
    );
    assert_eq!(
        value(
            "llm-gateway",
            "gen_ai_client_operation_duration_seconds_count",
            &[r#"error_type="""#, r#"route="default""#]
        ),
        2.0
    );
    assert!(
        value(
            "llm-gateway",
            "grpc_server_msg_sent_total",
            &[r#"grpc_method="GenerateStream""#]
        ) >= 2.0
    );
    assert_eq!(
        value(
            "tool-runner",
            "agentmesh_tool_executions_total",
            &[r#"tool="calculator""#, r#"outcome="ok""#]
        ),
        1.0
    );
    assert!(
        value(
            "audit",
            "agentmesh_audit_events_ingested_total",
            &[r#"event_type="run_started""#]
        ) >= 1.0
    );
    // The alerting service follows the audit stream.
    assert!(value("audit", "agentmesh_audit_subscribers", &[]) >= 1.0);

    // The list the dashboards are checked against.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let list_path = root.join(EXPORTED_LIST);
    let listed_text = std::fs::read_to_string(&list_path).unwrap_or_default();
    if std::env::var_os("AGENTMESH_UPDATE_METRICS").is_some() {
        let mut file = String::from(
            "# Metric families the five services export once they have served one run\n\
             # (written by tests/metrics.rs with AGENTMESH_UPDATE_METRICS=1; the dashboards'\n\
             # test checks every PromQL expression against it).\n",
        );
        for name in &exported {
            file.push_str(name);
            file.push('\n');
        }
        std::fs::write(&list_path, file).unwrap();
    } else {
        let missing: Vec<&str> = listed_text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter(|name| !exported.contains(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "{EXPORTED_LIST} lists metrics nobody exports any more: {missing:?} \
             (rerun with AGENTMESH_UPDATE_METRICS=1 to rewrite it)"
        );
    }

    Command::new("kill")
        .args(["-INT", &up.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    let exit = within(
        "agentmesh up to stop on Ctrl-C",
        Duration::from_secs(30),
        up.wait(),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{exit}");
}
