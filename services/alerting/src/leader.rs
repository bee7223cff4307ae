//! Leader election among alerting replicas that share one PostgreSQL
//! database, and the fence that keeps a deposed leader from notifying.
//!
//! ```text
//! Election::try_acquire ─ pg_try_advisory_lock(LOCK_KEY) on a dedicated connection
//!        │ granted                     │ refused / error
//!        ▼                             ▼
//!      Fence (holds the connection)   standby: try again after `leader.retry`
//!        │ holds(): SELECT 1 on that connection (bounded by `leader.retry`)
//!        ├─▶ source batches, evaluation ticks, every delivery check it first
//!        └─▶ lost(): wakes the replica loop, which stops evaluating and notifying
//! ```
//!
//! The lock is a session-level advisory lock: PostgreSQL holds it for as
//! long as the session lives, so a query that succeeds on that same
//! connection proves the lock is still held. A leader killed with SIGKILL
//! closes its socket and PostgreSQL frees the lock at once; a leader whose
//! node vanished is noticed by the server's TCP keepalive on the lock
//! session (set below: silent for [`KEEPALIVE_IDLE_SECS`], then
//! [`KEEPALIVE_COUNT`] probes [`KEEPALIVE_INTERVAL_SECS`] apart). The leader
//! itself gives up when a check fails or takes longer than `leader.retry`,
//! which the configuration keeps well inside that bound, so a partitioned
//! leader stops before the server lets another replica lead.
//!
//! SQLite is one process's database: [`Election::Single`] always grants
//! leadership and its fence never fails.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::{Mutex, watch};

use crate::model::{Delivery, IntegrationId, Notification, Notifier};

/// The advisory lock's key: "alerting" in ASCII. Advisory locks are per
/// database, so only replicas sharing the alerting database compete.
pub(crate) const LOCK_KEY: i64 = 0x616c_6572_7469_6e67;

/// Seconds of silence before the server probes the lock session.
pub(crate) const KEEPALIVE_IDLE_SECS: u64 = 5;
/// Seconds between the server's keepalive probes.
pub(crate) const KEEPALIVE_INTERVAL_SECS: u64 = 2;
/// Unanswered probes after which the server drops the session (and the lock).
pub(crate) const KEEPALIVE_COUNT: u64 = 3;

/// The longest time the server keeps the lock of a leader whose node
/// vanished: keepalive idle plus every probe.
#[cfg(test)]
fn vanished_leader_bound() -> Duration {
    Duration::from_secs(KEEPALIVE_IDLE_SECS + KEEPALIVE_INTERVAL_SECS * KEEPALIVE_COUNT)
}

/// The reason a delivery refused by the fence gives.
const FENCED: &str = "not delivered: this replica is no longer the leader";

/// How leadership is decided.
pub(crate) enum Election {
    /// SQLite: the only process on its database always leads.
    Single,
    /// PostgreSQL: whoever holds the advisory lock leads.
    Postgres {
        options: Box<PgConnectOptions>,
        /// Bound of a connection, a lock attempt and a check.
        timeout: Duration,
        /// The standby's connection, kept between attempts.
        connection: Mutex<Option<PgConnection>>,
    },
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single => "Election::Single",
            Self::Postgres { .. } => "Election::Postgres",
        })
    }
}

impl Election {
    /// The election for the database at `url`: PostgreSQL URLs compete for
    /// the lock, anything else is single-process.
    pub(crate) fn for_url(url: &str, timeout: Duration) -> Result<Self, String> {
        if agentmesh_storage::Backend::of(url) != Some(agentmesh_storage::Backend::Postgres) {
            return Ok(Self::Single);
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| format!("the database URL cannot be used for the leader lock: {err}"))?
            .application_name("agentmesh-alerting-leader")
            // Server-side keepalive of this session: a vanished leader's
            // lock is freed within `vanished_leader_bound()`.
            .options([
                ("tcp_keepalives_idle", KEEPALIVE_IDLE_SECS.to_string()),
                (
                    "tcp_keepalives_interval",
                    KEEPALIVE_INTERVAL_SECS.to_string(),
                ),
                ("tcp_keepalives_count", KEEPALIVE_COUNT.to_string()),
            ]);
        Ok(Self::Postgres {
            options: Box::new(options),
            timeout,
            connection: Mutex::new(None),
        })
    }

