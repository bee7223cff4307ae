//! Run callbacks end to end, on real binaries (gateway with a scripted
//! model, tool runner, orchestrator on SQLite) and a real HTTP receiver on
//! loopback (callbacks configured to allow loopback):
//!
//! * each run's terminal callback arrives exactly once, signed as
//!   docs/callbacks.md says (verified here with HMAC-SHA256 written from its
//!   definition over SHA-256, not with the service's code), across a kill -9
//!   and restart of the orchestrator between the first attempts (answered
//!   503) and the delivery;
//! * a run asking for every step gets its step and its end, once each;
//! * a private or cloud-metadata target is refused at StartRun with a field
//!   violation on `callback.url`.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient,
};
use agentmesh_testkit::eventually;
use agentmesh_tests::{RunningBinary, channel, http_get, wait_serving};
use sha2::{Digest as _, Sha256};
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

const SECRET: &str = "a callback secret for the tests, long enough";

/// Most answers are immediate; "steps" calls a tool first (two steps).
const RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)^steps'
tool_calls = [{ name = "current_time", arguments = '{}' }]
[[rules]]
on = "tool"
text = "done after one tool call"
[[rules]]
text = "the answer is 42"
"#;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Request {
    signature: String,
    delivery: String,
    event: String,
    body: Vec<u8>,
    answered: u16,
}

impl Request {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An HTTP receiver on loopback: answers 503 until told to accept.
#[derive(Clone, Default)]
struct Receiver {
    accept: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hooks/agentmesh",
            axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let answered = if state.accept.load(Ordering::SeqCst) {
                        204
                    } else {
                        503
                    };
                    state.requests.lock().unwrap().push(Request {
                        signature: header("x-agentmesh-signature"),
                        delivery: header("x-agentmesh-delivery"),
                        event: header("x-agentmesh-event"),
                        body: body.to_vec(),
                        answered,
                    });
                    http::StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// HMAC-SHA256 from its definition (RFC 2104), over SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&outer);
    tag
}

/// Checks the signature header as docs/callbacks.md tells a receiver to.
fn verify(request: &Request) {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in request.signature.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = Some(t.to_owned()),
            Some(("v1", v1)) => signatures.push(v1.to_owned()),
            _ => panic!("unexpected signature part {part:?}"),
        }
    }
    let timestamp = timestamp.expect("a timestamp");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let t: u64 = timestamp.parse().unwrap();
    assert!(now.abs_diff(t) < 300, "timestamp {t} is far from now {now}");
    let mut signed = timestamp.into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(&request.body);
    let expected = hex::encode(hmac_sha256(SECRET.as_bytes(), &signed));
    assert_eq!(signatures, [expected], "signature of {}", request.delivery);
}

/// The gateway and tool runner, and what the orchestrator is configured with.
struct Mesh {
    dir: tempfile::TempDir,
    gateway: RunningBinary,
    tools: RunningBinary,
}

impl Mesh {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
        let gateway_config = dir.path().join("gateway.toml");
        std::fs::write(
            &gateway_config,
            format!(
                "[llm_gateway.audit]\nurl = \"\"\n[llm_gateway.providers.scripted]\nrules_file = {:?}\n",
                dir.path().join("rules.toml").display().to_string()
            ),
        )
        .unwrap();
        let gateway = RunningBinary::start(
            "agentmesh-llm-gateway",
            &["--config", gateway_config.to_str().unwrap()],
            &[],
            dir.path(),
        )
        .await;
        let tools_config = dir.path().join("tools.toml");
        std::fs::write(
            &tools_config,
            "[tool_runner]\nworkspaces_dir = \"workspaces\"\n[tool_runner.audit]\nurl = \"\"\n",
        )
        .unwrap();
        let tools = RunningBinary::start(
            "agentmesh-tool-runner",
            &["--config", tools_config.to_str().unwrap()],
            &[],
            dir.path(),
        )
        .await;
        for addr in [gateway.grpc, tools.grpc] {
            wait_serving(channel(addr), "").await;
        }
        std::fs::write(
            dir.path().join("callback-secrets.toml"),
            format!("default = {SECRET:?}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("orchestrator.toml"),
            r#"
[orchestrator.callbacks]
secrets_file = "callback-secrets.toml"
timeout = "2s"
initial_backoff = "100ms"
max_backoff = "400ms"
poll_interval = "50ms"
[orchestrator.callbacks.egress]
allow_cidrs = ["127.0.0.0/8"]
"#,
        )
        .unwrap();
        Self {
            dir,
            gateway,
            tools,
        }
    }

