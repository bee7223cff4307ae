//! The calls a run makes to its peers: `GenerateStream` on the LLM gateway,
//! `ListTools` and `ExecuteToolStream` on the tool runner.
//!
//! A tool call is streamed so that what a long tool reports while it runs
//! (a command's `progress:` lines, an MCP server's progress notifications)
//! reaches the run's events as it happens: each report is sent to the
//! caller's `progress` channel (at most one per [`PROGRESS_INTERVAL`], and
//! [`MAX_PROGRESS_PER_CALL`] in all, so a chatty tool cannot flood the
//! run's stored events); the stream's last message is the result.
//!
//! Every call carries a `grpc-timeout` of what is left of the run's time.
//! A failed model call fails the step (the status says which call failed,
//! [`downstream`]); a failed tool call becomes the tool's result, which the
//! model sees and may recover from. The tool list is cached briefly, and
//! `ListTools` (idempotent) is retried while the tool runner is UNAVAILABLE;
//! opening the model stream is retried when the call never reached a
//! gateway that would answer it (a gateway draining or restarting).
//!
//! Every call is made for the run's end user (the run's task has their
//! identity current; the kit adds this service's credential): the model is
//! offered only the tools their allow-list holds (the tool list is cached
//! per allow-list), and a tool the tool runner refuses to them
//! (PERMISSION_DENIED) is a tool error the model sees, not a failed run.
//! Connections are made lazily and reused; the kit's `grpc_client_*`
//! metrics count every call.

use std::collections::HashMap;
use std::time::Duration;

use agentmesh_audit_client::resilience::ResilienceReporter;
use agentmesh_auth::AllowList;
use agentmesh_kit::client::Clients;
use agentmesh_kit::client::MeshChannel;
use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::tools::v1 as tools;
use agentmesh_resilience::Backoff;
use llm::llm_gateway_service_client::LlmGatewayServiceClient;
use tokio::time::Instant;
use tonic::Status;
use tools::tool_runner_service_client::ToolRunnerServiceClient;

use crate::config::{AgentProfile, Config};
use crate::store::RunRow;

/// The metadata naming the run a tool call belongs to. A run's files live
/// in its workspace on one tool-runner pod: a mesh that balances per request
/// keeps a run on one pod by hashing this header (the tool-runner
/// DestinationRule in `istio/traffic.yaml` does).
pub(crate) const RUN_ID_HEADER: &str = "x-agentmesh-run-id";

/// The shortest time between two progress reports of one tool call
/// relayed to the run's events (those in between are dropped).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Progress reports of one tool call relayed at most.
const MAX_PROGRESS_PER_CALL: u32 = 1000;

/// How long the tool list is cached.
const TOOL_CACHE: Duration = Duration::from_secs(10);
/// Tool lists cached at once (one per distinct tools allow-list).
const TOOL_CACHE_ENTRIES: usize = 64;
/// Attempts at a call that did not reach a peer which would answer it:
/// listing the tools (idempotent), opening the model stream (nothing came
/// back yet).
const OPEN_ATTEMPTS: u32 = 3;

type ToolCache = HashMap<Option<Vec<String>>, (Instant, Vec<tools::Tool>)>;

/// The clients of the gateway and the tool runner, shared by every run.
#[derive(Debug)]
pub(super) struct Peers {
    gateway: LlmGatewayServiceClient<MeshChannel>,
    tools: ToolRunnerServiceClient<MeshChannel>,
    /// The tool runner's list as seen by each tools allow-list (`None`:
    /// every tool), with when it was fetched.
    tool_cache: tokio::sync::Mutex<ToolCache>,
    /// Counts the retries of ListTools.
    reporter: ResilienceReporter,
}

impl Peers {
    /// Clients of the configured gateway and tool runner (connected on
    /// first use), through the service's `clients` (its metrics and its
    /// credential).
    pub(super) fn new(
        config: &Config,
        clients: &Clients,
        reporter: ResilienceReporter,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = |uri: &str| clients.channel(uri);
        let gateway = LlmGatewayServiceClient::new(channel(&config.llm_gateway_url)?)
            .max_decoding_message_size(config.server.max_message_bytes)
            .max_encoding_message_size(config.server.max_message_bytes);
        let tools = ToolRunnerServiceClient::new(channel(&config.tool_runner_url)?)
            .max_decoding_message_size(config.server.max_message_bytes)
            .max_encoding_message_size(config.server.max_message_bytes);
        Ok(Self {
            gateway,
            tools,
            tool_cache: tokio::sync::Mutex::new(HashMap::new()),
            reporter,
        })
    }