    /// One attempt: the fence of a new term when this replica now leads,
    /// `None` when another replica holds the lock.
    pub(crate) async fn try_acquire(&self) -> Result<Option<Fence>, String> {
        let Self::Postgres {
            options,
            timeout,
            connection,
        } = self
        else {
            return Ok(Some(Fence::single()));
        };
        let mut slot = connection.lock().await;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => tokio::time::timeout(*timeout, PgConnection::connect_with(options))
                .await
                .map_err(|_| format!("no connection for the leader lock within {timeout:?}"))?
                .map_err(|err| format!("no connection for the leader lock: {err}"))?,
        };
        let granted = tokio::time::timeout(
            *timeout,
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn),
        )
        .await
        .map_err(|_| format!("the leader lock attempt took longer than {timeout:?}"))?
        .map_err(|err| format!("the leader lock attempt failed: {err}"))?;
        if granted {
            // The store's fence names the lock session by its backend pid.
            let pid = tokio::time::timeout(
                *timeout,
                sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut conn),
            )
            .await
            .map_err(|_| format!("the leader lock session did not answer within {timeout:?}"))?
            .map_err(|err| format!("the leader lock session failed: {err}"))?;
            return Ok(Some(Fence::holding(conn, pid, *timeout)));
        }
        // Kept for the next attempt: no new session every retry.
        *slot = Some(conn);
        Ok(None)
    }

    /// Closes the standby's connection (at shutdown).
    pub(crate) async fn close(&self) {
        if let Self::Postgres { connection, .. } = self
            && let Some(conn) = connection.lock().await.take()
        {
            let _ = conn.close().await;
        }
    }
}

/// One term of leadership: holds the lock (its connection) and answers
/// whether it is still held. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Fence {
    inner: Arc<FenceInner>,
}

struct FenceInner {
    /// The lock's session; `None` inside for a lost term. The outer `None`
    /// is the single-process term, which holds nothing.
    lock: Option<Mutex<Option<PgConnection>>>,
    /// The backend pid of the lock's session (PostgreSQL only).
    pid: Option<i32>,
    timeout: Duration,
    lost: watch::Sender<bool>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("lost", &*self.inner.lost.borrow())
            .finish_non_exhaustive()
    }
}

impl Fence {
    /// The single-process term: held until released.
    pub(crate) fn single() -> Self {
        Self::new(None, None, Duration::ZERO)
    }

    fn holding(conn: PgConnection, pid: i32, timeout: Duration) -> Self {
        Self::new(Some(Mutex::new(Some(conn))), Some(pid), timeout)
    }

    fn new(lock: Option<Mutex<Option<PgConnection>>>, pid: Option<i32>, timeout: Duration) -> Self {
        let (lost, _) = watch::channel(false);
        Self {
            inner: Arc::new(FenceInner {
                lock,
                pid,
                timeout,
                lost,
            }),
        }
    }

    /// The backend pid of the lock's session, which the store's writes
    /// check in `pg_locks` (`None` for the single-process term).
    pub(crate) fn lock_pid(&self) -> Option<i32> {
        self.inner.pid
    }

    /// Whether the lock is still held, asked of the database on the lock's
    /// own connection. A failed or slow check ends the term: the connection
    /// is dropped (freeing the lock if the server still has it) and
    /// [`lost`](Self::lost) resolves.
    pub(crate) async fn holds(&self) -> bool {
        if *self.inner.lost.borrow() {
            return false;
        }
        let Some(lock) = &self.inner.lock else {
            return true;
        };
        let mut slot = lock.lock().await;
        let Some(conn) = slot.as_mut() else {
            return false;
        };
        let checked = tokio::time::timeout(
            self.inner.timeout,
            sqlx::query("SELECT 1").execute(&mut *conn),
        )
        .await;
        let error = match checked {
            Ok(Ok(_)) => return true,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {:?}", self.inner.timeout),
        };
        tracing::error!(%error, "the leader lock's connection failed; this replica stops notifying at once");
        drop(slot.take());
        self.inner.lost.send_replace(true);
        false
    }

