//! [`DependencyCheck`]: something a service depends on, checked in the
//! background by [`super::Health::spawn_checks`], and the checks every
//! service can use (a peer's gRPC health).

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

type CheckFn = dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync;

/// Something a service depends on, checked in the background: a name, whether
/// readiness depends on it, and an async check answering `Ok(())` or
/// `Err(reason)`, the reason written for the person reading `/readyz?verbose`
/// or `agentmesh health --deep`.
#[derive(Clone)]
pub struct DependencyCheck {
    name: String,
    required: bool,
    target: Option<String>,
    check: Arc<CheckFn>,
    /// The host's client TLS, for checks of `https://` peers (set when the
    /// check is added to a host).
    tls: Arc<OnceLock<crate::tls::ClientTlsFiles>>,
}

impl fmt::Debug for DependencyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DependencyCheck")
            .field("name", &self.name)
            .field("required", &self.required)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl DependencyCheck {
    /// A check called `name`; `required` checks decide readiness.
    pub fn new<F, Fut>(name: impl Into<String>, required: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name: name.into(),
            required,
            target: None,
            check: Arc::new(move || check().boxed()),
            tls: Arc::default(),
        }
    }

    /// Reaches `https://` peers with `tls` (the host's `[server.client_tls]`);
    /// the first one given counts.
    pub fn use_client_tls(&self, tls: &crate::tls::ClientTlsFiles) {
        let _ = self.tls.set(tls.clone());
    }

    /// A check readiness depends on.
    pub fn required<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self::new(name, true, check)
    }

    /// A check that is reported but does not change readiness.
    pub fn optional<F, Fut>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self::new(name, false, check)
    }

    /// Names what the check reaches (e.g. `peer 10.0.0.7:50053`), for the
    /// reason given when it does not answer in time.
    #[must_use]
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// The health of another gRPC service at `uri` (e.g.
    /// `http://127.0.0.1:50053`): `grpc.health.v1.Health/Check` with service
    /// `""`. Failing when the peer is unreachable or answers anything but
    /// SERVING; the reason names its address. The channel is made at the
    /// first check and reused, reconnecting as needed.
    pub fn grpc_peer(name: impl Into<String>, uri: &str, required: bool) -> Self {
        let address = peer_address(uri);
        let target = format!("peer {address}");
        let uri = uri.to_owned();
        let channel: Arc<OnceLock<Result<Channel, String>>> = Arc::default();
        let tls: Arc<OnceLock<crate::tls::ClientTlsFiles>> = Arc::default();
        let host_tls = Arc::clone(&tls);
        let mut check = Self::new(name, required, move || {
            let tls = Arc::clone(&tls);
            let channel = Arc::clone(&channel);
            let uri = uri.clone();
            let address = address.clone();
            async move {
                // Made here rather than up front: a channel needs a runtime.
                let channel = channel
                    .get_or_init(|| {
                        crate::client::tls_channel(&uri, tls.get()).map_err(|err| err.to_string())
                    })
                    .clone()
                    .map_err(|err| format!("peer {address}: unusable address {uri:?}: {err}"))?;
                check_peer(channel, &address).await
            }
        })
        .with_target(target);
        check.tls = host_tls;
        check
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether readiness depends on it.
    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Runs the check once, bounded by `timeout`. Running out of time, or
    /// panicking, is a failure like any other.
    pub async fn run(&self, timeout: Duration) -> Result<(), String> {
        let attempt = AssertUnwindSafe((self.check)()).catch_unwind();
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the check panicked".to_owned()),
            Err(_) => {
                let waited = humantime_serde::re::humantime::format_duration(timeout);
                Err(match &self.target {
                    Some(target) => format!("{target}: no answer within {waited}"),
                    None => format!("no answer within {waited}"),
                })
            }
        }
    }
}

/// `host:port` of a URI, for messages; the URI itself when it has none.
fn peer_address(uri: &str) -> String {
    uri.parse::<http::Uri>()
        .ok()
        .and_then(|uri| {
            uri.authority()
                .map(|authority| authority.as_str().to_owned())
        })
        .unwrap_or_else(|| uri.to_owned())
}

async fn check_peer(channel: Channel, address: &str) -> Result<(), String> {
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match client.check(request).await {
        Ok(answer) => match answer.into_inner().status() {
            WireStatus::Serving => Ok(()),
            other => Err(format!("peer {address} reports {}", other.as_str_name())),
        },
        Err(status) if status.code() == tonic::Code::Unavailable => Err(format!(
            "peer {address} unreachable: {}",
            status_chain(&status)
        )),
        Err(status) => Err(format!(
            "peer {address}: health check failed: {:?}: {}",
            status.code(),
            status_chain(&status)
        )),
    }
}

/// A status's message followed by its causes (`tcp connect error: Connection
/// refused (os error 111)`), each said once.
fn status_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let part = err.to_string();
        // "transport error" only says which layer wraps the real cause.
        if !text.contains(&part) && part != "transport error" {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = err.source();
    }
    text
}
