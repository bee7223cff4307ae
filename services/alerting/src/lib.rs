//! The alerting service: rules over the audit stream, alert state,
//! silences, and notifications to receivers — Prometheus Alertmanager's
//! behaviour, fed by agentmesh's audit trail.
//!
//! Data flow:
//!
//! ```text
//! AuditService/Subscribe ─▶ source: batches + cursor ─▶ engine ◀─ FireAlert, silences (service)
//!                                                         │ rules::Evaluator: windows per rule and group
//!                                                         │ lifecycle: pending → firing → resolved
//!                                                         │ marks: silences, inhibition (routing)
//!                                                         ├─▶ store: alerts, windows, cursor (one tx)
//!                                                         ├─▶ WatchAlerts streams
//!                                                         ├─▶ forward: Prometheus Alertmanagers
//!                                                         ▼
//!                          dispatch: routing tree, aggregation groups, notification log
//!                                                         ▼
//!                          receivers: webhook (v4), Slack, email, PagerDuty
//!                                                         ▼
//!                          delivery reports ─▶ NOTIFICATION audit events, metrics, logs
//! ```
//!
//! Layout (every module is private; the library surface is [`Config`] and
//! its parts, [`serve`], [`serve_with_listeners`], [`SERVICE`] and
//! [`DEFAULT_PORT`]):
//!
//! * `config`: settings, checked and compiled at start.
//! * `rules`: rule configuration (`config`), the shipped rules
//!   (`defaults`), checking (`compile`, `condition`), event fields,
//!   templates, windows and the `evaluator`.
//! * `engine`: the alert state machine; `source` feeds it the audit stream.
//! * `leader`: the PostgreSQL advisory lock replicas compete for and the
//!   fence every batch, tick and delivery checks; `replica`: this
//!   replica's role (leader or standby), the loop moving it between them,
//!   and what a standby answers reads from; `peer`: a standby's forwarding
//!   of writes and WatchAlerts to the leader.
//! * `routing`: the routing tree; `routing::inhibit` the inhibition rules;
//!   `routing::text` the key formats the notification log depends on.
//! * `dispatch`: the handle; `dispatch::groups` the task owning aggregation
//!   groups and flushes; `dispatch::delivery` one integration's dedup,
//!   delivery and nflog record; `dispatch::clock` the wall clock tests move.
//! * `receivers`: the wire formats (webhook, Slack, email, PagerDuty,
//!   Alertmanager) and retries; `forward`: Alertmanager forwarding.
//! * `silence`, `store` (alerts, silences, windows, nflog, cursor),
//!   `service` (the RPC handlers), `metrics`, and the shared types in
//!   `matcher` and `model`.
//!
//! **Access**: an operator API, not split by tenant (rules group events
//! across tenants): reading alerts, silences and rules needs `alerts:read`,
//! firing alerts and managing silences `alerts:write` ([`SCOPES`]). The
//! audit stream is read with the service's own credential, which needs
//! `audit:read` and `admin` at the audit service (every tenant's events)
//! besides `service`; its own events (notifications, configuration, access
//! decisions) go through its audit producer with `audit:write`.
//!
//! **Replicas**: of several processes on one PostgreSQL database, the one
//! holding the advisory lock leads (engine, audit stream, dispatcher) and
//! advertises `leader.advertise_url` in the database; the others stand by,
//! answer the List RPCs from the database, forward writes and WatchAlerts
//! to the leader with the caller's identity, and try for the lock every
//! `leader.retry`. The leader's cursor and notification log writes are
//! fenced in the database (refused unless its lock session still holds
//! the lock). On SQLite the process always leads.
//!
//! **Health**: ready (SERVING) while the database answers, leader or
//! standby; the audit stream (`audit-stream`) and the audit service
//! (`audit`) are reported but optional: the API answers without them.
//!
//! **After a restart or a takeover** the service resumes the audit stream from the cursor
//! committed with its rule windows (nothing missed, nothing counted twice),
//! and the persisted notification log keeps it from notifying again what it
//! notified before, as Alertmanager's nflog does.

mod config;
mod dispatch;
mod engine;
mod forward;
mod leader;
mod matcher;
mod metrics;
mod model;
mod peer;
mod receivers;
mod replica;
mod routing;
mod rules;
mod service;
mod silence;
mod source;
mod store;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentmesh_audit_client::{AuditClient, without_password};
use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::{Listeners, ServeError, ServiceHost, StartupError};
use agentmesh_proto::alerting::v1::alerting_service_server::AlertingServiceServer;
use agentmesh_proto::audit::v1::{EventType, NotificationDetails, Outcome, audit_event::Details};
use agentmesh_storage::LazyDatabase;
use tokio::task::JoinHandle;

