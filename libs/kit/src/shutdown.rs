//! Shutdown signals.
//!
//! The first SIGTERM or SIGINT starts a graceful shutdown; a second one ends
//! the process at once (exit code 130), for the operator who does not want to
//! wait for the drain.

use std::io::Write;

/// Resolves on the first SIGTERM or SIGINT, and arms the immediate exit on the
/// second.
pub async fn signal() {
    wait_for_signal().await;
    tracing::info!("signal received: shutting down gracefully (send it again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        let _ = writeln!(std::io::stderr(), "second signal: exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // No signal handling: only Ctrl-C through tokio's portable path.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