    /// The orchestrator, on the SQLite file under this mesh's directory.
    async fn orchestrator(&self) -> RunningBinary {
        let gateway = format!("http://{}", self.gateway.grpc);
        let tools = format!("http://{}", self.tools.grpc);
        let orchestrator = RunningBinary::start(
            "agentmesh-orchestrator",
            &["--config", "orchestrator.toml"],
            &[
                ("AGENTMESH_ORCHESTRATOR__STORAGE__DATA_DIR", "data"),
                ("AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL", &gateway),
                ("AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL", &tools),
                ("AGENTMESH_ORCHESTRATOR__AUDIT__URL", ""),
            ],
            self.dir.path(),
        )
        .await;
        wait_serving(channel(orchestrator.grpc), "").await;
        orchestrator
    }
}

fn client(orchestrator: &RunningBinary) -> OrchestratorServiceClient<Channel> {
    OrchestratorServiceClient::new(channel(orchestrator.grpc))
}

fn callback(url: &str, events: pb::CallbackEvents) -> Option<pb::RunCallback> {
    Some(pb::RunCallback {
        url: url.to_owned(),
        events: events.into(),
    })
}

async fn state_of(orchestrator: &RunningBinary, run_id: &str) -> pb::RunState {
    client(orchestrator)
        .get_run(pb::GetRunRequest {
            run_id: run_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
        .state()
}

/// A metric's value on `orchestrator`'s admin server, from its series
/// carrying `label` (the service adds labels of its own); 0 when absent.
async fn metric(orchestrator: &RunningBinary, name: &str, label: &str) -> f64 {
    let (_, body) = http_get(orchestrator.admin, "/metrics").await;
    body.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| line.contains(label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn each_terminal_callback_arrives_exactly_once_across_a_restart() {
    let mesh = Mesh::start().await;
    let (receiver, addr) = Receiver::start().await;
    let url = format!("http://{addr}/hooks/agentmesh");
    let mut first = mesh.orchestrator().await;

    // Five runs reporting their end, one reporting every step; one through
    // Run (its request mirrors StartRun's callback).
    let mut run_ids = Vec::new();
    for n in 0..5 {
        let started = client(&first)
            .start_run(pb::StartRunRequest {
                objective: format!("question {n}"),
                callback: callback(&url, pb::CallbackEvents::Terminal),
                ..pb::StartRunRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        run_ids.push(started.run_id);
    }
    let steps = client(&first)
        .start_run(pb::StartRunRequest {
            objective: "steps, please".into(),
            callback: callback(&url, pb::CallbackEvents::EveryStep),
            ..pb::StartRunRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let mut stream = client(&first)
        .run(pb::RunRequest {
            objective: "through Run".into(),
            callback: callback(&url, pb::CallbackEvents::Unspecified),
            ..pb::RunRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let through_run = stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .event
        .unwrap()
        .run_id;
    while stream.message().await.unwrap().is_some() {}
    run_ids.push(through_run);
    run_ids.push(steps.clone());

    // Every run ends; every delivery is attempted (and refused, 503) at
    // least twice before the orchestrator is killed.
    for run_id in &run_ids {
        eventually("the run's end", Duration::from_secs(30), || async {
            let state = state_of(&first, run_id).await;
            (state == pb::RunState::Succeeded).then_some(())
        })
        .await;
    }
    let deliveries = run_ids.len() + 1; // the step of "steps", and every end
    eventually(
        "two refused attempts of every delivery",
        Duration::from_secs(30),
        || async {
            let mut attempts: BTreeMap<String, usize> = BTreeMap::new();
            for request in receiver.requests() {
                *attempts.entry(request.delivery).or_default() += 1;
            }
            (attempts.len() == deliveries && attempts.values().all(|n| *n >= 2)).then_some(())
        },
    )
    .await;
    first.child.kill().await.unwrap();
    // A request the dead process had sent is answered (503) before the
    // receiver starts accepting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused_before = receiver.requests().len();

    // The receiver recovers; the restarted orchestrator delivers what the
    // outbox holds.
    receiver.accept.store(true, Ordering::SeqCst);
    let second = mesh.orchestrator().await;
    let accepted = || {
        receiver
            .requests()
            .into_iter()
            .filter(|r| r.answered == 204)
            .collect::<Vec<_>>()
    };
    eventually(
        "every delivery accepted",
        Duration::from_secs(30),
        || async { (accepted().len() >= deliveries).then_some(()) },
    )
    .await;
    // Retries come every ≤ 0.4 s and the outbox is polled every 50 ms:
    // anything sent twice would show by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let requests = receiver.requests();
    let accepted = accepted();
    assert_eq!(accepted.len(), deliveries, "accepted: {accepted:#?}");
    for request in &requests {
        verify(request);
    }
    // Per delivery: one id for all its attempts, numbered 1, 2, 3 … in
    // order, the last (after the restart) accepted.
    let mut by_delivery: BTreeMap<&str, Vec<&Request>> = BTreeMap::new();
    for request in &requests {
        by_delivery
            .entry(&request.delivery)
            .or_default()
            .push(request);
    }
    assert_eq!(by_delivery.len(), deliveries);
    for (delivery, attempts) in &by_delivery {
        let numbers: Vec<i64> = attempts
            .iter()
            .map(|r| r.json()["attempt"].as_i64().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{delivery}: {numbers:?}"
        );
        assert_eq!(attempts.iter().filter(|r| r.answered == 204).count(), 1);
        assert_eq!(attempts.last().unwrap().answered, 204, "{delivery}");
        assert!(numbers.len() >= 3, "{delivery}: {numbers:?}");
        for attempt in attempts {
            assert_eq!(attempt.json()["delivery_id"], *delivery);
        }
    }
    // Exactly one terminal callback per run, saying how it ended.
    for run_id in &run_ids {
        let ends: Vec<serde_json::Value> = accepted
            .iter()
            .map(Request::json)
            .filter(|body| body["run_id"] == **run_id && body["type"] != "run.step")
            .collect();
        assert_eq!(ends.len(), 1, "{run_id}: {ends:#?}");
        let end = &ends[0];
        assert_eq!(end["type"], "run.finished");
        assert_eq!(end["state"], "RUN_STATE_SUCCEEDED");
        assert_eq!(end["tenant"], "");
        assert!(end["sequence"].as_i64().unwrap() > 1, "{end}");
        let output = end["output"].as_str().unwrap();
        if *run_id == steps {
            assert_eq!(output, "done after one tool call");
            assert_eq!(end["steps"], 2);
        } else {
            assert_eq!(output, "the answer is 42");
        }
    }
    let step: Vec<&Request> = accepted.iter().filter(|r| r.event == "run.step").collect();
    assert_eq!(step.len(), 1);
    let step = step[0].json();
    assert_eq!(
        (step["run_id"].as_str(), step["step"].as_i64()),
        (Some(steps.as_str()), Some(1))
    );
    assert_eq!(step["state"], "RUN_STATE_RUNNING");
    assert_eq!(step["tool_calls"], 1);
    // The header names the body's type.
    assert!(
        requests
            .iter()
            .all(|r| r.json()["type"] == r.event.as_str())
    );

    // The restarted process delivered everything, on its first try or
    // after more 503s; its metrics say so.
    assert!(requests.len() > refused_before);
    assert_eq!(
        metric(
            &second,
            "agentmesh_run_callback_deliveries_total",
            "outcome=\"delivered\""
        )
        .await,
        f64::from(u32::try_from(deliveries).unwrap())
    );
    eventually("an empty outbox", Duration::from_secs(5), || async {
        (metric(&second, "agentmesh_run_callback_outbox_depth", "").await == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_private_target_is_refused_at_start_with_a_field_violation() {
    let mesh = Mesh::start().await;
    let orchestrator = mesh.orchestrator().await;
    // Loopback is allowed here; the private network and the cloud metadata
    // service are not.
    for (url, says) in [
        ("http://10.0.0.7/hooks", "private (RFC 1918)"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fe80::1]:8080/", "link-local"),
        ("ftp://hooks.example.com/", "scheme `ftp`"),
    ] {
        let refused = client(&orchestrator)
            .start_run(pb::StartRunRequest {
                objective: "x".into(),
                callback: callback(url, pb::CallbackEvents::Terminal),
                ..pb::StartRunRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::InvalidArgument,
            "{url}: {refused:?}"
        );
        let violations = refused.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1, "{url}: {violations:?}");
        assert_eq!(violations[0].field, "callback.url");
        assert!(
            violations[0].description.contains(says),
            "{url}: {violations:?}"
        );
        assert!(!refused.message().contains("meta-data"), "{refused:?}");
    }
    // Nothing was stored for the refused runs.
    let runs = client(&orchestrator)
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(runs.is_empty(), "{runs:?}");
}
