//! A connection flood against the real mesh: `agentmesh up` with its soft
//! descriptor limit lowered to 4,096 (by `prlimit`), then three times that
//! many idle TCP connections and partial HTTP/2 prefaces from six client
//! processes (small python3 scripts, each holding ~2,000 sockets).
//!
//! Asserted: every connection either gets the server's SETTINGS (admitted,
//! under the listener's cap) or is reset at once (beyond the cap) — none
//! hangs; every admitted one that never finishes its preface is closed by
//! the server after `handshake_timeout`; meanwhile health (gRPC and a fresh
//! `/readyz` connection on each admin port) answers SERVING/200 and a real
//! run through the orchestrator succeeds; the services count and log the
//! shedding; the process never reaches its descriptor limit.
//!
//! Clients that were connected before the flood keep being served: the cap
//! sheds new connections, never the ones already held.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code fails loudly"
)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use agentmesh_proto::orchestrator::v1::{self as pb, orchestrator_service_client};
use agentmesh_tests::{SERVICES, binary, health_status, http_get, wait_serving, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

/// The soft descriptor limit the mesh runs with.
const DESCRIPTOR_LIMIT: usize = 4096;
/// Client processes; half send nothing, half a partial preface.
const FLOODERS: usize = 6;
/// The handshake deadline set for the test (seconds).
const HANDSHAKE_TIMEOUT_S: u64 = 3;

/// One flooding client: opens `count` connections round-robin over the
/// ports, classifies each by its first read (the server's SETTINGS =
/// admitted; reset or end = refused; nothing within the socket timeout =
/// hung), prints READY, then waits (bounded) for the server to close every
/// admitted one and prints a JSON summary.
const FLOODER: &str = r#"
import json, resource, selectors, socket, sys, time
ports = [int(p) for p in sys.argv[1].split(",")]
count, mode, patience = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, refused, hung, slowest_refusal = [], 0, 0, 0.0
for i in range(count):
    start = time.monotonic()
    sock = None
    try:
        sock = socket.create_connection(("127.0.0.1", ports[i % len(ports)]), timeout=patience)
        if mode == "partial":
            sock.sendall(b"PRI * HTTP/2.0\r\n")
        first = sock.recv(9)
    except socket.timeout:
        hung += 1
        if sock: sock.close()
        continue
    except OSError:
        first = b""
    if first:
        held.append((sock, time.monotonic()))
    else:
        refused += 1
        slowest_refusal = max(slowest_refusal, time.monotonic() - start)
        if sock: sock.close()
print("READY", flush=True)
selector = selectors.DefaultSelector()
for sock, since in held:
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ, since)
closed, slowest_close, deadline = 0, 0.0, time.monotonic() + 30
while selector.get_map() and time.monotonic() < deadline:
    for key, _ in selector.select(timeout=0.5):
        try:
            data = key.fileobj.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if data:
            continue
        closed += 1
        slowest_close = max(slowest_close, time.monotonic() - key.data)
        selector.unregister(key.fileobj)
        key.fileobj.close()
print(json.dumps({"admitted": len(held), "refused": refused, "hung": hung,
    "slowest_refusal": slowest_refusal, "closed": closed,
    "not_closed": len(selector.get_map()), "slowest_close": slowest_close}), flush=True)
"#;

/// The mesh's configuration: a short handshake deadline on every service,
/// the caps derived from the lowered descriptor limit. The flooders tell an
/// admitted connection by the server's SETTINGS frame, which a listener that
/// also takes HTTP/1.1 (gRPC-Web) sends only once the client's first bytes
/// say HTTP/2: the orchestrator's gRPC-Web is off here, and the kit's
/// connection tests hold that listener to the same deadlines.
fn mesh_config() -> String {
    let mut config: String = ["orchestrator", "llm_gateway", "tool_runner", "audit", "alerting"]
        .iter()
        .map(|section| {
            format!(
                "[{section}.server.connections]\nhandshake_timeout = \"{HANDSHAKE_TIMEOUT_S}s\"\nidle_timeout = \"120s\"\n"
            )
        })
        .collect();
    config.push_str("[orchestrator.server.grpc_web]\nenabled = false\n");
    config
}

/// A channel connected now (so it is held before the flood).
async fn connected(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// One run through the orchestrator: its final answer.
async fn run(channel: Channel) -> String {
    let mut client = orchestrator_service_client::OrchestratorServiceClient::new(channel);
    let request = pb::RunRequest {
        objective: "What is 17 * 23 + sqrt(144)?".to_owned(),
        ..Default::default()
    };
    let mut stream = within("Run", Duration::from_secs(30), client.run(request))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = within("a run event", Duration::from_secs(30), stream.message())
        .await
        .unwrap()
    {
        events.push(event);
    }
    format!("{events:?}")
}

/// A sample's value: the first line of `name` holding every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        labels
            .iter()
            .all(|label| rest.contains(label))
            .then(|| rest.rsplit(' ').next()?.parse().ok())?
    })
}

