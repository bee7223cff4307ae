//! The `agentmesh.alerting.v1.AlertingService` handlers: validate the
//! request (field violations name the field), then ask the [`Engine`] —
//! or, on a standby, forward writes and WatchAlerts to the leader (`peer`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentmesh_kit::auth::Scope;
use agentmesh_kit::paging::{FilterHash, Page, PageLimits};
use agentmesh_kit::status::{Violations, invalid_argument};
use agentmesh_proto::alerting::v1::{self as pb, alerting_service_server::AlertingService};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::engine::{Change, PushError, Pushed};
use crate::matcher::{Matcher, is_prometheus_label_name};
use crate::model::{Alert, Annotations, LabelSet};
use crate::peer::{authorize_forwarded, forwarded};
use crate::replica::{Reader, Replica, Writer};
use crate::silence::Silence;

/// Default and largest page sizes of the List RPCs.
const PAGES: PageLimits = PageLimits::new(100, 1000);

/// The handlers; answer UNAVAILABLE until the database is open. A
/// standby replica answers the List RPCs from the store and forwards the
/// rest to the leader (see `replica` and `peer`).
#[derive(Clone)]
pub(crate) struct AlertingServiceImpl {
    replica: Arc<Replica>,
    heartbeat: Duration,
}

impl std::fmt::Debug for AlertingServiceImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertingServiceImpl")
            .finish_non_exhaustive()
    }
}

impl AlertingServiceImpl {
    pub(crate) fn new(replica: Arc<Replica>, heartbeat: Duration) -> Self {
        Self { replica, heartbeat }
    }

    /// Who takes a write or WatchAlerts; a call a standby forwarded is
    /// authorized as its original caller.
    fn writer<T>(&self, request: &Request<T>, scope: Scope) -> Result<Writer<'_>, Status> {
        authorize_forwarded(request, scope)?;
        self.replica.writer(forwarded(request))
    }
}

/// The alert filter shared by ListAlerts and WatchAlerts.
struct AlertFilter {
    states: Vec<i32>,
    severities: Vec<i32>,
    matchers: Vec<Matcher>,
    silenced: Option<bool>,
    inhibited: Option<bool>,
}

impl AlertFilter {
    fn parse(
        states: &[i32],
        severities: &[i32],
        matchers: &[pb::Matcher],
        silenced: Option<bool>,
        inhibited: Option<bool>,
    ) -> Result<Self, Status> {
        let mut problems = Violations::new();
        for (index, state) in states.iter().enumerate() {
            match pb::AlertState::try_from(*state) {
                Ok(pb::AlertState::Unspecified) | Err(_) => problems.push((
                    format!("states[{index}]"),
                    "must be ALERT_STATE_PENDING, ALERT_STATE_FIRING or ALERT_STATE_RESOLVED"
                        .into(),
                )),
                Ok(_) => {}
            }
        }
        for (index, severity) in severities.iter().enumerate() {
            if pb::Severity::try_from(*severity).is_err() {
                problems.push((
                    format!("severities[{index}]"),
                    format!("{severity} is not a Severity"),
                ));
            }
        }
        let mut parsed = Vec::new();
        for (index, matcher) in matchers.iter().enumerate() {
            match Matcher::from_proto(matcher) {
                Ok(matcher) => parsed.push(matcher),
                Err(err) => problems.push((format!("matchers[{index}]"), err.0)),
            }
        }
        if !problems.is_empty() {
            return Err(problems.into_status());
        }
        Ok(Self {
            states: states.to_vec(),
            severities: severities.to_vec(),
            matchers: parsed,
            silenced,
            inhibited,
        })
    }

    fn matches(&self, alert: &Alert) -> bool {
        (self.states.is_empty() || self.states.contains(&(alert.state as i32)))
            && (self.severities.is_empty() || self.severities.contains(&(alert.severity() as i32)))
            && self
                .matchers
                .iter()
                .all(|matcher| matcher.matches(&alert.labels))
            && self
                .silenced
                .is_none_or(|wanted| wanted != alert.silenced_by.is_empty())
            && self
                .inhibited
                .is_none_or(|wanted| wanted != alert.inhibited_by.is_empty())
    }
}

