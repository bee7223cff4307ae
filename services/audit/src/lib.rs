//! The audit service: the append-only, tamper-evident record of what every
//! agentmesh service did — runs, model calls with tokens and cost, tool
//! calls, access decisions, rate limits, circuit breakers, configuration.
//!
//! Data flow:
//!
//! ```text
//! producers (libs/audit-client) ──Record──▶ service::record: validate, redact, seal body
//!                                              │
//!                                              ▼
//!                                     writer: group commit ──▶ store (SQLite | PostgreSQL)
//!                                              │                 audit_events, audit_chains
//!                                              ▼                 │ PostgreSQL: NOTIFY at each commit
//!                                  live tail of commits ◀── listener: other replicas' commits
//!                                              │
//!                                              ▼
//!                                  Subscribe (alerting, tails)
//! Query / Export / Report / VerifyChain ◀── store
//! retention task ──▶ store.delete_before ──▶ a RETENTION event through the writer
//! own auth layer ──▶ decisions: AUTHENTICATION / AUTHORIZATION events ──▶ writer
//! ```
//!
//! **Access.** Every call is authenticated by the kit's auth layer
//! (`[audit.auth]`); `Record` needs `audit:write` (services), the reads
//! `audit:read`. The reads return only the caller's tenant's events and
//! refuse a filter naming another tenant (PERMISSION_DENIED); only `admin`
//! reads across tenants, and the events outside any tenant. `Record` stamps
//! the verified tenant and subject into events that leave them empty and
//! refuses events an end user writes for another tenant; a service
//! recording for itself is trusted to set them (`access`). The service's
//! own access decisions cannot go through a producer to itself: they are
//! appended to its log directly (`decisions`), so failed authentications
//! against the audit service are audited too.
//!
//! Layout (every module is private; the library surface is [`Config`],
//! [`RetentionConfig`], [`serve`], [`serve_with_listeners`], [`SERVICE`] and
//! [`DEFAULT_PORT`]):
//! * `event`: validation, the stored body and its columns, chains, hashes.
//! * `store`: schema, errors and the read queries, both backends;
//!   `store::append` the sealed, locked write of a batch; `store::retain`
//!   retention's delete that keeps every chain verifiable.
//! * `writer`: one task grouping concurrent writes into one transaction,
//!   and the live tail of commits that subscriptions follow.
//! * `listener`: on PostgreSQL, other replicas' commits into that tail as
//!   they commit (LISTEN/NOTIFY), so a subscriber on any replica sees every
//!   commit within milliseconds.
//! * `filter`, `subscribe`, `export`, `report`, `verify`, `retention`: one
//!   concern each; `service` holds the RPC handlers.
//! * `access`: tenant isolation of reads, stamping and checking of writes;
//!   `decisions`: the service's own access decisions into its log.
//! * `metrics`: events ingested by type, duplicates, invalid events, group
//!   commit durations, live subscribers and their tail lag, the listener
//!   (the kit adds the gRPC metrics).
//!
//! **Health.** Ready (SERVING) once the database is opened and migrated, and
//! while it answers `SELECT 1` (the `database` check).
//!
//! **Chains.** Each tenant's events form one hash chain (`tenant:<name>`);
//! events without a tenant form the chain `system`. Each event stores
//! SHA-256 over its chain, the previous event's hash and its stored body;
//! `VerifyChain` recomputes them (bounded: one call per chain at a time,
//! `max_concurrent_verifications` at once). Event ids are unique per chain,
//! so `Record`'s idempotency never lets one tenant claim another's ids.
//! Retention deletes the oldest events of the
//! log and keeps, per chain, the hash of the last deleted event as the
//! chain's anchor, so what remains still verifies.

mod access;
mod config;
mod decisions;
mod event;
mod export;
mod filter;
mod listener;
mod metrics;
mod report;
mod retention;
mod service;
mod store;
mod subscribe;
mod verify;
mod writer;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use agentmesh_audit_client::Redactor;
use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::audit::v1::{
    AuditEvent, ConfigDetails, EventType, Outcome, audit_event::Details,
    audit_service_server::AuditServiceServer,
};
use agentmesh_storage::{Database, LazyDatabase};

pub use config::{Config, RetentionConfig};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "audit";
/// The scope each RPC needs (`agentmesh auth scopes` prints every
/// service's table). A new RPC must be added here: the access matrix test
/// fails for a method no table lists.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "agentmesh.audit.v1.AuditService",
    methods: &[
        ("Record", Scope::AuditWrite),
        ("Query", Scope::AuditRead),
        ("Subscribe", Scope::AuditRead),
        ("Export", Scope::AuditRead),
        ("Report", Scope::AuditRead),
        ("VerifyChain", Scope::AuditRead),
    ],
};

