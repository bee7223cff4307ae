//! The alerting service's database, on SQLite or PostgreSQL: alerts,
//! silences, the notification log, the rule windows and the position in
//! the audit stream; `leadership` the leader's advertised address and the
//! fence its writes pass.
//!
//! The state that follows from audit events (rule windows, alerts, the
//! cursor) is written by [`Store::commit`] in one transaction per processed
//! batch, so after a crash the service resumes from a cursor that matches
//! its windows exactly: no event missed, none counted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentmesh_storage::{
    BeginWrite as _, Database, EmbeddedMigration, Migrations, StoreError, with_pool,
};
use futures::future::BoxFuture;
use sqlx::Row;

use crate::matcher::Matcher;
use crate::model::{
    Alert, AlertState, Fingerprint, NotificationLog, NotifiedEntry, NotifiedKey, PersistError,
};
use crate::silence::Silence;

mod leadership;

pub(crate) use leadership::LeaderAddress;

/// The alerting schema, per backend.
pub(crate) static MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        EmbeddedMigration {
            version: 1,
            description: "alerts, silences, notification log, rule windows, stream position",
            sql: include_str!("../migrations/sqlite/0001_alerting.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "the leading replica and its address",
            sql: include_str!("../migrations/sqlite/0002_leader.sql"),
        },
    ],
    postgres: &[
        EmbeddedMigration {
            version: 1,
            description: "alerts, silences, notification log, rule windows, stream position",
            sql: include_str!("../migrations/postgres/0001_alerting.sql"),
        },
        EmbeddedMigration {
            version: 2,
            description: "the leading replica and its address",
            sql: include_str!("../migrations/postgres/0002_leader.sql"),
        },
    ],
};

/// The `alerting_state` row holding the audit cursor.
const CURSOR: &str = "audit_cursor";

impl From<StoreError> for PersistError {
    fn from(err: StoreError) -> Self {
        Self(err.to_string())
    }
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// Where to resume the audit stream; `None` on the first start.
    pub(crate) cursor: Option<String>,
    /// (rule, group key, state) of every rule group.
    pub(crate) rule_groups: Vec<(String, String, String)>,
    pub(crate) alerts: Vec<Alert>,
    pub(crate) silences: Vec<Silence>,
}

/// The state changed by one or more processed batches, written atomically.
/// Later changes to the same key replace earlier ones, so a commit that
/// failed can be merged into the next and retried.
#[derive(Debug, Default)]
pub(crate) struct Commit {
    /// The new stream position, if it moved.
    pub(crate) cursor: Option<String>,
    /// Rule group states to write (`Some`) or delete (`None`).
    pub(crate) rule_groups: BTreeMap<(String, String), Option<String>>,
    /// Alerts to insert or replace (`Some`) or delete (`None`).
    pub(crate) alerts: BTreeMap<Fingerprint, Option<Alert>>,
}

impl Commit {
    /// True when there is nothing to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.cursor.is_none() && self.rule_groups.is_empty() && self.alerts.is_empty()
    }

    /// Adds `later` changes on top of these.
    pub(crate) fn merge(&mut self, later: Self) {
        if later.cursor.is_some() {
            self.cursor = later.cursor;
        }
        self.rule_groups.extend(later.rule_groups);
        self.alerts.extend(later.alerts);
    }
}

/// The alerting database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Database,
    /// A leader's store: the backend pid of its lock session. The writes
    /// that matter (cursor, notification log) check inside their
    /// transaction that this session still holds the leader lock.
    fence: Option<i32>,
}

/// Microseconds since the Unix epoch (0 before it).
pub(crate) fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The time `micros` after the Unix epoch.
pub(crate) fn time_of(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Maps and lists of strings always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("{what}: {err}")))
}

fn alert_from_row<R>(row: &R) -> Result<Alert, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i32: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> f64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let labels: String = row.try_get("labels")?;
    let annotations: String = row.try_get("annotations")?;
    let state: i32 = row.try_get("state")?;
    let labels = from_json("alert labels", &labels)?;
    let fingerprint: String = row.try_get("fingerprint")?;
    let alert = Alert {
        fingerprint: Fingerprint::of(&labels),
        labels,
        annotations: from_json("alert annotations", &annotations)?,
        state: AlertState::try_from(state)
            .map_err(|_| StoreError::Corrupt(format!("unknown alert state {state}")))?,
        starts_at: row.try_get::<Option<i64>, _>("starts_at")?.map(time_of),
        ends_at: row.try_get::<Option<i64>, _>("ends_at")?.map(time_of),
        updated_at: time_of(row.try_get("updated_at")?),
        active_at: row.try_get::<Option<i64>, _>("active_at")?.map(time_of),
        rule: row.try_get("rule")?,
        generator_url: row.try_get("generator_url")?,
        value: row.try_get("value")?,
        silenced_by: Vec::new(),
        inhibited_by: Vec::new(),
    };
    if alert.fingerprint.to_string() != fingerprint {
        return Err(StoreError::Corrupt(format!(
            "alert {fingerprint}: its labels have fingerprint {}",
            alert.fingerprint
        )));
    }
    Ok(alert)
}

