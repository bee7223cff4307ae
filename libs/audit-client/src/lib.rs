//! The audit producer: how every agentmesh service records what it did in the
//! audit service without slowing down or losing anything.
//!
//! Data flow:
//!
//! ```text
//! handler ── emit() ──▶ bounded in-memory queue ──▶ sender task ──▶ AuditService/Record
//!             (never awaits)                          │   ▲
//!                                                     ▼   │ replay, oldest first
//!                                          spool: <spool_dir>/<service>/*.spool
//!                                          (append-only, fsync'd per batch)
//! ```
//!
//! * [`AuditClient::emit`] fills in what the caller left out (id, time,
//!   service, and tenant, subject, request id and trace id from the current
//!   request), and pushes the event onto a bounded queue. It never awaits and
//!   never does I/O.
//! * The sender task takes batches by size ([`AuditConfig::batch_size`]) or
//!   time ([`AuditConfig::flush_interval`]), redacts secrets, and calls
//!   `Record`. When the audit service is unreachable, slow or failing, the
//!   batch goes to the spool instead; while the spool holds anything, new
//!   batches go behind it, so events reach the audit service in the order
//!   they were emitted. Once the service answers again the spool is replayed,
//!   oldest first, and each segment file is deleted when all its events are
//!   acknowledged. A crash during replay re-sends some events: `Record` is
//!   idempotent by `event_id`, so they are stored once.
//! * A full spool ([`AuditConfig::max_spool_bytes`]) is an alarm (metric
//!   `agentmesh_audit_spool_full_total`, an error log) and follows
//!   [`SpoolFullPolicy`]: `block` (the default) stops taking events from the
//!   queue until the audit service is back, so emitters block once the queue
//!   is full too; `drop_oldest` discards the oldest queued events, counted in
//!   `agentmesh_audit_events_dropped_total`. Never a silent loss.
//! * [`AuditClient::shutdown`] (after the service's drain) sends what is
//!   queued, or spools it, within [`AuditConfig::shutdown_timeout`].
//! * Durability: an event is safe once the audit service acknowledged it or
//!   its batch was fsync'd to the spool, so a crash (even `kill -9`) loses
//!   nothing spooled. Events only in memory at that moment — queued, or in
//!   the batch being sent — are lost; that window is about one
//!   [`AuditConfig::flush_interval`] plus one [`AuditConfig::send_timeout`].
//!
//! Prompt, argument and output *contents* are not recorded: producers pass
//! them through [`AuditClient::capture`], which keeps their size and SHA-256,
//! and the (redacted, truncated) text only when
//! [`AuditConfig::capture_content`] is on. Secrets — the API keys a service
//! registers with [`AuditClient::add_secret`], bearer tokens, well-known key
//! formats, and [`AuditConfig::redact_patterns`] — are replaced by
//! `[REDACTED]` in every string of every event before it leaves the process
//! or reaches the spool (see [`Redactor`]).
//!
//! # Layout
//!
//! * this module: [`AuditConfig`] and [`AuditClient`], the handle services
//!   hold (emit, capture, shutdown, delivery health);
//! * `sender`: the queue and the sender task (with `active`, `task` and
//!   `metrics` beneath it);
//! * `spool`: the append-only segment files events wait in;
//! * `redact`: [`Redactor`], applied to every string of every event;
//! * [`resilience`]: resilience decisions (circuit changes, refusals,
//!   retries) as metrics and, where an operator needs them, audit events.

mod access;
mod redact;
pub mod resilience;
mod sender;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_kit::{ConfigError, RequestContext, telemetry};
use agentmesh_proto::audit::v1::{AuditEvent, CapturedContent, EventType, Outcome};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use access::access_event;
pub use redact::{MIN_SECRET_LEN, REDACTED, Redactor};

/// What to do when the spool is full and the audit service still away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFullPolicy {
    /// Stop taking events from the queue until the audit service is back;
    /// once the queue is full too, `emit` blocks. Nothing is lost.
    #[default]
    Block,
    /// Keep going and drop the oldest queued events, counting them.
    DropOldest,
}

