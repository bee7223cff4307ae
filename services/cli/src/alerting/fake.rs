//! An alerting service in the test process, answering from canned data and
//! recording what it was asked, so that the commands' calls (paging, the
//! watch loop, errors) are tested without the real service; and builders of
//! the test data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentmesh_proto::alerting::v1::{
    self as pb,
    alerting_service_server::{AlertingService, AlertingServiceServer},
};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

use super::AlertingTarget;

#[derive(Debug, Default)]
pub(crate) struct Fake {
    /// ListAlerts pages: the first for an empty token, page `n` for
    /// token `"n"`.
    pub(crate) alert_pages: Vec<Vec<pb::Alert>>,
    /// ListSilences pages, as `alert_pages`.
    pub(crate) silence_pages: Vec<Vec<pb::Silence>>,
    /// What WatchAlerts sends, in order; an error ends the stream.
    pub(crate) watch: Vec<Result<pb::WatchAlertsResponse, Status>>,
    /// Keep the watch open after the messages (until the client goes).
    pub(crate) watch_hangs: bool,
    /// ListAlerts answers this error instead.
    pub(crate) list_error: Option<Status>,
    pub(crate) list_requests: Mutex<Vec<pb::ListAlertsRequest>>,
    pub(crate) silence_requests: Mutex<Vec<pb::ListSilencesRequest>>,
    pub(crate) watch_requests: Mutex<Vec<pb::WatchAlertsRequest>>,
    pub(crate) created: Mutex<Vec<pb::CreateSilenceRequest>>,
    pub(crate) deleted: Mutex<Vec<String>>,
}

/// The page of `pages` that `token` asks for, and the next token.
fn page<T: Clone>(pages: &[Vec<T>], token: &str) -> Result<(Vec<T>, String), Status> {
    let index: usize = if token.is_empty() {
        0
    } else {
        token
            .parse()
            .map_err(|_| Status::invalid_argument("bad page token"))?
    };
    let items = pages.get(index).cloned().unwrap_or_default();
    let next = if index + 1 < pages.len() {
        (index + 1).to_string()
    } else {
        String::new()
    };
    Ok((items, next))
}

struct Service(Arc<Fake>);

#[tonic::async_trait]
impl AlertingService for Service {
    type WatchAlertsStream = BoxStream<'static, Result<pb::WatchAlertsResponse, Status>>;

    async fn fire_alert(
        &self,
        _: Request<pb::FireAlertRequest>,
    ) -> Result<Response<pb::FireAlertResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let request = request.into_inner();
        self.0.list_requests.lock().unwrap().push(request.clone());
        if let Some(status) = &self.0.list_error {
            return Err(status.clone());
        }
        let (alerts, next_page_token) = page(&self.0.alert_pages, &request.page_token)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token,
        }))
    }

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        self.0
            .watch_requests
            .lock()
            .unwrap()
            .push(request.into_inner());
        let messages = futures::stream::iter(self.0.watch.clone());
        let stream = if self.0.watch_hangs {
            messages.chain(futures::stream::pending()).boxed()
        } else {
            messages.boxed()
        };
        Ok(Response::new(stream))
    }

    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
        let request = request.into_inner();
        self.0.created.lock().unwrap().push(request.clone());
        Ok(Response::new(pb::CreateSilenceResponse {
            silence: Some(pb::Silence {
                id: "s-new".to_owned(),
                state: pb::SilenceState::Active.into(),
                ..request.silence.unwrap_or_default()
            }),
        }))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let request = request.into_inner();
        self.0
            .silence_requests
            .lock()
            .unwrap()
            .push(request.clone());
        let (silences, next_page_token) = page(&self.0.silence_pages, &request.page_token)?;
        Ok(Response::new(pb::ListSilencesResponse {
            silences,
            next_page_token,
        }))
    }

    async fn delete_silence(
        &self,
        request: Request<pb::DeleteSilenceRequest>,
    ) -> Result<Response<pb::DeleteSilenceResponse>, Status> {
        let id = request.into_inner().id;
        self.0.deleted.lock().unwrap().push(id.clone());
        if id == "missing" {
            return Err(Status::not_found("no silence with id missing"));
        }
        Ok(Response::new(pb::DeleteSilenceResponse {
            silence: Some(pb::Silence {
                id,
                state: pb::SilenceState::Expired.into(),
                ends_at: Some(prost_types::Timestamp {
                    seconds: 1_795_262_400, // 2026-11-21T12:00:00Z
                    nanos: 0,
                }),
                ..pb::Silence::default()
            }),
        }))
    }

    async fn list_rules(
        &self,
        _: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Serves `fake` on a free loopback port (until the test's runtime
/// ends); the target that reaches it.
pub(crate) async fn serve(fake: Fake) -> (Arc<Fake>, AlertingTarget) {
    let fake = Arc::new(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = AlertingServiceServer::new(Service(Arc::clone(&fake)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (
        fake,
        AlertingTarget {
            address: address.to_string(),
            credential: crate::credential::CredentialArgs::default(),
        },
    )
}

/// A matcher, as the parser gives it.
pub(crate) fn matcher(name: &str, match_type: pb::MatchType, value: &str) -> pb::Matcher {
    pb::Matcher {
        name: name.to_owned(),
        value: value.to_owned(),
        r#type: match_type.into(),
    }
}

/// Labels (or annotations) from pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