pub use agentmesh_audit_client::AuditConfig;
pub use config::{Config, DEFAULT_PORT, LeaderConfig, SourceConfig};

use crate::dispatch::Dispatcher;
use crate::engine::{Engine, EngineSettings};
use crate::leader::{Election, Fence, FencedNotifier};
use crate::metrics::Metrics;
use crate::model::{DeliveryReport, NotificationLog, Notifier};
use crate::replica::{Replica, Running, StandbyView, Supervisor};

/// The scope each RPC needs (`agentmesh auth scopes` prints every
/// service's table). A new RPC must be added here: the access matrix test
/// fails for a method no table lists.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "agentmesh.alerting.v1.AlertingService",
    methods: &[
        ("FireAlert", Scope::AlertsWrite),
        ("ListAlerts", Scope::AlertsRead),
        ("WatchAlerts", Scope::AlertsRead),
        ("CreateSilence", Scope::AlertsWrite),
        ("ListSilences", Scope::AlertsRead),
        ("DeleteSilence", Scope::AlertsWrite),
        ("ListRules", Scope::AlertsRead),
    ],
};

/// The service's name in logs, metrics and file names.
pub const SERVICE: &str = "alerting";

agentmesh_kit::service_config!(
    Config,
    service = SERVICE,
    section = "alerting",
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
    // Checked by the kit at start; a config that skipped it stops here.
    config.compile().map_err(|err| {
        ServeError::from(std::io::Error::other(format!(
            "alerting.{}: {}",
            err.setting, err.message
        )))
    })?;
    let mut host = ServiceHost::for_config(&config, &[SCOPES])?;
    let mut effective = config.clone();
    effective.storage.url = effective.storage.url.as_deref().map(without_password);
    let audit = agentmesh_audit_client::start_service::<Config>(&config.audit, &host, &effective)?;
    let metrics = Metrics::new(host.metrics().registry())
        .map_err(|err| ServeError::from(std::io::Error::other(format!("alerting metrics: {err}"))))?
        .with_clients(host.clients().clone());
    let replica = add_api(&mut host, &config);
    let clients = host.clients().clone();
    let database =
        LazyDatabase::new(config.storage.clone(), SERVICE).with_migrations(&store::MIGRATIONS);
    // Ready while the database answers, leader or standby (a standby
    // serves reads). The audit stream and the audit service are reported,
    // but the API answers without them.
    host.add_check(database.health_check())
        .add_check(audit_stream_check(
            metrics.clone(),
            config.source.url.clone(),
        ))
        .add_check(audit.health_check());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);
    let result = host
        .serve(
            listeners,
            || async {
                database.open().await.map_err(StartupError::from)?;
                if supervisor.lock().is_ok_and(|task| task.is_some()) {
                    return Ok(());
                }
                let mut elected = elect(&config, &database, &replica, &metrics, &audit, &clients)?;
                // The first attempt before reporting ready: a single
                // replica leads as soon as it serves.
                elected.try_lead().await;
                if let Ok(mut task) = supervisor.lock() {
                    *task = Some(tokio::spawn(elected.run(stopped.clone())));
                }
                Ok(())
            },
            shutdown,
        )
        .await;
    // A leader drains its deliveries, then frees the lock for a standby.
    stop.send_replace(true);
    let task = supervisor.lock().ok().and_then(|mut task| task.take());
    if let Some(task) = task {
        let _ = task.await;
    }
    database.close().await;
    // The drain is over: send what is queued, or spool it.
    audit.shutdown().await;
    result
}

/// The supervisor of this replica's role over the opened database; sets
/// the standby's view.
fn elect(
    config: &Config,
    database: &LazyDatabase,
    replica: &Arc<Replica>,
    metrics: &Metrics,
    audit: &AuditClient,
    clients: &agentmesh_kit::client::Clients,
) -> Result<Supervisor, StartupError> {
    let db = database
        .get()
        .cloned()
        .ok_or_else(|| StartupError::from("the database did not open"))?;
    let store = store::Store::new(db);
    let parts = config
        .compile()
        .map_err(|err| StartupError::from(format!("alerting.{}: {}", err.setting, err.message)))?;
    replica.set_standby_view(StandbyView {
        store: store.clone(),
        inhibitor: parts.inhibitor,
        rules: parts.rules.iter().map(rules::Rule::to_proto).collect(),
        peer: peer::LeaderPeer::new(
            store.clone(),
            clients.clone(),
            config.leader.advertise_url.clone(),
            config.server.max_message_bytes,
        ),
    });
    let election = Election::for_url(&config.storage.url_for(SERVICE), config.leader.retry)
        .map_err(StartupError::from)?;
    let starter = {
        let config = config.clone();
        let metrics = metrics.clone();
        let audit = audit.clone();
        Box::new(move |fence: Fence| {
            let config = config.clone();
            let store = store.clone();
            let metrics = metrics.clone();
            let audit = audit.clone();
            Box::pin(async move {
                // Built again for every term: each term starts from what
                // the previous leader stored.
                let parts = config
                    .compile()
                    .map_err(|err| format!("alerting.{}: {}", err.setting, err.message))?;
                let loaded = store
                    .load()
                    .await
                    .map_err(|err| format!("alerting state: {err}"))?;
                let lock_pid = fence.lock_pid();
                let store = store.fenced(lock_pid);
                let (engine, mut running) =
                    start_engine(&config, parts, store.clone(), loaded, metrics, audit, fence)
                        .await;
                if let Some(pid) = lock_pid {
                    advertise(&store, &config.leader.advertise_url, pid).await;
                    running.advertised = Some((store, pid));
                }
                Ok((engine, running))
            }) as futures::future::BoxFuture<'static, _>
        })
    };
    Ok(Supervisor::new(
        Arc::clone(replica),
        election,
        starter,
        metrics.clone(),
        config.leader.retry,
    ))
}

