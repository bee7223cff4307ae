//! The whole mesh as a user starts it: `agentmesh up` as a child process,
//! and its stop by Ctrl-C.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::{binary, within};

/// `agentmesh up` started in `dir` with `args` after `up` (JSON logs;
/// nothing read from its output), killed if dropped.
pub fn spawn_up(dir: &Path, args: &[&str]) -> Child {
    Command::new(binary("agentmesh"))
        .arg("up")
        .args(args)
        .args(["--log-format", "json"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Stops `child` as Ctrl-C would and checks that it exits cleanly within
/// 30 s (`what` names it in the failure).
pub async fn interrupt(mut child: Child, what: &str) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    let exit = within(what, Duration::from_secs(30), child.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{what}: {exit}");
}
