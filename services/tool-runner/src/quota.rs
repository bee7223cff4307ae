//! Workspace quotas (bytes and entries per run and per tenant) and the
//! sweeper that removes workspaces nobody used for `retention`.
//!
//! # Data flow
//!
//! ```text
//! call ─▶ Quotas::reserve(tenant, run, need) ─over─▶ QuotaHit ─▶ RESOURCE_EXHAUSTED + audit
//!            │ (first use of a tenant: scan its runs; a run left dirty: rescan it)
//!            ▼ Ticket (pending need, the run marked in use, bytes left for RLIMIT_FSIZE)
//!        tool runs ─▶ Ticket::settle: rescan the run's workspace, bump its mtime
//! sweeper (every sweep_interval) ─▶ run dirs whose mtime is older than retention
//!            and not in use: renamed aside under the lock, then deleted
//! ```
//!
//! Usage is what is on disk, found by scanning (bounded: a scan stops
//! counting past what any quota allows), so it survives restarts and sees
//! what command tools wrote. Writes of the file tool reserve their size
//! before they run (concurrent writes cannot together pass a quota);
//! command tools cannot say ahead what they will write, so a command may
//! start only while its run and tenant are under their quotas, each file it
//! writes is capped (`RLIMIT_FSIZE`) at what the quotas leave, and the scan
//! after it decides whether further calls are refused. The tool runner is
//! not told when a run ends: a workspace's last use (its directory's mtime,
//! bumped by every call) plus `retention` decides when it goes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// Prefix of a workspace renamed aside for deletion.
const TRASH_PREFIX: &str = ".trash-";

/// `[tool_runner.quota]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Bytes of regular files in one run's workspace.
    pub run_bytes: u64,
    /// Entries (files, directories, links) in one run's workspace.
    pub run_files: u64,
    /// Bytes across all workspaces of one tenant.
    pub tenant_bytes: u64,
    /// Entries across all workspaces of one tenant.
    pub tenant_files: u64,
    /// How long after its last use a workspace is removed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often the sweeper looks for expired workspaces.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            run_bytes: 100 * 1024 * 1024,
            run_files: 10_000,
            tenant_bytes: 1024 * 1024 * 1024,
            tenant_files: 100_000,
            retention: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(600),
        }
    }
}

impl QuotaConfig {
    /// Checks the settings (names relative to `[tool_runner]`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("run_bytes", self.run_bytes),
            ("run_files", self.run_files),
            ("tenant_bytes", self.tenant_bytes),
            ("tenant_files", self.tenant_files),
        ] {
            if value == 0 {
                return Err(ConfigError::new(
                    format!("quota.{field}"),
                    "must be at least 1",
                ));
            }
        }
        if self.run_bytes > self.tenant_bytes || self.run_files > self.tenant_files {
            return Err(ConfigError::new(
                "quota.run_bytes",
                "a run's quotas must not exceed its tenant's (tenant_bytes, tenant_files)",
            ));
        }
        if self.retention.is_zero() || self.sweep_interval.is_zero() {
            return Err(ConfigError::new(
                if self.retention.is_zero() {
                    "quota.retention"
                } else {
                    "quota.sweep_interval"
                },
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// Bytes and entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) bytes: u64,
    pub(crate) files: u64,
}

impl Usage {
    fn plus(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.saturating_add(other.bytes),
            files: self.files.saturating_add(other.files),
        }
    }

    fn minus(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.saturating_sub(other.bytes),
            files: self.files.saturating_sub(other.files),
        }
    }
}

/// A refusal: which quota, whose, and the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaHit {
    /// The setting: `run_bytes`, `run_files`, `tenant_bytes`, `tenant_files`.
    pub(crate) quota: &'static str,
    /// `run` or `tenant`.
    pub(crate) scope: &'static str,
    pub(crate) limit: u64,
    pub(crate) used: u64,
    pub(crate) need: u64,
}

impl QuotaHit {
    /// The refusal's message, naming the setting.
    pub(crate) fn message(&self) -> String {
        let unit = if self.quota.ends_with("bytes") {
            "bytes"
        } else {
            "entries"
        };
        format!(
            "workspace quota tool_runner.quota.{} reached: the {} uses {} of {} {unit} and this call needs {} more; delete files or use another run",
            self.quota, self.scope, self.used, self.limit, self.need
        )
    }
}

