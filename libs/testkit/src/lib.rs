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
//!   sleeping a guessed amount; [`within`] bounds one step, so a hang fails
//!   the test instead of blocking CI.
//! * [`fuzz`]: property-based fuzz targets on stable Rust, bounded by a
//!   case count in CI and by time under `make fuzz`.
//! * [`find_program`]: locates an external program a test drives (grpcurl,
//!   python3) and says how to install it when it is missing;
//!   [`mcp_everything_server`] the reference MCP server the MCP tests run.

#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    reason = "test helpers fail loudly: a failing test panics"
)]

pub mod fault_provider;
pub mod fuzz;
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

/// Runs `future` for at most `limit`; panics naming `what` when it takes
/// longer, so a hang fails the test with a reason instead of blocking CI.
pub async fn within<F: Future>(what: &str, limit: Duration, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// The path of `program` on `PATH`, or a panic saying how to get it.
pub fn find_program(program: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("`{program}` is not on PATH; install it with: {install_hint}"))
}

/// The entry point of the reference MCP server (`@modelcontextprotocol/
/// server-everything`, run with `node <entry> stdio`), installed by
/// tools/install-test-deps in tests/mcp-servers; a missing install fails the
/// test with what to run.
pub fn mcp_everything_server() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    assert!(
        path.is_file(),
        "the test MCP server is not installed at {}: run tools/install-test-deps",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_passes_the_output_through() {
        assert_eq!(
            within("a ready future", Duration::from_secs(1), async { 7 }).await,
            7
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "the hang did not finish within 5s")]
    async fn within_fails_a_hang_naming_it() {
        within(
            "the hang",
            Duration::from_secs(5),
            std::future::pending::<()>(),
        )
        .await;
    }
}
