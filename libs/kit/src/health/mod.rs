//! Liveness, readiness and the dependency checks behind readiness.
//!
//! A service is *live* for as long as its process runs: the gRPC health name
//! [`LIVENESS`] is SERVING from the start to the end, draining included, and
//! `/livez` answers 200, so that a Kubernetes liveness probe never restarts a
//! pod because something it depends on is down.
//!
//! A service is *ready* when it has started, is not draining, and every
//! *required* component passes. The components are the service's start-up
//! work ([`STARTUP`], failing with its last error until it succeeds) and the
//! [`DependencyCheck`]s it declares: a peer's health, its database, its tools.
//! *Optional* checks (the audit service, say, which producers spool for) are
//! reported but never change readiness.
//!
//! ```text
//!  DependencyCheck ── every check_interval, ──▶ Health::record ─┐
//!                     bounded by check_timeout                   │
//!  start-up attempts (ServiceHost) ─────────▶ Health::record ────┤   component table
//!  shutdown ────────────────────────────────▶ Health::begin_drain┤   (ok, reason, times,
//!                                                                 │    consecutive failures)
//!                 ready = started ∧ ¬draining ∧ every required component ok
//!                                 │ applied only when it changes, and logged
//!        ┌────────────────────────┼──────────────────────────────┐
//!  grpc.health.v1 "" and    /readyz, /health/deep           agentmesh_ready,
//!  each own service name    (admin HTTP)                    agentmesh_dependency_up{component}
//! ```
//!
//! Each check runs in a task of its own, so a slow one never delays another;
//! a failing check is retried sooner than the interval (100 ms, doubling up
//! to it), so that recovery shows quickly, while a passing one is checked at
//! the interval.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

mod check;

pub use check::DependencyCheck;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The gRPC health name that is SERVING for as long as the process runs
/// (for liveness probes; draining does not change it).
pub const LIVENESS: &str = "liveness";

/// The component that stands for the service's own start-up work.
pub const STARTUP: &str = "startup";

/// The first retry of a failing check; it doubles up to the check interval.
const FIRST_RETRY: Duration = Duration::from_millis(100);

// === the report ===

/// One component of a service's health, as `/health/deep` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentHealth {
    /// The component, e.g. `tool-runner`, `database`, `startup`.
    pub name: String,
    /// Whether readiness depends on it.
    pub required: bool,
    /// Whether its last check passed.
    pub ok: bool,
    /// Why it is failing (absent when ok).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was last checked (RFC 3339), absent before the first check.
    #[serde(default)]
    pub checked_at: Option<String>,
    /// When it last passed (RFC 3339), absent if it never did.
    #[serde(default)]
    pub last_ok_at: Option<String>,
    /// Failed checks since it last passed.
    #[serde(default)]
    pub consecutive_failures: u64,
}

/// A service's health with every component, as `/health/deep` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepHealth {
    /// The service, e.g. `orchestrator`.
    pub service: String,
    /// Whether it reports SERVING.
    pub ready: bool,
    /// Always true: a process that answers is live.
    pub live: bool,
    /// Whether a shutdown has begun.
    #[serde(default)]
    pub draining: bool,
    /// Start-up first, then the checks in the order the service declared them.
    pub components: Vec<ComponentHealth>,
}

impl DeepHealth {
    /// The required components that are failing.
    pub fn failing_required(&self) -> impl Iterator<Item = &ComponentHealth> {
        self.components.iter().filter(|c| c.required && !c.ok)
    }
}

// === Health ===

