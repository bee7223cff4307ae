//! Sandboxing command tools: resource limits, no network unless the tool
//! declares it, a file-system view of only its workspace (read-write) and
//! the system (read-only), and an unprivileged user when the service runs
//! as root.
//!
//! # Why a re-executed helper, not `pre_exec`
//!
//! The sandbox must be set up in the child between `fork` and `execve`.
//! `CommandExt::pre_exec` is `unsafe` (this crate forbids it) and may only
//! do async-signal-safe work in a copy of a multi-threaded process, which
//! building a Landlock ruleset (allocations, opening paths) is not. So the
//! tool runner starts a helper — a tool runner binary in its hidden helper
//! mode ([`helper_main`], called first thing by `main`) — which, as a fresh
//! single-threaded process, sets the sandbox up with ordinary calls and then
//! executes the program (see `helper` for the steps). The cost is one extra
//! `execve` per call.
//!
//! # Data flow
//!
//! ```text
//! start:  SandboxConfig ─▶ SandboxHost::start ─probe─▶ helper --probe ─▶ Achieved (JSON)
//!                          └▶ log line, `sandbox` health check, agentmesh_tool_sandbox_info
//!                          └▶ required tools checked: refused when the host falls short
//! call:   CommandTool::run ─▶ SandboxHost::command (Spec as JSON) ─▶ helper --exec ─▶ program
//! ```
//!
//! # What each configuration guarantees
//!
//! * Landlock fully enforced: the program (and its children) can open only
//!   files beneath the workspace (read-write) and the read-only paths
//!   (read, execute); nothing else, whatever the file permissions.
//! * Network namespace (the service has CAP_SYS_ADMIN, e.g. runs as root):
//!   no network at all — TCP, UDP, raw, ICMP and abstract UNIX sockets —
//!   for tools that do not declare `network`. Without it, Landlock still
//!   denies TCP bind and connect (ABI 4+), but UDP is possible.
//! * Unprivileged user (the service runs as root): `RLIMIT_NPROC` holds
//!   (the kernel ignores it for root), and the program has no capabilities.
//! * Resource limits always apply when the helper runs.
//!
//! `docs/sandbox.md` has the whole table.

mod helper;
mod settings;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

pub(crate) use settings::validate_read_paths;
pub use settings::{LimitOverrides, ResourceLimits, SandboxConfig, SandboxMode};

/// argv[1] of the helper mode that runs a program.
pub(crate) const EXEC_FLAG: &str = "--agentmesh-sandbox-exec";
/// argv[1] of the helper mode that reports what the host can give.
pub(crate) const PROBE_FLAG: &str = "--agentmesh-sandbox-probe";

/// Set when this executable offers the helper mode (its `main` called
/// [`helper_main`]).
static SELF_IS_HELPER: AtomicBool = AtomicBool::new(false);

/// The helper mode's entry point: call it first thing in `main`. When the
/// process was started as the sandbox helper, it sets the sandbox up and
/// executes the tool's program (returning only on failure), or probes, and
/// returns the exit code; otherwise it notes that this executable can serve
/// as the helper and returns `None`.
pub fn helper_main() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|arg| arg.to_str()) {
        Some(mode @ (EXEC_FLAG | PROBE_FLAG)) => {
            Some(helper::main(mode, args.get(2..).unwrap_or_default()))
        }
        _ => {
            SELF_IS_HELPER.store(true, Ordering::Relaxed);
            None
        }
    }
}

/// What the helper is told to do for one program: JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub(crate) limits: ResourceLimits,
    /// A new network namespace and no TCP (the tool did not declare network).
    pub(crate) isolate_network: bool,
    /// Read-write beneath these (the workspace, /dev/null).
    pub(crate) read_write: Vec<PathBuf>,
    /// Read and execute beneath these.
    pub(crate) read_only: Vec<PathBuf>,
    /// The user and group to execute the program as.
    pub(crate) user: Option<(u32, u32)>,
    /// Fail rather than run with less than everything.
    pub(crate) strict: bool,
}