/// How a service talks to the audit service (section `[<service>.audit]`,
/// environment `AGENTMESH_<SERVICE>__AUDIT__*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The audit service, e.g. `http://127.0.0.1:50054`. Empty turns auditing
    /// off (events are discarded; a warning says so at start).
    pub url: String,
    /// Directory of the local spool; each service spools under
    /// `<spool_dir>/<service>/`.
    pub spool_dir: PathBuf,
    /// Events held in memory before the policy applies.
    pub queue_capacity: usize,
    /// Events per `Record` call (at most the audit service's batch limit).
    pub batch_size: usize,
    /// Longest time an event waits in the queue before it is sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How long one `Record` call may take before the batch is spooled.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Largest spool on disk, in bytes.
    pub max_spool_bytes: u64,
    /// What to do when the spool is full.
    pub spool_full_policy: SpoolFullPolicy,
    /// How long to wait between attempts to reach an absent audit service
    /// (doubling up to 30 s).
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// How long a shutdown may spend sending the queue before spooling it.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Record the text of prompts, tool arguments and outputs (redacted),
    /// not only their size and hash.
    pub capture_content: bool,
    /// Longest captured text, in bytes; longer text is cut and marked.
    pub max_capture_bytes: usize,
    /// Further regular expressions whose matches are redacted.
    pub redact_patterns: Vec<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:50054".to_owned(),
            spool_dir: PathBuf::from("data/spool"),
            queue_capacity: 65_536,
            batch_size: 500,
            flush_interval: Duration::from_millis(200),
            send_timeout: Duration::from_secs(5),
            max_spool_bytes: 1 << 30,
            spool_full_policy: SpoolFullPolicy::Block,
            retry_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(5),
            capture_content: false,
            max_capture_bytes: 16 * 1024,
            redact_patterns: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// Auditing off: for tests of a single service.
    pub fn disabled() -> Self {
        Self {
            url: String::new(),
            ..Self::default()
        }
    }

    /// Checks the settings; errors name them as `audit.<setting>`, relative
    /// to the service's section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |name: &str, message: String| Err(ConfigError::new(format!("audit.{name}"), message));
        let http = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !self.url.is_empty() && !http {
            return invalid(
                "url",
                format!("{:?} is not an http:// or https:// URL", self.url),
            );
        }
        if self.queue_capacity == 0 {
            return invalid("queue_capacity", "must be at least 1".to_owned());
        }
        if self.batch_size == 0 || self.batch_size > 1000 {
            return invalid("batch_size", "must be between 1 and 1000".to_owned());
        }
        if self.flush_interval.is_zero() {
            return invalid("flush_interval", "must be more than 0".to_owned());
        }
        if self.send_timeout.is_zero() {
            return invalid("send_timeout", "must be more than 0".to_owned());
        }
        if self.max_spool_bytes < 1 << 20 {
            return invalid("max_spool_bytes", "must be at least 1 MiB".to_owned());
        }
        if let Err(err) = Redactor::new(&self.redact_patterns) {
            return invalid("redact_patterns", err.to_string());
        }
        Ok(())
    }
}

/// Errors starting the producer.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The spool directory could not be created or read.
    #[error("audit spool {path}: {source}")]
    Spool {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The URL or a redaction pattern is invalid.
    #[error("audit client: {0}")]
    Config(String),
}

/// The audit producer of one service. Cheap to clone; all clones share the
/// queue and the sender task.
#[derive(Debug, Clone)]
pub struct AuditClient {
    inner: Arc<sender::Shared>,
}

impl AuditClient {
    /// Starts the producer of `service` (e.g. `"orchestrator"`): opens (and
    /// replays, once the audit service answers) its spool, registers its
    /// metrics in `registry`, and spawns the sender task on the current
    /// Tokio runtime. With an empty URL, returns [`AuditClient::disabled`].
    pub fn start(
        config: &AuditConfig,
        service: &'static str,
        registry: &prometheus::Registry,
    ) -> Result<Self, AuditError> {
        Self::start_with_client_metrics(
            config,
            service,
            registry,
            &agentmesh_kit::metrics::GrpcClientMetrics::disabled(),
        )
    }

    /// [`AuditClient::start`], also counting the calls to the audit service
    /// in `client_metrics` (the service's `grpc_client_*` metrics).
    pub fn start_with_client_metrics(
        config: &AuditConfig,
        service: &'static str,
        registry: &prometheus::Registry,
        client_metrics: &agentmesh_kit::metrics::GrpcClientMetrics,
    ) -> Result<Self, AuditError> {
        let clients = agentmesh_kit::client::Clients::new(
            client_metrics.clone(),
            agentmesh_kit::auth::ServiceCredential::none(),
        );
        sender::start(config, service, registry, &clients).map(|inner| Self { inner })
    }

    /// A producer that discards every event (auditing off).
    pub fn disabled(service: &'static str) -> Self {
        Self {
            inner: sender::Shared::disabled(service),
        }
    }

