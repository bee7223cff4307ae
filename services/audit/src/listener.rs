//! The other replicas' commits, at once (PostgreSQL only): one task per
//! replica LISTENs for the notification every commit of the log sends
//! (`store::notify`) and wakes this replica's `Subscribe` streams.
//!
//! ```text
//! replica A: writer ── COMMIT + pg_notify("<last_seq> <origin>") ──▶ PostgreSQL
//!                                                                       │
//! replica B: listener (its own connection, LISTEN agentmesh_audit) ◀────┘
//!              │ not B's own commit, nor one it already woke for:
//!              │ read the log's last sequence number from the store
//!              ▼
//!            writer's live tail: Live::Elsewhere(last_seq)
//!              ▼
//!            every Subscribe stream reads the store from its position
//! ```
//!
//! The notification is a wake-up and the store stays the source of truth,
//! so a notification that never arrives costs time, not events: whenever
//! the listener starts listening — at start-up, and after it lost its
//! connection and made a new one (every second until it succeeds) — it
//! wakes every stream once, since commits made meanwhile notified no one
//! here; and the streams still poll the store at every heartbeat. Notifications that arrive
//! together are answered with one read of the store.
//!
//! The connection is its own (a pool of one, built from the service pool's
//! options), so it never takes a connection the writer or the reads need.

use std::time::Duration;

use agentmesh_storage::StoreError;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use crate::metrics::AuditMetrics;
use crate::store::Store;
use crate::store::notify::{CHANNEL, Notice};
use crate::writer::Writer;

/// The pause before listening again after the connection failed.
const RETRY: Duration = Duration::from_secs(1);

/// How the listener's session is named in `pg_stat_activity`.
pub(crate) const APPLICATION_NAME: &str = "agentmesh-audit-listener";

/// Listens for other replicas' commits until the task is dropped.
pub(crate) async fn run(pool: PgPool, store: Store, writer: Writer, connect_timeout: Duration) {
    let options = (*pool.connect_options())
        .clone()
        .application_name(APPLICATION_NAME);
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        // A listening session is idle by nature: never closed for it.
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let metrics = writer.metrics().clone();
    loop {
        let lost = match listen(&own).await {
            Ok(listener) => follow(listener, &store, &writer, &metrics).await,
            Err(err) => Stopped::Failed(err),
        };
        metrics.listening(false);
        tracing::warn!(
            error = %lost,
            retry_in = ?RETRY,
            "the audit service is not listening for other replicas' commits; their events reach subscribers at the next heartbeat until it is back"
        );
        tokio::time::sleep(RETRY).await;
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported (`Ok(None)`), not silently replaced
    // inside `try_recv`: this task reconnects, so that the gauge says when
    // nobody listens and the wake-up follows every new LISTEN.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Why the listener stopped listening.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("the listening connection was lost")]
    ConnectionLost,
    #[error(transparent)]
    Failed(StoreError),
}

/// Wakes the subscribers for each commit of another replica until the
/// connection fails; returns why.
async fn follow(
    mut listener: PgListener,
    store: &Store,
    writer: &Writer,
    metrics: &AuditMetrics,
) -> Stopped {
    metrics.listening(true);
    tracing::info!(channel = CHANNEL, "listening for other replicas' commits");
    let mut known = match wake(store, writer).await {
        Ok(last_seq) => last_seq,
        Err(err) => return Stopped::Failed(err),
    };
    loop {
        let woken = match listener.try_recv().await {
            Ok(Some(first)) => {
                let mut news = is_news(first.payload(), store.origin(), known, metrics);
                // Answer everything already received with one read.
                while let Some(next) = listener.next_buffered() {
                    news |= is_news(next.payload(), store.origin(), known, metrics);
                }
                if !news {
                    continue;
                }
                wake(store, writer).await
            }
            Ok(None) => return Stopped::ConnectionLost,
            Err(err) => return Stopped::Failed(err.into()),
        };
        match woken {
            Ok(last_seq) => known = known.max(last_seq),
            Err(err) => return Stopped::Failed(err),
        }
    }
}

/// Whether a notification may announce events this replica's subscribers
/// have not been woken for. One that is not a commit notification (sent by
/// something else) wakes them too: reading the store costs little and
/// misses nothing.
fn is_news(payload: &str, origin: &str, known: i64, metrics: &AuditMetrics) -> bool {
    match Notice::parse(payload) {
        Some(notice) if notice.origin == origin => false,
        Some(notice) => {
            metrics.notified();
            notice.last_seq > known
        }
        None => {
            tracing::debug!(
                payload_bytes = payload.len(),
                "an unexpected notification on the audit channel"
            );
            true
        }
    }
}

/// Reads the log's last sequence number and wakes every subscription up to
/// it.
async fn wake(store: &Store, writer: &Writer) -> Result<i64, StoreError> {
    let (last_seq, _) = store.state().await?;
    writer.committed_elsewhere(last_seq);
    Ok(last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::notify::payload;

    #[test]
    fn own_and_known_commits_are_no_news_and_the_unexpected_is() {
        let registry = agentmesh_kit::metrics::prometheus::Registry::new();
        let metrics = AuditMetrics::new(&registry).unwrap();
        assert!(!is_news(&payload(9, "me"), "me", 5, &metrics));
        assert!(!is_news(&payload(5, "other"), "me", 5, &metrics));
        assert!(is_news(&payload(6, "other"), "me", 5, &metrics));
        assert!(is_news("hello", "me", 5, &metrics));
        assert!(is_news("999999999999 not-an-origin", "me", 5, &metrics));
    }
}
