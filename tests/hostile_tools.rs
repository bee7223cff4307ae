//! Hostile command tools and careless writers against the real tool runner
//! binary (gRPC over loopback): a sandboxed tool cannot read outside its
//! workspace, reach the network (TCP or UDP), fork-bomb the host or write
//! past its file size limit, while a tool that declares network can connect;
//! workspace quotas hold per run and per tenant; the sweeper removes an
//! expired workspace.
//!
//! The isolation asserted is what this kernel and CI give (Landlock ABI 6+,
//! the service as root so it has a network namespace and drops to an
//! unprivileged user); the test first checks the service reports exactly
//! that, so a host that gives less fails loudly rather than passing weakly.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use agentmesh_proto::tools::v1::{ExecuteToolRequest, ExecuteToolResponse};
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving, within};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

/// A tool that does what its arguments say and reports whether the system
/// let it: `{"op": "read" | "connect" | "udp" | "write", ...}`.
const PROBE: &str = r#"
import json, socket, sys
args = json.load(sys.stdin)
op = args["op"]
try:
    if op == "read":
        with open(args["path"], "rb") as f:
            f.read(16)
    elif op == "connect":
        s = socket.create_connection(("127.0.0.1", args["port"]), timeout=5)
        s.close()
    elif op == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", args["port"]))
    elif op == "write":
        with open(args["path"], "wb") as f:
            f.write(b"x" * args["bytes"])
    print(json.dumps({"ok": True}))
except OSError as err:
    print(json.dumps({"ok": False, "error": str(err)}))
"#;