/// Checks a label or annotation map: names as Prometheus label names.
fn check_names(
    field: &str,
    map: &std::collections::HashMap<String, String>,
    problems: &mut Violations,
) {
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        if !is_prometheus_label_name(name) {
            problems.push((
                format!("{field}[{name}]"),
                "is not a valid name ([a-zA-Z_][a-zA-Z0-9_]*)".into(),
            ));
        }
    }
}

fn time_field(
    field: &str,
    value: Option<&prost_types::Timestamp>,
    problems: &mut Violations,
) -> Option<SystemTime> {
    let value = value?;
    match SystemTime::try_from(*value) {
        Ok(time) => Some(time),
        Err(_) => {
            problems.push((field.to_owned(), "is not a valid time".into()));
            None
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAlertsResponse, Status>> + Send>>;

/// What a WatchAlerts stream sends.
type WatchItem = Result<pb::WatchAlertsResponse, Status>;

/// One WatchAlerts stream: the snapshot of the alerts matching `filter`
/// (unless skipped), then every matching change, with a heartbeat whenever
/// `heartbeat` passes without one. Ends when the client leaves, the watcher
/// falls behind (ABORTED) or the service stops (UNAVAILABLE).
async fn watch(
    snapshot: Vec<Alert>,
    mut changes: broadcast::Receiver<Change>,
    filter: AlertFilter,
    skip_snapshot: bool,
    heartbeat: Duration,
    sender: mpsc::Sender<WatchItem>,
) {
    if !skip_snapshot && !send_snapshot(&snapshot, &filter, &sender).await {
        return;
    }
    loop {
        let next = tokio::time::timeout(heartbeat, changes.recv()).await;
        let item = match next {
            Err(_) => watch_message(
                pb::AlertChangeType::Heartbeat,
                None,
                pb::AlertState::Unspecified,
            ),
            Ok(Ok(Change {
                kind,
                alert,
                previous,
                time,
            })) => {
                if !filter.matches(&alert) {
                    continue;
                }
                Ok(pb::WatchAlertsResponse {
                    r#type: kind as i32,
                    alert: Some(alert.to_proto()),
                    previous_state: previous as i32,
                    time: Some(time.into()),
                })
            }
            Ok(Err(RecvError::Lagged(missed))) => Err(Status::aborted(format!(
                "this watcher fell {missed} changes behind; call WatchAlerts again for a fresh snapshot"
            ))),
            Ok(Err(RecvError::Closed)) => Err(Status::unavailable(
                "the alerting service is shutting down, or this replica stopped leading; reconnect",
            )),
        };
        let last = item.is_err();
        if sender.send(item).await.is_err() || last {
            return;
        }
    }
}

/// Sends the snapshot and its end marker; false when the client has left.
async fn send_snapshot(
    snapshot: &[Alert],
    filter: &AlertFilter,
    sender: &mpsc::Sender<WatchItem>,
) -> bool {
    for alert in snapshot.iter().filter(|alert| filter.matches(alert)) {
        if sender
            .send(watch_message(
                pb::AlertChangeType::Snapshot,
                Some(alert),
                pb::AlertState::Unspecified,
            ))
            .await
            .is_err()
        {
            return false;
        }
    }
    sender
        .send(watch_message(
            pb::AlertChangeType::SnapshotEnd,
            None,
            pb::AlertState::Unspecified,
        ))
        .await
        .is_ok()
}

/// A stream message stamped now.
fn watch_message(
    kind: pb::AlertChangeType,
    alert: Option<&Alert>,
    previous: pb::AlertState,
) -> WatchItem {
    Ok(pb::WatchAlertsResponse {
        r#type: kind as i32,
        alert: alert.map(Alert::to_proto),
        previous_state: previous as i32,
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
    })
}

#[tonic::async_trait]
impl AlertingService for AlertingServiceImpl {
    type WatchAlertsStream = WatchStream;

    async fn fire_alert(
        &self,
        request: Request<pb::FireAlertRequest>,
    ) -> Result<Response<pb::FireAlertResponse>, Status> {
        let writer = self.writer(&request, Scope::AlertsWrite)?;
        let request = request.into_inner();
        let mut problems = Violations::new();
        if request.labels.is_empty() {
            problems.push((
                "labels".to_owned(),
                "at least one label is required (conventionally alertname)".to_owned(),
            ));
        }
        check_names("labels", &request.labels, &mut problems);
        check_names("annotations", &request.annotations, &mut problems);
        for (name, value) in &request.labels {
            if value.is_empty() {
                problems.push((
                    format!("labels[{name}]"),
                    "has an empty value (leave the label out instead)".into(),
                ));
            }
        }
        let starts_at = time_field("starts_at", request.starts_at.as_ref(), &mut problems);
        let ends_at = time_field("ends_at", request.ends_at.as_ref(), &mut problems);
        if let (Some(starts_at), Some(ends_at)) = (starts_at, ends_at)
            && ends_at < starts_at
        {
            problems.push(("ends_at".into(), "is before starts_at".into()));
        }
        if !request.generator_url.is_empty()
            && !request.generator_url.starts_with("http://")
            && !request.generator_url.starts_with("https://")
        {
            problems.push((
                "generator_url".into(),
                "must be an http:// or https:// URL".into(),
            ));
        }
        if !problems.is_empty() {
            return Err(problems.into_status());
        }
        let engine = match writer {
            Writer::Leader(engine) => engine,
            Writer::Forward(peer) => return peer.fire_alert(request).await,
        };
        let pushed = Pushed {
            labels: request.labels.into_iter().collect::<LabelSet>(),
            annotations: request.annotations.into_iter().collect::<Annotations>(),
            starts_at,
            ends_at,
            generator_url: request.generator_url,
        };
        let alert = engine.push(pushed).await.map_err(|err| match err {
            PushError::TooManyAlerts(_) => Status::resource_exhausted(err.to_string()),
        })?;
        Ok(Response::new(pb::FireAlertResponse {
            alert: Some(alert.to_proto()),
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let request = request.into_inner();
        let page = Page::<String>::from_request(
            PAGES,
            request.page_size,
            &request.page_token,
            FilterHash::of_message(&pb::ListAlertsRequest {
                page_size: 0,
                page_token: String::new(),
                ..request.clone()
            }),
        )?;
        let filter = AlertFilter::parse(
            &request.states,
            &request.severities,
            &request.matchers,
            request.silenced,
            request.inhibited,
        )?;
        let alerts = match self.replica.reader()? {
            Reader::Leader(engine) => engine.alerts().await,
            Reader::Standby(view) => view.alerts().await.map_err(Status::from)?,
        };
        // The list is sorted; the token names the last alert of the page by
        // its sort key, so pages hold whatever changed between calls.
        let mut alerts: Vec<Alert> = alerts
            .into_iter()
            .filter(|alert| filter.matches(alert))
            .filter(|alert| page.after().is_none_or(|after| sort_key(alert) > *after))
            .take(page.fetch_size())
            .collect();
        let next_page_token = page.finish(&mut alerts, sort_key);
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(Alert::to_proto).collect(),
            next_page_token,
        }))
    }

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let writer = self.writer(&request, Scope::AlertsRead)?;
        let request = request.into_inner();
        let filter = AlertFilter::parse(
            &request.states,
            &request.severities,
            &request.matchers,
            None,
            None,
        )?;
        let engine = match writer {
            Writer::Leader(engine) => engine,
            Writer::Forward(peer) => {
                let stream = peer.watch_alerts(request).await?;
                return Ok(Response::new(Box::pin(stream)));
            }
        };
        let (snapshot, changes) = engine.snapshot_and_subscribe().await;
        let heartbeat = self.heartbeat;
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(watch(
            snapshot,
            changes,
            filter,
            request.skip_snapshot,
            heartbeat,
            sender,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn create_silence(
        &self,
        request: Request<pb::CreateSilenceRequest>,
    ) -> Result<Response<pb::CreateSilenceResponse>, Status> {
        let writer = self.writer(&request, Scope::AlertsWrite)?;
        let request = request.into_inner();
        let now = SystemTime::now();
        let silence =
            Silence::create(request.silence.as_ref(), now).map_err(Violations::into_status)?;
        let engine = match writer {
            Writer::Leader(engine) => engine,
            Writer::Forward(peer) => return peer.create_silence(request).await,
        };
        let silence = engine.add_silence(silence).await.map_err(Status::from)?;
        tracing::info!(
            id = %silence.id,
            created_by = %silence.created_by,
            matchers = %silence.matchers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            "silence created"
        );
        Ok(Response::new(pb::CreateSilenceResponse {
            silence: Some(silence.to_proto(now)),
        }))
    }

    async fn list_silences(
        &self,
        request: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        let request = request.into_inner();
        let page = Page::<String>::from_request(
            PAGES,
            request.page_size,
            &request.page_token,
            FilterHash::of_message(&pb::ListSilencesRequest {
                page_size: 0,
                page_token: String::new(),
                states: request.states.clone(),
            }),
        )?;
        let mut problems = Violations::new();
        for (index, state) in request.states.iter().enumerate() {
            match pb::SilenceState::try_from(*state) {
                Ok(pb::SilenceState::Unspecified) | Err(_) => problems.push((
                    format!("states[{index}]"),
                    "must be SILENCE_STATE_PENDING, SILENCE_STATE_ACTIVE or SILENCE_STATE_EXPIRED"
                        .to_owned(),
                )),
                Ok(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(problems.into_status());
        }
        let now = SystemTime::now();
        let silences = match self.replica.reader()? {
            Reader::Leader(engine) => engine.silences().await,
            Reader::Standby(view) => view.silences().await.map_err(Status::from)?,
        };
        let key = |silence: &Silence| {
            // Newest first: a descending creation time sorts ascending as
            // its complement.
            format!(
                "{:020}|{}",
                u64::MAX - micros_u64(silence.created_at),
                silence.id
            )
        };
        let mut silences: Vec<Silence> = silences
            .into_iter()
            .filter(|silence| {
                request.states.is_empty() || request.states.contains(&(silence.state(now) as i32))
            })
            .filter(|silence| page.after().is_none_or(|after| key(silence) > *after))
            .take(page.fetch_size())
            .collect();
        let next_page_token = page.finish(&mut silences, key);
        Ok(Response::new(pb::ListSilencesResponse {
            silences: silences
                .iter()
                .map(|silence| silence.to_proto(now))
                .collect(),
            next_page_token,
        }))
    }

    async fn delete_silence(
        &self,
        request: Request<pb::DeleteSilenceRequest>,
    ) -> Result<Response<pb::DeleteSilenceResponse>, Status> {
        let writer = self.writer(&request, Scope::AlertsWrite)?;
        let request = request.into_inner();
        if request.id.is_empty() {
            return Err(invalid_argument([("id", "is required")]));
        }
        let engine = match writer {
            Writer::Leader(engine) => engine,
            Writer::Forward(peer) => return peer.delete_silence(request).await,
        };
        let silence = engine
            .expire_silence(&request.id)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no silence has id {}",
                    agentmesh_kit::status::quote(&request.id)
                ))
            })?;
        tracing::info!(id = %silence.id, "silence expired");
        Ok(Response::new(pb::DeleteSilenceResponse {
            silence: Some(silence.to_proto(SystemTime::now())),
        }))
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let request = request.into_inner();
        // No filters: the token is bound to the empty request.
        let page = Page::<String>::from_request(
            PAGES,
            request.page_size,
            &request.page_token,
            FilterHash::of_message(&pb::ListRulesRequest::default()),
        )?;
        let mut rules = match self.replica.reader()? {
            Reader::Leader(engine) => engine.rules().await,
            Reader::Standby(view) => view.rules.clone(),
        };
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rules: Vec<pb::Rule> = rules
            .into_iter()
            .filter(|rule| page.after().is_none_or(|after| rule.name > *after))
            .take(page.fetch_size())
            .collect();
        let next_page_token = page.finish(&mut rules, |rule| rule.name.clone());
        Ok(Response::new(pb::ListRulesResponse {
            rules,
            next_page_token,
        }))
    }
}

fn micros_u64(time: SystemTime) -> u64 {
    u64::try_from(crate::store::micros(time)).unwrap_or(0)
}

/// The sort key of ListAlerts as a string that sorts the same way: critical
/// first, then newest start first, then fingerprint.
fn sort_key(alert: &Alert) -> String {
    let severity = 9 - (alert.severity() as u64).min(9);
    let start = alert.starts_at.or(alert.active_at).map_or(0, micros_u64);
    format!("{severity}|{:020}|{}", u64::MAX - start, alert.fingerprint)
}

#[cfg(test)]
mod tests;
