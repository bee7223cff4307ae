//! The tool runner's guards through its gRPC API: a hanging tool is cut at
//! its timeout and held to its concurrency limit and queue while the other
//! tools keep working; a failing tool's circuit opens; only idempotent tools
//! are retried. The service runs in-process on an ephemeral loopback port;
//! its state is read from its `/metrics` on the admin port. Waits are
//! polled, never slept, and no assertion depends on how fast the machine is.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
#![expect(clippy::panic, reason = "a test fails by panicking")]

mod common;
#[path = "common/served.rs"]
mod served;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_proto::tools::v1::{
    ExecuteToolRequest, ExecuteToolResponse, ExecuteToolStreamRequest, ListToolsRequest,
    ToolErrorKind, ToolResult, execute_tool_stream_response::Event,
};
use agentmesh_resilience::CircuitConfig;
use agentmesh_tool_runner::{AuditConfig, CommandToolConfig, Config};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use agentmesh_testkit::within;
use common::{STEP, command, kind, pid_in, process_ends, script, test_server};
use served::Served;

// === harness ===

/// A tool runner serving on loopback, with its workspaces and scripts in a
/// temporary directory.
struct Running {
    served: Served,
}

impl Running {
    /// Starts the service with the configuration `configure` makes, given
    /// the temporary directory (where scripts go).
    async fn start(configure: impl FnOnce(&Path, &mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            server: test_server(),
            workspaces_dir: dir.path().join("workspaces"),
            audit: AuditConfig::disabled(),
            ..Config::default()
        };
        configure(dir.path(), &mut config);
        Self {
            served: Served::start(dir, config).await,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.served.dir.path().join(name)
    }

    fn workspace(&self, run_id: &str) -> PathBuf {
        // Calls without a tenant: its workspaces are under `_none`.
        self.served.dir.path().join("workspaces/_none").join(run_id)
    }

    /// Runs `tool` through ExecuteTool, in workspace `run_id`, with an
    /// optional request timeout.
    fn execute(
        &self,
        tool: &str,
        arguments: Value,
        run_id: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<ExecuteToolResponse, Status>> + Send + 'static {
        let mut client = self.served.client.clone();
        let request = ExecuteToolRequest {
            tool: tool.into(),
            arguments_json: arguments.to_string(),
            call_id: format!("{tool}-{run_id}"),
            timeout: timeout.map(|timeout| prost_types::Duration::try_from(timeout).unwrap()),
            run_id: run_id.into(),
        };
        async move {
            client
                .execute_tool(request)
                .await
                .map(tonic::Response::into_inner)
        }
    }

    /// Runs `tool` through ExecuteToolStream: the events before the result,
    /// and the result; or the status that refused the call.
    async fn stream(
        &self,
        tool: &str,
        run_id: &str,
        timeout: Option<Duration>,
    ) -> Result<(Vec<Event>, ToolResult), Status> {
        let mut client = self.served.client.clone();
        let mut stream = within(
            "ExecuteToolStream",
            STEP,
            client.execute_tool_stream(ExecuteToolStreamRequest {
                tool: tool.into(),
                arguments_json: "{}".into(),
                timeout: timeout.map(|timeout| prost_types::Duration::try_from(timeout).unwrap()),
                run_id: run_id.into(),
                ..ExecuteToolStreamRequest::default()
            }),
        )
        .await?
        .into_inner();
        let mut events = Vec::new();
        while let Some(message) = within("the next stream message", STEP, stream.message()).await? {
            match message.event.unwrap() {
                Event::Result(result) => {
                    assert!(
                        within("the next stream message", STEP, stream.message())
                            .await?
                            .is_none()
                    );
                    return Ok((events, result));
                }
                event => events.push(event),
            }
        }
        panic!("the stream ended without a result: {events:?}");
    }

    /// Asserts that `calculator` answers, whatever the other tools do.
    async fn calculator_works(&self) {
        let response = within(
            "the tool call",
            STEP,
            self.execute("calculator", json!({"expression": "6*7"}), "", None),
        )
        .await
        .unwrap();
        assert!(!response.is_error, "{}", response.error_message);
        assert_eq!(response.output_json, r#"{"result":42}"#);
    }

    /// The service's Prometheus text.
    async fn metrics(&self) -> String {
        self.served.metrics().await
    }

    /// Waits until the metrics hold `sample` (see [`holds`]).
    async fn metrics_show(&self, sample: &str) {
        within(&format!("the metrics to show {sample}"), STEP, async {
            loop {
                if holds(&self.metrics().await, sample) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    async fn stop(self) {
        self.served.stop().await;
    }
}

/// Whether the Prometheus text `metrics` has the sample `name{labels} value`:
/// the same name and value, and at least those labels (the registry adds
/// `service` to every series).
fn holds(metrics: &str, sample: &str) -> bool {
    let parse = |line: &str| -> Option<(String, Vec<String>, String)> {
        let (series, value) = line.rsplit_once(' ')?;
        let (name, labels) = series.split_once('{')?;
        let labels = labels
            .strip_suffix('}')?
            .split(',')
            .map(str::to_owned)
            .collect();
        Some((name.to_owned(), labels, value.to_owned()))
    };
    let (name, labels, value) = parse(sample).expect("a sample with labels");
    metrics
        .lines()
        .filter_map(parse)
        .any(|(shown, shown_labels, shown_value)| {
            shown == name
                && shown_value == value
                && labels.iter().all(|label| shown_labels.contains(label))
        })
}

/// Lines in a file a script appends to (0 when it does not exist).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

// === timeouts and the bulkhead ===

#[tokio::test]
async fn a_hanging_tool_is_cut_at_its_timeout_and_held_to_its_limits_while_others_work() {
    let service = Running::start(|dir, config| {
        // Records its pid in the run's workspace, then hangs.
        let hang = script(dir, "hang.sh", "echo $$ > main.pid\nexec sleep 30\n");
        config.commands.insert(
            "hang".into(),
            CommandToolConfig {
                // Long enough that a call holding the place stays there until
                // the test lets it go; short calls ask for 300ms.
                timeout: Some(Duration::from_secs(20)),
                max_concurrency: 1,
                max_queued: 1,
                ..command(&["sh", &hang])
            },
        );
    })
    .await;
    let short = Some(Duration::from_millis(300));

    // Cut at its timeout, through either RPC, and killed.
    let response = within(
        "the tool call",
        STEP,
        service.execute("hang", json!({}), "cut", short),
    )
    .await
    .unwrap();
    assert_eq!(kind(&response), ToolErrorKind::Timeout);
    assert_eq!(response.error_message, "timed out after 300ms");
    assert_eq!(response.attempts, 1);
    let ran = Duration::try_from(response.duration.unwrap()).unwrap();
    assert!(ran < Duration::from_secs(10), "{ran:?}");
    process_ends(pid_in(service.workspace("cut").join("main.pid")).await).await;

    let (_, result) = service.stream("hang", "cut-stream", short).await.unwrap();
    assert_eq!(result.error_kind(), ToolErrorKind::Timeout);
    process_ends(pid_in(service.workspace("cut-stream").join("main.pid")).await).await;

    // ListTools reports the limit.
    let mut client = service.served.client.clone();
    let listed = within(
        "ListTools",
        STEP,
        client.list_tools(ListToolsRequest {
            names: vec!["hang".into(), "calculator".into()],
            ..ListToolsRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let limits: Vec<(&str, i32)> = listed
        .tools
        .iter()
        .map(|tool| (tool.name.as_str(), tool.max_concurrency))
        .collect();
    assert_eq!(limits, [("calculator", 16), ("hang", 1)]);

    // One call holds the only place.
    let holder = tokio::spawn(service.execute("hang", json!({}), "holder", None));
    service
        .metrics_show(r#"agentmesh_bulkhead_in_use{bulkhead="tool:hang"} 1"#)
        .await;
    let holder_pid = pid_in(service.workspace("holder").join("main.pid")).await;

    // A call that cannot get a place within its timeout never runs.
    let status = within(
        "the tool call",
        STEP,
        service.execute("hang", json!({}), "queued-out", short),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("waited for a place"),
        "{}",
        status.message()
    );
    assert!(!service.workspace("queued-out").join("main.pid").exists());

    // A second call waits in the queue; a third finds it full.
    let waiter = tokio::spawn(service.execute("hang", json!({}), "waiter", None));
    service
        .metrics_show(r#"agentmesh_bulkhead_queue_depth{bulkhead="tool:hang"} 1"#)
        .await;
    let status = within(
        "the tool call",
        STEP,
        service.execute("hang", json!({}), "refused", None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("tool `hang`") && status.message().contains("1 call(s)"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
    let status = service.stream("hang", "refused", None).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(!service.workspace("refused").exists());

    // Meanwhile the other tools keep working, several at once.
    let calls: Vec<_> = (0..4)
        .map(|index| {
            tokio::spawn(service.execute(
                "calculator",
                json!({"expression": format!("{index}+1")}),
                "",
                None,
            ))
        })
        .collect();
    for (index, call) in calls.into_iter().enumerate() {
        let response = within("the tool call", STEP, call).await.unwrap().unwrap();
        assert_eq!(
            response.output_json,
            format!(r#"{{"result":{}}}"#, index + 1)
        );
    }
    service.calculator_works().await;
    let metrics = service.metrics().await;
    assert!(
        holds(
            &metrics,
            r#"agentmesh_rate_limited_total{resource="concurrency",scope="tool"} 2"#
        ),
        "{metrics}"
    );

    // The holder goes away: its program is killed and the waiter runs.
    holder.abort();
    process_ends(holder_pid).await;
    let waiter_pid = pid_in(service.workspace("waiter").join("main.pid")).await;
    service
        .metrics_show(r#"agentmesh_bulkhead_queue_depth{bulkhead="tool:hang"} 0"#)
        .await;
    waiter.abort();
    process_ends(waiter_pid).await;
    service
        .metrics_show(r#"agentmesh_bulkhead_in_use{bulkhead="tool:hang"} 0"#)
        .await;
    service.stop().await;
}

// === the circuit breaker ===

#[tokio::test]
async fn a_failing_tool_opens_its_circuit_and_is_refused_without_running() {
    let service = Running::start(|dir, config| {
        let runs = dir.join("broken.runs");
        let broken = script(
            dir,
            "broken.sh",
            "cat > /dev/null\necho run >> \"$RUNS\"\necho 'the backend is down' >&2\nexit 1\n",
        );
        config.circuit_breaker = CircuitConfig {
            consecutive_failures: 2,
            failure_ratio: 0.0,
            open_for: Duration::from_secs(60),
            ..CircuitConfig::default()
        };
        config.commands.insert(
            "broken".into(),
            CommandToolConfig {
                env: BTreeMap::from([("RUNS".into(), runs.to_str().unwrap().to_owned())]),
                ..command(&["sh", &broken])
            },
        );
        // A tool whose failures are the caller's: they never open a circuit.
        config.commands.insert(
            "strict".into(),
            CommandToolConfig {
                parameters_json: r#"{"type":"object","required":["x"]}"#.into(),
                ..command(&["true"])
            },
        );
    })
    .await;
    let runs = service.path("broken.runs");

    for _ in 0..2 {
        let response = within(
            "the tool call",
            STEP,
            service.execute("broken", json!({}), "", None),
        )
        .await
        .unwrap();
        assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    }
    assert_eq!(lines_in(&runs), 2);
    service
        .metrics_show(r#"agentmesh_circuit_state{target="tool:broken"} 1"#)
        .await;

    let status = within(
        "the tool call",
        STEP,
        service.execute("broken", json!({}), "", None),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("tool `broken`") && status.message().contains("probed again in"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(60),
        "{delay:?}"
    );
    let status = service.stream("broken", "", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Refused without running the program.
    assert_eq!(lines_in(&runs), 2);

    // Bad arguments are the caller's failures, not the tool's.
    for _ in 0..3 {
        let response = within(
            "the tool call",
            STEP,
            service.execute("strict", json!({}), "", None),
        )
        .await
        .unwrap();
        assert_eq!(kind(&response), ToolErrorKind::InvalidArguments);
    }
    let metrics = service.metrics().await;
    for line in [
        r#"agentmesh_circuit_state{target="tool:strict"} 0"#,
        r#"agentmesh_circuit_state{target="tool:calculator"} 0"#,
        r#"agentmesh_circuit_transitions_total{target="tool:broken",to="OPEN"} 1"#,
    ] {
        assert!(holds(&metrics, line), "{line} in\n{metrics}");
    }
    service.calculator_works().await;
    service.stop().await;
}

#[tokio::test]
async fn an_open_circuit_is_probed_and_closes_when_the_tool_recovers() {
    let service = Running::start(|dir, config| {
        // Fails while the marker file exists.
        let marker = dir.join("down");
        std::fs::write(&marker, "").unwrap();
        let flapping = script(
            dir,
            "flapping.sh",
            "cat > /dev/null\nif [ -e \"$MARKER\" ]; then exit 1; fi\necho '{\"up\": true}'\n",
        );
        config.circuit_breaker = CircuitConfig {
            consecutive_failures: 1,
            failure_ratio: 0.0,
            open_for: Duration::from_millis(200),
            ..CircuitConfig::default()
        };
        config.commands.insert(
            "flapping".into(),
            CommandToolConfig {
                env: BTreeMap::from([("MARKER".into(), marker.to_str().unwrap().to_owned())]),
                ..command(&["sh", &flapping])
            },
        );
    })
    .await;
    let response = within(
        "the tool call",
        STEP,
        service.execute("flapping", json!({}), "", None),
    )
    .await
    .unwrap();
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    service
        .metrics_show(r#"agentmesh_circuit_state{target="tool:flapping"} 1"#)
        .await;

    std::fs::remove_file(service.path("down")).unwrap();
    // Refused until the cool-down ends; then a probe runs, succeeds and
    // closes the circuit.
    let response = within("the circuit to close", STEP, async {
        loop {
            match service.execute("flapping", json!({}), "", None).await {
                Ok(response) => return response,
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!response.is_error, "{}", response.error_message);
    service
        .metrics_show(r#"agentmesh_circuit_state{target="tool:flapping"} 0"#)
        .await;
    service.stop().await;
}

// === retries ===

#[tokio::test]
async fn only_idempotent_tools_are_retried() {
    let service = Running::start(|dir, config| {
        // Fails on its first run, succeeds on the next ones; counts runs in
        // the file named by $COUNTER.
        let flaky = script(
            dir,
            "flaky.sh",
            "cat > /dev/null\n\
             n=$(cat \"$COUNTER\" 2>/dev/null || echo 0)\n\
             n=$((n + 1))\n\
             echo $n > \"$COUNTER\"\n\
             if [ $n -eq 1 ]; then echo 'first run fails' >&2; exit 1; fi\n\
             echo \"{\\\"runs\\\": $n}\"\n",
        );
        for (name, idempotent) in [("flaky_idempotent", true), ("flaky_once", false)] {
            let counter = dir.join(format!("{name}.count"));
            config.commands.insert(
                name.into(),
                CommandToolConfig {
                    idempotent,
                    env: BTreeMap::from([("COUNTER".into(), counter.to_str().unwrap().to_owned())]),
                    ..command(&["sh", &flaky])
                },
            );
        }
    })
    .await;

    let response = within(
        "the tool call",
        STEP,
        service.execute("flaky_idempotent", json!({}), "", None),
    )
    .await
    .unwrap();
    assert!(!response.is_error, "{}", response.error_message);
    assert_eq!(response.attempts, 2);
    assert_eq!(response.output_json, r#"{"runs":2}"#);

    let response = within(
        "the tool call",
        STEP,
        service.execute("flaky_once", json!({}), "", None),
    )
    .await
    .unwrap();
    assert!(response.is_error);
    assert_eq!(kind(&response), ToolErrorKind::ExecutionFailed);
    assert_eq!(response.attempts, 1);
    assert!(
        response.error_message.contains("first run fails"),
        "{}",
        response.error_message
    );
    // Called again by its caller, it succeeds: the failure was transient,
    // but only the caller may decide to repeat a non-idempotent call.
    assert_eq!(
        std::fs::read_to_string(service.path("flaky_once.count"))
            .unwrap()
            .trim(),
        "1"
    );

    // Through the stream, the retry is announced as progress.
    std::fs::remove_file(service.path("flaky_idempotent.count")).unwrap();
    let (events, result) = service.stream("flaky_idempotent", "", None).await.unwrap();
    assert!(!result.is_error, "{}", result.error_message);
    assert_eq!(result.attempts, 2);
    assert!(
        events.iter().any(|event| matches!(
            event,
            Event::Progress(progress) if progress.message.contains("retrying, attempt 2 of 2")
        )),
        "{events:?}"
    );

    service
        .metrics_show(
            r#"agentmesh_retries_total{reason="execution_failed",target="tool:flaky_idempotent"} 2"#,
        )
        .await;
    let metrics = service.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|line| line.starts_with("agentmesh_retries_total") && line.contains("flaky_once")),
        "{metrics}"
    );
    service.stop().await;
}