/// The tool runner binary with `config` (TOML) in a fresh directory.
async fn start(
    config: &str,
) -> (
    tempfile::TempDir,
    RunningBinary,
    ToolRunnerServiceClient<Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged user must be able to reach its workspace below.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let path = dir.path().join("agentmesh.toml");
    std::fs::write(&path, config).unwrap();
    let service = RunningBinary::start(
        "agentmesh-tool-runner",
        &["--config", path.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    wait_serving(channel(service.grpc), "").await;
    let client = ToolRunnerServiceClient::new(channel(service.grpc));
    (dir, service, client)
}

/// Runs `tool` for `tenant` in `run_id`.
async fn call(
    client: &mut ToolRunnerServiceClient<Channel>,
    tenant: &str,
    run_id: &str,
    tool: &str,
    arguments: &Value,
) -> Result<ExecuteToolResponse, tonic::Status> {
    let mut request = tonic::Request::new(ExecuteToolRequest {
        tool: tool.into(),
        arguments_json: arguments.to_string(),
        run_id: run_id.into(),
        ..ExecuteToolRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    within(
        "ExecuteTool",
        Duration::from_secs(60),
        client.execute_tool(request),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The probe's report: whether the operation was allowed, and the error.
async fn probe(
    client: &mut ToolRunnerServiceClient<Channel>,
    tool: &str,
    arguments: Value,
) -> (bool, String) {
    let response = call(client, "acme", "probe-run", tool, &arguments)
        .await
        .unwrap();
    assert!(!response.is_error, "{tool}: {}", response.error_message);
    let output: Value = serde_json::from_str(&response.output_json).unwrap();
    (
        output["ok"].as_bool().unwrap(),
        output["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn sandbox_config() -> String {
    format!(
        r#"
[tool_runner]
workspaces_dir = "workspaces"
[tool_runner.sandbox.limits]
file_size_bytes = 1048576
[tool_runner.commands.probe]
description = "does what it is told"
command = ["python3", "-c", {probe}]
sandbox = "required"
[tool_runner.commands.probe_net]
description = "does what it is told, with network"
command = ["python3", "-c", {probe}]
sandbox = "required"
network = true
[tool_runner.commands.bomb]
description = "a fork bomb"
command = ["bash", "-c", ":(){{ :|:& }};:"]
sandbox = "required"
timeout = "5s"
limits = {{ processes = 64, cpu_seconds = 5 }}
"#,
        probe = toml::Value::String(PROBE.to_owned())
    )
}

#[tokio::test]
async fn a_sandboxed_tool_stays_in_its_workspace_off_the_network_and_within_its_limits() {
    let (dir, service, mut client) = start(&sandbox_config()).await;
    // The host gives everything (else `required` would have stopped the start).
    let (status, metrics) = http_get(service.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"agentmesh_tool_sandbox_info{filesystem="landlock",network="namespace",user="unprivileged",service="tool-runner"} 1"#
        ),
        "{metrics}"
    );

    // A world-readable file outside the workspace: only Landlock stops it.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = open_dir.join("secret.txt");
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    for path in [
        secret.to_str().unwrap(),
        "/etc/shadow",
        "/root",
        "/proc/1/environ",
    ] {
        let (ok, error) = probe(&mut client, "probe", json!({"op": "read", "path": path})).await;
        assert!(!ok, "read {path}");
        assert!(error.contains("Permission denied"), "{path}: {error}");
    }
    // Its own workspace is readable and writable.
    let (ok, error) = probe(
        &mut client,
        "probe",
        json!({"op": "write", "path": "mine.txt", "bytes": 10}),
    )
    .await;
    assert!(ok, "{error}");
    let (ok, error) = probe(
        &mut client,
        "probe",
        json!({"op": "read", "path": "mine.txt"}),
    )
    .await;
    assert!(ok, "{error}");
    // Beyond the file size limit, writes fail.
    let (ok, error) = probe(
        &mut client,
        "probe",
        json!({"op": "write", "path": "big.bin", "bytes": 2 * 1024 * 1024}),
    )
    .await;
    assert!(!ok);
    assert!(error.contains("File too large"), "{error}");

    // No TCP and no UDP without `network`; both with it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let (ok, _) = probe(&mut client, "probe", json!({"op": "connect", "port": port})).await;
    assert!(!ok, "a tool without network connected over TCP");
    let (ok, _) = probe(&mut client, "probe", json!({"op": "udp", "port": udp_port})).await;
    assert!(!ok, "a tool without network sent UDP");
    let (ok, error) = probe(
        &mut client,
        "probe_net",
        json!({"op": "connect", "port": port}),
    )
    .await;
    assert!(ok, "{error}");
    let (_accepted, _) = within("the accept", Duration::from_secs(10), listener.accept())
        .await
        .unwrap();
    let (ok, error) = probe(
        &mut client,
        "probe_net",
        json!({"op": "udp", "port": udp_port}),
    )
    .await;
    assert!(ok, "{error}");
    let mut datagram = [0_u8; 4];
    within(
        "the datagram",
        Duration::from_secs(10),
        udp.recv(&mut datagram),
    )
    .await
    .unwrap();

    // A fork bomb ends (bounded by its process limit, stopped at its
    // timeout), the call fails cleanly, and the runner keeps serving.
    let response = call(&mut client, "acme", "bomb-run", "bomb", &json!({}))
        .await
        .unwrap();
    assert!(response.is_error, "{response:?}");
    let response = call(
        &mut client,
        "acme",
        "",
        "calculator",
        &json!({"expression": "6*7"}),
    )
    .await
    .unwrap();
    assert_eq!(response.output_json, r#"{"result":42}"#);
    let (status, _) = http_get(service.admin, "/readyz").await;
    assert_eq!(status, 200);
    // Nothing of the bomb is left running as the sandbox user.
    within(
        "the bomb's processes to end",
        Duration::from_secs(30),
        async {
            while processes_of(65534) > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

/// How many live processes `uid` has.
fn processes_of(uid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| {
            let uid_line = status.lines().find(|line| line.starts_with("Uid:"));
            let zombie = status
                .lines()
                .any(|line| line.starts_with("State:") && line.contains('Z'));
            !zombie
                && uid_line
                    .is_some_and(|line| line.split_whitespace().nth(1) == Some(&uid.to_string()))
        })
        .count()
}

#[tokio::test]
async fn a_required_sandbox_the_host_cannot_give_stops_the_start() {
    // A helper that does not exist gives nothing.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentmesh.toml");
    std::fs::write(
        &path,
        r#"
[tool_runner]
workspaces_dir = "workspaces"
[tool_runner.sandbox]
helper = "/nonexistent/helper"
[tool_runner.commands.strict]
description = "needs isolation"
command = ["true"]
sandbox = "required"
"#,
    )
    .unwrap();
    let output = within(
        "the refused start",
        Duration::from_secs(30),
        tokio::process::Command::new(agentmesh_tests::binary("agentmesh-tool-runner"))
            .args([
                "--config",
                path.to_str().unwrap(),
                "--port",
                "0",
                "--admin-port",
                "0",
            ])
            .current_dir(dir.path())
            .output(),
    )
    .await
    .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("commands.strict.sandbox"), "{log}");
    assert!(log.contains("cannot give"), "{log}");
}

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn workspace_quotas_hold_per_run_and_per_tenant() {
    let (dir, _service, mut client) = start(
        r#"
[tool_runner]
workspaces_dir = "workspaces"
[tool_runner.quota]
run_bytes = 20971520       # 20 MiB
run_files = 1000
tenant_bytes = 31457280    # 30 MiB
tenant_files = 5000
[tool_runner.commands.filler]
description = "writes 8 files of 1 MiB"
command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/zero > $(mktemp -p . fill.XXXXXX); done; echo '{}'"]
"#,
    )
    .await;
    let content = "x".repeat(MIB);
    // 200 files of 1 MiB in one run: refused at the run's quota.
    let mut written = 0;
    let refusal = loop {
        let arguments = json!({"path": format!("f{written}.txt"), "content": content});
        match call(&mut client, "acme", "big-run", "write_file", &arguments).await {
            Ok(response) => {
                assert!(!response.is_error, "{}", response.error_message);
                written += 1;
                assert!(written < 200, "200 files were written");
            }
            Err(status) => break status,
        }
    };
    assert_eq!(written, 20);
    assert_eq!(refusal.code(), Code::ResourceExhausted);
    assert!(
        refusal.message().contains("tool_runner.quota.run_bytes"),
        "{refusal:?}"
    );
    assert!(dir.path().join("workspaces/acme/big-run").is_dir());

    // A new run id per call does not get past the tenant's quota.
    let mut runs = 0;
    let refusal = loop {
        let arguments = json!({"path": "f.txt", "content": content});
        match call(
            &mut client,
            "acme",
            &format!("run-{runs}"),
            "write_file",
            &arguments,
        )
        .await
        {
            Ok(response) => {
                assert!(!response.is_error, "{}", response.error_message);
                runs += 1;
                assert!(runs < 200, "200 runs were written");
            }
            Err(status) => break status,
        }
    };
    assert_eq!(runs, 10);
    assert!(
        refusal.message().contains("tool_runner.quota.tenant_bytes"),
        "{refusal:?}"
    );
    // Another tenant is not affected.
    let arguments = json!({"path": "f.txt", "content": content});
    let response = call(&mut client, "globex", "run-0", "write_file", &arguments)
        .await
        .unwrap();
    assert!(!response.is_error);

    // A command's writes are counted after it: the next call of its run is
    // refused once over.
    let mut calls = 0;
    let status = loop {
        match call(&mut client, "globex", "cmd-run", "filler", &json!({})).await {
            Ok(response) => {
                assert!(!response.is_error, "{}", response.error_message);
                calls += 1;
                assert!(calls < 10, "the command kept writing");
            }
            Err(status) => break status,
        }
    };
    // 8, 16, then 24 MiB (the third may start: 4 MiB were left).
    assert_eq!(calls, 3);
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("tool_runner.quota.run_bytes"),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_sweeper_removes_an_expired_workspace() {
    let (dir, _service, mut client) = start(
        r#"
[tool_runner]
workspaces_dir = "workspaces"
[tool_runner.quota]
retention = "1s"
sweep_interval = "200ms"
"#,
    )
    .await;
    let arguments = json!({"path": "notes.txt", "content": "hello"});
    let response = call(&mut client, "acme", "short-lived", "write_file", &arguments)
        .await
        .unwrap();
    assert!(!response.is_error);
    let workspace = dir.path().join("workspaces/acme/short-lived");
    wait_gone(&workspace).await;
}

async fn wait_gone(path: &Path) {
    within(
        "the workspace to be swept",
        Duration::from_secs(30),
        async {
            while path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}