    /// Opens the model's answer stream, with what is left until `deadline`.
    /// Opened again (up to [`OPEN_ATTEMPTS`] times) when the call never
    /// reached a gateway that would answer it: UNAVAILABLE (a gateway
    /// draining or restarting refused it) or CANCELLED (the connection it
    /// was queued on closed under it, as when a gateway shuts down). No
    /// answer has come yet, so the step is unchanged.
    pub(super) async fn generate_stream(
        &self,
        request: llm::GenerateStreamRequest,
        deadline: Instant,
    ) -> Result<tonic::Streaming<llm::GenerateStreamResponse>, Status> {
        let open = || {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let mut gateway = self.gateway.clone();
            async move { gateway.generate_stream(request).await }
        };
        let unsent = |status: &Status| {
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Cancelled
            )
        };
        self.retried("llm-gateway/GenerateStream", deadline, unsent, open)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| downstream("the model call", status))
    }

    /// `call` until it succeeds, fails with a status `retryable` refuses,
    /// has been made [`OPEN_ATTEMPTS`] times, or the deadline leaves no
    /// room for a jittered backoff; each retry is reported.
    async fn retried<T, F, Fut>(
        &self,
        target: &str,
        deadline: Instant,
        retryable: impl Fn(&Status) -> bool,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let backoff = Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
            Duration::ZERO,
        );
        let mut attempt = 1;
        loop {
            let status = match call().await {
                Ok(answer) => return Ok(answer),
                Err(status) => status,
            };
            if !retryable(&status) || attempt >= OPEN_ATTEMPTS {
                return Err(status);
            }
            let Ok(delay) = backoff.delay(attempt, None, Some(deadline)) else {
                return Err(status);
            };
            tracing::debug!(attempt, ?delay, error = %status, target, "calling again");
            self.reporter.retried(target, class(&status));
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Runs one tool call of `run`, sending what the tool reports while it
    /// runs to `progress`; a refusal or a failure is the result, marked as
    /// an error, for the model to see.
    pub(super) async fn call_tool(
        &self,
        run: &RunRow,
        profile: &AgentProfile,
        call: &llm::ToolCall,
        deadline: Instant,
        progress: tokio::sync::mpsc::Sender<tools::ToolProgress>,
    ) -> tools::ExecuteToolResponse {
        let failed = |message: String| tools::ExecuteToolResponse {
            is_error: true,
            error_message: message,
            call_id: call.id.clone(),
            ..tools::ExecuteToolResponse::default()
        };
        if !profile.allows(&call.name) {
            return failed(format!(
                "tool {:?} is not available to agent {:?}; available: {}",
                call.name,
                run.agent,
                profile.tools.join(", ")
            ));
        }
        let request = tool_request(&run.run_id, call, deadline);
        let streamed = match self.tools.clone().execute_tool_stream(request).await {
            Ok(response) => relay(response.into_inner(), &progress).await,
            Err(status) => Err(status),
        };
        match streamed {
            Ok(result) => tools::ExecuteToolResponse {
                output_json: result.output_json,
                is_error: result.is_error,
                error_message: result.error_message,
                duration: result.duration,
                call_id: result.call_id,
                error_kind: result.error_kind,
                attempts: result.attempts,
            },
            // The end user's allow-list leaves the tool out: the model is
            // told so, and may answer without it.
            Err(status) if status.code() == tonic::Code::PermissionDenied => failed(format!(
                "tool {:?} is not allowed for this tenant or key: {}",
                call.name,
                status.message()
            )),
            // The model gets the error as the tool's result and may recover.
            Err(status) => failed(format!(
                "the tool call failed ({:?}): {}",
                status.code(),
                status.message()
            )),
        }
    }

    /// The tool specs the profile and the run's end user (`allowed`, their
    /// tools allow-list) may use, from the tool runner (cached briefly:
    /// tools change rarely and a run needs them at every step).
    pub(super) async fn tool_specs(
        &self,
        profile: &AgentProfile,
        allowed: &AllowList,
        deadline: Instant,
    ) -> Result<Vec<llm::ToolSpec>, Status> {
        if profile.tools.is_empty() {
            return Ok(Vec::new());
        }
        // The tool runner lists what the current identity may use: one
        // entry per allow-list.
        let key = allowed.names().map(<[String]>::to_vec);
        let mut cache = self.tool_cache.lock().await;
        let fresh = cache
            .get(&key)
            .is_some_and(|(fetched, _)| fetched.elapsed() < TOOL_CACHE);
        if !fresh {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = self
                    .list_tools(&page_token, deadline)
                    .await
                    .map_err(|status| downstream("listing the tools", status))?;
                all.extend(page.tools);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if cache.len() >= TOOL_CACHE_ENTRIES {
                cache.retain(|_, (fetched, _)| fetched.elapsed() < TOOL_CACHE);
                if cache.len() >= TOOL_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key.clone(), (Instant::now(), all));
        }
        Ok(cache
            .get(&key)
            .map(|(_, all)| {
                all.iter()
                    .filter(|tool| profile.allows(&tool.name) && allowed.allows(&tool.name))
                    .map(|tool| llm::ToolSpec {
                        name: tool.name.clone(),
                        description: tool.description.clone(),
                        parameters_json: tool.parameters_json.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One page of ListTools, with what is left of the run's time, retried
    /// (it is idempotent) while the tool runner is UNAVAILABLE — draining
    /// or restarting — with jittered backoff that stops at the deadline.
    async fn list_tools(
        &self,
        page_token: &str,
        deadline: Instant,
    ) -> Result<tools::ListToolsResponse, Status> {
        let list = || {
            let mut request = tonic::Request::new(tools::ListToolsRequest {
                page_size: 1000,
                page_token: page_token.to_owned(),
                ..tools::ListToolsRequest::default()
            });
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let mut tools = self.tools.clone();
            async move { tools.list_tools(request).await }
        };
        let unavailable = |status: &Status| status.code() == tonic::Code::Unavailable;
        self.retried("tool-runner/ListTools", deadline, unavailable, list)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Reads a tool call's stream to its result, sending progress to
/// `progress` (rate-limited, see the module docs); a stream that ends
/// without a result is UNAVAILABLE (the tool runner went away mid-call).
async fn relay(
    mut stream: tonic::Streaming<tools::ExecuteToolStreamResponse>,
    progress: &tokio::sync::mpsc::Sender<tools::ToolProgress>,
) -> Result<tools::ToolResult, Status> {
    use tools::execute_tool_stream_response::Event;
    let mut relayed = 0_u32;
    let mut last: Option<Instant> = None;
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::Result(result)) => {
                // Read to the end (the status), so the call ends as OK on
                // both sides rather than as cancelled by this side.
                while let Ok(Some(_)) = stream.message().await {}
                return Ok(result);
            }
            Some(Event::Progress(update)) => {
                let due = last.is_none_or(|at| at.elapsed() >= PROGRESS_INTERVAL);
                if due && relayed < MAX_PROGRESS_PER_CALL {
                    relayed += 1;
                    last = Some(Instant::now());
                    // Gone only when the step stopped waiting for the call.
                    let _ = progress.send(update).await;
                }
            }
            Some(Event::Output(_)) | None => {}
        }
    }
    Err(Status::unavailable(
        "the tool runner ended the call's stream without its result",
    ))
}

/// The retry class a status is reported under.
fn class(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::Cancelled => "cancelled",
        _ => "unavailable",
    }
}

/// A downstream failure as the run's error, saying which call failed.
pub(super) fn downstream(what: &str, status: Status) -> Status {
    Status::with_details(
        status.code(),
        format!("{what} failed: {}", status.message()),
        status.details().to_vec().into(),
    )
}

/// The `ExecuteToolStream` request of `call` in run `run_id`: the run's
/// time left as its deadline, and the run id in the metadata too, where a
/// mesh can route on it (the body is opaque to the mesh).
fn tool_request(
    run_id: &str,
    call: &llm::ToolCall,
    deadline: Instant,
) -> tonic::Request<tools::ExecuteToolStreamRequest> {
    let mut request = tonic::Request::new(tools::ExecuteToolStreamRequest {
        tool: call.name.clone(),
        arguments_json: call.arguments_json.clone(),
        call_id: call.id.clone(),
        timeout: None,
        run_id: run_id.to_owned(),
    });
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    // Run ids are ASCII identifiers; one that is not simply goes unrouted.
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(run_id) {
        request.metadata_mut().insert(RUN_ID_HEADER, value);
    }
    request
}

#[cfg(test)]
mod tool_request_tests {
    use super::*;

    #[test]
    fn a_tool_call_names_its_run_in_the_metadata_and_the_body() {
        let call = llm::ToolCall {
            id: "call-1".into(),
            name: "calculator".into(),
            arguments_json: "{}".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let request = tool_request("01a24938-5847-734d-8f99-aadecf2016e7", &call, deadline);
        assert_eq!(
            request
                .metadata()
                .get(RUN_ID_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some("01a24938-5847-734d-8f99-aadecf2016e7")
        );
        assert_eq!(
            request.get_ref().run_id,
            "01a24938-5847-734d-8f99-aadecf2016e7"
        );
        assert!(request.metadata().get("grpc-timeout").is_some());
    }
}
