//! Helpers shared by the tool runner's API tests: a loopback server
//! configuration, bounded waits, test tools, and watching the processes
//! command tools start.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_kit::ServerConfig;
use agentmesh_proto::tools::v1::{ExecuteToolResponse, ToolErrorKind};
use agentmesh_testkit::within;
use agentmesh_tool_runner::CommandToolConfig;

/// Ephemeral loopback ports for gRPC and admin, and a short drain.
pub(crate) fn test_server() -> ServerConfig {
    ServerConfig {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        admin_port: Some(0),
        grace_period: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

/// How long any one step of a test may take ([`within`]), so a hang fails
/// instead of blocking CI.
pub(crate) const STEP: Duration = Duration::from_secs(30);

/// Writes a script into `dir` and returns its path.
pub(crate) fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A command tool running `argv`.
pub(crate) fn command(argv: &[&str]) -> CommandToolConfig {
    CommandToolConfig {
        description: "a test tool".into(),
        command: argv.iter().map(|arg| (*arg).to_owned()).collect(),
        ..CommandToolConfig::default()
    }
}

/// The error kind of a tool result.
pub(crate) fn kind(response: &ExecuteToolResponse) -> ToolErrorKind {
    ToolErrorKind::try_from(response.error_kind).unwrap()
}

/// Waits until process `pid` is gone (or a zombie: dead, not yet reaped).
pub(crate) async fn process_ends(pid: u32) {
    within(&format!("process {pid} to end"), STEP, async {
        loop {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return,
                Ok(stat) => {
                    // The state follows the parenthesised command name.
                    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                    if state.starts_with('Z') || state.starts_with('X') {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Reads a pid a script wrote, waiting until it is there.
pub(crate) async fn pid_in(path: PathBuf) -> u32 {
    within(&format!("a pid in {}", path.display()), STEP, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