/// Shared handle on a service's health: its components, its readiness, and
/// the gRPC health statuses that publish it.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    reporter: HealthReporter,
    names: Vec<String>,
    components: Mutex<Vec<Component>>,
    started: AtomicBool,
    draining: AtomicBool,
    /// Readiness as last published (read without waiting by `/readyz`).
    ready: AtomicBool,
    /// Serialises publishing, so that concurrent checks never leave the
    /// statuses behind the table; holds what was published last.
    published: tokio::sync::Mutex<bool>,
    gauges: Gauges,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("service", &self.service)
            .field("names", &self.names)
            .field("ready", &self.ready.load(Ordering::Acquire))
            .field("draining", &self.draining.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Component {
    name: String,
    required: bool,
    ok: bool,
    reason: Option<String>,
    checked_at: Option<SystemTime>,
    last_ok_at: Option<SystemTime>,
    consecutive_failures: u64,
}

impl Component {
    fn new(name: &str, required: bool, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            required,
            ok: false,
            reason: Some(reason.to_owned()),
            checked_at: None,
            last_ok_at: None,
            consecutive_failures: 0,
        }
    }

    fn to_report(&self) -> ComponentHealth {
        ComponentHealth {
            name: self.name.clone(),
            required: self.required,
            ok: self.ok,
            reason: self.reason.clone(),
            checked_at: self.checked_at.and_then(rfc3339),
            last_ok_at: self.last_ok_at.and_then(rfc3339),
            consecutive_failures: self.consecutive_failures,
        }
    }
}

fn rfc3339(time: SystemTime) -> Option<String> {
    jiff::Timestamp::try_from(time)
        .ok()
        .map(|timestamp| timestamp.to_string())
}

#[derive(Debug)]
struct Gauges {
    up: IntGaugeVec,
    ready: IntGauge,
}

impl Gauges {
    /// The gauges, registered in `registry`. A registration failure (the
    /// same registry used twice) is logged; they then still work but are
    /// not exported.
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let up = IntGaugeVec::new(
            Opts::new(
                "agentmesh_dependency_up",
                "1 while the component's last health check passed, else 0 (components: startup and the service's dependencies).",
            ),
            &["component"],
        )?;
        let ready = IntGauge::new(
            "agentmesh_ready",
            "1 while the service reports SERVING (started, not draining, every required dependency up), else 0.",
        )?;
        for collector in [
            Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ready.clone()),
        ] {
            if let Err(err) = registry.register(collector) {
                tracing::warn!(error = %err, "health metric not registered; it is not exported");
            }
        }
        Ok(Self { up, ready })
    }
}

