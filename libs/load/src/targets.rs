//! The calls a load test makes: agent runs, gateway calls, HTTP requests.
//! Each holds what every call shares (a channel or client, the request)
//! and makes the call anew each time; failures are classed by gRPC code
//! name, HTTP status or, for runs, by how the run ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentmesh_kit::time::{micros_of, now_micros};
use agentmesh_kit::trace::code_name;
use agentmesh_proto::llm::v1::{
    GenerateRequest, GenerateStreamRequest, Message, Role, generate_stream_response,
    llm_gateway_service_client::LlmGatewayServiceClient,
};
use agentmesh_proto::orchestrator::v1::{
    RunRequest, orchestrator_service_client::OrchestratorServiceClient, run_event::Event,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::drive::Target;
use crate::outcome::{Outcome, Tokens};

/// Connections to one server, taken in turn: a server caps the calls in
/// flight on one HTTP/2 connection (256 by default), so a load of more
/// calls at once needs more connections.
#[derive(Debug)]
pub struct Connections {
    first: Channel,
    rest: Vec<Channel>,
    next: AtomicUsize,
}

impl Connections {
    /// Calls go to `first` and each of `rest` in turn.
    pub fn new(first: Channel, rest: Vec<Channel>) -> Self {
        Self {
            first,
            rest,
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % (self.rest.len() + 1);
        index
            .checked_sub(1)
            .and_then(|index| self.rest.get(index))
            .unwrap_or(&self.first)
            .clone()
    }
}

/// `message` with the credential, when there is one.
fn request<T>(message: T, authorization: Option<&AsciiMetadataValue>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

fn failed(status: &tonic::Status, first_event: Option<Duration>) -> Outcome {
    Outcome::failed(code_name(status.code()), first_event)
}

/// Notes when the tokens of a streamed answer arrive.
#[derive(Debug)]
struct TokenWatch {
    sent: Instant,
    tokens: Tokens,
    /// The answer (a run's step) the last token belonged to, and when it came.
    last: Option<(i32, Instant)>,
    /// The step that began last and has had no token yet, with the
    /// orchestrator's stamp on its start (µs since the Unix epoch).
    begun: Option<(i32, i64)>,
}

impl TokenWatch {
    fn new(sent: Instant) -> Self {
        Self {
            sent,
            tokens: Tokens::default(),
            last: None,
            begun: None,
        }
    }

    /// Model step `step` of a run began, stamped `at` by the orchestrator.
    fn step_begins(&mut self, step: i32, at: Option<&prost_types::Timestamp>) {
        self.begun = at.map(|at| (step, micros_of(at)));
    }

    /// The answer starts over (a model call restarted): the next token is
    /// not a gap after the last.
    fn restart(&mut self) {
        self.last = None;
    }

    /// A token of `step` (0 for a gateway stream) arrived.
    fn token(&mut self, step: i32) {
        let now = Instant::now();
        self.tokens
            .first
            .get_or_insert_with(|| now.duration_since(self.sent));
        if let Some((last_step, at)) = self.last.replace((step, now))
            && last_step == step
        {
            self.tokens.gaps.push(now.duration_since(at));
        }
        if let Some((begun, at)) = self.begun
            && begun == step
        {
            self.begun = None;
            // A clock behind the orchestrator's gives no figure rather than a false one.
            if let Ok(lag) = u64::try_from(now_micros().saturating_sub(at)) {
                self.tokens.step_to_first.push(Duration::from_micros(lag));
            }
        }
    }
}

/// An agent run over `OrchestratorService.Run`, to its end: it succeeds
/// when the run finishes; the first event is `run_started`, the tokens are
/// its `token_delta` events.
#[derive(Debug)]
pub struct RunTarget {
    /// The orchestrator.
    pub connections: Connections,
    /// `authorization` metadata (`Bearer …`), when the mesh wants one.
    pub authorization: Option<AsciiMetadataValue>,
    /// The agent profile (empty: the default).
    pub agent: String,
    /// The objective of every run.
    pub objective: String,
}

impl Target for RunTarget {
    fn call(&self) -> BoxFuture<'static, Outcome> {
        let mut client = OrchestratorServiceClient::new(self.connections.pick());
        let message = RunRequest {
            objective: self.objective.clone(),
            agent: self.agent.clone(),
            ..RunRequest::default()
        };
        let request = request(message, self.authorization.as_ref());
        Box::pin(async move {
            let sent = Instant::now();
            let mut stream = match client.run(request).await {
                Ok(answer) => answer.into_inner(),
                Err(status) => return failed(&status, None),
            };
            let mut first_event = None;
            let mut end = None;
            let mut tokens = TokenWatch::new(sent);
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        first_event.get_or_insert_with(|| sent.elapsed());
                        let Some(event) = message.event else { continue };
                        match event.event {
                            Some(Event::TokenDelta(delta)) => tokens.token(delta.step),
                            Some(Event::Progress(progress)) if progress.step_restarted => {
                                tokens.restart();
                            }
                            // A step's start, not a tool's report within it.
                            Some(Event::Progress(progress)) if progress.tool_call_id.is_empty() => {
                                tokens.step_begins(progress.step, event.time.as_ref());
                            }
                            Some(Event::RunFinished(_)) => end = Some(Ok(())),
                            Some(Event::RunFailed(_)) => end = Some(Err("run_failed")),
                            Some(Event::RunCancelled(_)) => end = Some(Err("run_cancelled")),
                            _ => {}
                        }
                    }
                    Ok(None) => break,
                    Err(status) => return failed(&status, first_event),
                }
            }
            let outcome = match end {
                Some(Ok(())) => Outcome::ok(first_event),
                Some(Err(class)) => Outcome::failed(class, first_event),
                None => Outcome::failed("no_end_event", first_event),
            };
            outcome.with_tokens(tokens.tokens)
        })
    }
}