/// What the helper managed to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Achieved {
    pub(crate) limits: bool,
    pub(crate) network_namespace: bool,
    /// The kernel's Landlock ABI (0: none).
    pub(crate) landlock_abi: i32,
    pub(crate) landlock_full: bool,
    pub(crate) landlock_any: bool,
    pub(crate) landlock_error: String,
}

impl Achieved {
    /// What a strict spec lacks; `Ok` when nothing.
    pub(crate) fn check_complete(&self, spec: &Spec) -> Result<(), String> {
        let missing = self.missing(spec.isolate_network);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "cannot isolate as required: {}",
                missing.join("; ")
            ))
        }
    }

    /// What is missing for full isolation, in words.
    pub(crate) fn missing(&self, isolate_network: bool) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.limits {
            missing.push("resource limits could not be set".to_owned());
        }
        if !self.landlock_full {
            missing.push(if self.landlock_error.is_empty() {
                format!(
                    "Landlock is not fully enforced (kernel ABI {}; 6 or later needed)",
                    self.landlock_abi
                )
            } else {
                format!("Landlock failed: {}", self.landlock_error)
            });
        }
        if isolate_network && !self.network_namespace {
            missing.push(
                "no network namespace (needs CAP_SYS_ADMIN): UDP would not be blocked".to_owned(),
            );
        }
        missing
    }
}

/// A tool's sandbox settings, resolved from its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolSandbox {
    pub(crate) mode: SandboxMode,
    pub(crate) network: bool,
    pub(crate) limits: ResourceLimits,
    /// Its own read-only paths: its `read_paths`, plus its program and the
    /// absolute paths among its arguments (scripts), so that the tool can
    /// run at all.
    pub(crate) read_paths: Vec<PathBuf>,
}

impl ToolSandbox {
    /// The sandbox of a tool with `argv`, its overrides and the defaults.
    pub(crate) fn resolve(
        defaults: &SandboxConfig,
        mode: Option<SandboxMode>,
        network: bool,
        limits: &LimitOverrides,
        read_paths: &[PathBuf],
        argv: &[String],
    ) -> Self {
        let mut paths = read_paths.to_vec();
        paths.extend(
            argv.iter()
                .map(PathBuf::from)
                .filter(|path| path.is_absolute()),
        );
        Self {
            mode: mode.unwrap_or(defaults.mode),
            network,
            limits: defaults.limits.with(limits),
            read_paths: paths,
        }
    }
}

/// What the host offers, found at start, and how to start a sandboxed
/// program.
#[derive(Debug, Clone)]
pub(crate) struct SandboxHost {
    /// The helper program; `None`: none available, programs run directly.
    helper: Option<PathBuf>,
    /// The user to run as (set when the service runs as root).
    user: Option<(u32, u32)>,
    read_only: Vec<PathBuf>,
    /// What the probe achieved (default: nothing, when there is no helper).
    achieved: Achieved,
}

impl SandboxHost {
    /// Finds the helper and probes what it can apply on this host.
    pub(crate) fn start(config: &SandboxConfig, workspaces_dir: &Path) -> Self {
        let helper = if !config.helper.as_os_str().is_empty() {
            Some(config.helper.clone())
        } else if SELF_IS_HELPER.load(Ordering::Relaxed) {
            std::env::current_exe().ok()
        } else {
            None
        };
        let user = rustix::process::geteuid()
            .is_root()
            .then_some((config.user, config.group));
        let mut host = Self {
            helper,
            user,
            read_only: config.read_only_paths.clone(),
            achieved: Achieved::default(),
        };
        host.achieved = host.probe(&config.limits, workspaces_dir);
        host
    }

    fn probe(&self, limits: &ResourceLimits, workspaces_dir: &Path) -> Achieved {
        let Some(helper) = &self.helper else {
            return Achieved::default();
        };
        let spec = self.spec(
            &ToolSandbox {
                mode: SandboxMode::Auto,
                network: false,
                limits: *limits,
                read_paths: Vec::new(),
            },
            workspaces_dir,
            None,
        );
        let output = std::process::Command::new(helper)
            .arg(PROBE_FLAG)
            .arg(serde_json::to_string(&spec).unwrap_or_default())
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output();
        match output {
            Ok(output) if output.status.success() => serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|err| Achieved {
                    landlock_error: format!("the helper's probe answered no report: {err}"),
                    ..Achieved::default()
                }),
            Ok(output) => Achieved {
                landlock_error: format!(
                    "the helper's probe failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                ..Achieved::default()
            },
            Err(err) => Achieved {
                landlock_error: format!("cannot start the helper `{}`: {err}", helper.display()),
                ..Achieved::default()
            },
        }
    }

