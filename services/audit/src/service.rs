//! The `agentmesh.audit.v1.AuditService` handlers: request checks, then the
//! store, the writer, or a streaming task.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use agentmesh_audit_client::Redactor;
use agentmesh_kit::RequestContext;
use agentmesh_kit::auth::Identity;
use agentmesh_kit::paging::{FilterHash, Page, PageLimits};
use agentmesh_kit::status::{invalid_argument, to_rpc_status};
use agentmesh_proto::audit::v1::{
    self as pb, AuditEvent, RecordResult, RecordStatus, SortOrder,
    audit_service_server::AuditService,
};
use futures::stream::BoxStream;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::access::{Reader, stamp};
use crate::config::Config;
use crate::event::{Prepared, cursor, parse_cursor, validate};
use crate::filter::Filter;
use crate::store::{Store, Written};
use crate::subscribe::{Start, Subscription};
use crate::verify::VerifyGate;
use crate::writer::{Writer, WriterStopped};

/// What the handlers need once the database is open.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub store: Store,
    pub writer: Writer,
}

/// The handlers.
#[derive(Debug, Clone)]
pub(crate) struct AuditServiceImpl {
    config: Arc<Config>,
    ready: Arc<OnceLock<Ready>>,
    redactor: Arc<Redactor>,
    /// Bounds concurrent `VerifyChain` walks.
    verify_gate: Arc<VerifyGate>,
}

/// Events per Query page by default, and at most.
const QUERY_PAGES: PageLimits = PageLimits::new(100, 1000);

impl AuditServiceImpl {
    pub(crate) fn new(
        config: Arc<Config>,
        ready: Arc<OnceLock<Ready>>,
        redactor: Arc<Redactor>,
    ) -> Self {
        let verify_gate = Arc::new(VerifyGate::new(
            config.max_concurrent_verifications,
            usize::try_from(config.storage.max_connections).unwrap_or(usize::MAX),
        ));
        Self {
            config,
            ready,
            redactor,
            verify_gate,
        }
    }

    fn ready(&self) -> Result<&Ready, Status> {
        self.ready.get().ok_or_else(|| {
            Status::unavailable(
                "the audit service is starting: its database is not open yet; retry",
            )
        })
    }
}

/// The identity the auth layer verified for `request` (`None` for calls
/// made in-process without a host).
fn identity_of<T>(request: &Request<T>) -> Option<Identity> {
    RequestContext::from_request(request).and_then(|context| context.identity().cloned())
}

/// What the caller of `request` may read.
fn reader_of<T>(request: &Request<T>) -> Result<Reader, Status> {
    Reader::of(identity_of(request).as_ref())
}

fn newest_first(order: i32, field: &str, default_newest: bool) -> Result<bool, Status> {
    match SortOrder::try_from(order) {
        Ok(SortOrder::Unspecified) => Ok(default_newest),
        Ok(SortOrder::NewestFirst) => Ok(true),
        Ok(SortOrder::OldestFirst) => Ok(false),
        Err(_) => Err(invalid_argument([(
            field,
            format!("{order} is not a SortOrder"),
        )])),
    }
}

impl AuditServiceImpl {
    /// Refuses an empty batch and one over `max_batch_events`.
    fn check_batch_size(&self, events: &[AuditEvent]) -> Result<(), Status> {
        if events.is_empty() {
            return Err(invalid_argument([(
                "events",
                "is empty: send at least one event",
            )]));
        }
        if events.len() > self.config.max_batch_events {
            return Err(invalid_argument([(
                "events",
                format!(
                    "has {} events, over the limit of {} per call; split the batch",
                    events.len(),
                    self.config.max_batch_events
                ),
            )]));
        }
        Ok(())
    }

    /// Validates and redacts each event of a batch: one result per event
    /// (rejected with its field violation, or to be filled in once
    /// written), and the events to write.
    fn prepare(
        &self,
        events: Vec<AuditEvent>,
        now: SystemTime,
    ) -> (Vec<RecordResult>, Vec<Prepared>) {
        let mut results: Vec<RecordResult> = Vec::with_capacity(events.len());
        let mut prepared = Vec::with_capacity(events.len());
        for (index, mut event) in events.into_iter().enumerate() {
            let event_id = event.event_id.clone();
            let index_i32 = i32::try_from(index).unwrap_or(i32::MAX);
            if let Err((field, problem)) =
                validate(&event, event.encoded_len(), self.config.max_event_bytes)
            {
                let status = invalid_argument([(format!("events[{index}].{field}"), problem)]);
                results.push(RecordResult {
                    index: index_i32,
                    event_id,
                    status: RecordStatus::Rejected as i32,
                    error: Some(to_rpc_status(&status)),
                    cursor: String::new(),
                });
                continue;
            }
            self.redactor.redact_event(&mut event);
            results.push(RecordResult {
                index: index_i32,
                event_id,
                status: RecordStatus::Unspecified as i32,
                error: None,
                cursor: String::new(),
            });
            prepared.push(Prepared::new(index, event, now));
        }
        (results, prepared)
    }
}