impl Health {
    /// The health of `service`, for `names` (the fully-qualified gRPC service
    /// names it serves) plus `""`, all NOT_SERVING, and [`LIVENESS`] SERVING;
    /// its gauges go into `registry`. Returns the gRPC server answering for
    /// them. The [`STARTUP`] component is there from the start.
    pub async fn new(
        service: impl Into<String>,
        names: Vec<String>,
        registry: &Registry,
    ) -> prometheus::Result<(Self, HealthServer<HealthService>)> {
        let reporter = HealthReporter::new();
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let gauges = Gauges::new(registry)?;
        gauges.up.with_label_values(&[STARTUP]).set(0);
        gauges.ready.set(0);
        let health = Self {
            inner: Arc::new(Inner {
                service: service.into(),
                reporter,
                names,
                components: Mutex::new(vec![Component::new(STARTUP, true, "starting")]),
                started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                published: tokio::sync::Mutex::new(false),
                gauges,
            }),
        };
        let inner = &health.inner;
        inner
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        inner
            .reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in &inner.names {
            inner
                .reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        Ok((health, server))
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Adds a component, failing ("not checked yet") until its first result.
    /// A name already there is kept as it is.
    pub fn add_component(&self, name: &str, required: bool) {
        let mut components = lock(&self.inner.components);
        if components.iter().any(|component| component.name == name) {
            tracing::warn!(service = %self.inner.service, component = name, "two health checks have the same name; they share one entry");
            return;
        }
        components.push(Component::new(name, required, "not checked yet"));
        self.inner.gauges.up.with_label_values(&[name]).set(0);
    }

    /// Records the outcome of a component's check and publishes readiness
    /// if it changed. Changes of a component (passing ⇄ failing) are logged.
    pub async fn record(&self, name: &str, result: Result<(), String>) {
        let now = SystemTime::now();
        {
            let mut components = lock(&self.inner.components);
            let Some(component) = components.iter_mut().find(|c| c.name == name) else {
                tracing::warn!(service = %self.inner.service, component = name, "result of an unknown health component ignored");
                return;
            };
            // None before the first result, so that the first one is logged.
            let was_ok = component.checked_at.map(|_| component.ok);
            component.checked_at = Some(now);
            // The start-up work logs its own failures (with the retry delay).
            let quiet = name == STARTUP;
            let service = &self.inner.service;
            match result {
                Ok(()) => {
                    if was_ok == Some(false) && !quiet {
                        let failures = component.consecutive_failures;
                        if component.last_ok_at.is_some() {
                            tracing::info!(%service, component = name, failures, "dependency check passing again");
                        } else {
                            tracing::info!(%service, component = name, failures, "dependency check passing");
                        }
                    }
                    component.ok = true;
                    component.reason = None;
                    component.last_ok_at = Some(now);
                    component.consecutive_failures = 0;
                }
                Err(reason) => {
                    if was_ok != Some(false) && !quiet {
                        // Loud only when it costs readiness: not while the
                        // service is still starting (its peers may be too),
                        // nor while it stops (its peers may be too).
                        if self.is_draining() {
                            tracing::debug!(%service, component = name, %reason, "dependency check failing while shutting down");
                        } else if !component.required {
                            tracing::info!(%service, component = name, %reason, "optional dependency check failing (readiness unaffected)");
                        } else if !self.inner.started.load(Ordering::Acquire) {
                            tracing::info!(%service, component = name, %reason, "required dependency not up yet");
                        } else {
                            tracing::warn!(%service, component = name, %reason, "required dependency check failing");
                        }
                    }
                    component.ok = false;
                    component.reason = Some(reason);
                    component.consecutive_failures =
                        component.consecutive_failures.saturating_add(1);
                }
            }
            self.inner
                .gauges
                .up
                .with_label_values(&[name])
                .set(i64::from(component.ok));
        }
        self.publish().await;
    }

    /// The start-up work succeeded.
    pub async fn mark_started(&self) {
        self.inner.started.store(true, Ordering::Release);
        self.record(STARTUP, Ok(())).await;
    }

    /// A shutdown began: NOT_SERVING from now on, whatever the checks say.
    /// Liveness does not change.
    pub async fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.publish().await;
    }

    /// Whether the service reports SERVING.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Whether a shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Every component as it stands.
    pub fn report(&self) -> DeepHealth {
        let components = lock(&self.inner.components)
            .iter()
            .map(Component::to_report)
            .collect();
        DeepHealth {
            service: self.inner.service.clone(),
            ready: self.is_ready(),
            live: true,
            draining: self.is_draining(),
            components,
        }
    }

    /// Starts one task per check, each checking every `interval` (sooner
    /// while failing), bounded by `timeout`, recording into this health.
    /// The tasks end when the returned set is dropped.
    pub fn spawn_checks(
        &self,
        checks: Vec<DependencyCheck>,
        interval: Duration,
        timeout: Duration,
    ) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for check in checks {
            self.add_component(check.name(), check.is_required());
            let health = self.clone();
            tasks.spawn(async move { health.keep_checking(check, interval, timeout).await });
        }
        tasks
    }

    async fn keep_checking(self, check: DependencyCheck, interval: Duration, timeout: Duration) {
        let interval = interval.max(Duration::from_millis(1));
        let mut retry = FIRST_RETRY.min(interval);
        loop {
            let result = check.run(timeout).await;
            let pause = if result.is_ok() {
                retry = FIRST_RETRY.min(interval);
                interval
            } else {
                let pause = retry;
                retry = (retry * 2).min(interval);
                pause
            };
            self.record(check.name(), result).await;
            tokio::time::sleep(pause).await;
        }
    }

    /// Readiness from the table, and why not when it is not.
    fn evaluate(&self) -> (bool, String) {
        if self.is_draining() {
            return (false, "shutting down".to_owned());
        }
        let components = lock(&self.inner.components);
        let failing: Vec<String> = components
            .iter()
            .filter(|component| component.required && !component.ok)
            .map(|component| {
                format!(
                    "{}: {}",
                    component.name,
                    component.reason.as_deref().unwrap_or("failing")
                )
            })
            .collect();
        let started = self.inner.started.load(Ordering::Acquire);
        if started && failing.is_empty() {
            (true, String::new())
        } else if failing.is_empty() {
            (false, "starting".to_owned())
        } else {
            (false, failing.join("; "))
        }
    }

