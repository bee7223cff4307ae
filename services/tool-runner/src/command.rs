//! Command tools: external programs from the configuration.
//!
//! # The contract with the program
//!
//! * argv is the configured `command` (no shell); the working directory is
//!   the run's workspace; the environment is scrubbed: only `PATH` (the
//!   service's), `HOME` (the workspace), `LANG=C.UTF-8` and the tool's
//!   configured `env`.
//! * stdin: the arguments as one JSON value, then end of file.
//! * stdout: exactly one JSON value, the tool's output (at most
//!   `max_output_bytes`). Exit code 0 means success; any other exit code is a
//!   failure whose message quotes the end of stderr (and stdout, when it is
//!   JSON, becomes the error's `output_json`).
//! * stderr: diagnostics, relayed line by line as `ToolOutputChunk`s (stream
//!   STDERR) by ExecuteToolStream. A line of the form
//!   `progress: {"percent": 50, "message": "halfway"}` (both fields optional)
//!   is relayed as `ToolProgress` instead.
//!
//! # Isolation
//!
//! Unless its sandbox mode is `off` (or the host has no sandbox helper), the
//! program is started through the helper, which applies its resource
//! limits, network and file-system isolation and user before executing it
//! (see `sandbox`). `TMPDIR` is the workspace too: the program can write
//! nowhere else.
//!
//! # Stopping it
//!
//! The program runs in its own process group. When the call ends before the
//! program does — timeout, the client cancelling, output too large — the
//! future running it is dropped: tokio kills the program (`kill_on_drop`)
//! and [`ProcessGroup`] kills whatever it started (one `kill(-pgid)`, which
//! also ends a fork bomb: the kernel fails forks of a group being killed).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use agentmesh_kit::text::{truncate_bytes, truncate_bytes_tail};
use agentmesh_proto::tools::v1::{
    self, ExecuteToolStreamResponse, OutputStream, ToolOutputChunk, ToolProgress,
    execute_tool_stream_response::Event,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tonic::Status;

use crate::outcome::{ToolFailure, ToolOutcome};
use crate::sandbox::{SandboxHost, ToolSandbox};
use crate::workspace::Workspace;

/// Where ExecuteToolStream's messages go while a tool runs.
pub(crate) type EventSender = mpsc::Sender<Result<ExecuteToolStreamResponse, Status>>;

/// How much of stderr a failure message quotes (its end).
const STDERR_QUOTED_BYTES: usize = 2048;
/// How much of non-JSON stdout a failure message quotes (its start).
const STDOUT_QUOTED_BYTES: usize = 200;
/// A stderr "line" longer than this is relayed in pieces.
const MAX_LINE_BYTES: usize = 8192;
/// The prefix of a progress line on stderr.
const PROGRESS_PREFIX: &str = "progress:";

/// A configured command tool, ready to run.
#[derive(Debug, Clone)]
pub(crate) struct CommandTool {
    /// The tool's name, for messages.
    pub(crate) name: String,
    /// Program and arguments; never empty (checked at start).
    pub(crate) argv: Vec<String>,
    /// Variables added to the scrubbed environment.
    pub(crate) env: BTreeMap<String, String>,
    /// `PATH` given to the program: the service's own.
    pub(crate) path: OsString,
    /// Largest stdout accepted.
    pub(crate) max_output_bytes: usize,
    /// Its isolation settings.
    pub(crate) sandbox: ToolSandbox,
}

/// Where and how one call's program runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunEnv<'a> {
    /// The run's workspace directory (created when missing).
    pub(crate) workspace_dir: &'a Path,
    /// The sandbox helper and what it gives; `None`: run directly.
    pub(crate) host: Option<&'a SandboxHost>,
    /// The most bytes one file may take: what the quotas leave.
    pub(crate) file_size_cap: Option<u64>,
}

/// The `PATH` programs get: the service's, or a conventional one.
pub(crate) fn service_path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"))
}