#[tonic::async_trait]
impl AuditService for AuditServiceImpl {
    type SubscribeStream = BoxStream<'static, Result<pb::SubscribeResponse, Status>>;
    type ExportStream = BoxStream<'static, Result<pb::ExportResponse, Status>>;

    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let identity = identity_of(&request);
        let mut events = request.into_inner().events;
        self.check_batch_size(&events)?;
        stamp(identity.as_ref(), &mut events)?;
        let ready = self.ready()?;
        let (mut results, prepared) = self.prepare(events, SystemTime::now());
        ready
            .writer
            .metrics()
            .invalid(results.len().saturating_sub(prepared.len()));
        if !prepared.is_empty() {
            let indexes: Vec<usize> = prepared.iter().map(|p| p.index).collect();
            let written = ready
                .writer
                .write(prepared)
                .await
                .map_err(|stopped: WriterStopped| Status::unavailable(format!("{stopped}; retry")))?
                .map_err(|err| Status::from(&*err))?;
            for (index, outcome) in indexes.into_iter().zip(written) {
                let (status, seq) = match outcome {
                    Written::Stored(seq) => (RecordStatus::Accepted, seq),
                    Written::Duplicate(seq) => (RecordStatus::Duplicate, seq),
                };
                if let Some(result) = results.get_mut(index) {
                    result.status = status as i32;
                    result.cursor = cursor(seq);
                }
            }
        }
        let count = |status: RecordStatus| {
            i32::try_from(results.iter().filter(|r| r.status == status as i32).count())
                .unwrap_or(i32::MAX)
        };
        Ok(Response::new(pb::RecordResponse {
            accepted_count: count(RecordStatus::Accepted),
            duplicate_count: count(RecordStatus::Duplicate),
            rejected_count: count(RecordStatus::Rejected),
            results,
        }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let reader = reader_of(&request)?;
        let mut request = request.into_inner();
        reader.restrict(&mut request.filter, "filter")?;
        let filter = Filter::parse(request.filter.as_ref(), "filter")?;
        let newest = newest_first(request.order, "order", true)?;
        // The token is bound to the filter and the order.
        let filter_hash = FilterHash::of_message(&pb::QueryRequest {
            page_size: 0,
            page_token: String::new(),
            ..request.clone()
        });
        let page = Page::<(i64, i64)>::from_request(
            QUERY_PAGES,
            request.page_size,
            &request.page_token,
            filter_hash,
        )?;
        let ready = self.ready()?;
        let mut events = ready
            .store
            .page(
                &filter,
                newest,
                page.after().copied(),
                None,
                page.fetch_size(),
            )
            .await
            .map_err(Status::from)?;
        let next_page_token = page.finish(&mut events, |(time_us, seq, _)| (*time_us, *seq));
        Ok(Response::new(pb::QueryResponse {
            events: events.into_iter().map(|(_, _, event)| event).collect(),
            next_page_token,
        }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let reader = reader_of(&request)?;
        let mut request = request.into_inner();
        reader.restrict(&mut request.filter, "filter")?;
        let filter = Filter::parse(request.filter.as_ref(), "filter")?;
        let start = if request.after_cursor.is_empty() {
            if request.from_beginning {
                Start::Beginning
            } else {
                Start::Now
            }
        } else {
            let seq = parse_cursor(&request.after_cursor).ok_or_else(|| {
                invalid_argument([(
                    "after_cursor",
                    "is not a cursor of this audit log (pass the `cursor` of an event or heartbeat)",
                )])
            })?;
            Start::After(seq)
        };
        let ready = self.ready()?.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let subscription = Subscription {
            filter,
            start,
            heartbeat: self.config.subscribe_heartbeat,
            end_grace: self.config.subscribe_end_grace,
        };
        tokio::spawn(crate::subscribe::run(
            ready.store,
            ready.writer,
            subscription,
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let reader = reader_of(&request)?;
        let mut request = request.into_inner();
        reader.restrict(&mut request.filter, "filter")?;
        let filter = Filter::parse(request.filter.as_ref(), "filter")?;
        let format = match pb::ExportFormat::try_from(request.format) {
            Ok(pb::ExportFormat::Csv) => pb::ExportFormat::Csv,
            Ok(_) => pb::ExportFormat::Jsonl,
            Err(_) => {
                return Err(invalid_argument([(
                    "format",
                    format!("{} is not an ExportFormat (CSV or JSONL)", request.format),
                )]));
            }
        };
        let newest = newest_first(request.order, "order", false)?;
        let ready = self.ready()?.clone();
        // Two chunks in flight at most: a slow reader slows the export down
        // instead of filling memory.
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(crate::export::run(
            ready.store,
            filter,
            format,
            newest,
            self.config.export_chunk_events,
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        let reader = reader_of(&request)?;
        let mut request = request.into_inner();
        reader.restrict(&mut request.filter, "filter")?;
        let ready = self.ready()?;
        crate::report::report(&ready.store, &request, self.config.max_report_buckets)
            .await
            .map(Response::new)
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let reader = reader_of(&request)?;
        let request = request.into_inner();
        for (field, time) in [
            ("start_time", &request.start_time),
            ("end_time", &request.end_time),
        ] {
            if let Some(time) = time
                && !(0..1_000_000_000).contains(&time.nanos)
            {
                return Err(invalid_argument([(field, "has nanos outside 0..1e9")]));
            }
        }
        let ready = self.ready()?;
        crate::verify::verify(&ready.store, &request, &reader, &self.verify_gate)
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests;
