//! The sandbox's settings: `[tool_runner.sandbox]` (the defaults every
//! command tool gets) and the per-tool overrides in
//! `[tool_runner.commands.<name>]` (`sandbox`, `network`, `limits`,
//! `read_paths`). What they guarantee is in the `sandbox` module docs and
//! docs/sandbox.md; this module only holds and checks them.

use std::path::PathBuf;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// How much isolation a command tool demands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Run the program like any child of the service (no isolation).
    Off,
    /// Apply whatever isolation the host offers; what is in force is logged
    /// at start and reported by the `sandbox` health check and metric.
    #[default]
    Auto,
    /// Refuse to start the service unless the host gives full isolation:
    /// Landlock fully enforced, a network namespace (unless the tool
    /// declares `network`), and an unprivileged user when the service runs
    /// as root.
    Required,
}

/// Resource limits of a command tool's processes (setrlimit, soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    /// CPU time of each process, in seconds (`RLIMIT_CPU`; SIGKILL beyond).
    pub cpu_seconds: u64,
    /// Address space of each process, in bytes (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// Largest file a process may write, in bytes (`RLIMIT_FSIZE`; further
    /// writes fail with EFBIG). Lowered per call to what is left of the
    /// workspace quotas.
    pub file_size_bytes: u64,
    /// Processes (and threads) of the tool's user (`RLIMIT_NPROC`). The
    /// kernel counts every process of the real user id: all command tools
    /// share `sandbox.user` when the service runs as root, and the service's
    /// own user otherwise (its threads count too).
    pub processes: u64,
    /// Open file descriptors of each process (`RLIMIT_NOFILE`).
    pub open_files: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            cpu_seconds: 60,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            file_size_bytes: 64 * 1024 * 1024,
            processes: 256,
            open_files: 256,
        }
    }
}

impl ResourceLimits {
    /// These limits with the tool's overrides applied.
    pub(crate) fn with(self, overrides: &LimitOverrides) -> Self {
        Self {
            cpu_seconds: overrides.cpu_seconds.unwrap_or(self.cpu_seconds),
            memory_bytes: overrides.memory_bytes.unwrap_or(self.memory_bytes),
            file_size_bytes: overrides.file_size_bytes.unwrap_or(self.file_size_bytes),
            processes: overrides.processes.unwrap_or(self.processes),
            open_files: overrides.open_files.unwrap_or(self.open_files),
        }
    }

    /// Every limit must be at least 1 (0 would make the program unable to
    /// start, or — for `RLIMIT_CPU` — kill it at once).
    pub(crate) fn validate(&self, setting: &str) -> Result<(), ConfigError> {
        let fields = [
            ("cpu_seconds", self.cpu_seconds),
            ("memory_bytes", self.memory_bytes),
            ("file_size_bytes", self.file_size_bytes),
            ("processes", self.processes),
            ("open_files", self.open_files),
        ];
        for (field, value) in fields {
            if value == 0 {
                return Err(ConfigError::new(
                    format!("{setting}.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(ConfigError::new(
                format!("{setting}.memory_bytes"),
                format!(
                    "{} is too small to start a program: use at least {MIN_MEMORY_BYTES}",
                    self.memory_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Below this, dynamic linking alone fails.
const MIN_MEMORY_BYTES: u64 = 16 * 1024 * 1024;

/// A tool's own limits; unset ones are `[tool_runner.sandbox.limits]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub file_size_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub open_files: Option<u64>,
}

/// `[tool_runner.sandbox]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// The mode of tools that set none.
    pub mode: SandboxMode,
    /// The program that sets a tool's sandbox up and then executes it: a
    /// tool runner binary (it has the helper mode). Empty = this very
    /// executable, when it offers the helper mode (`agentmesh-tool-runner`
    /// does); without one, `auto` tools run unsandboxed and `required`
    /// tools stop the start.
    pub helper: PathBuf,
    /// The user id command tools run as when the service runs as root (so
    /// that `RLIMIT_NPROC` holds and files outside the workspace are
    /// protected by their permissions too). Ignored otherwise.
    pub user: u32,
    /// The group id that goes with `user`.
    pub group: u32,
    /// What command tools may read and execute besides their workspace: the
    /// system's programs and libraries, and the few files of /etc that
    /// programs need (not /etc as a whole: it may hold secrets). Missing
    /// paths are skipped.
    pub read_only_paths: Vec<PathBuf>,
    /// Default resource limits.
    pub limits: ResourceLimits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let read_only_paths = [
            "/usr",
            "/bin",
            "/sbin",
            "/lib",
            "/lib32",
            "/lib64",
            "/etc/alternatives",
            "/etc/ld.so.cache",
            "/etc/ld.so.conf",
            "/etc/ld.so.conf.d",
            "/etc/localtime",
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/ssl",
            "/etc/ca-certificates",
            "/etc/mime.types",
            "/dev/urandom",
            "/dev/random",
            "/dev/zero",
        ]
        .map(PathBuf::from)
        .to_vec();
        Self {
            mode: SandboxMode::Auto,
            helper: PathBuf::new(),
            user: 65534,
            group: 65534,
            read_only_paths,
            limits: ResourceLimits::default(),
        }
    }
}

impl SandboxConfig {
    /// Checks the settings (names relative to `[tool_runner]`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate("sandbox.limits")?;
        if self.user == 0 || self.group == 0 {
            return Err(ConfigError::new(
                if self.user == 0 {
                    "sandbox.user"
                } else {
                    "sandbox.group"
                },
                "must not be 0 (root): command tools run unprivileged",
            ));
        }
        for (index, path) in self.read_only_paths.iter().enumerate() {
            if !path.is_absolute() {
                return Err(ConfigError::new(
                    format!("sandbox.read_only_paths[{index}]"),
                    format!("`{}` must be an absolute path", path.display()),
                ));
            }
        }
        if !self.helper.as_os_str().is_empty() && !self.helper.is_absolute() {
            return Err(ConfigError::new(
                "sandbox.helper",
                "must be an absolute path, or empty for this executable",
            ));
        }
        Ok(())
    }
}

/// A tool's extra read-only paths must be absolute (names the setting).
pub(crate) fn validate_read_paths(setting: &str, paths: &[PathBuf]) -> Result<(), ConfigError> {
    for (index, path) in paths.iter().enumerate() {
        if !path.is_absolute() {
            return Err(ConfigError::new(
                format!("{setting}.read_paths[{index}]"),
                format!("`{}` must be an absolute path", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_setting() {
        SandboxConfig::default().validate().unwrap();
        let config = SandboxConfig {
            limits: ResourceLimits {
                processes: 0,
                ..ResourceLimits::default()
            },
            ..SandboxConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().setting,
            "sandbox.limits.processes"
        );
        let config = SandboxConfig {
            user: 0,
            ..SandboxConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().setting, "sandbox.user");
        let config = SandboxConfig {
            read_only_paths: vec!["usr".into()],
            ..SandboxConfig::default()
        };
        assert_eq!(
            config.validate().unwrap_err().setting,
            "sandbox.read_only_paths[0]"
        );
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let limits = ResourceLimits::default().with(&LimitOverrides {
            processes: Some(8),
            ..LimitOverrides::default()
        });
        assert_eq!(limits.processes, 8);
        assert_eq!(limits.cpu_seconds, ResourceLimits::default().cpu_seconds);
    }
}