/// A call of the LLM gateway: `Generate`, or `GenerateStream` read to its
/// end (its first event is the first streamed message, its tokens the
/// `text_delta` messages).
#[derive(Debug)]
pub struct GenerateTarget {
    /// The gateway.
    pub connections: Connections,
    /// `authorization` metadata, when the gateway wants one.
    pub authorization: Option<AsciiMetadataValue>,
    /// A route name or `provider/model` (empty: the default route).
    pub model: String,
    /// The user message of every call.
    pub prompt: String,
    /// Stream the answer.
    pub stream: bool,
}

impl GenerateTarget {
    fn messages(&self) -> Vec<Message> {
        vec![Message {
            role: Role::User.into(),
            content: self.prompt.clone(),
            ..Message::default()
        }]
    }
}

impl Target for GenerateTarget {
    fn call(&self) -> BoxFuture<'static, Outcome> {
        let mut client = LlmGatewayServiceClient::new(self.connections.pick());
        let authorization = self.authorization.as_ref();
        if !self.stream {
            let message = GenerateRequest {
                model: self.model.clone(),
                messages: self.messages(),
                ..GenerateRequest::default()
            };
            let request = request(message, authorization);
            return Box::pin(async move {
                match client.generate(request).await {
                    Ok(_) => Outcome::ok(None),
                    Err(status) => failed(&status, None),
                }
            });
        }
        let message = GenerateStreamRequest {
            model: self.model.clone(),
            messages: self.messages(),
            ..GenerateStreamRequest::default()
        };
        let request = request(message, authorization);
        Box::pin(async move {
            let sent = Instant::now();
            let mut stream = match client.generate_stream(request).await {
                Ok(answer) => answer.into_inner(),
                Err(status) => return failed(&status, None),
            };
            let mut first_event = None;
            let mut tokens = TokenWatch::new(sent);
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        first_event.get_or_insert_with(|| sent.elapsed());
                        match message.event {
                            Some(generate_stream_response::Event::TextDelta(_)) => tokens.token(0),
                            Some(generate_stream_response::Event::Reset(_)) => tokens.restart(),
                            _ => {}
                        }
                    }
                    Ok(None) => return Outcome::ok(first_event).with_tokens(tokens.tokens),
                    // Only successful calls' times are summarised.
                    Err(status) => return failed(&status, first_event),
                }
            }
        })
    }
}

/// An HTTP request (`POST` with a body, or `GET` without one), its answer
/// read to the end; it succeeds on a 2xx status. The first event is the
/// first chunk of the body (for Server-Sent Events, the first event).
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The client (its pool is shared by every call).
    pub client: reqwest::Client,
    /// The URL.
    pub url: reqwest::Url,
    /// Headers of every request.
    pub headers: http::HeaderMap,
    /// The body: `POST` it when set.
    pub body: Option<Bytes>,
}

impl Target for HttpTarget {
    fn call(&self) -> BoxFuture<'static, Outcome> {
        let builder = match &self.body {
            Some(body) => self.client.post(self.url.clone()).body(body.clone()),
            None => self.client.get(self.url.clone()),
        };
        let builder = builder.headers(self.headers.clone());
        Box::pin(async move {
            let sent = Instant::now();
            let mut answer = match builder.send().await {
                Ok(answer) => answer,
                Err(err) => return Outcome::failed(http_error_class(&err), None),
            };
            let status = answer.status();
            let mut first_event = None;
            loop {
                match answer.chunk().await {
                    Ok(Some(_)) => {
                        first_event.get_or_insert_with(|| sent.elapsed());
                    }
                    Ok(None) => break,
                    Err(err) => return Outcome::failed(http_error_class(&err), first_event),
                }
            }
            if status.is_success() {
                Outcome::ok(first_event)
            } else {
                Outcome::failed(format!("HTTP {}", status.as_u16()), first_event)
            }
        })
    }
}

fn http_error_class(err: &reqwest::Error) -> &'static str {
    if err.is_connect() {
        "connect"
    } else if err.is_timeout() {
        "timeout"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request"
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_kit::time::timestamp_from_micros;

    use super::*;

    #[test]
    fn gaps_stay_within_one_answer_and_a_step_start_meets_its_first_token() {
        let mut watch = TokenWatch::new(Instant::now());
        let started = timestamp_from_micros(now_micros() - 5_000);
        watch.step_begins(1, Some(&started));
        for _ in 0..3 {
            watch.token(1);
        }
        // A tool ran between the steps: not a gap between tokens.
        watch.step_begins(2, None);
        watch.token(2);
        // The model call restarted: the next token starts the answer over.
        watch.restart();
        watch.token(2);
        watch.token(2);
        let tokens = watch.tokens;
        assert!(tokens.first.is_some());
        assert_eq!(tokens.gaps.len(), 3, "{tokens:?}");
        assert_eq!(tokens.step_to_first.len(), 1, "{tokens:?}");
        assert!(tokens.step_to_first[0] >= Duration::from_millis(5));
    }

    #[test]
    fn a_step_stamped_ahead_of_the_clients_clock_gives_no_figure() {
        let mut watch = TokenWatch::new(Instant::now());
        let ahead = timestamp_from_micros(now_micros() + 60_000_000);
        watch.step_begins(1, Some(&ahead));
        watch.token(1);
        assert!(watch.tokens.step_to_first.is_empty());
        assert!(watch.tokens.first.is_some());
    }
}