/// Records where the standbys reach this new leader (the address may be
/// empty: they then answer UNAVAILABLE naming the setting). A failure is
/// logged: the replica leads all the same, and standbys answer UNAVAILABLE
/// until a later leader advertises.
async fn advertise(store: &store::Store, url: &str, lock_pid: i32) {
    match store.advertise(url, lock_pid).await {
        Ok(()) if url.is_empty() => tracing::info!(
            "leading without an advertised address: standbys cannot forward writes and \
             WatchAlerts (set leader.advertise_url)"
        ),
        Ok(()) => {
            tracing::info!(advertise_url = %url, "standbys forward writes and WatchAlerts here")
        }
        Err(error) => {
            tracing::warn!(%error, "this leader's address could not be advertised; standbys answer writes UNAVAILABLE")
        }
    }
}

/// Registers the AlertingService API on `host`. It answers UNAVAILABLE
/// until the database opened; then from the engine while this replica
/// leads, from the store while it stands by.
fn add_api(host: &mut ServiceHost, config: &Config) -> Arc<Replica> {
    let replica: Arc<Replica> = Arc::default();
    let limit = config.server.max_message_bytes;
    host.add_service(
        AlertingServiceServer::new(service::AlertingServiceImpl::new(
            Arc::clone(&replica),
            config.watch_heartbeat,
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
    );
    // WatchAlerts streams run until the client leaves: end them as soon as
    // a shutdown begins so the drain is not held up.
    host.end_on_drain("/agentmesh.alerting.v1.AlertingService/WatchAlerts");
    replica
}

/// The optional readiness check `audit-stream`: connected to
/// `AuditService/Subscribe`, as the source task reports it.
fn audit_stream_check(metrics: Metrics, url: String) -> DependencyCheck {
    DependencyCheck::optional("audit-stream", move || {
        let result = if metrics.is_stream_connected() {
            Ok(())
        } else {
            Err(format!(
                "not connected to the audit stream (AuditService/Subscribe at {url}); reconnecting with backoff"
            ))
        };
        async move { result }
    })
}

/// Builds the engine over the loaded state and starts the tasks around it.
async fn start_engine(
    config: &Config,
    parts: config::Compiled,
    store: store::Store,
    loaded: store::Loaded,
    metrics: Metrics,
    audit: AuditClient,
    fence: Fence,
) -> (Arc<Engine>, Running) {
    let (dispatcher, report_receiver) =
        start_dispatcher(config, parts.receivers, parts.route, &store, fence.clone());
    let evaluator =
        rules::Evaluator::new(parts.rules, SystemTime::now(), config.max_groups_per_rule);
    let interest = source::Interest::of(
        &evaluator
            .rules()
            .iter()
            .map(rules::Rule::to_proto)
            .collect::<Vec<_>>(),
    );
    let engine = Engine::start(
        evaluator,
        loaded,
        store.clone(),
        dispatcher.clone(),
        parts.inhibitor,
        EngineSettings {
            resolve_timeout: config.resolve_timeout,
            resolved_retention: config.resolved_retention,
            max_alerts: config.max_alerts,
        },
        metrics.clone(),
    );
    engine.resume().await;
    let mut tasks = vec![
        tokio::spawn(source::run(
            Arc::clone(&engine),
            config.source.clone(),
            interest,
            metrics.clone(),
            fence.clone(),
        )),
        tokio::spawn(evaluate_every(
            Arc::clone(&engine),
            config.evaluation_interval,
            fence,
        )),
        tokio::spawn(housekeeping(
            Arc::clone(&engine),
            store,
            config.silence_retention,
            config.notification_log_retention,
        )),
        tokio::spawn(report_deliveries(
            report_receiver,
            metrics.clone(),
            audit.clone(),
        )),
    ];
    for forwarder in parts.forwarders {
        tasks.push(tokio::spawn(forward::run(
            Arc::clone(&engine),
            forwarder,
            metrics.clone(),
            audit.clone(),
        )));
    }
    (
        engine,
        Running {
            dispatcher,
            tasks,
            advertised: None,
        },
    )
}

/// The dispatcher of a term, delivering through the receivers behind the
/// fence: every delivery checks the leader lock first and is cut off when
/// the term ends. Returns it and the receiver of its delivery reports.
fn start_dispatcher(
    config: &Config,
    receivers: receivers::Receivers,
    route: routing::Route,
    store: &store::Store,
    fence: Fence,
) -> (
    Dispatcher,
    tokio::sync::mpsc::UnboundedReceiver<DeliveryReport>,
) {
    let (reports, report_receiver) = tokio::sync::mpsc::unbounded_channel();
    let notifier: Arc<dyn Notifier> = Arc::new(FencedNotifier {
        inner: Arc::new(receivers),
        fence,
    });
    let log: Arc<dyn NotificationLog> = Arc::new(store.clone());
    let dispatcher = Dispatcher::start_with(
        dispatch::DispatcherLimits {
            max_groups: config.max_aggregation_groups,
            shutdown_grace: config.server.grace_period,
        },
        Arc::new(route),
        notifier,
        log,
        reports,
        config.external_url.clone(),
        dispatch::Clock::system(),
    );
    (dispatcher, report_receiver)
}

/// Re-evaluates the rules every `interval`, events or not, while this
/// replica holds the leader lock.
async fn evaluate_every(engine: Arc<Engine>, interval: Duration, fence: Fence) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        fence.ensure().await;
        engine.tick().await;
    }
}

