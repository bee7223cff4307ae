//! Helpers shared by agentmesh tests.
//!
//! * [`postgres`]: a real PostgreSQL server on a loopback port, started for
//!   the tests (as the unprivileged `postgres` account when running as root),
//!   with a fresh database per test, stopped when the last user drops it.
//! * [`fault_provider`]: an OpenAI-compatible model provider on a loopback
//!   port that answers deterministically and injects faults on demand (500,
//!   429, hangs, cut streams, broken SSE frames, outages), counting what it
//!   saw, for resilience tests and benchmarks.
//! * [`eventually`]: waits for a condition with a patience bound, instead of
//!   sleeping a guessed amount.
//! * [`find_program`]: locates an external program a test drives (grpcurl,
//!   python3) and says how to install it when it is missing.

#![expect(
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test helpers fail loudly"
)]

pub mod fault_provider;
pub mod postgres;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, for at most `patience`;
/// panics with `what` when it never does.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("gave up after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The path of `program` on `PATH`, or a panic saying how to get it.
pub fn find_program(program: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not on PATH; install it with: {install_hint}"))
}
