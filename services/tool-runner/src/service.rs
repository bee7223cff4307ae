//! The `agentmesh.tools.v1.ToolRunnerService` handlers: ListTools (filters
//! and pages over the registry) and the two ways to run a call, both through
//! [`ToolRunner`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use agentmesh_audit_client::{AuditClient, code_name};
use agentmesh_kit::paging::{FilterHash, Page, PageLimits, Violation};
use agentmesh_kit::status::invalid_argument;
use agentmesh_kit::text::truncate_bytes;
use agentmesh_kit::{RequestContext, telemetry};
use agentmesh_proto::audit::v1::{
    AuditEvent, EventType, Outcome, RateLimitDetails, ToolCallDetails, audit_event::Details,
};
use agentmesh_proto::tools::v1::{
    self, ExecuteToolStreamResponse, ToolErrorKind, ToolKind, execute_tool_stream_response::Event,
    tool_runner_service_server::ToolRunnerService,
};
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::allowed::{MAX_AUDITED_NAME, ToolAccess, identity_of};
use crate::pipeline::StepCall;
use crate::quota::{QuotaHit, Ticket};
use crate::registry::Implementation;
use crate::resilience::Admission;
use crate::runner::{Call, CallRequest, ToolRunner};
use crate::workspace::check_run_id;

mod steps;

use steps::StepsThroughService;

/// ListTools' page size when the request sets none, and its largest page.
const PAGE_LIMITS: PageLimits = PageLimits::new(50, 1000);
/// Stream messages buffered ahead of a slow client; beyond this the tool's
/// stderr relay waits (and with it, eventually, the tool).
const STREAM_BUFFER: usize = 32;

/// The gRPC methods, as refusals name them.
const EXECUTE_TOOL: &str = "/agentmesh.tools.v1.ToolRunnerService/ExecuteTool";
const EXECUTE_TOOL_STREAM: &str = "/agentmesh.tools.v1.ToolRunnerService/ExecuteToolStream";

/// The service, sharing one [`ToolRunner`] across calls, recording each
/// call as a TOOL_CALL audit event.
#[derive(Debug, Clone)]
pub(crate) struct ToolRunnerServiceImpl {
    runner: Arc<ToolRunner>,
    audit: AuditClient,
    access: ToolAccess,
}

impl ToolRunnerServiceImpl {
    pub(crate) fn new(runner: ToolRunner, audit: AuditClient) -> Self {
        Self {
            runner: Arc::new(runner),
            audit,
            access: ToolAccess::default(),
        }
    }

    /// Checks every call's tool against the caller's allow-list, refusals
    /// recorded through `access`.
    pub(crate) fn with_access(mut self, access: ToolAccess) -> Self {
        self.access = access;
        self
    }

    fn deadline() -> Option<std::time::Instant> {
        RequestContext::current().and_then(|context| context.deadline())
    }

    /// Checks a request and lets it through its tool's guards: everything
    /// that can refuse a call with a status. `deadline` bounds the call
    /// besides its own timeout: the caller's gRPC deadline, or for a
    /// pipeline's step the pipeline call's.
    async fn admit(
        &self,
        mut request: CallRequest,
        caller: &Caller,
        method: &'static str,
        deadline: Option<Instant>,
    ) -> Result<(Call, Admission, Option<Ticket>), Status> {
        self.access
            .check(caller.identity.as_ref(), &request.tool, method, caller.peer)?;
        if let Some(identity) = &caller.identity {
            request.tenant.clone_from(&identity.tenant);
        }
        let mut call = self.runner.prepare(request, deadline)?;
        if matches!(call.tool().implementation, Implementation::Pipeline(_)) {
            self.admit_pipeline(&mut call, caller, method)?;
        }
        // Before a place is taken: a run over its quota must not hold one.
        let ticket = match self.runner.reserve(&mut call).await {
            Ok(ticket) => ticket,
            Err(hit) => return Err(self.quota_refused(&call, &hit, method)),
        };
        let admission = self.runner.admit(&call, method).await?;
        Ok((call, admission, ticket))
    }