/// The default gRPC port (the admin port is this plus 1000).
pub const DEFAULT_PORT: u16 = 50054;

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "audit",
    validate = |config: &Config| config.validate(),
);

/// Serves on the configured ports until `shutdown` resolves, then drains.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listeners = Listeners::bind(&config.server).await?;
    serve_with_listeners(config, listeners, shutdown).await
}

/// Serves on listeners bound by the caller (tests bind port 0).
pub async fn serve_with_listeners(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let mut host = ServiceHost::for_config(&*config, &[SCOPES])?;
    let metrics = metrics::AuditMetrics::new(host.metrics().registry())?;
    let limit = config.server.max_message_bytes;
    // Patterns were checked by Config::validate, so this only fails for a
    // config that skipped validation: then it stops the service.
    let redactor = Redactor::new(&config.redact_patterns).map_err(|err| {
        ServeError::from(std::io::Error::other(format!(
            "audit.redact_patterns: {err}"
        )))
    })?;
    let redactor = Arc::new(redactor);
    // The service's own access decisions go straight to its log (see
    // `decisions`), once the database is open.
    let (own_decisions, pending_decisions) =
        decisions::OwnDecisions::new(host.metrics().registry())?;
    host.access().set_sink(own_decisions);
    let ready: Arc<OnceLock<service::Ready>> = Arc::default();
    host.add_service(
        AuditServiceServer::new(service::AuditServiceImpl::new(
            Arc::clone(&config),
            Arc::clone(&ready),
            Arc::clone(&redactor),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    // Subscribe streams run until the client leaves: end them as soon as
    // a shutdown begins so the drain is not held up.
    host.end_on_drain("/agentmesh.audit.v1.AuditService/Subscribe");
    let database =
        LazyDatabase::new(config.storage.clone(), SERVICE).with_migrations(&store::MIGRATIONS);
    // Ready only while the database answers (opened and migrated at start-up).
    host.add_check(database.health_check());
    let background: OnceLock<Vec<tokio::task::JoinHandle<()>>> = OnceLock::new();
    let result = host
        .serve(
            listeners,
            || async {
                database.open().await.map_err(StartupError::from)?;
                if ready.get().is_none() {
                    let (opened, tasks) =
                        start_writing(&database, &config, &metrics, &pending_decisions, &redactor)
                            .await?;
                    let _ = background.set(tasks);
                    let _ = ready.set(opened);
                }
                Ok(())
            },
            shutdown,
        )
        .await;
    background
        .get()
        .into_iter()
        .flatten()
        .for_each(|task| task.abort());
    database.close().await;
    result
}

/// Once the database is open: the writer (recording the service's
/// CONFIG_LOADED first), the tasks writing through it — retention and
/// the service's own access decisions — and, on PostgreSQL, the listener
/// for other replicas' commits.
async fn start_writing(
    database: &LazyDatabase,
    config: &Config,
    metrics: &metrics::AuditMetrics,
    pending_decisions: &decisions::Pending,
    redactor: &Arc<Redactor>,
) -> Result<(service::Ready, Vec<tokio::task::JoinHandle<()>>), StartupError> {
    let db = database
        .get()
        .cloned()
        .ok_or_else(|| StartupError::from("the database did not open"))?;
    let store = store::Store::new(db);
    let writer = writer::Writer::start(store.clone(), config.max_commit_events, metrics.clone());
    retention::record_own(&writer, config_loaded(config)).await;
    let mut tasks = vec![tokio::spawn(retention::run(
        store.clone(),
        writer.clone(),
        config.retention.clone(),
    ))];
    if let Database::Postgres(pool) = store.database() {
        tasks.push(tokio::spawn(listener::run(
            pool.clone(),
            store.clone(),
            writer.clone(),
            config.storage.connect_timeout,
        )));
    }
    if let Some(receiver) = pending_decisions.take() {
        let redactor = Arc::clone(redactor);
        tasks.push(tokio::spawn(decisions::run(
            receiver,
            writer.clone(),
            redactor,
        )));
    }
    Ok((service::Ready { store, writer }, tasks))
}

/// The CONFIG_LOADED event of the audit service itself.
fn config_loaded(config: &Config) -> AuditEvent {
    let effective = serde_json::to_vec(config).unwrap_or_default();
    AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
        r#type: EventType::ConfigLoaded as i32,
        service: SERVICE.to_owned(),
        outcome: Outcome::Success as i32,
        details: Some(Details::Config(ConfigDetails {
            source:
                "agentmesh-audit configuration (defaults, file, AGENTMESH_AUDIT__* environment)"
                    .to_owned(),
            sha256: agentmesh_audit_client::sha256_hex(&effective),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            changed_settings: Vec::new(),
        })),
        ..AuditEvent::default()
    }
}
