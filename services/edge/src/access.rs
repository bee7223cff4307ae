//! Who may reach the routes that are not one RPC (`/mcp`, `/v1/health`):
//! the mesh decides, as for every other route. The first request of a
//! credential makes a one-item call that needs the route's scope (the
//! route's `Probe`): for `/mcp`, one tool from the tool runner (the call an
//! MCP client makes first anyway: `tools:read`); for `/v1/health`, one rule
//! from the alerting service (the operator API: `alerts:read`). A refusal
//! is answered 401 (with `WWW-Authenticate: Bearer`) or 403 in the REST
//! error shape, before the route runs. Answers are remembered for a few
//! seconds per credential and probe (by a SHA-256, never the credential
//! itself), so a session's requests do not each cost a call.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentmesh_proto::alerting::v1::ListRulesRequest;
use agentmesh_proto::tools::v1::ListToolsRequest;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::caller::Caller;
use crate::error::rest_error;
use crate::state::Edge;

/// How long a decision is remembered.
const REMEMBERED: Duration = Duration::from_secs(10);
/// Most credentials remembered at once (past it, the memory starts over).
const MOST: usize = 4096;

/// When a decision was made, and the refusal (none: allowed).
type Decision = (Instant, Option<tonic::Status>);

/// Recent decisions by credential digest.
#[derive(Debug, Default)]
pub(crate) struct Verified {
    decisions: Mutex<HashMap<[u8; 32], Decision>>,
}

/// The call that tells whether a caller may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// One tool from the tool runner: `tools:read`.
    ListTools,
    /// One rule from the alerting service: `alerts:read`.
    ListRules,
}

/// The middleware's state: the edge, the route's probe, and its recent
/// decisions.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) edge: Edge,
    pub(crate) probe: Probe,
    pub(crate) verified: std::sync::Arc<Verified>,
}

impl Gate {
    pub(crate) fn new(edge: &Edge, probe: Probe) -> Self {
        Self {
            edge: edge.clone(),
            probe,
            verified: std::sync::Arc::default(),
        }
    }
}

impl Probe {
    /// Makes the call as `caller`.
    async fn call(self, edge: &Edge, caller: &Caller) -> Result<(), tonic::Status> {
        let timeout = Some(edge.config.call_timeout);
        match self {
            Self::ListTools => {
                let probe = ListToolsRequest {
                    page_size: 1,
                    ..ListToolsRequest::default()
                };
                let mut tools = edge.peers.tools.clone();
                tools.list_tools(caller.request(probe, timeout)).await?;
            }
            Self::ListRules => {
                let probe = ListRulesRequest {
                    page_size: 1,
                    ..ListRulesRequest::default()
                };
                let mut alerting = edge.peers.alerting.clone();
                alerting.list_rules(caller.request(probe, timeout)).await?;
            }
        }
        Ok(())
    }
}

impl Verified {
    fn recall(&self, key: &[u8; 32], now: Instant) -> Option<Option<tonic::Status>> {
        let decisions = self.decisions.lock().ok()?;
        let (at, decision) = decisions.get(key)?;
        (now.duration_since(*at) < REMEMBERED).then(|| decision.clone())
    }

    fn remember(&self, key: [u8; 32], now: Instant, decision: Option<tonic::Status>) {
        if let Ok(mut decisions) = self.decisions.lock() {
            if decisions.len() >= MOST {
                decisions.clear();
            }
            decisions.insert(key, (now, decision));
        }
    }
}

/// What a decision depends on: the credential and the identity headers a
/// request may carry (a service acting for an end user; a forged tenant),
/// as one digest.
fn key_of(headers: &http::HeaderMap) -> [u8; 32] {
    let mut digest = Sha256::new();
    for name in std::iter::once("authorization").chain(agentmesh_kit::auth::FORWARDED_IDENTITY) {
        for value in headers.get_all(name) {
            digest.update(name.as_bytes());
            digest.update([0]);
            digest.update(value.as_bytes());
            digest.update([0]);
        }
    }
    digest.finalize().into()
}

/// The middleware in front of a gated route.
pub(crate) async fn verify(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let Gate {
        edge,
        probe,
        verified,
    } = gate;
    let key = key_of(request.headers());
    let now = Instant::now();
    let refusal = match verified.recall(&key, now) {
        Some(decision) => decision,
        None => {
            let caller = Caller::of(request.headers());
            match probe.call(&edge, &caller).await {
                Ok(()) => {
                    verified.remember(key, now, None);
                    None
                }
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) =>
                {
                    verified.remember(key, now, Some(status.clone()));
                    Some(status)
                }
                // The service asked is away: nothing to remember.
                Err(status) => Some(status),
            }
        }
    };
    match refusal {
        None => next.run(request).await,
        Some(status) => {
            let mut response = rest_error(&status);
            if status.code() == Code::Unauthenticated {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_part_of_the_key() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", http::HeaderValue::from_static("Bearer a"));
        let plain = key_of(&headers);
        headers.insert(
            "x-agentmesh-tenant",
            http::HeaderValue::from_static("globex"),
        );
        assert_ne!(plain, key_of(&headers));
        headers.insert("cookie", http::HeaderValue::from_static("c=d"));
        assert_eq!(key_of(&headers), {
            let mut same = headers.clone();
            same.remove("cookie");
            key_of(&same)
        });
    }

    #[test]
    fn decisions_are_remembered_briefly() {
        let verified = Verified::default();
        let now = Instant::now();
        verified.remember([1; 32], now, Some(tonic::Status::unauthenticated("no key")));
        verified.remember([2; 32], now, None);
        assert!(matches!(verified.recall(&[1; 32], now), Some(Some(_))));
        assert!(matches!(verified.recall(&[2; 32], now), Some(None)));
        assert!(verified.recall(&[3; 32], now).is_none());
        assert!(verified.recall(&[2; 32], now + REMEMBERED).is_none());
    }
}