    /// A pipeline runs only for a caller allowed every tool its steps call,
    /// checked before any step runs so that none has run when it is
    /// refused (each step is checked again on its way, like any call). Its
    /// steps then call their tools the way this call came in.
    fn admit_pipeline(
        &self,
        call: &mut Call,
        caller: &Caller,
        method: &'static str,
    ) -> Result<(), Status> {
        for tool in call.tool().inner_tools() {
            self.access
                .check(caller.identity.as_ref(), tool, method, caller.peer)
                .map_err(|status| {
                    Status::permission_denied(format!(
                        "pipeline `{}` has a step calling a tool this caller may not use: {}",
                        call.tool().name(),
                        status.message()
                    ))
                })?;
        }
        let steps = StepsThroughService::new(self.clone(), caller.clone(), method, call.run_id());
        call.set_steps(Arc::new(steps));
        Ok(())
    }

    /// One call from its checks to its result, recorded as a TOOL_CALL:
    /// ExecuteTool's whole path, which each step of a pipeline takes too
    /// (`step` says which, for its audit event).
    async fn call(
        &self,
        request: CallRequest,
        caller: &Caller,
        method: &'static str,
        deadline: Option<Instant>,
        step: Option<&StepCall>,
    ) -> Result<v1::ToolResult, Status> {
        let mut record = ToolCallRecord::new(&self.audit, &request);
        if let Some(step) = step {
            record.in_pipeline(step);
        }
        // If the client cancels, tonic drops this future, and with it the
        // call waiting for a place or the running tool (a command is killed),
        // and the record (which then records the call as cancelled).
        let (call, admission, ticket) = match self
            .admit(request, caller, method, deadline)
            .instrument(record.span())
            .await
        {
            Ok(admitted) => admitted,
            Err(status) => {
                record.refused(&status);
                return Err(status);
            }
        };
        let result = self
            .runner
            .execute(&call, admission, ticket, None)
            .instrument(record.span())
            .await;
        record.finished(&result);
        Ok(result)
    }

    /// A quota refusal: audited (RATE_LIMITED, DENIED, naming the quota)
    /// and answered with RESOURCE_EXHAUSTED.
    fn quota_refused(&self, call: &Call, hit: &QuotaHit, method: &str) -> Status {
        let message = hit.message();
        let (tenant_dir, _) = call.workspace_key();
        let key = if hit.scope == "run" {
            call.run_id().to_owned()
        } else {
            tenant_dir.to_owned()
        };
        let mut event = self.audit.event(EventType::RateLimited);
        event.outcome = Outcome::Denied.into();
        event.reason.clone_from(&message);
        event.run_id = call.run_id().to_owned();
        event.attributes.insert(
            "quota".to_owned(),
            format!("tool_runner.quota.{}", hit.quota),
        );
        event.details = Some(Details::RateLimit(RateLimitDetails {
            scope: format!("workspace_{}", hit.scope),
            key,
            resource: if hit.quota.ends_with("bytes") {
                "workspace_bytes".to_owned()
            } else {
                "workspace_files".to_owned()
            },
            limit: hit.limit as f64,
            method: method.to_owned(),
            ..RateLimitDetails::default()
        }));
        self.audit.emit(event);
        tracing::warn!(
            tool = call.tool().name(),
            run_id = call.run_id(),
            quota = hit.quota,
            "workspace quota reached; call refused"
        );
        Status::resource_exhausted(message)
    }
}

#[tonic::async_trait]
impl ToolRunnerService for ToolRunnerServiceImpl {
    type ExecuteToolStreamStream = BoxStream<'static, Result<ExecuteToolStreamResponse, Status>>;

    async fn list_tools(
        &self,
        request: Request<v1::ListToolsRequest>,
    ) -> Result<Response<v1::ListToolsResponse>, Status> {
        let identity = identity_of(&request);
        list_tools(&self.runner, identity.as_ref(), request.into_inner()).map(Response::new)
    }

    async fn execute_tool(
        &self,
        request: Request<v1::ExecuteToolRequest>,
    ) -> Result<Response<v1::ExecuteToolResponse>, Status> {
        let caller = Caller::of(&request);
        let request: CallRequest = request.into_inner().into();
        let result = self
            .call(request, &caller, EXECUTE_TOOL, Self::deadline(), None)
            .await?;
        Ok(Response::new(v1::ExecuteToolResponse {
            output_json: result.output_json,
            is_error: result.is_error,
            error_message: result.error_message,
            duration: result.duration,
            call_id: result.call_id,
            error_kind: result.error_kind,
            attempts: result.attempts,
        }))
    }