impl CommandTool {
    /// Runs the program on `arguments` in `workspace_dir`, relaying stderr
    /// to `events` when given. Runs until the program ends: the caller
    /// bounds it with the timeout, and dropping the future stops it.
    pub(crate) async fn run(
        &self,
        arguments: &Value,
        env: RunEnv<'_>,
        events: Option<&EventSender>,
    ) -> ToolOutcome {
        let owner = env.host.and_then(SandboxHost::user);
        let workspace_dir = open_workspace(env.workspace_dir, owner).await?;
        let line = match env.host {
            Some(host) => {
                host.command_line(&self.sandbox, &self.argv, &workspace_dir, env.file_size_cap)
            }
            None => self
                .argv
                .split_first()
                .map(|(program, args)| (program.into(), args.iter().map(Into::into).collect())),
        };
        let Some((program, args)) = line else {
            return Err(ToolFailure::failed(format!(
                "`{}` has no command configured",
                self.name
            )));
        };
        let shown = self.argv.first().map_or("", String::as_str);
        let mut command = Command::new(&program);
        command
            .args(&args)
            .current_dir(&workspace_dir)
            .env_clear()
            .env("PATH", &self.path)
            .env("HOME", &workspace_dir)
            .env("TMPDIR", &workspace_dir)
            .env("LANG", "C.UTF-8")
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command.spawn().map_err(|err| {
            ToolFailure::failed(format!("`{}` could not start `{shown}`: {err}", self.name))
        })?;
        let mut group = ProcessGroup { id: child.id() };
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ToolFailure::failed(
                "the program's pipes could not be opened",
            ));
        };

        let payload = serde_json::to_vec(arguments).unwrap_or_default();
        let write_arguments = async move {
            // A program that exits without reading its input closes the pipe
            // first; its exit status says what happened, not this write.
            let _ = stdin.write_all(&payload).await;
            drop(stdin);
            Ok::<(), ToolFailure>(())
        };
        let wait = async {
            child.wait().await.map_err(|err| {
                ToolFailure::failed(format!("cannot wait for `{}`: {err}", self.name))
            })
        };
        let ((), stdout, stderr, status) = tokio::try_join!(
            write_arguments,
            read_stdout(stdout, self.max_output_bytes, &self.name),
            relay_stderr(stderr, events),
            wait,
        )?;
        // The program ended by itself and every holder of its output closed
        // it: a process it left behind on purpose is its own business.
        group.id = None;
        self.interpret(status, &stdout, &stderr)
    }

    /// Turns what the program did into the tool's outcome.
    fn interpret(&self, status: ExitStatus, stdout: &[u8], stderr: &str) -> ToolOutcome {
        let name = &self.name;
        let stdout = String::from_utf8_lossy(stdout);
        let stdout = stdout.trim();
        if !status.success() {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "failed".to_owned(),
            };
            let stderr = truncate_bytes_tail(stderr.trim(), STDERR_QUOTED_BYTES);
            let message = if stderr.is_empty() {
                format!("`{name}` {how} (nothing on stderr)")
            } else {
                format!("`{name}` {how}: {stderr}")
            };
            let failure = ToolFailure::failed(message);
            return Err(match serde_json::from_str::<Value>(stdout) {
                Ok(error) => failure.with_output(error.to_string()),
                Err(_) => failure,
            });
        }
        if stdout.is_empty() {
            return Err(ToolFailure::invalid_output(format!(
                "`{name}` printed nothing on stdout; a command tool must print one JSON value"
            )));
        }
        serde_json::from_str(stdout).map_err(|err| {
            ToolFailure::invalid_output(format!(
                "`{name}` printed output that is not JSON ({err}): {:?}",
                truncate_bytes(stdout, STDOUT_QUOTED_BYTES)
            ))
        })
    }
}

/// Creates the run's workspace when missing (owned by the sandbox user) and
/// returns its absolute path, so that `HOME` means the same wherever the
/// program looks (`workspaces_dir` may be relative to the service's
/// directory).
async fn open_workspace(dir: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf, ToolFailure> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Workspace::open_owned(&dir, owner).map(|workspace| workspace.root().to_path_buf())
    })
    .await
    .map_err(|err| ToolFailure::failed(format!("cannot open the run's workspace: {err}")))?
    .map_err(|err| ToolFailure::failed(format!("cannot open the run's workspace: {err}")))
}

/// Reads stdout to its end, failing as soon as it exceeds `max` bytes (which
/// ends the call and so stops the program).
async fn read_stdout(
    stdout: impl AsyncRead + Unpin,
    max: usize,
    name: &str,
) -> Result<Vec<u8>, ToolFailure> {
    let mut output = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    stdout
        .take(limit)
        .read_to_end(&mut output)
        .await
        .map_err(|err| ToolFailure::failed(format!("cannot read the output of `{name}`: {err}")))?;
    if output.len() > max {
        return Err(ToolFailure::invalid_output(format!(
            "`{name}` printed more than {max} bytes on stdout (the max_output_bytes limit)"
        )));
    }
    Ok(output)
}

