//! Run callbacks: a run started with a `callback` has its end (or every
//! stored step) POSTed to the client's URL, signed with its tenant's secret,
//! retried until acknowledged, and recorded in the audit log
//! (docs/callbacks.md).
//!
//! ```text
//! StartRun ─▶ validate ─▶ target::parse       the URL alone    INVALID_ARGUMENT
//!          └▶ service::start ─▶ Callbacks::check: a secret for
//!             the tenant (FAILED_PRECONDITION), the destination
//!             against the egress policy, resolved (INVALID_ARGUMENT)
//! engine::persist ─▶ payload (step_callback / end_callback)
//!          ─▶ Store::flush: the outbox row in the step's or end's
//!             transaction ─▶ Callbacks::wake
//! deliver (one task per replica) ─▶ claim due rows ─▶ sign ─▶ POST
//!          (egress client: the address checked again) ─▶ schedule:
//!          delivered | retry after a backoff | given up ─▶ store,
//!          metrics, audit (RUN_CALLBACK)
//! ```
//!
//! * [`target`]: what a callback URL may be, and where it may point.
//! * [`secrets`]: the per-tenant signing secrets (a file, reloaded).
//! * [`sign`]: the signature header (HMAC-SHA256 over `<t>.<body>`).
//! * [`payload`]: the JSON bodies, built when a step or end is stored.
//! * [`schedule`]: backoff, retries and giving up.
//! * [`deliver`](mod@deliver): the delivery task and one attempt.
//!
//! Delivery is at least once, deduplicated by the receiver on
//! `delivery_id`; see [`deliver`](mod@deliver) for when a second delivery
//! can happen.

mod deliver;
mod payload;
mod schedule;
mod secrets;
mod sign;
mod target;

use agentmesh_audit_client::AuditClient;
use agentmesh_egress::{ClientOptions, EgressClient};
use tokio::sync::Notify;
use tonic::Status;

pub(crate) use self::deliver::deliver;
pub(crate) use self::payload::{end_callback, step_callback};
use self::secrets::Secrets;
pub(crate) use self::target::{RequestedCallback, parse};
use crate::config::CallbacksConfig;
use crate::metrics::CallbackMetrics;
use crate::store::RunCallback;

/// What callbacks need, shared by StartRun's checks, the engine (which
/// stores them) and the delivery task.
#[derive(Debug)]
pub(crate) struct Callbacks {
    config: CallbacksConfig,
    /// The outbound-URL guard's client: the policy, the resolver that
    /// checks every address, no redirects.
    client: EgressClient,
    secrets: Secrets,
    metrics: CallbackMetrics,
    audit: AuditClient,
    /// Woken when a callback is stored here, so it goes out at once.
    due: Notify,
}

impl Callbacks {
    /// Compiles the egress policy and reads the secrets file; the error
    /// names the setting (never a secret).
    pub(crate) fn new(
        config: &CallbacksConfig,
        audit: AuditClient,
        metrics: CallbackMetrics,
    ) -> Result<Self, String> {
        let policy = config
            .egress
            .compile()
            .map_err(|(field, problem)| format!("callbacks.egress.{field}: {problem}"))?;
        let client = EgressClient::new(
            policy,
            &ClientOptions {
                connect_timeout: config.timeout,
                ..ClientOptions::default()
            },
        )?;
        let secrets = Secrets::open(config.secrets_file.as_deref())
            .map_err(|problem| format!("callbacks.secrets_file: {problem}"))?;
        Ok(Self {
            config: config.clone(),
            client,
            secrets,
            metrics,
            audit,
            due: Notify::new(),
        })
    }

    /// The callback of a new run of `tenant`: FAILED_PRECONDITION when the
    /// tenant has no secret to sign it with, INVALID_ARGUMENT naming
    /// `callback.url` when its destination is not allowed.
    pub(crate) async fn check(
        &self,
        tenant: &str,
        requested: RequestedCallback,
    ) -> Result<RunCallback, Status> {
        if self.secrets.for_tenant(tenant).is_none() {
            return Err(Status::failed_precondition(if self.secrets.configured() {
                "run callbacks cannot be signed for this tenant: the operator has configured no \
                 callback secret for it (orchestrator.callbacks.secrets_file)"
            } else {
                "run callbacks are not enabled on this orchestrator: the operator has \
                 configured no callback secrets (orchestrator.callbacks.secrets_file)"
            }));
        }
        self.check_destination(&requested.url).await?;
        Ok(RunCallback {
            url: requested.url.into(),
            every_step: requested.every_step,
        })
    }