    /// The service this producer speaks for.
    pub fn service(&self) -> &'static str {
        self.inner.service()
    }

    /// A new event of `event_type`, with a fresh id (UUIDv7), the current
    /// time, this service, outcome SUCCESS, and — when called while handling
    /// a request — the tenant, subject, request id and trace id of the
    /// current request ([`RequestContext::current`]).
    pub fn event(&self, event_type: EventType) -> AuditEvent {
        new_event(self.service(), event_type)
    }

    /// Records `event`; never awaits. Fills in an empty id, time or service.
    /// The event is sent in the background (see the crate docs).
    pub fn emit(&self, mut event: AuditEvent) {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::now_v7().to_string();
        }
        if event.time.is_none() {
            event.time = Some(prost_types::Timestamp::from(SystemTime::now()));
        }
        if event.service.is_empty() {
            event.service = self.service().to_owned();
        }
        self.inner.push(event);
    }

    /// Size and SHA-256 of `text`, and the text itself (redacted, cut to
    /// [`AuditConfig::max_capture_bytes`]) only when content capture is on.
    pub fn capture(&self, text: &str) -> CapturedContent {
        let digest = Sha256::digest(text.as_bytes());
        let mut content = CapturedContent {
            size_bytes: i64::try_from(text.len()).unwrap_or(i64::MAX),
            sha256: hex::encode(digest),
            text: None,
            truncated: false,
        };
        if let Some(max) = self.inner.capture_limit() {
            // Redact before cutting, so a cut never leaves a secret's prefix.
            let text = self.inner.redact(text);
            let kept = agentmesh_kit::text::prefix_within(&text, max);
            content.truncated = kept.len() < text.len();
            content.text = Some(kept.to_owned());
        }
        content
    }

    /// Registers a secret (e.g. an API key read from the environment) that
    /// must never appear in an event: every occurrence is redacted.
    pub fn add_secret(&self, secret: &str) {
        self.inner.add_secret(secret);
    }

    /// Events emitted but not yet acknowledged by the audit service or
    /// written to the spool.
    pub fn queued(&self) -> usize {
        self.inner.queued()
    }

    /// Bytes in the spool, waiting for the audit service.
    pub fn spooled_bytes(&self) -> u64 {
        self.inner.spooled_bytes()
    }

    /// Where delivery to the audit service stands: whether the last call
    /// succeeded, and what waits in the spool.
    pub fn delivery(&self) -> Delivery {
        self.inner.delivery()
    }

    /// The optional readiness check `audit`: failing while the audit
    /// service is unreachable or events wait in the spool, with the spool's
    /// size in the reason. Optional because nothing is lost meanwhile (the
    /// events are spooled), so the service stays ready. Passing when
    /// auditing is off.
    pub fn health_check(&self) -> agentmesh_kit::health::DependencyCheck {
        let client = self.clone();
        agentmesh_kit::health::DependencyCheck::optional("audit", move || {
            let delivery = client.delivery();
            async move { delivery.health() }
        })
    }

    /// Waits until every event emitted so far has been acknowledged by the
    /// audit service or written to the spool (for tests and shutdown).
    pub async fn flush(&self) {
        self.inner.flush().await;
    }

    /// Sends what is queued (or spools it) within the configured shutdown
    /// timeout, then stops the sender task. Events emitted afterwards go
    /// straight to the spool.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

/// Where delivery to the audit service stands (see [`AuditClient::delivery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Auditing is on (a URL is configured).
    pub enabled: bool,
    /// The audit service's URL.
    pub url: String,
    /// The last call to the audit service succeeded (or none failed yet).
    pub reachable: bool,
    /// The error of the last failed call, if any.
    pub last_error: Option<String>,
    /// Bytes in the spool, waiting for the audit service.
    pub spooled_bytes: u64,
    /// Events in memory, not yet sent or spooled.
    pub queued: usize,
}

impl Delivery {
    /// `Ok` when events flow straight to the audit service; otherwise why
    /// not, for a health check.
    pub fn health(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        let spooled = self.spooled_bytes;
        if !self.reachable {
            let error = self.last_error.as_deref().unwrap_or("the last call failed");
            return Err(format!(
                "audit service at {} unreachable ({error}); spooling: {spooled} bytes in the spool",
                self.url
            ));
        }
        if spooled > 0 {
            return Err(format!(
                "replaying the spool to the audit service at {}: {spooled} bytes left",
                self.url
            ));
        }
        Ok(())
    }
}