    async fn execute_tool_stream(
        &self,
        request: Request<v1::ExecuteToolStreamRequest>,
    ) -> Result<Response<Self::ExecuteToolStreamStream>, Status> {
        let caller = Caller::of(&request);
        let request: CallRequest = request.into_inner().into();
        let record = ToolCallRecord::new(&self.audit, &request);
        // Admitted before the stream starts, so that a refusal is the
        // call's status; the wait for a place happens here too.
        let (call, admission, ticket) = match self
            .admit(request, &caller, EXECUTE_TOOL_STREAM, Self::deadline())
            .instrument(record.span())
            .await
        {
            Ok(admitted) => admitted,
            Err(status) => {
                record.refused(&status);
                return Err(status);
            }
        };
        let (events, receiver) = mpsc::channel(STREAM_BUFFER);
        let runner = Arc::clone(&self.runner);
        let context = RequestContext::current().unwrap_or_default();
        // The task ends with the call: when the tool finishes, or as soon as
        // the client goes away (the receiver is dropped), which drops the
        // running tool and so stops it.
        let span = record.span();
        tokio::spawn(context.scope(async move {
            let result = tokio::select! {
                result = runner.execute(&call, admission, ticket, Some(&events)) => result,
                () = events.closed() => {
                    tracing::info!(tool = call.tool().name(), "client left; tool call stopped");
                    // Dropping the record records the call as cancelled.
                    return;
                }
            };
            record.finished(&result);
            let _ = events
                .send(Ok(ExecuteToolStreamResponse {
                    event: Some(Event::Result(result)),
                }))
                .await;
        }.instrument(span)));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Who makes a call, for the allow-list check.
#[derive(Debug, Clone)]
struct Caller {
    identity: Option<agentmesh_auth::Identity>,
    peer: Option<std::net::SocketAddr>,
}

impl Caller {
    fn of<T>(request: &Request<T>) -> Self {
        Self {
            identity: identity_of(request),
            peer: request.remote_addr(),
        }
    }
}

// === impl ToolCallRecord ===

/// The TOOL_CALL audit event of one call, emitted exactly once: with the
/// tool's result, with the status that refused the call, or — when the
/// caller goes away first and the call is dropped — as cancelled.
///
/// The event is built when the call arrives, while the request's context
/// (tenant, subject, request and trace ids) is current.
#[derive(Debug)]
struct ToolCallRecord {
    audit: AuditClient,
    event: Option<AuditEvent>,
    started: Instant,
    /// The call's `execute_tool {name}` span (GenAI semantic conventions),
    /// open until the record is emitted.
    span: tracing::Span,
}

impl ToolCallRecord {
    fn new(audit: &AuditClient, request: &CallRequest) -> Self {
        let span = tracing::info_span!(
            target: "agentmesh::tools",
            "execute_tool",
            otel.name = %format_args!("execute_tool {}", truncate_bytes(&request.tool, MAX_AUDITED_NAME)),
            otel.status_code = Empty,
            error.type = Empty,
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %truncate_bytes(&request.tool, MAX_AUDITED_NAME),
            gen_ai.tool.call.id = %truncate_bytes(&request.call_id, crate::runner::MAX_CALL_ID_LENGTH),
            gen_ai.tool.type = "function",
            run_id = %request.run_id,
            span_id = Empty,
        );
        telemetry::record_ids(&span);
        if telemetry::capture_content() {
            telemetry::set_text(
                &span,
                "gen_ai.tool.call.arguments",
                request.arguments_json.clone(),
            );
        }
        // Made inside the span, so the event names it as its origin.
        let mut event = span.in_scope(|| audit.event(EventType::ToolCall));
        // An invalid run id is refused (INVALID_ARGUMENT); it is not an id
        // to file the event under.
        if check_run_id(&request.run_id).is_ok() {
            event.run_id.clone_from(&request.run_id);
        }
        event.details = Some(Details::ToolCall(ToolCallDetails {
            tool: truncate_bytes(&request.tool, MAX_AUDITED_NAME).into_owned(),
            call_id: truncate_bytes(&request.call_id, crate::runner::MAX_CALL_ID_LENGTH)
                .into_owned(),
            arguments: Some(audit.capture(&request.arguments_json)),
            attempts: 1,
            ..ToolCallDetails::default()
        }));
        Self {
            audit: audit.clone(),
            event: Some(event),
            started: Instant::now(),
            span,
        }
    }

    /// Marks the call as a pipeline's step: which pipeline, which step, and
    /// the pipeline call's id, to find a pipeline call's steps in the log.
    fn in_pipeline(&mut self, step: &StepCall) {
        if let Some(event) = &mut self.event {
            for (key, value) in [
                ("pipeline", &step.pipeline),
                ("pipeline_step", &step.step),
                ("pipeline_call_id", &step.parent_call_id),
            ] {
                event.attributes.insert(key.to_owned(), value.clone());
            }
        }
    }

    /// The call's span, for the tool's own work.
    fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// The tool ran (successfully or not): record its result.
    fn finished(mut self, result: &v1::ToolResult) {
        let output = self.audit.capture(&result.output_json);
        if result.is_error {
            let kind = error_kind_name(result.error_kind);
            self.span.record("otel.status_code", "error");
            self.span.record(
                "error.type",
                if kind.is_empty() { "tool_error" } else { kind },
            );
        } else if telemetry::capture_content() {
            telemetry::set_text(
                &self.span,
                "gen_ai.tool.call.result",
                result.output_json.clone(),
            );
        }
        self.emit(|event, details| {
            details.output = Some(output);
            details.duration = result.duration;
            details.attempts = result.attempts.max(1);
            if result.is_error {
                let kind = error_kind_name(result.error_kind);
                details.is_error = true;
                details.error.clone_from(&result.error_message);
                details.error_kind = kind.to_owned();
                event.outcome = Outcome::Failure.into();
                event.reason = if kind.is_empty() {
                    result.error_message.clone()
                } else {
                    format!("{kind}: {}", result.error_message)
                };
            }
        });
    }

    /// The call was refused before the tool ran (unknown tool, malformed
    /// request, deadline already passed, the tool's bulkhead full or its
    /// circuit open, its time spent waiting for a place).
    fn refused(mut self, status: &Status) {
        self.span.record("otel.status_code", "error");
        self.span.record("error.type", code_name(status.code()));
        self.emit(|event, details| {
            // Nothing ran.
            details.attempts = 0;
            refuse(event, status.code(), status.message());
        });
    }

    fn emit(&mut self, fill: impl FnOnce(&mut AuditEvent, &mut ToolCallDetails)) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        if let Some(Details::ToolCall(mut details)) = event.details.take() {
            fill(&mut event, &mut details);
            event.details = Some(Details::ToolCall(details));
        }
        self.audit.emit(event);
    }
}

impl Drop for ToolCallRecord {
    /// The call ended without a result: the caller went away (or its
    /// deadline passed) and the running tool was stopped.
    fn drop(&mut self) {
        let took = self.started.elapsed();
        self.emit(|event, details| {
            details.duration = Some(agentmesh_audit_client::duration(took));
            refuse(
                event,
                tonic::Code::Cancelled,
                "the caller went away before the tool call finished; the tool was stopped",
            );
        });
    }
}

/// Marks `event` as failed with a gRPC status: the code goes in the reason
/// and in the `error_code` attribute.
fn refuse(event: &mut AuditEvent, code: tonic::Code, message: &str) {
    let code = code_name(code);
    event.outcome = Outcome::Failure.into();
    event.reason = format!("{code}: {message}");
    event
        .attributes
        .insert("error_code".to_owned(), code.to_owned());
}

/// A tool error kind as audit events spell it: the enum name without its
/// prefix (e.g. `TIMEOUT`); empty when unclassified.
fn error_kind_name(kind: i32) -> &'static str {
    match ToolErrorKind::try_from(kind) {
        Ok(ToolErrorKind::Unspecified) | Err(_) => "",
        Ok(kind) => kind
            .as_str_name()
            .strip_prefix("TOOL_ERROR_KIND_")
            .unwrap_or(kind.as_str_name()),
    }
}