    /// Resolves once the term has ended.
    pub(crate) async fn lost(&self) {
        let mut lost = self.inner.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Waits here for good when the term has ended (the replica loop then
    /// stops the task), so the caller never acts for a deposed leader.
    pub(crate) async fn ensure(&self) {
        if !self.holds().await {
            std::future::pending::<()>().await;
        }
    }

    /// Ends the term and frees the lock at once (closing its session).
    pub(crate) async fn release(&self) {
        self.inner.lost.send_replace(true);
        if let Some(lock) = &self.inner.lock
            && let Some(mut conn) = lock.lock().await.take()
        {
            // Unlock before closing: a closed session's locks are freed only
            // once its backend has exited, which lags the close, and a
            // standby should find the lock free as soon as this returns.
            let _ = tokio::time::timeout(
                self.inner.timeout,
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(LOCK_KEY)
                    .execute(&mut conn),
            )
            .await;
            let _ = conn.close().await;
        }
    }
}

/// The receivers behind the fence: each delivery first checks that the
/// lock is still held, and is cut off as soon as the term ends.
pub(crate) struct FencedNotifier {
    pub(crate) inner: Arc<dyn Notifier>,
    pub(crate) fence: Fence,
}

impl Notifier for FencedNotifier {
    fn integrations(&self, receiver: &str) -> Vec<IntegrationId> {
        self.inner.integrations(receiver)
    }

    fn deliver(
        &self,
        receiver: &str,
        integration: IntegrationId,
        notification: Notification,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Delivery> {
        let delivery = self
            .inner
            .deliver(receiver, integration, notification, deadline);
        let fence = self.fence.clone();
        Box::pin(async move {
            let refused = || Delivery {
                attempts: 0,
                error: Some(FENCED.to_owned()),
            };
            if !fence.holds().await {
                return refused();
            }
            tokio::select! {
                biased;
                () = fence.lost() => refused(),
                done = delivery => done,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_leader_gives_up_before_the_server_frees_its_lock() {
        // The server counts from the leader's last packet (up to one retry
        // before the partition); the leader stops within a retry plus a
        // check bounded by a retry after it.
        let retry = crate::config::MAX_LEADER_RETRY;
        assert!(retry * 3 < vanished_leader_bound());
    }

    #[tokio::test]
    async fn a_terminated_lock_session_ends_the_term() {
        let server = agentmesh_testkit::postgres::shared().await;
        let url = server.create_database("alerting_fence").await;
        let election = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        let fence = election.try_acquire().await.unwrap().unwrap();
        let mut other = PgConnection::connect(&url).await.unwrap();
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'agentmesh-alerting-leader' \
             AND datname = current_database()",
        )
        .fetch_all(&mut other)
        .await
        .unwrap();
        assert_eq!(terminated, [true]);
        assert!(!fence.holds().await);
        fence.lost().await;
        let next = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        assert!(next.try_acquire().await.unwrap().is_some());
        other.close().await.unwrap();
    }

    #[tokio::test]
    async fn the_single_process_term_holds_until_released() {
        let election = Election::for_url("sqlite://x.db", Duration::from_secs(1)).unwrap();
        let fence = election.try_acquire().await.unwrap().unwrap();
        assert!(fence.holds().await);
        fence.release().await;
        assert!(!fence.holds().await);
        fence.lost().await;
    }

    #[tokio::test]
    async fn one_of_two_replicas_holds_the_lock_and_the_other_takes_over() {
        let server = agentmesh_testkit::postgres::shared().await;
        let url = server.create_database("alerting_leader").await;
        let first = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        let second = Election::for_url(&url, Duration::from_secs(5)).unwrap();
        let leading = first.try_acquire().await.unwrap().unwrap();
        assert!(second.try_acquire().await.unwrap().is_none());
        assert!(leading.holds().await);
        leading.release().await;
        assert!(!leading.holds().await);
        let next = second.try_acquire().await.unwrap().unwrap();
        assert!(next.holds().await);
        assert!(first.try_acquire().await.unwrap().is_none());
        next.release().await;
        first.close().await;
        second.close().await;
    }
}