/// A new event of `event_type` by `service` (see [`AuditClient::event`]).
fn new_event(service: &str, event_type: EventType) -> AuditEvent {
    let mut event = AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
        r#type: event_type as i32,
        service: service.to_owned(),
        outcome: Outcome::Success as i32,
        ..AuditEvent::default()
    };
    if let Some(context) = RequestContext::current() {
        apply_context(&mut event, &context);
    }
    event
}

/// Copies the caller's identity and trace from a request context.
pub fn apply_context(event: &mut AuditEvent, context: &RequestContext) {
    if let Some(tenant) = context.header("x-agentmesh-tenant") {
        event.tenant = tenant.to_owned();
    }
    if let Some(subject) = context.header("x-agentmesh-subject") {
        event.subject = subject.to_owned();
    }
    if let Some(request_id) = context.request_id() {
        event.request_id = request_id.to_owned();
    }
    // The current span, when traces are exported, is the event's origin;
    // otherwise the trace the caller named.
    if let Some((trace_id, span_id)) = telemetry::current_ids() {
        event.trace_id = trace_id;
        event.span_id = span_id;
    } else if let Some(trace_id) = context
        .header("traceparent")
        .and_then(telemetry::trace_id_of)
    {
        event.trace_id = trace_id.to_owned();
    }
}

/// A gRPC status code's name as events spell it (e.g. `UNAVAILABLE`).
pub use agentmesh_kit::trace::code_name;

/// A protobuf duration from a std one.
pub fn duration(value: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(value).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// Hex SHA-256 of some text (e.g. an effective configuration).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Starts the producer of a service (`C` is its configuration type, whose
/// section names the settings in errors) and records what it runs with: a
/// CONFIG_LOADED event carrying the SHA-256 of `effective`, the effective
/// configuration with its secrets removed, to spot configuration changes.
/// A spool that cannot be opened stops the start. The producer's metrics,
/// and its calls to the audit service, are counted in the service's
/// `metrics`.
pub fn start_service<C: agentmesh_kit::ServiceConfig>(
    audit: &AuditConfig,
    host: &agentmesh_kit::ServiceHost,
    effective: &impl Serialize,
) -> Result<AuditClient, agentmesh_kit::ServeError> {
    let client = sender::start(
        audit,
        host.service(),
        host.metrics().registry(),
        host.clients(),
    )
    .map(|inner| AuditClient { inner })
    .map_err(|err| {
        agentmesh_kit::ServeError::Io(std::io::Error::other(format!(
            "cannot start the audit producer (settings `{}.audit.*`): {err}",
            C::SECTION
        )))
    })?;
    let bytes = serde_json::to_vec(effective).unwrap_or_default();
    let mut event = client.event(EventType::ConfigLoaded);
    event.details = Some(agentmesh_proto::audit::v1::audit_event::Details::Config(
        agentmesh_proto::audit::v1::ConfigDetails {
            source: format!(
                "defaults, then the configuration file if any, then env:{}*, then flags",
                agentmesh_kit::config::env_prefix::<C>()
            ),
            sha256: sha256_hex(&bytes),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            changed_settings: Vec::new(),
        },
    ));
    client.emit(event);
    // The service's access decisions go to the audit trail.
    host.access().set_sink(std::sync::Arc::new(client.clone()));
    Ok(client)
}

/// A database URL without the password it may carry
/// (`postgres://user:secret@host/db` → `postgres://user@host/db`).
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_health_names_the_spool() {
        let mut delivery = Delivery {
            enabled: true,
            url: "http://audit:50054".into(),
            reachable: false,
            last_error: Some("UNAVAILABLE: tcp connect error".into()),
            spooled_bytes: 2048,
            queued: 3,
        };
        let reason = delivery.health().unwrap_err();
        assert!(
            reason.contains("http://audit:50054 unreachable"),
            "{reason}"
        );
        assert!(
            reason.contains("UNAVAILABLE: tcp connect error"),
            "{reason}"
        );
        assert!(reason.contains("2048 bytes in the spool"), "{reason}");
        delivery.reachable = true;
        assert!(delivery.health().unwrap_err().contains("2048 bytes left"));
        delivery.spooled_bytes = 0;
        delivery.health().unwrap();
        assert_eq!(AuditClient::disabled("test").delivery().health(), Ok(()));
    }

    #[test]
    fn database_passwords_are_taken_out_of_urls() {
        assert_eq!(
            without_password("postgres://agent:s3cret@db:5432/runs?sslmode=require"),
            "postgres://agent@db:5432/runs?sslmode=require"
        );
        assert_eq!(without_password("sqlite://data/o.db"), "sqlite://data/o.db");
        assert_eq!(without_password("postgres://db/x"), "postgres://db/x");
    }
}