/// Filters (the caller's allowed tools, then the request's filters),
/// orders (by name) and pages the registry. The page token's
/// position is the last tool's name, not an offset, so a page stays correct
/// across replicas and restarts with a changed tool list.
fn list_tools(
    runner: &ToolRunner,
    identity: Option<&agentmesh_auth::Identity>,
    request: v1::ListToolsRequest,
) -> Result<v1::ListToolsResponse, Status> {
    // The bad kinds are described lazily, when the error is built, so a
    // request with a million of them stores none.
    let is_kind =
        |kind: i32| !matches!(ToolKind::try_from(kind), Ok(ToolKind::Unspecified) | Err(_));
    let kind_violations = || {
        request
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, kind)| !is_kind(**kind))
            .map(|(index, kind)| -> Violation {
                (
                    format!("kinds[{index}]"),
                    format!(
                        "{kind} is not a tool kind to filter by; use TOOL_KIND_BUILTIN, TOOL_KIND_COMMAND or TOOL_KIND_MCP"
                    ),
                )
            })
    };
    let kinds: BTreeSet<i32> = request
        .kinds
        .iter()
        .copied()
        .filter(|kind| is_kind(*kind))
        .collect();
    let bad_kinds = request.kinds.iter().any(|kind| !is_kind(*kind));
    let names: BTreeSet<&str> = request.names.iter().map(String::as_str).collect();
    let page = match Page::<String>::check(
        PAGE_LIMITS,
        request.page_size,
        &request.page_token,
        filter_hash(&names, &kinds),
    ) {
        Ok(page) if !bad_kinds => page,
        page => {
            // In the order of the fields: page_size, kinds, page_token.
            let (size, token): (Vec<_>, Vec<_>) = page
                .err()
                .unwrap_or_default()
                .into_iter()
                .partition(|(field, _)| field == "page_size");
            return Err(invalid_argument(
                size.into_iter().chain(kind_violations()).chain(token),
            ));
        }
    };

    let mut tools: Vec<v1::Tool> = runner
        .registry()
        .all()
        .into_iter()
        .filter(|tool| ToolAccess::allows(identity, tool.name()))
        // A pipeline is listed only to those who may run all of it.
        .filter(|tool| {
            tool.inner_tools()
                .iter()
                .all(|inner| ToolAccess::allows(identity, inner))
        })
        .filter(|tool| names.is_empty() || names.contains(tool.name()))
        .filter(|tool| kinds.is_empty() || kinds.contains(&tool.descriptor.kind))
        .filter(|tool| {
            page.after()
                .is_none_or(|after| tool.name() > after.as_str())
        })
        .take(page.fetch_size())
        .map(|tool| tool.descriptor.clone())
        .collect();
    let next_page_token = page.finish(&mut tools, |tool| tool.name.clone());
    Ok(v1::ListToolsResponse {
        tools,
        next_page_token,
    })
}