    /// A callback was stored by this replica: deliver it now rather than
    /// at the next poll.
    pub(crate) fn wake(&self) {
        self.due.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_kit::metrics::prometheus::Registry;
    use tonic_types::StatusExt as _;

    use super::*;

    fn callbacks(config: &CallbacksConfig) -> Callbacks {
        Callbacks::new(
            config,
            AuditClient::disabled("test"),
            CallbackMetrics::new(&Registry::new()).unwrap(),
        )
        .unwrap()
    }

    fn with_secret(dir: &tempfile::TempDir) -> CallbacksConfig {
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "default = \"a secret long enough to sign\"\n").unwrap();
        CallbacksConfig {
            secrets_file: Some(path),
            ..CallbacksConfig::default()
        }
    }

    async fn refusal(callbacks: &Callbacks, url: &str) -> Option<(tonic::Code, String, String)> {
        let requested = RequestedCallback {
            url: url.parse().unwrap(),
            every_step: false,
        };
        let status = callbacks.check("acme", requested).await.err()?;
        let field = status
            .get_details_bad_request()
            .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()))
            .unwrap_or_default();
        Some((status.code(), field, status.message().to_owned()))
    }

    #[tokio::test]
    async fn special_destinations_are_refused_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let callbacks = callbacks(&with_secret(&dir));
        for (url, class) in [
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://localhost:8080/hook", "loopback"),
            ("http://10.0.0.1/hook", "private"),
            ("http://192.168.1.10/hook", "private"),
            ("http://172.16.0.5/hook", "private"),
            ("http://169.254.169.254/latest", "cloud metadata"),
            ("http://169.254.10.1/", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[fd00::1]/", "unique-local"),
            ("http://[::1]/", "loopback"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://224.0.0.1/", "multicast"),
            ("http://[::ffff:10.0.0.1]/", "private"),
        ] {
            let (code, field, message) = refusal(&callbacks, url)
                .await
                .unwrap_or_else(|| panic!("{url} was allowed"));
            assert_eq!(code, tonic::Code::InvalidArgument, "{url}: {message}");
            assert_eq!(field, "callback.url", "{url}");
            assert!(message.contains(class), "{url}: {message}");
            assert!(
                !message.contains("/hook"),
                "the path is not echoed: {message}"
            );
        }
        // A public address passes (no connection is made at StartRun).
        assert_eq!(
            refusal(&callbacks, "https://93.184.215.14/hook").await,
            None
        );
    }

    #[tokio::test]
    async fn allowed_ranges_let_private_destinations_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = with_secret(&dir);
        config.egress.allow_cidrs =
            vec!["127.0.0.0/8".into(), "::1/128".into(), "10.1.0.0/16".into()];
        let callbacks = callbacks(&config);
        for url in [
            "http://127.0.0.1:9/x",
            "http://localhost:9/x",
            "http://10.1.2.3/x",
        ] {
            assert_eq!(refusal(&callbacks, url).await, None, "{url}");
        }
        let (code, _, message) = refusal(&callbacks, "http://10.2.0.1/x").await.unwrap();
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(message.contains("private"), "{message}");
    }

    #[tokio::test]
    async fn without_a_secret_for_the_tenant_callbacks_are_a_failed_precondition() {
        let none = callbacks(&CallbacksConfig::default());
        let (code, _, message) = refusal(&none, "https://93.184.215.14/").await.unwrap();
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(message.contains("not enabled"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(
            &path,
            "[tenants]\nglobex = \"globex's secret, long enough\"\n",
        )
        .unwrap();
        let other = callbacks(&CallbacksConfig {
            secrets_file: Some(path),
            ..CallbacksConfig::default()
        });
        let (code, _, message) = refusal(&other, "https://93.184.215.14/").await.unwrap();
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(message.contains("for this tenant"), "{message}");
    }
}
