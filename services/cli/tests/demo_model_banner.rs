//! The "scripted demo model" banner is said only where it is true: when
//! `agentmesh run` starts the embedded mesh with no provider key set. The
//! commands that read runs or tools run no model and stay quiet about it,
//! also when pointed at a running mesh with `--orchestrator`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BANNER: &str = "scripted demo model";

/// Runs the `agentmesh` binary in `dir` with no provider keys and no
/// addresses from the environment.
fn agentmesh(dir: &Path, args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(args)
        .current_dir(dir)
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_ORCHESTRATOR")
        .env_remove("AGENTMESH_TOOL_RUNNER")
        .env_remove("AGENTMESH_CONFIG")
        .env_remove("AGENTMESH_MODEL")
        .stdin(Stdio::null())
        .output()
}

/// A loopback address nothing listens on (a port that was free a moment ago).
fn nobody_listens() -> std::io::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("http://127.0.0.1:{port}"))
}

// The orchestrator cannot list tools: an orchestrator address without the
// tool runner's is refused (listing the embedded mesh's tools instead would
// show tools the running mesh may not have), and quietly about the model.
#[test]
fn tools_list_with_an_orchestrator_says_nothing_about_the_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = nobody_listens().unwrap();
    let output = agentmesh(
        dir.path(),
        &["tools", "list", "--orchestrator", &orchestrator],
    )
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        !output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains("--tool-runner"), "{stderr}");
    assert!(!stderr.contains(BANNER), "{stderr}");
}

#[test]
fn tools_list_embedded_lists_the_built_in_tools_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let output = agentmesh(dir.path(), &["tools", "list"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("calculator"), "{stdout}");
    assert!(!stderr.contains(BANNER), "{stderr}");
}

#[test]
fn runs_list_on_a_running_mesh_says_nothing_about_the_demo_model() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = nobody_listens().unwrap();
    let output = agentmesh(
        dir.path(),
        &["runs", "list", "--orchestrator", &orchestrator],
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Nothing listens there: the listing fails, and says so, not more.
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("listing runs"), "{stderr}");
    assert!(!stderr.contains(BANNER), "{stderr}");
}

#[test]
fn a_run_on_the_embedded_mesh_says_the_demo_model_answers() {
    let dir = tempfile::tempdir().unwrap();
    let output = agentmesh(dir.path(), &["run", "What is 2+2?"]).unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stderr.contains(BANNER), "{stderr}");
    assert!(stdout.contains('4'), "{stdout}");
}