/// The filters a page token is bound to: the names and kinds asked for, as
/// sets (order and repeats in the request do not matter).
fn filter_hash(names: &BTreeSet<&str>, kinds: &BTreeSet<i32>) -> FilterHash {
    FilterHash::of_message(&v1::ListToolsRequest {
        names: names.iter().map(|name| (*name).to_owned()).collect(),
        kinds: kinds.iter().copied().collect(),
        ..v1::ListToolsRequest::default()
    })
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::config::{CommandToolConfig, Config};

    fn runner_with_commands(count: usize) -> ToolRunner {
        let mut config = Config::default();
        for index in 0..count {
            config.commands.insert(
                format!("cmd_{index:03}"),
                CommandToolConfig {
                    description: "d".into(),
                    command: vec!["true".into()],
                    ..CommandToolConfig::default()
                },
            );
        }
        ToolRunner::new(&config).unwrap()
    }

    fn names(response: &v1::ListToolsResponse) -> Vec<&str> {
        response
            .tools
            .iter()
            .map(|tool| tool.name.as_str())
            .collect()
    }

    #[test]
    fn pages_cover_everything_once_in_order() {
        let runner = runner_with_commands(120);
        let mut all = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let response = list_tools(
                &runner,
                None,
                v1::ListToolsRequest {
                    page_token: token.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
            pages += 1;
            assert!(response.tools.len() <= PAGE_LIMITS.default);
            all.extend(response.tools.into_iter().map(|tool| tool.name));
            if response.next_page_token.is_empty() {
                break;
            }
            token = response.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(all.len(), 125);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(all, sorted);
    }

    #[test]
    fn an_exact_last_page_has_no_token() {
        let runner = runner_with_commands(0);
        let response = list_tools(
            &runner,
            None,
            v1::ListToolsRequest {
                page_size: 5,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(response.tools.len(), 5);
        assert!(response.next_page_token.is_empty());
    }

    #[test]
    fn filters_by_name_and_kind() {
        let runner = runner_with_commands(2);
        let response = list_tools(
            &runner,
            None,
            v1::ListToolsRequest {
                names: vec!["read_file".into(), "calculator".into(), "nope".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&response), ["calculator", "read_file"]);
        let response = list_tools(
            &runner,
            None,
            v1::ListToolsRequest {
                kinds: vec![ToolKind::Command.into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(names(&response), ["cmd_000", "cmd_001"]);
        let response = list_tools(
            &runner,
            None,
            v1::ListToolsRequest {
                kinds: vec![ToolKind::Mcp.into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert!(response.tools.is_empty());
    }

    #[test]
    fn bad_requests_name_the_field() {
        let runner = runner_with_commands(0);
        let field = |request: v1::ListToolsRequest| {
            let status = list_tools(&runner, None, request).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            status.message().split(':').next().unwrap().to_owned()
        };
        assert_eq!(
            field(v1::ListToolsRequest {
                page_size: -1,
                ..Default::default()
            }),
            "page_size"
        );
        assert_eq!(
            field(v1::ListToolsRequest {
                kinds: vec![ToolKind::Builtin.into(), 0],
                ..Default::default()
            }),
            "kinds[1]"
        );
        assert_eq!(
            field(v1::ListToolsRequest {
                kinds: vec![42],
                ..Default::default()
            }),
            "kinds[0]"
        );
        assert_eq!(
            field(v1::ListToolsRequest {
                page_token: "zz".into(),
                ..Default::default()
            }),
            "page_token"
        );
        // A token made for other filters is refused.
        let first = list_tools(
            &runner,
            None,
            v1::ListToolsRequest {
                page_size: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            field(v1::ListToolsRequest {
                page_size: 1,
                page_token: first.next_page_token,
                kinds: vec![ToolKind::Builtin.into()],
                ..Default::default()
            }),
            "page_token"
        );
    }

    #[test]
    fn audit_events_name_error_kinds_without_prefix() {
        assert_eq!(error_kind_name(ToolErrorKind::Timeout.into()), "TIMEOUT");
        assert_eq!(
            error_kind_name(ToolErrorKind::InvalidArguments.into()),
            "INVALID_ARGUMENTS"
        );
        assert_eq!(error_kind_name(ToolErrorKind::Unspecified.into()), "");
        assert_eq!(error_kind_name(99), "");
    }

    #[test]
    fn refused_calls_carry_the_code() {
        let mut event = AuditEvent::default();
        refuse(&mut event, Code::NotFound, "no tool named \"nope\"");
        assert_eq!(event.outcome, i32::from(Outcome::Failure));
        assert_eq!(event.reason, "NOT_FOUND: no tool named \"nope\"");
        assert_eq!(event.attributes["error_code"], "NOT_FOUND");
    }

    /// A next_page_token depends only on the filters and the last name, not
    /// on the process: one made by another instance (a replica, or this one
    /// before a restart) or by an earlier build is good here. The literal is
    /// committed (and was checked by hand: version 1, the first 16 bytes of
    /// SHA-256 of the empty filter, JSON `"cmd_000"`): changing the format
    /// means a new token version, not a new literal.
    #[test]
    fn a_token_from_another_instance_or_build_is_accepted() {
        const EARLIER: &str = "01af5570f5a1810b7af78caf4bc70a660f22636d645f30303022";
        let request = |page_token: &str, names: &[&str]| v1::ListToolsRequest {
            page_size: 2,
            page_token: page_token.to_owned(),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
            ..Default::default()
        };
        let first = list_tools(&runner_with_commands(3), None, request("", &[])).unwrap();
        assert_eq!(names(&first), ["calculator", "cmd_000"]);
        assert_eq!(first.next_page_token, EARLIER);
        let rest = list_tools(&runner_with_commands(3), None, request(EARLIER, &[])).unwrap();
        assert_eq!(names(&rest), ["cmd_001", "cmd_002"]);

        // The names filter is a set: order and repeats do not matter.
        let wanted = ["read_file", "calculator", "list_files"];
        let first = list_tools(&runner_with_commands(0), None, request("", &wanted)).unwrap();
        let again = ["list_files", "calculator", "read_file", "calculator"];
        let rest = list_tools(
            &runner_with_commands(0),
            None,
            request(&first.next_page_token, &again),
        )
        .unwrap();
        assert_eq!(names(&rest), ["read_file"]);
    }
}