fn spawn_flooder(ports: &str, count: usize, mode: &str) -> Child {
    Command::new("python3")
        .args(["-c", FLOODER, ports, &count.to_string(), mode, "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 on PATH")
}

/// Health of every service through the channels held since before the
/// flood, and `/readyz` of every admin port on a fresh connection.
async fn everything_answers(health: &[Channel], admins: &[SocketAddr]) {
    for (channel, (name, grpc_name)) in health.iter().zip(SERVICES) {
        let status = within(
            "Health/Check",
            Duration::from_secs(10),
            health_status(channel.clone(), grpc_name),
        )
        .await;
        assert_eq!(status.unwrap(), ServingStatus::Serving, "{name}");
    }
    for (admin, (name, _)) in admins.iter().zip(SERVICES) {
        let (code, body) = within(
            "/readyz",
            Duration::from_secs(10),
            http_get(*admin, "/readyz"),
        )
        .await;
        assert_eq!(code, 200, "{name}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_shed_while_the_mesh_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.toml"), mesh_config()).unwrap();
    let base = agentmesh_tests::free_base_port(23001, 37, 8000);
    let log_path = dir.path().join("up.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let limit = format!("--nofile={DESCRIPTOR_LIMIT}:{DESCRIPTOR_LIMIT}");
    let _up = Command::new("prlimit")
        .arg(&limit)
        .arg("--")
        .arg(binary("agentmesh"))
        .args([
            "up",
            "--no-edge",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            "state",
        ])
        .args(["--config", "mesh.toml", "--log-format", "json"])
        .current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) on PATH");
    let grpc: Vec<SocketAddr> = (0..5u16)
        .map(|i| ([127, 0, 0, 1], base + i).into())
        .collect();
    let admins: Vec<SocketAddr> = (0..5u16)
        .map(|i| ([127, 0, 0, 1], base + 1000 + i).into())
        .collect();
    for (addr, (_, grpc_name)) in grpc.iter().zip(SERVICES) {
        wait_serving(agentmesh_tests::channel(*addr), grpc_name).await;
    }

    // The clients of the mesh connect before the flood; a first run warms
    // the orchestrator's own channels to its peers.
    let mut health = Vec::new();
    for addr in &grpc {
        health.push(connected(*addr).await);
    }
    let orchestrator = connected(grpc[0]).await;
    assert!(run(orchestrator.clone()).await.contains("403"));
    let metrics = http_get(admins[0], "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "process_max_fds", &[]),
        Some(4096.0),
        "the descriptor limit was not lowered:\n{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_connections_max",
            &["listener=\"grpc\""]
        ),
        Some(512.0)
    );

    // The flood: 3 × 4,096 connections over the five gRPC ports.
    let ports = grpc
        .iter()
        .map(|addr| addr.port().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let per_flooder = 3 * DESCRIPTOR_LIMIT / FLOODERS;
    let mut flooders: Vec<_> = (0..FLOODERS)
        .map(|i| {
            let mode = if i % 2 == 0 { "idle" } else { "partial" };
            let mut child = spawn_flooder(&ports, per_flooder, mode);
            let lines = BufReader::new(child.stdout.take().unwrap()).lines();
            (child, lines)
        })
        .collect();

    // While the flooders connect: health keeps answering.
    let mut ready = 0;
    for (_, lines) in &mut flooders {
        let mut read = std::pin::pin!(lines.next_line());
        loop {
            tokio::select! {
                line = &mut read => {
                    assert_eq!(line.unwrap().as_deref(), Some("READY"));
                    ready += 1;
                    break;
                }
                () = everything_answers(&health, &admins) => {}
            }
        }
    }
    assert_eq!(ready, FLOODERS);
    // At the flood's peak: health, and a real run.
    everything_answers(&health, &admins).await;
    assert!(run(orchestrator.clone()).await.contains("403"));
    let mut fds = Vec::new();
    for admin in &admins {
        let text = http_get(*admin, "/metrics").await.1;
        fds.push(sample(&text, "process_open_fds", &[]).unwrap());
    }

    let (mut admitted, mut refused) = (0, 0);
    for (mut child, mut lines) in flooders {
        let line = within(
            "a flooder's summary",
            Duration::from_secs(45),
            lines.next_line(),
        )
        .await
        .unwrap()
        .expect("a summary line");
        let summary: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            summary["hung"], 0,
            "connections neither admitted nor refused: {summary}"
        );
        assert_eq!(
            summary["not_closed"], 0,
            "admitted connections the server kept: {summary}"
        );
        assert!(
            summary["slowest_refusal"].as_f64().unwrap() < 5.0,
            "a refusal took long: {summary}"
        );
        admitted += summary["admitted"].as_u64().unwrap();
        refused += summary["refused"].as_u64().unwrap();
        child.wait().await.unwrap();
    }
    assert_eq!(
        admitted + refused,
        u64::try_from(3 * DESCRIPTOR_LIMIT).unwrap()
    );
    assert!(refused > 0, "the caps were never reached");
    assert!(
        fds.iter().all(|open| *open < 4096.0),
        "descriptors ran out: {fds:?}"
    );

    // Counted per listener, and logged (a line per ten seconds at most).
    for (admin, (name, _)) in admins.iter().zip(SERVICES) {
        let text = http_get(*admin, "/metrics").await.1;
        let count = |metric, labels: &[&str]| sample(&text, metric, labels).unwrap_or(0.0);
        assert!(
            count(
                "agentmesh_connections_refused_total",
                &["listener=\"grpc\""]
            ) > 0.0,
            "{name}:\n{text}"
        );
        assert!(
            count(
                "agentmesh_connections_closed_total",
                &["listener=\"grpc\"", "reason=\"handshake_timeout\""]
            ) > 0.0,
            "{name}:\n{text}"
        );
    }
    everything_answers(&health, &admins).await;
    let logged = std::fs::read_to_string(&log_path).unwrap();
    for wanted in [
        "connection limit reached: refusing new connections",
        "closed stalled or idle connections",
    ] {
        assert!(logged.contains(wanted), "no {wanted:?} in the log");
    }
    assert!(
        !logged.contains("cannot accept connections"),
        "the process ran out of descriptors"
    );
    let lines = logged
        .lines()
        .filter(|line| line.contains("connection limit reached"))
        .count();
    assert!(lines <= 5 * 6, "refusals logged {lines} times");
}