    /// The helper's instructions for one call of `tool` in `workspace`;
    /// `file_size_cap` lowers `RLIMIT_FSIZE` (what the quotas leave).
    pub(crate) fn spec(
        &self,
        tool: &ToolSandbox,
        workspace: &Path,
        file_size_cap: Option<u64>,
    ) -> Spec {
        let mut limits = tool.limits;
        if let Some(cap) = file_size_cap {
            limits.file_size_bytes = limits.file_size_bytes.min(cap.max(1));
        }
        let mut read_only = self.read_only.clone();
        read_only.extend(tool.read_paths.iter().cloned());
        Spec {
            limits,
            isolate_network: !tool.network,
            read_write: vec![workspace.to_path_buf(), PathBuf::from("/dev/null")],
            read_only,
            user: self.user,
            strict: tool.mode == SandboxMode::Required,
        }
    }

    /// The program to start for `argv` (the helper, or the program itself
    /// when the tool's mode is `off` or there is no helper) and its
    /// arguments.
    pub(crate) fn command_line(
        &self,
        tool: &ToolSandbox,
        argv: &[String],
        workspace: &Path,
        file_size_cap: Option<u64>,
    ) -> Option<(OsString, Vec<OsString>)> {
        let (program, args) = argv.split_first()?;
        match (&self.helper, tool.mode) {
            (Some(helper), SandboxMode::Auto | SandboxMode::Required) => {
                let spec = self.spec(tool, workspace, file_size_cap);
                let mut line: Vec<OsString> = vec![
                    EXEC_FLAG.into(),
                    serde_json::to_string(&spec).unwrap_or_default().into(),
                    "--".into(),
                    program.into(),
                ];
                line.extend(args.iter().map(OsString::from));
                Some((helper.clone().into_os_string(), line))
            }
            _ => Some((program.into(), args.iter().map(OsString::from).collect())),
        }
    }

    /// The user programs run as, when not the service's.
    pub(crate) fn user(&self) -> Option<(u32, u32)> {
        self.user.filter(|_| self.helper.is_some())
    }

    /// What a tool gets short of full isolation (empty: nothing missing).
    pub(crate) fn shortfall(&self, tool: &ToolSandbox) -> Vec<String> {
        if tool.mode == SandboxMode::Off {
            return vec!["sandbox = \"off\"".to_owned()];
        }
        if self.helper.is_none() {
            return vec![
                "no sandbox helper (set sandbox.helper to a tool runner binary)".to_owned(),
            ];
        }
        self.achieved.missing(!tool.network)
    }

    /// The labels of `agentmesh_tool_sandbox_info` and the start-up log:
    /// file system, network and user isolation in force.
    pub(crate) fn summary(&self) -> Summary {
        let helper = self.helper.is_some();
        let achieved = &self.achieved;
        Summary {
            filesystem: match (helper, achieved.landlock_full, achieved.landlock_any) {
                (true, true, _) => "landlock",
                (true, false, true) => "landlock_partial",
                _ => "none",
            },
            network: match (helper, achieved.network_namespace, achieved.landlock_any) {
                (true, true, _) => "namespace",
                (true, false, true) => "landlock_tcp",
                _ => "none",
            },
            user: if self.user().is_some() {
                "unprivileged"
            } else {
                "service"
            },
            limits: helper && achieved.limits,
            landlock_abi: achieved.landlock_abi,
        }
    }
}

/// The isolation in force, in bounded words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) filesystem: &'static str,
    pub(crate) network: &'static str,
    pub(crate) user: &'static str,
    pub(crate) limits: bool,
    pub(crate) landlock_abi: i32,
}

#[cfg(test)]
mod tests;
