//! [`RequestContext`]: what an incoming call passes on to the calls it makes
//! (forwarded headers and the deadline), and the task-local that makes it
//! current for the handler.
//!
//! Its own module because both directions of [`crate::propagation`] and the
//! spans of [`crate::trace`] read it, while propagation opens those spans.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_auth::Identity;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";
/// The gRPC deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Headers copied from an incoming call onto every call it causes: identity,
/// request id, W3C trace context and baggage, and the B3 headers Istio asks
/// applications to forward.
pub const FORWARDED_HEADERS: &[&str] = &[
    "x-agentmesh-tenant",
    "x-agentmesh-subject",
    "x-agentmesh-scopes",
    "x-agentmesh-credential",
    "x-agentmesh-allow",
    REQUEST_ID,
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
];

tokio::task_local! {
    pub(crate) static CURRENT: RequestContext;
}

/// What an incoming call passes on to the calls it makes.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    headers: Vec<(HeaderName, HeaderValue)>,
    deadline: Option<Instant>,
    identity: Option<Arc<Identity>>,
}

impl RequestContext {
    /// Reads the forwarded headers and deadline of an incoming call, adding an
    /// `x-request-id` to `headers` when there is none.
    pub fn from_incoming(headers: &mut HeaderMap, now: Instant) -> Self {
        if !headers.contains_key(REQUEST_ID) {
            let id = uuid::Uuid::new_v4().to_string();
            if let Ok(value) = HeaderValue::from_str(&id) {
                headers.insert(REQUEST_ID, value);
            }
        }
        let forwarded = FORWARDED_HEADERS
            .iter()
            .filter_map(|name| {
                let value = headers.get(*name)?;
                Some((HeaderName::from_static(name), value.clone()))
            })
            .collect();
        let deadline = headers
            .get(GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| now.checked_add(timeout));
        Self {
            headers: forwarded,
            deadline,
            identity: None,
        }
    }

    /// The context of work done for `identity` that no call of theirs is
    /// waiting on (a run resumed after a restart): their identity headers,
    /// a fresh request id, no deadline.
    pub fn acting_for(identity: Identity) -> Self {
        let mut headers = HeaderMap::new();
        identity.write_headers(&mut headers);
        Self::from_incoming(&mut headers, Instant::now()).with_identity(Arc::new(identity), None)
    }

    /// The same context for a verified identity: its identity headers are
    /// replaced by those of `verified` (the call's headers after the auth
    /// layer rewrote them), or kept when `None`.
    pub fn with_identity(mut self, identity: Arc<Identity>, verified: Option<&HeaderMap>) -> Self {
        if let Some(headers) = verified {
            self.headers
                .retain(|(name, _)| !agentmesh_auth::identity::FORWARDED.contains(&name.as_str()));
            for name in agentmesh_auth::identity::FORWARDED {
                if let Some(value) = headers.get(name) {
                    self.headers
                        .push((HeaderName::from_static(name), value.clone()));
                }
            }
        }
        self.identity = Some(identity);
        self
    }

    /// Who the call is for, as the auth layer verified it (`None` for
    /// calls that were not checked: health checks, and contexts made by
    /// hand).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// The context of the call being handled, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The context stored in a tonic request's extensions by
    /// [`crate::propagation::PropagationLayer`].
    pub fn from_request<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }

    /// Runs `future` with this context current, e.g. in a task spawned by a
    /// handler, so its outgoing calls forward this call's metadata.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// The request id.
    pub fn request_id(&self) -> Option<&str> {
        self.header(REQUEST_ID)
    }

    /// A forwarded header's value, if it was sent and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .and_then(|(_, value)| value.to_str().ok())
    }

    /// When the caller stops waiting, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The same context with another deadline: work that outlives the call
    /// that started it (a run started by `StartRun`) keeps the caller's
    /// identity and trace but not the caller's deadline.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Adds this context to an outgoing request: forwarded headers the request
    /// does not set itself, and a `grpc-timeout` shrunk to the time left.
    /// Fails with DEADLINE_EXCEEDED when no time is left.
    pub fn apply(&self, headers: &mut HeaderMap, now: Instant) -> Result<(), tonic::Status> {
        for (name, value) in &self.headers {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(tonic::Status::deadline_exceeded(
                "the caller's deadline passed before this downstream call was made",
            ));
        }
        let own = headers
            .get(GRPC_TIMEOUT)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let timeout = own.map_or(left, |own| own.min(left));
        if let Ok(value) = HeaderValue::from_str(&format_grpc_timeout(timeout)) {
            headers.insert(GRPC_TIMEOUT, value);
        }
        Ok(())
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Formats a `grpc-timeout` value in the finest unit that fits in 8 digits,
/// rounding up so the callee never gets less time than stated.
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        let amount = nanos.div_ceil(scale);
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{MAX}H")
}