/// A progress line's JSON object.
#[derive(Debug, Deserialize)]
struct ProgressLine {
    percent: Option<f64>,
    #[serde(default)]
    message: String,
}

/// Reads stderr to its end: relays each line to `events` (progress lines as
/// progress) and returns the diagnostics, bounded to their end.
async fn relay_stderr(
    mut stderr: impl AsyncRead + Unpin,
    events: Option<&EventSender>,
) -> Result<String, ToolFailure> {
    let mut diagnostics = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0_u8; MAX_LINE_BYTES];
    loop {
        // A read error ends stderr like end of file: the exit status and
        // stdout still decide the outcome.
        let read = stderr.read(&mut buffer).await.unwrap_or(0);
        let Some(bytes) = buffer.get(..read).filter(|bytes| !bytes.is_empty()) else {
            break;
        };
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            handle_line(&line, true, &mut diagnostics, events).await;
        }
        if pending.len() > MAX_LINE_BYTES {
            let piece = std::mem::take(&mut pending);
            handle_line(&piece, false, &mut diagnostics, events).await;
        }
    }
    if !pending.is_empty() {
        handle_line(&pending, false, &mut diagnostics, events).await;
    }
    Ok(diagnostics)
}

async fn handle_line(
    bytes: &[u8],
    complete: bool,
    diagnostics: &mut String,
    events: Option<&EventSender>,
) {
    let text = String::from_utf8_lossy(bytes);
    if complete && let Some(progress) = parse_progress(&text) {
        send(events, Event::Progress(progress)).await;
        return;
    }
    diagnostics.push_str(&text);
    if diagnostics.len() > 2 * STDERR_QUOTED_BYTES {
        *diagnostics = truncate_bytes_tail(diagnostics, STDERR_QUOTED_BYTES).into_owned();
    }
    send(
        events,
        Event::Output(ToolOutputChunk {
            text: text.into_owned(),
            stream: OutputStream::Stderr.into(),
        }),
    )
    .await;
}

/// A `progress: {...}` line as progress; anything else is `None` and is
/// relayed as output.
fn parse_progress(line: &str) -> Option<ToolProgress> {
    let json = line.trim_end().strip_prefix(PROGRESS_PREFIX)?;
    let progress: ProgressLine = serde_json::from_str(json.trim()).ok()?;
    // Clamped to 0..=100, so the narrowing to f32 loses nothing that matters.
    let percent = progress
        .percent
        .map(|percent| percent.clamp(0.0, 100.0) as f32);
    Some(ToolProgress {
        percent,
        message: progress.message,
    })
}

async fn send(events: Option<&EventSender>, event: Event) {
    if let Some(events) = events {
        // The receiver is gone only when the client left; the caller notices
        // and stops the tool.
        let _ = events
            .send(Ok(v1::ExecuteToolStreamResponse { event: Some(event) }))
            .await;
    }
}

/// The process group of a running program, killed when dropped unless the
/// program ended by itself.
#[derive(Debug)]
struct ProcessGroup {
    id: Option<u32>,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            kill_process_group(id);
        }
    }
}

/// Sends SIGKILL to every process of group `id`.
fn kill_process_group(id: u32) {
    let Some(group) = i32::try_from(id)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    match rustix::process::kill_process_group(group, rustix::process::Signal::KILL) {
        // Already gone: nothing left to stop.
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(err) => {
            tracing::warn!(process_group = id, error = %err, "cannot stop the processes a command tool started");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_recognised() {
        let progress =
            parse_progress("progress: {\"percent\": 50, \"message\": \"half\"}\n").unwrap();
        assert_eq!(progress.percent, Some(50.0));
        assert_eq!(progress.message, "half");
        let progress = parse_progress("progress:{\"percent\": 250}").unwrap();
        assert_eq!(progress.percent, Some(100.0));
        let progress = parse_progress("progress: {\"message\": \"working\"}").unwrap();
        assert_eq!(progress.percent, None);
        assert!(parse_progress("progress: not json").is_none());
        assert!(parse_progress("warning: progress: {}").is_none());
    }
}
