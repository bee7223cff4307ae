//! The `http_request` tool of the real tool-runner binary against SSRF: a
//! model asking for loopback, the cloud metadata service, IPv6 loopback, a
//! name resolving to loopback, or a redirect into them gets a DENIED tool
//! error naming the rule, and nothing reaches the target; an explicitly
//! allowed target answers, and credentials never follow a redirect to
//! another host.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use agentmesh_proto::tools::v1::{ExecuteToolRequest, ExecuteToolResponse, ToolErrorKind};
use agentmesh_tests::{RunningBinary, channel, wait_serving, within};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A loopback HTTP server answering every request with `response(port)`,
/// recording each request's head (lower-cased).
struct Target {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Target {
    async fn start(ip: &str, response: impl Fn() -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0_u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let _ = socket.write_all(response().as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        Self { port, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-served-by: target\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn redirect(location: String) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
}

/// The real binary with `http_request` enabled and `egress` as its policy.
async fn tool_runner(dir: &tempfile::TempDir, egress: &str) -> RunningBinary {
    let config = dir.path().join("agentmesh.toml");
    std::fs::write(
        &config,
        format!(
            "[tool_runner]\nworkspaces_dir = \"{}\"\n[tool_runner.http]\nenabled = true\nmax_response_bytes = 16\n[tool_runner.http.egress]\n{egress}\n",
            dir.path().join("ws").display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let service = RunningBinary::start(
        "agentmesh-tool-runner",
        &["--config", &config],
        &[],
        dir.path(),
    )
    .await;
    wait_serving(channel(service.grpc), "").await;
    service
}

async fn call(service: &RunningBinary, arguments: Value) -> ExecuteToolResponse {
    let mut client = ToolRunnerServiceClient::new(channel(service.grpc));
    within(
        "ExecuteTool",
        Duration::from_secs(30),
        client.execute_tool(ExecuteToolRequest {
            tool: "http_request".into(),
            arguments_json: arguments.to_string(),
            ..ExecuteToolRequest::default()
        }),
    )
    .await
    .unwrap()
    .into_inner()
}

fn assert_denied(response: &ExecuteToolResponse, rule: &str) {
    assert!(response.is_error, "{response:?}");
    assert_eq!(response.error_kind(), ToolErrorKind::Denied, "{response:?}");
    assert!(
        response.error_message.contains(rule),
        "{rule} not named: {}",
        response.error_message
    );
}

#[tokio::test]
async fn internal_destinations_are_denied_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start("127.0.0.1", || ok("internal")).await;
    let service = tool_runner(&dir, "").await;
    let port = target.port;
    for (url, rule) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "cloud metadata",
        ),
        (format!("http://[::1]:{port}/"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "loopback"),
        (format!("http://localhost:{port}/"), "loopback"),
        (format!("http://2130706433:{port}/"), "loopback"),
        ("http://10.0.0.1/".to_owned(), "private"),
        ("http://100.64.0.1/".to_owned(), "shared address space"),
        ("http://[fe80::1]/".to_owned(), "link-local"),
        ("file:///etc/passwd".to_owned(), "scheme"),
    ] {
        let response = call(
            &service,
            json!({"url": url, "headers": {"Authorization": "Bearer t"}}),
        )
        .await;
        assert_denied(&response, rule);
    }
    assert!(target.requests().is_empty(), "{:?}", target.requests());
}

#[tokio::test]
async fn an_allowed_first_hop_cannot_redirect_into_a_denied_address() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Target::start("127.0.0.2", || ok("internal secret")).await;
    let internal_port = internal.port;
    let first = Target::start("127.0.0.1", move || {
        redirect(format!("http://127.0.0.2:{internal_port}/admin"))
    })
    .await;
    let metadata = Target::start("127.0.0.1", || {
        redirect("http://169.254.169.254/latest/meta-data/iam/".to_owned())
    })
    .await;
    let service = tool_runner(&dir, "allow_cidrs = [\"127.0.0.1/32\"]").await;

    let response = call(
        &service,
        json!({"url": format!("http://127.0.0.1:{}/", first.port)}),
    )
    .await;
    assert_denied(&response, "127.0.0.2 is a loopback address");
    assert_eq!(first.requests().len(), 1);
    assert!(internal.requests().is_empty());

    let response = call(
        &service,
        json!({"url": format!("http://127.0.0.1:{}/", metadata.port)}),
    )
    .await;
    assert_denied(&response, "cloud metadata");
}

#[tokio::test]
async fn an_explicitly_allowed_target_answers_with_a_capped_body() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start("127.0.0.1", || ok("hello from the allowed target")).await;
    let service = tool_runner(&dir, "allow_cidrs = [\"127.0.0.1/32\"]").await;
    let response = call(
        &service,
        json!({
            "method": "POST",
            "url": format!("http://127.0.0.1:{}/echo", target.port),
            "headers": {"X-Trace": "abc"},
            "body": "ping",
            "timeout_seconds": 5
        }),
    )
    .await;
    assert!(!response.is_error, "{response:?}");
    let output: Value = serde_json::from_str(&response.output_json).unwrap();
    assert_eq!(output["status"], 200);
    // max_response_bytes = 16: the body is cut and says so.
    assert_eq!(output["body"], "hello from the a");
    assert_eq!(output["truncated"], true);
    assert_eq!(output["headers"]["x-served-by"], "target");
    let seen = target.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("post /echo "), "{}", seen[0]);
    assert!(seen[0].contains("x-trace: abc"), "{}", seen[0]);
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let other = Target::start("127.0.0.3", || ok("landed")).await;
    let other_port = other.port;
    let first = Target::start("127.0.0.1", move || {
        redirect(format!("http://127.0.0.3:{other_port}/landing"))
    })
    .await;
    let service = tool_runner(&dir, "allow_cidrs = [\"127.0.0.1/32\", \"127.0.0.3/32\"]").await;
    let response = call(
        &service,
        json!({
            "url": format!("http://127.0.0.1:{}/", first.port),
            "headers": {"Authorization": "Bearer secret-token", "Cookie": "session=secret"}
        }),
    )
    .await;
    assert!(!response.is_error, "{response:?}");
    let output: Value = serde_json::from_str(&response.output_json).unwrap();
    assert_eq!(output["body"], "landed");
    assert!(first.requests()[0].contains("authorization: bearer secret-token"));
    let landed = other.requests();
    assert_eq!(landed.len(), 1);
    assert!(!landed[0].contains("authorization"), "{}", landed[0]);
    assert!(!landed[0].contains("cookie"), "{}", landed[0]);
    assert!(!landed[0].contains("secret"), "{}", landed[0]);
}