    /// Sets the gRPC statuses, the gauge and the flag to what the table says,
    /// if that changed.
    async fn publish(&self) {
        let mut published = self.inner.published.lock().await;
        let (ready, why) = self.evaluate();
        if *published == ready {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let inner = &self.inner;
        inner.reporter.set_service_status("", status).await;
        for name in &inner.names {
            inner.reporter.set_service_status(name, status).await;
        }
        *published = ready;
        inner.ready.store(ready, Ordering::Release);
        inner.gauges.ready.set(i64::from(ready));
        let service = &inner.service;
        if ready {
            tracing::info!(%service, "SERVING: started, and every required dependency is up");
        } else if !self.is_draining() {
            // (A shutdown is logged by the server, with its grace period.)
            tracing::warn!(%service, reason = %why, "NOT_SERVING: a required dependency is down");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: usable even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use tonic_health::pb::health_server::Health as _;

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as WireStatus;

    use super::*;

    /// Polls `condition` until it holds (bounded, so a bug fails, not hangs).
    async fn until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn status_of(health: &Health, name: &str) -> WireStatus {
        let service = HealthService::from_health_reporter(health.inner.reporter.clone());
        service
            .check(tonic::Request::new(HealthCheckRequest {
                service: name.to_owned(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    async fn new_health() -> Health {
        Health::new(
            "test",
            vec!["test.v1.TestService".to_owned()],
            &Registry::new(),
        )
        .await
        .unwrap()
        .0
    }

    /// A check whose answer the test switches.
    fn switch(name: &str, required: bool) -> (DependencyCheck, Arc<AtomicBool>) {
        let up = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&up);
        let check = DependencyCheck::new(name, required, move || {
            let up = flag.load(Ordering::Acquire);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("switched off".to_owned())
                }
            }
        });
        (check, up)
    }

    fn component(health: &Health, name: &str) -> ComponentHealth {
        health
            .report()
            .components
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    #[tokio::test]
    async fn not_serving_until_started_and_live_all_along() {
        let health = new_health().await;
        assert!(!health.is_ready());
        assert_eq!(status_of(&health, "").await, WireStatus::NotServing);
        assert_eq!(
            status_of(&health, "test.v1.TestService").await,
            WireStatus::NotServing
        );
        assert_eq!(status_of(&health, LIVENESS).await, WireStatus::Serving);
        health
            .record(STARTUP, Err("database: refused".into()))
            .await;
        let startup = component(&health, STARTUP);
        assert!(!startup.ok && startup.required);
        assert_eq!(startup.reason.as_deref(), Some("database: refused"));
        assert_eq!(startup.consecutive_failures, 1);

        health.mark_started().await;
        assert!(health.is_ready());
        assert_eq!(status_of(&health, "").await, WireStatus::Serving);
        assert_eq!(
            status_of(&health, "test.v1.TestService").await,
            WireStatus::Serving
        );
        let startup = component(&health, STARTUP);
        assert!(startup.ok && startup.reason.is_none() && startup.last_ok_at.is_some());
    }

    #[tokio::test]
    async fn a_failing_required_check_flips_readiness_and_back() {
        let health = new_health().await;
        let (check, up) = switch("tool-runner", true);
        let _tasks = health.spawn_checks(
            vec![check],
            Duration::from_millis(20),
            Duration::from_secs(5),
        );
        health.mark_started().await;
        until("ready", || health.is_ready()).await;
        assert_eq!(status_of(&health, "").await, WireStatus::Serving);

        up.store(false, Ordering::Release);
        until("not ready", || !health.is_ready()).await;
        assert_eq!(status_of(&health, "").await, WireStatus::NotServing);
        assert_eq!(
            status_of(&health, "test.v1.TestService").await,
            WireStatus::NotServing
        );
        assert_eq!(status_of(&health, LIVENESS).await, WireStatus::Serving);
        let failing = component(&health, "tool-runner");
        assert!(!failing.ok);
        assert_eq!(failing.reason.as_deref(), Some("switched off"));
        assert!(failing.consecutive_failures >= 1);
        assert!(failing.last_ok_at.is_some());

        up.store(true, Ordering::Release);
        until("ready again", || health.is_ready()).await;
        assert_eq!(status_of(&health, "").await, WireStatus::Serving);
        assert_eq!(component(&health, "tool-runner").consecutive_failures, 0);
    }

    #[tokio::test]
    async fn an_optional_check_is_reported_but_does_not_flip_readiness() {
        let health = new_health().await;
        let (check, up) = switch("audit", false);
        up.store(false, Ordering::Release);
        let _tasks = health.spawn_checks(
            vec![check],
            Duration::from_millis(20),
            Duration::from_secs(5),
        );
        health.mark_started().await;
        until("the optional check to fail", || {
            component(&health, "audit").consecutive_failures >= 2
        })
        .await;
        assert!(health.is_ready());
        assert_eq!(status_of(&health, "").await, WireStatus::Serving);
        let report = health.report();
        assert!(report.ready && report.live);
        assert_eq!(report.failing_required().count(), 0);
    }

    #[tokio::test]
    async fn a_check_that_does_not_answer_in_time_fails() {
        let health = new_health().await;
        let check =
            DependencyCheck::required("slow", std::future::pending).with_target("peer 10.0.0.1:1");
        let _tasks = health.spawn_checks(
            vec![check],
            Duration::from_millis(20),
            Duration::from_millis(30),
        );
        health.mark_started().await;
        until("the timeout to count", || {
            component(&health, "slow").consecutive_failures >= 1
        })
        .await;
        assert!(!health.is_ready());
        let reason = component(&health, "slow").reason.unwrap();
        assert!(
            reason.contains("peer 10.0.0.1:1: no answer within 30ms"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn a_panicking_check_fails_and_is_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let check = DependencyCheck::required("boom", move || {
            counted.fetch_add(1, Ordering::AcqRel);
            async { panic!("boom") }
        });
        let health = new_health().await;
        let _tasks = health.spawn_checks(
            vec![check],
            Duration::from_millis(10),
            Duration::from_secs(5),
        );
        until("two attempts", || calls.load(Ordering::Acquire) >= 2).await;
        assert_eq!(
            component(&health, "boom").reason.as_deref(),
            Some("the check panicked")
        );
    }

    #[tokio::test]
    async fn draining_stays_not_serving_while_checks_pass_and_liveness_stays_up() {
        let health = new_health().await;
        let (check, _up) = switch("database", true);
        let _tasks = health.spawn_checks(
            vec![check],
            Duration::from_millis(10),
            Duration::from_secs(5),
        );
        health.mark_started().await;
        until("ready", || health.is_ready()).await;

        health.begin_drain().await;
        assert!(!health.is_ready());
        assert_eq!(status_of(&health, "").await, WireStatus::NotServing);
        // The checks keep passing; readiness does not come back.
        let before = component(&health, "database").checked_at;
        until("another passing check", || {
            component(&health, "database").checked_at != before
        })
        .await;
        assert!(component(&health, "database").ok);
        assert!(!health.is_ready());
        assert_eq!(status_of(&health, "").await, WireStatus::NotServing);
        assert_eq!(status_of(&health, LIVENESS).await, WireStatus::Serving);
        let report = health.report();
        assert!(report.draining && report.live && !report.ready);
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_fails_naming_its_address() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check =
            DependencyCheck::grpc_peer("tool-runner", &format!("http://127.0.0.1:{port}"), true);
        let reason = check.run(Duration::from_secs(10)).await.unwrap_err();
        assert!(
            reason.starts_with(&format!("peer 127.0.0.1:{port}")),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn gauges_follow_the_components() {
        let registry = Registry::new();
        let (health, _server) = Health::new("test", Vec::new(), &registry).await.unwrap();
        health.add_component("database", true);
        health.record("database", Ok(())).await;
        health.mark_started().await;
        let text = {
            let mut buffer = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buffer,
            )
            .unwrap();
            String::from_utf8(buffer).unwrap()
        };
        assert!(
            text.contains("agentmesh_dependency_up{component=\"database\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("agentmesh_dependency_up{component=\"startup\"} 1"),
            "{text}"
        );
        assert!(text.contains("agentmesh_ready 1"), "{text}");
        health.record("database", Err("gone".into())).await;
        assert!(!health.is_ready());
    }
}
