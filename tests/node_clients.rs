//! The polyglot proof in Node.js: the tests under `tests/node/` (gRPC with
//! @grpc/grpc-js, gRPC-Web with @connectrpc/connect-node, CORS) run with
//! node's own test runner against the real binaries this test starts:
//!
//! * `agentmesh up` — the embedded mesh with its defaults (the scripted demo
//!   model, no API key; the orchestrator with gRPC-Web on and CORS closed);
//! * a second `agentmesh-orchestrator` beside it, with CORS opened to one
//!   origin and API keys required, to see both protocols refused alike.
//!
//! Everything listens on loopback ports picked free, and is stopped here.
//! The Node packages come from `tools/install-test-deps` (`make test` and CI
//! run it first).

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

#[expect(dead_code, reason = "the access tests share more than this file uses")]
#[path = "access_support.rs"]
mod access_support;

use access_support::Keys;
use agentmesh_tests::{
    RunningBinary, SERVICES, channel, interrupt, spawn_up, wait_serving, within,
};
use tokio::process::Command;

/// The origin the second orchestrator lets call from a browser.
const ALLOWED_ORIGIN: &str = "http://localhost:5173";

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// `agentmesh up` on free ports in `dir` (no HTTP edge); the base port.
async fn start_mesh(dir: &Path) -> (tokio::process::Child, u16) {
    let base = agentmesh_tests::free_base_port(24000, 41, 8000);
    let up = spawn_up(
        dir,
        &[
            "--no-edge",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            "state",
        ],
    );
    for (index, (_, grpc_name)) in SERVICES.iter().enumerate() {
        let port = base + u16::try_from(index).unwrap();
        wait_serving(channel(([127, 0, 0, 1], port).into()), grpc_name).await;
    }
    (up, base)
}

#[tokio::test]
async fn node_clients_speak_grpc_and_grpc_web_to_the_mesh() {
    let node_dir = node_dir();
    assert!(
        node_dir.join("node_modules").is_dir(),
        "{} has no node_modules: run tools/install-test-deps (make test and CI run it)",
        node_dir.display()
    );
    let node = agentmesh_testkit::find_program("node", "apt-get install nodejs npm");
    let dir = tempfile::tempdir().unwrap();
    // The contract's descriptor set, from which the gRPC-Web client builds
    // its message types at run time.
    let descriptors = dir.path().join("agentmesh.binpb");
    std::fs::write(&descriptors, agentmesh_proto::FILE_DESCRIPTOR_SET).unwrap();

    let (mesh, base) = start_mesh(dir.path()).await;
    let orchestrator = format!("127.0.0.1:{base}");

    let keys = Keys::write(
        dir.path(),
        &[("browser", "acme", "browser", &["agents:read", "runs:read"])],
    );
    let (keys, api_key) = (keys.path.clone(), keys.key("browser").to_owned());
    let args = [
        format!("llm_gateway_url=\"http://127.0.0.1:{}\"", base + 1),
        format!("tool_runner_url=\"http://127.0.0.1:{}\"", base + 2),
        format!("server.grpc_web.allowed_origins=[\"{ALLOWED_ORIGIN}\"]"),
        "auth.methods=[\"api_key\"]".to_owned(),
        format!("auth.keys_file={:?}", keys.display().to_string()),
        "storage.data_dir=\"cors-state\"".to_owned(),
    ];
    let args: Vec<&str> = args.iter().flat_map(|arg| ["--set", arg]).collect();
    let cors = RunningBinary::start("agentmesh-orchestrator", &args, &[], dir.path()).await;
    wait_serving(channel(cors.grpc), "").await;

    let output = within(
        "node --test",
        Duration::from_secs(240),
        Command::new(node)
            .arg("--test")
            .current_dir(&node_dir)
            .env("AGENTMESH_ORCHESTRATOR", &orchestrator)
            .env("AGENTMESH_CORS_ORCHESTRATOR", cors.grpc.to_string())
            .env("AGENTMESH_CORS_ORIGIN", ALLOWED_ORIGIN)
            .env("AGENTMESH_CORS_API_KEY", &api_key)
            .env("AGENTMESH_DESCRIPTOR_SET", &descriptors)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    cors.signal("INT").await;
    interrupt(mesh, "agentmesh up to stop on Ctrl-C").await;
    if !output.status.success() {
        panic!("the Node client tests failed:\n{report}");
    }
    // node's report, for `--no-capture` runs.
    eprintln!("{report}");
    // A runner that found no test file would also exit 0.
    assert!(report.contains("# pass "), "{report}");
    assert!(!report.contains("# pass 0"), "{report}");
}
