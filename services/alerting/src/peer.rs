//! A standby's forwarding of writes and WatchAlerts to the leader, and the
//! leader's check of what a standby forwarded.
//!
//! ```text
//! client ─▶ standby: FireAlert / CreateSilence / DeleteSilence / WatchAlerts
//!             │ validated here, then: store.leader() (the live alerting_leader row)
//!             │   Unknown / NotAdvertised / unreachable ─▶ UNAVAILABLE naming why
//!             ▼ Advertised(url)
//!           kit channel to url: the service's own credential, the caller's
//!           verified x-agentmesh-* identity, request id, trace, the deadline
//!           shrunk hop by hop; marked `x-alerting-forwarded-by`
//!             ▼
//!           leader: authorizes the call with the end user's own scopes (not
//!           the standby's service scopes), answers; a unary answer or the
//!           WatchAlerts stream is relayed to the client as it comes
//! ```
//!
//! A forwarded call that reaches a replica which is not (or no longer)
//! the leader is refused, never forwarded again: no loops, at most one hop.

use std::sync::Mutex;
use std::time::Duration;

use agentmesh_kit::auth::Scope;
use agentmesh_kit::client::{Clients, MeshChannel};
use agentmesh_proto::alerting::v1::{self as pb, alerting_service_client::AlertingServiceClient};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::store::{LeaderAddress, Store};

/// The metadata a standby marks a forwarded call with.
pub(crate) const FORWARDED_BY: &str = "x-alerting-forwarded-by";

/// The longest a forwarded unary call waits when its caller set no
/// deadline (a caller's shorter deadline wins).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

type Client = AlertingServiceClient<MeshChannel>;

/// A standby's way to the leader.
pub(crate) struct LeaderPeer {
    store: Store,
    clients: Clients,
    /// This replica's own advertised address (never forwarded to).
    own_url: String,
    max_message_bytes: usize,
    /// The channel to the last leader forwarded to, kept while it leads.
    client: Mutex<Option<(String, Client)>>,
}

impl std::fmt::Debug for LeaderPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderPeer").finish_non_exhaustive()
    }
}

/// Whether a standby forwarded this call.
pub(crate) fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_BY)
}

/// A forwarded call is authorized as the original caller (the standby's
/// credential, `admin` for the audit stream, would allow anything).
pub(crate) fn authorize_forwarded<T>(request: &Request<T>, scope: Scope) -> Result<(), Status> {
    if !forwarded(request) {
        return Ok(());
    }
    agentmesh_kit::auth::forwarded_caller_allows(request, scope)
}

/// The refusal of a forwarded call by a replica that does not lead.
pub(crate) fn not_leading() -> Status {
    Status::unavailable(
        "this alerting replica was forwarded this call as the leader but stands by \
         (leadership moved); retry",
    )
}

impl LeaderPeer {
    pub(crate) fn new(
        store: Store,
        clients: Clients,
        own_url: String,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            store,
            clients,
            own_url,
            max_message_bytes,
            client: Mutex::new(None),
        }
    }

    /// The leader's address and a client to it, or why there is none.
    async fn leader(&self) -> Result<(String, Client), Status> {
        let address = self.store.leader().await.map_err(|err| {
            tracing::warn!(error = %err, "which replica leads could not be read");
            Status::unavailable(
                "this alerting replica is a standby and could not read from the database \
                 which replica leads; retry",
            )
        })?;
        let url = match address {
            LeaderAddress::Unknown => {
                return Err(Status::unavailable(
                    "this alerting replica is a standby and no leader is known (no replica \
                     holds the leader lock, or the leader has not advertised its address yet); \
                     retry shortly",
                ));
            }
            LeaderAddress::NotAdvertised => {
                return Err(Status::unavailable(
                    "this alerting replica is a standby and the leader advertises no address \
                     to forward to: set [alerting.leader] advertise_url \
                     (AGENTMESH_ALERTING__LEADER__ADVERTISE_URL) on every replica. Until then \
                     a standby serves ListAlerts, ListSilences and ListRules only: retry, the \
                     leader takes this call",
                ));
            }
            LeaderAddress::Advertised(url) => url,
        };
        if url == self.own_url {
            return Err(Status::unavailable(
                "this alerting replica is a standby but the database still names it the \
                 leader (leadership is changing); retry",
            ));
        }
        let mut cached = self
            .client
            .lock()
            .map_err(|_| Status::internal("the leader's channel is unusable"))?;
        if let Some((known, client)) = cached.as_ref()
            && *known == url
        {
            return Ok((url, client.clone()));
        }
        let channel = self.clients.channel(&url).map_err(|err| {
            Status::unavailable(format!(
                "this alerting replica is a standby and the leader's advertised address \
                 {url:?} cannot be used: {err}"
            ))
        })?;
        let client = AlertingServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        *cached = Some((url.clone(), client.clone()));
        Ok((url, client))
    }

    pub(crate) async fn fire_alert(
        &self,
        message: pb::FireAlertRequest,
    ) -> Result<Response<pb::FireAlertResponse>, Status> {
        let (url, mut client) = self.leader().await?;
        let answer = client.fire_alert(unary(message)).await;
        relay(&url, answer)
    }

    pub(crate) async fn create_silence(
        &self,
        message: pb::CreateSilenceRequest,
    ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
        let (url, mut client) = self.leader().await?;
        let answer = client.create_silence(unary(message)).await;
        relay(&url, answer)
    }

    pub(crate) async fn delete_silence(
        &self,
        message: pb::DeleteSilenceRequest,
    ) -> Result<Response<pb::DeleteSilenceResponse>, Status> {
        let (url, mut client) = self.leader().await?;
        let answer = client.delete_silence(unary(message)).await;
        relay(&url, answer)
    }

    /// The leader's stream, relayed as it comes: it ends when the leader's
    /// does (the leader stepping down ends it UNAVAILABLE: reconnect).
    pub(crate) async fn watch_alerts(
        &self,
        message: pb::WatchAlertsRequest,
    ) -> Result<Streaming<pb::WatchAlertsResponse>, Status> {
        let (url, mut client) = self.leader().await?;
        let answer = client.watch_alerts(marked(message)).await;
        relay(&url, answer).map(Response::into_inner)
    }
}

/// A forwarded request: marked, the message only (the kit's channel adds
/// the caller's identity, request id, trace and deadline).
fn marked<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED_BY, MetadataValue::from_static("alerting-standby"));
    request
}

/// A forwarded unary request, bounded by [`FORWARD_TIMEOUT`].
fn unary<T>(message: T) -> Request<T> {
    let mut request = marked(message);
    request.set_timeout(FORWARD_TIMEOUT);
    request
}

/// The leader's answer, its metadata dropped (this replica answers with
/// its own); an UNAVAILABLE says which leader could not take the call.
fn relay<T>(url: &str, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    match answer {
        Ok(response) => Ok(Response::new(response.into_inner())),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(Status::unavailable(format!(
                "this alerting replica is a standby and the leader at {url} could not take the \
                 call ({}); retry",
                status.message()
            )))
        }
        Err(status) => Err(status),
    }
}