fn silence_from_row<R>(row: &R) -> Result<Silence, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let matchers: Vec<String> =
        from_json("silence matchers", &row.try_get::<String, _>("matchers")?)?;
    let matchers = matchers
        .iter()
        .map(|text| Matcher::parse(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| StoreError::Corrupt(format!("silence {id}: {err}")))?;
    Ok(Silence {
        id,
        matchers,
        starts_at: time_of(row.try_get("starts_at")?),
        ends_at: time_of(row.try_get("ends_at")?),
        created_by: row.try_get("created_by")?,
        comment: row.try_get("comment")?,
        created_at: time_of(row.try_get("created_at")?),
        updated_at: time_of(row.try_get("updated_at")?),
    })
}

impl Store {
    /// A store over an opened, migrated database.
    pub(crate) fn new(db: Database) -> Self {
        Self { db, fence: None }
    }

    /// The same database, for a leader whose lock session is the backend
    /// `lock_pid` (`None`: nothing to check, the single-process term).
    pub(crate) fn fenced(&self, lock_pid: Option<i32>) -> Self {
        Self {
            db: self.db.clone(),
            fence: lock_pid,
        }
    }

    /// Reads everything the service needs at start.
    pub(crate) async fn load(&self) -> Result<Loaded, StoreError> {
        with_pool!(&self.db, |pool| {
            async {
                let cursor: Option<String> =
                    sqlx::query_scalar("SELECT value FROM alerting_state WHERE name = $1")
                        .bind(CURSOR)
                        .fetch_optional(pool)
                        .await?;
                let rule_groups = sqlx::query("SELECT rule, group_key, state FROM rule_groups")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                let alerts = sqlx::query("SELECT * FROM alerts")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(alert_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let silences = sqlx::query("SELECT * FROM silences")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(silence_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Loaded {
                    cursor,
                    rule_groups,
                    alerts,
                    silences,
                })
            }
            .await
        })
    }

    /// The stored alerts and silences (what a standby answers reads from).
    pub(crate) async fn alerts_and_silences(
        &self,
    ) -> Result<(Vec<Alert>, Vec<Silence>), StoreError> {
        let alerts = with_pool!(&self.db, |pool| {
            async {
                sqlx::query("SELECT * FROM alerts")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(alert_from_row)
                    .collect::<Result<Vec<_>, StoreError>>()
            }
            .await
        })?;
        Ok((alerts, self.silences().await?))
    }

    /// The stored silences.
    pub(crate) async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        with_pool!(&self.db, |pool| {
            async {
                sqlx::query("SELECT * FROM silences")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(silence_from_row)
                    .collect::<Result<Vec<_>, StoreError>>()
            }
            .await
        })
    }