/// Forgets old silences and notification log entries, once a minute.
async fn housekeeping(
    engine: Arc<Engine>,
    store: store::Store,
    silence_retention: Duration,
    log_retention: Duration,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticks.tick().await;
        let now = SystemTime::now();
        engine
            .forget_silences_ended_before(
                now.checked_sub(silence_retention)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
            .await;
        if let Err(err) = store
            .prune_notification_log(
                now.checked_sub(log_retention)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )
            .await
        {
            tracing::warn!(error = %err, "old notification log entries could not be deleted; will retry");
        }
    }
}

/// Turns every delivery outcome into a metric, a log line and a
/// NOTIFICATION audit event (receiver names, never URLs or secrets).
async fn report_deliveries(
    mut reports: tokio::sync::mpsc::UnboundedReceiver<DeliveryReport>,
    metrics: Metrics,
    audit: AuditClient,
) {
    while let Some(report) = reports.recv().await {
        metrics.delivered(&report);
        match &report.error {
            None => tracing::info!(
                receiver = %report.receiver,
                integration = report.kind,
                group_key = %report.group_key,
                status = report.status,
                alerts = report.alert_count,
                attempts = report.attempts,
                "notification delivered"
            ),
            Some(error) => tracing::warn!(
                receiver = %report.receiver,
                integration = report.kind,
                group_key = %report.group_key,
                status = report.status,
                attempts = report.attempts,
                %error,
                "notification failed; retried at the group's next flush"
            ),
        }
        let mut event = audit.event(EventType::Notification);
        event.outcome = if report.error.is_none() {
            Outcome::Success
        } else {
            Outcome::Failure
        } as i32;
        event.reason = report.error.clone().unwrap_or_default();
        event.details = Some(Details::Notification(NotificationDetails {
            receiver: report.receiver.clone(),
            receiver_kind: report.kind.to_owned(),
            group_key: report.group_key.clone(),
            status: report.status.to_owned(),
            alert_count: i32::try_from(report.alert_count).unwrap_or(i32::MAX),
            attempts: i32::try_from(report.attempts).unwrap_or(i32::MAX),
            error: report.error.unwrap_or_default(),
        }));
        audit.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_settings_are_checked() {
        let mut config = Config::default();
        config.audit.batch_size = 0;
        let err = agentmesh_kit::config::validate(&config).unwrap_err();
        assert_eq!(err.setting, "alerting.audit.batch_size");
    }

    #[test]
    fn the_leader_retry_is_bounded() {
        for retry in [Duration::ZERO, Duration::from_secs(4)] {
            let mut config = Config::default();
            config.leader.retry = retry;
            let err = agentmesh_kit::config::validate(&config).unwrap_err();
            assert_eq!(err.setting, "alerting.leader.retry", "{retry:?}");
        }
        let mut config = Config::default();
        config.leader.retry = Duration::from_millis(200);
        agentmesh_kit::config::validate(&config).unwrap();
    }

    #[test]
    fn the_defaults_are_valid() {
        agentmesh_kit::config::validate(&Config::default()).unwrap();
    }
}