#[derive(Debug, Default)]
struct RunState {
    used: Usage,
    pending: Usage,
    /// Calls using the workspace now (the sweeper leaves it alone).
    active: u32,
    /// Changed by a call that did not settle: rescan before trusting `used`.
    dirty: bool,
}

#[derive(Debug, Default)]
struct TenantState {
    runs: HashMap<String, RunState>,
    /// Sum of the runs' `used`.
    used: Usage,
    pending: Usage,
    loaded: bool,
}

/// Every tenant's usage, and the limits.
#[derive(Debug)]
pub(crate) struct Quotas {
    config: QuotaConfig,
    root: PathBuf,
    tenants: Mutex<HashMap<String, TenantState>>,
}

/// A call's hold on its workspace: its reservation, and "in use".
#[derive(Debug)]
pub(crate) struct Ticket {
    quotas: Arc<Quotas>,
    tenant: String,
    run: String,
    need: Usage,
    /// Bytes the run and tenant had left before this call (for RLIMIT_FSIZE).
    pub(crate) bytes_left: u64,
    settled: bool,
}

impl Quotas {
    pub(crate) fn new(config: QuotaConfig, root: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            config,
            root,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        self.tenants.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Most entries a scan needs to count: past this, every quota is over.
    fn scan_bound(&self) -> u64 {
        self.config.tenant_files.saturating_add(1)
    }

    /// Marks the run in use and, when `need` is given, reserves it: refused
    /// when the run or the tenant would go over a quota. Blocking (it may
    /// scan): call on the blocking pool.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        run: &str,
        need: Option<Usage>,
    ) -> Result<Ticket, QuotaHit> {
        self.load_tenant(tenant);
        let dirty = self
            .lock()
            .get(tenant)
            .and_then(|state| state.runs.get(run))
            .is_some_and(|run| run.dirty);
        if dirty {
            self.rescan(tenant, run);
        }
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.to_owned()).or_default();
        let tenant_used = state.used.plus(state.pending);
        let run_state = state.runs.entry(run.to_owned()).or_default();
        let run_used = run_state.used.plus(run_state.pending);
        let need_now = need.unwrap_or_default();
        if need.is_some() {
            self.check(run_used, tenant_used, need_now)?;
        }
        let bytes_left = self
            .config
            .run_bytes
            .saturating_sub(run_used.bytes)
            .min(self.config.tenant_bytes.saturating_sub(tenant_used.bytes));
        run_state.pending = run_state.pending.plus(need_now);
        run_state.active = run_state.active.saturating_add(1);
        state.pending = state.pending.plus(need_now);
        Ok(Ticket {
            quotas: Arc::clone(self),
            tenant: tenant.to_owned(),
            run: run.to_owned(),
            need: need_now,
            bytes_left,
            settled: false,
        })
    }

    /// Refuses `need` when it would take the run or the tenant past a quota.
    fn check(&self, run_used: Usage, tenant_used: Usage, need: Usage) -> Result<(), QuotaHit> {
        let config = &self.config;
        let checks = [
            (
                "run_bytes",
                "run",
                config.run_bytes,
                run_used.bytes,
                need.bytes,
            ),
            (
                "run_files",
                "run",
                config.run_files,
                run_used.files,
                need.files,
            ),
            (
                "tenant_bytes",
                "tenant",
                config.tenant_bytes,
                tenant_used.bytes,
                need.bytes,
            ),
            (
                "tenant_files",
                "tenant",
                config.tenant_files,
                tenant_used.files,
                need.files,
            ),
        ];
        for (quota, scope, limit, used, need) in checks {
            if used.saturating_add(need) > limit {
                return Err(QuotaHit {
                    quota,
                    scope,
                    limit,
                    used,
                    need,
                });
            }
        }
        Ok(())
    }

    /// Scans a tenant's workspaces the first time it is seen.
    fn load_tenant(&self, tenant: &str) {
        if self.lock().get(tenant).is_some_and(|state| state.loaded) {
            return;
        }
        let dir = self.root.join(tenant);
        let mut runs = HashMap::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) && !name.starts_with('.') {
                    runs.insert(name, scan(&entry.path(), self.scan_bound()));
                }
            }
        }
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.to_owned()).or_default();
        if state.loaded {
            return;
        }
        for (run, used) in runs {
            let run_state = state.runs.entry(run).or_default();
            state.used = state.used.minus(run_state.used).plus(used);
            run_state.used = used;
        }
        state.loaded = true;
    }

    /// Scans one run's workspace and records what it holds.
    fn rescan(&self, tenant: &str, run: &str) {
        let used = scan(&self.root.join(tenant).join(run), self.scan_bound());
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.to_owned()).or_default();
        let run_state = state.runs.entry(run.to_owned()).or_default();
        state.used = state.used.minus(run_state.used).plus(used);
        run_state.used = used;
        run_state.dirty = false;
    }

    /// What a run and its tenant use now (for tests and logs).
    #[cfg(test)]
    pub(crate) fn usage(&self, tenant: &str, run: &str) -> (Usage, Usage) {
        let tenants = self.lock();
        let state = tenants.get(tenant);
        let run = state
            .and_then(|state| state.runs.get(run))
            .map(|run| run.used)
            .unwrap_or_default();
        (run, state.map(|state| state.used).unwrap_or_default())
    }

    fn release(&self, ticket: &Ticket, dirty: bool) {
        let mut tenants = self.lock();
        if let Some(state) = tenants.get_mut(&ticket.tenant) {
            state.pending = state.pending.minus(ticket.need);
            if let Some(run) = state.runs.get_mut(&ticket.run) {
                run.pending = run.pending.minus(ticket.need);
                run.active = run.active.saturating_sub(1);
                run.dirty |= dirty;
            }
        }
    }

    /// Removes every workspace last used more than `retention` ago and not
    /// in use, and leftovers of an interrupted sweep; returns how many
    /// workspaces it removed. Blocking.
    pub(crate) fn sweep(&self, now: SystemTime) -> usize {
        let Ok(tenants) = fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for tenant in tenants.flatten() {
            let name = tenant.file_name().to_string_lossy().into_owned();
            if name.starts_with(TRASH_PREFIX) {
                let _ = fs::remove_dir_all(tenant.path());
                continue;
            }
            if !tenant.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let Ok(runs) = fs::read_dir(tenant.path()) else {
                continue;
            };
            for run in runs.flatten() {
                if self.sweep_run(&name, &run, now) {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn sweep_run(&self, tenant: &str, run: &fs::DirEntry, now: SystemTime) -> bool {
        let name = run.file_name().to_string_lossy().into_owned();
        let Ok(meta) = run.metadata() else {
            return false;
        };
        let last_use = meta.modified().unwrap_or(now);
        let idle = now.duration_since(last_use).unwrap_or_default();
        if !meta.is_dir() || idle < self.config.retention {
            return false;
        }
        let trash = self.root.join(format!("{TRASH_PREFIX}{}", unique_suffix()));
        {
            let mut tenants = self.lock();
            let state = tenants.entry(tenant.to_owned()).or_default();
            if state.runs.get(&name).is_some_and(|run| run.active > 0) {
                return false;
            }
            // Renamed under the lock: a call that starts now gets a fresh
            // workspace, never a half-deleted one.
            if fs::rename(run.path(), &trash).is_err() {
                return false;
            }
            if let Some(gone) = state.runs.remove(&name) {
                state.used = state.used.minus(gone.used);
            }
        }
        // remove_dir_all does not follow symbolic links.
        if let Err(err) = fs::remove_dir_all(&trash) {
            tracing::warn!(tenant, run = %name, error = %err, "cannot remove an expired workspace");
        }
        tracing::info!(tenant, run = %name, idle_s = idle.as_secs(), "expired workspace removed");
        true
    }
}

impl Ticket {
    /// After the call: rescans the run's workspace (what it holds now
    /// counts), bumps its last use and lifts the reservation. Blocking.
    pub(crate) fn settle(mut self) {
        self.quotas.rescan(&self.tenant, &self.run);
        touch(&self.quotas.root.join(&self.tenant).join(&self.run));
        self.quotas.release(&self, false);
        self.settled = true;
    }
}

impl Drop for Ticket {
    /// A call dropped before it settled (the caller left): the workspace
    /// may have changed, so it is rescanned before it is next trusted.
    fn drop(&mut self) {
        if !self.settled {
            self.quotas.release(self, true);
        }
    }
}

/// Sets a directory's mtime to now: its last use.
fn touch(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Bytes of regular files and entries beneath `dir`, not following links;
/// stops once `bound` entries are counted (past any quota).
fn scan(dir: &Path, bound: u64) -> Usage {
    let mut usage = Usage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            usage.files = usage.files.saturating_add(1);
            if usage.files >= bound {
                return usage;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let size = entry.metadata().map(|meta| meta.len()).unwrap_or(0);
                usage.bytes = usage.bytes.saturating_add(size);
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests;