    /// Writes one batch's changes in one transaction.
    pub(crate) async fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        if commit.is_empty() {
            return Ok(());
        }
        with_pool!(&self.db, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                leadership::ensure_leader(&mut *tx, self.fence).await?;
                if let Some(cursor) = &commit.cursor {
                    sqlx::query(
                        "INSERT INTO alerting_state (name, value) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    )
                    .bind(CURSOR)
                    .bind(cursor)
                    .execute(&mut *tx)
                    .await?;
                }
                for ((rule, group_key), state) in &commit.rule_groups {
                    match state {
                        Some(state) => {
                            sqlx::query(
                                "INSERT INTO rule_groups (rule, group_key, state) VALUES ($1, $2, $3) \
                                 ON CONFLICT (rule, group_key) DO UPDATE SET state = excluded.state",
                            )
                            .bind(rule)
                            .bind(group_key)
                            .bind(state)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM rule_groups WHERE rule = $1 AND group_key = $2")
                                .bind(rule)
                                .bind(group_key)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                for (fingerprint, alert) in &commit.alerts {
                    let Some(alert) = alert else {
                        sqlx::query("DELETE FROM alerts WHERE fingerprint = $1")
                            .bind(fingerprint.to_string())
                            .execute(&mut *tx)
                            .await?;
                        continue;
                    };
                    sqlx::query(
                        "INSERT INTO alerts (fingerprint, labels, annotations, state, starts_at, \
                         ends_at, updated_at, active_at, rule, generator_url, value) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (fingerprint) DO UPDATE SET labels = excluded.labels, \
                         annotations = excluded.annotations, state = excluded.state, \
                         starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
                         updated_at = excluded.updated_at, active_at = excluded.active_at, \
                         rule = excluded.rule, generator_url = excluded.generator_url, \
                         value = excluded.value",
                    )
                    .bind(alert.fingerprint.to_string())
                    .bind(to_json(&alert.labels))
                    .bind(to_json(&alert.annotations))
                    .bind(alert.state as i32)
                    .bind(alert.starts_at.map(micros))
                    .bind(alert.ends_at.map(micros))
                    .bind(micros(alert.updated_at))
                    .bind(alert.active_at.map(micros))
                    .bind(&alert.rule)
                    .bind(&alert.generator_url)
                    .bind(alert.value)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
            .await
        })
    }

    /// Inserts or replaces a silence.
    pub(crate) async fn put_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        let matchers: Vec<String> = silence.matchers.iter().map(ToString::to_string).collect();
        with_pool!(&self.db, |pool| {
            sqlx::query(
                "INSERT INTO silences (id, matchers, starts_at, ends_at, created_by, comment, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET matchers = excluded.matchers, \
                 starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
                 updated_at = excluded.updated_at",
            )
            .bind(&silence.id)
            .bind(to_json(&matchers))
            .bind(micros(silence.starts_at))
            .bind(micros(silence.ends_at))
            .bind(&silence.created_by)
            .bind(&silence.comment)
            .bind(micros(silence.created_at))
            .bind(micros(silence.updated_at))
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Deletes silences that expired before `cutoff`.
    pub(crate) async fn delete_silences_ended_before(
        &self,
        cutoff: SystemTime,
    ) -> Result<u64, StoreError> {
        let done = with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM silences WHERE ends_at < $1")
                .bind(micros(cutoff))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done)
    }

    /// Deletes notification log entries older than `cutoff`.
    pub(crate) async fn prune_notification_log(
        &self,
        cutoff: SystemTime,
    ) -> Result<u64, StoreError> {
        let done = with_pool!(&self.db, |pool| {
            sqlx::query("DELETE FROM notification_log WHERE notified_at < $1")
                .bind(micros(cutoff))
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done)
    }

    async fn notified(&self, key: &NotifiedKey) -> Result<Option<NotifiedEntry>, StoreError> {
        let row: Option<(String, String, i64)> = with_pool!(&self.db, |pool| {
            sqlx::query_as(
                "SELECT firing, resolved, notified_at FROM notification_log \
                 WHERE receiver = $1 AND integration = $2 AND group_key = $3",
            )
            .bind(&key.receiver)
            .bind(&key.integration)
            .bind(&key.group_key)
            .fetch_optional(pool)
            .await
        })?;
        let Some((firing, resolved, at)) = row else {
            return Ok(None);
        };
        let set = |text: &str| -> Result<BTreeSet<Fingerprint>, StoreError> {
            let list: Vec<String> = from_json("notification log", text)?;
            list.iter()
                .map(|fp| {
                    Fingerprint::parse(fp).ok_or_else(|| {
                        StoreError::Corrupt(format!("notification log: fingerprint {fp:?}"))
                    })
                })
                .collect()
        };
        Ok(Some(NotifiedEntry {
            firing: set(&firing)?,
            resolved: set(&resolved)?,
            time: Some(time_of(at)),
        }))
    }

    async fn put_notified(
        &self,
        key: &NotifiedKey,
        entry: &NotifiedEntry,
    ) -> Result<(), StoreError> {
        let list = |set: &BTreeSet<Fingerprint>| {
            to_json(&set.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        with_pool!(&self.db, |pool| {
            async {
                let mut tx = pool.begin_write().await?;
                leadership::ensure_leader(&mut *tx, self.fence).await?;
                sqlx::query(
                    "INSERT INTO notification_log (receiver, integration, group_key, firing, \
                     resolved, notified_at) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (receiver, integration, group_key) DO UPDATE SET \
                     firing = excluded.firing, resolved = excluded.resolved, \
                     notified_at = excluded.notified_at",
                )
                .bind(&key.receiver)
                .bind(&key.integration)
                .bind(&key.group_key)
                .bind(list(&entry.firing))
                .bind(list(&entry.resolved))
                .bind(micros(entry.time.unwrap_or_else(SystemTime::now)))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }
            .await
        })
    }
}

impl NotificationLog for Store {
    fn get(&self, key: &NotifiedKey) -> BoxFuture<'_, Result<Option<NotifiedEntry>, PersistError>> {
        let key = key.clone();
        Box::pin(async move { Ok(self.notified(&key).await?) })
    }

    fn put(
        &self,
        key: NotifiedKey,
        entry: NotifiedEntry,
    ) -> BoxFuture<'_, Result<(), PersistError>> {
        Box::pin(async move { Ok(self.put_notified(&key, &entry).await?) })
    }
}
