//! What the HTTP providers share: one pooled client per provider instance,
//! API keys read from the environment at each call, the call's time limits,
//! error responses turned into [`ProviderError`]s, and server-sent events
//! decoded by `eventsource-stream` and handed to a protocol's [`SseDecoder`].
//!
//! Time limits: a streamed answer's response headers and first event must
//! arrive within `first_token_timeout`; every call ends within
//! `request_timeout`; and nothing waits past the caller's gRPC deadline.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub(crate) use agentmesh_kit::client::install_tls_crypto;
use agentmesh_kit::retry_after::parse_retry_after;
pub(crate) use agentmesh_kit::status::error_chain;
use bytes::Bytes;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

use crate::completion::ProviderEvent;
use crate::config::ProviderConfig;
use crate::error::{ProviderError, redact};
use crate::providers::EventStream;
use agentmesh_kit::text::truncate_chars;

/// Largest non-streamed response body read.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Largest error body read (the message is all we need).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Longest provider message quoted in a status.
const MAX_QUOTED_CHARS: usize = 1000;

// === impl HttpCore ===

/// The parts of an HTTP provider instance that do not depend on its protocol.
#[derive(Debug)]
pub(crate) struct HttpCore {
    instance: String,
    config: ProviderConfig,
    base_url: String,
    // Built on first use: loading the platform's CA roots can fail on a bare
    // machine, and that must not stop the gateway serving other providers.
    client: OnceLock<Result<reqwest::Client, String>>,
}

impl HttpCore {
    /// The shared parts of instance `instance`.
    pub(crate) fn new(instance: &str, config: &ProviderConfig) -> Self {
        Self {
            instance: instance.to_owned(),
            config: config.clone(),
            base_url: config.effective_base_url().trim_end_matches('/').to_owned(),
            client: OnceLock::new(),
        }
    }

    /// The instance's configuration.
    pub(crate) fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// `path` under the base URL.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url, path.trim_start_matches('/'))
    }

    /// The API key from the configured environment variable; `None` when the
    /// instance is configured without one.
    pub(crate) fn api_key(&self) -> Result<Option<String>, ProviderError> {
        let env = &self.config.api_key_env;
        if env.is_empty() {
            return Ok(None);
        }
        match std::env::var(env) {
            Ok(key) if !key.is_empty() => Ok(Some(key)),
            _ => Err(ProviderError::MissingKey { env: env.clone() }),
        }
    }

    fn client(&self) -> Result<reqwest::Client, ProviderError> {
        self.client
            .get_or_init(|| build_client(&self.config))
            .clone()
            .map_err(|err| {
                ProviderError::Setup(format!(
                    "cannot build the HTTP client of provider {}: {err}",
                    self.instance
                ))
            })
    }

    /// The time limits of a call starting now.
    pub(crate) fn timing(&self, caller_deadline: Option<Instant>) -> Timing {
        Timing::new(
            Instant::now(),
            self.config.first_token_timeout,
            self.config.request_timeout,
            caller_deadline,
        )
    }

    /// POSTs a one-shot request: `body` as JSON to `path` with `headers`, and
    /// returns the response once its headers say success; an error status
    /// becomes the matching [`ProviderError`] with the provider's message
    /// (`key` removed from it).
    ///
    /// The headers of a non-streamed answer come only once the whole answer
    /// is generated, so the wait is bounded by `request_timeout`, not by the
    /// time-to-first-token limit (which would cap the answer's length).
    pub(crate) async fn post_json(
        &self,
        path: &str,
        headers: HeaderMap,
        body: &Value,
        key: Option<&str>,
        timing: &Timing,
    ) -> Result<reqwest::Response, ProviderError> {
        self.send(path, headers, body, key, timing, false).await
    }

    async fn send(
        &self,
        path: &str,
        headers: HeaderMap,
        body: &Value,
        key: Option<&str>,
        timing: &Timing,
        streaming: bool,
    ) -> Result<reqwest::Response, ProviderError> {
        let client = self.client()?;
        let url = self.url(path);
        let body = serde_json::to_vec(body)
            .map_err(|err| ProviderError::Setup(format!("cannot encode the request: {err}")))?;
        let request = client
            .post(&url)
            .headers(headers)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        let sent = if streaming {
            timing.before_first_event(request).await?
        } else {
            timing.before_end(request).await?
        };
        let response = sent.map_err(|err| send_error(&url, err, &self.config))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_response(response, key, timing).await)
        }
    }

    /// POSTs a streaming request and returns its events decoded by `decoder`.
    pub(crate) async fn post_stream<D: SseDecoder>(
        &self,
        path: &str,
        headers: HeaderMap,
        body: &Value,
        key: Option<&str>,
        timing: Timing,
        decoder: D,
    ) -> Result<EventStream, ProviderError> {
        let mut headers = headers;
        headers.insert(
            HeaderName::from_static("accept"),
            HeaderValue::from_static("text/event-stream"),
        );
        let response = self.send(path, headers, body, key, &timing, true).await?;
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        if is_json {
            // Some compatible servers answer a streaming request that fails
            // with a plain JSON error (and a 200).
            let value = read_json(response, &timing).await?;
            let (kind, message) = error_object(&value).unwrap_or_else(|| {
                (
                    "unexpected_response".to_owned(),
                    truncate(&value.to_string()),
                )
            });
            return Err(ProviderError::Upstream {
                kind,
                message: redact(&message, key),
            });
        }
        Ok(sse_stream(response, decoder, timing))
    }
}

/// Builds the instance's client: pooled connections, TCP_NODELAY (streamed
/// events are small; Nagle's algorithm would hold them back), rustls on ring,
/// HTTP/1.1 or (`http2`) HTTP/2 only.
fn build_client(config: &ProviderConfig) -> Result<reqwest::Client, String> {
    // Checked here too: building a client without a provider would panic.
    if !install_tls_crypto() {
        return Err("no TLS crypto provider could be installed".to_owned());
    }
    let builder = reqwest::Client::builder();
    // Not negotiated: HTTP/2 multiplexes every call over one connection, which
    // the provider's stream limit then bounds; that is the setting's choice.
    let builder = if config.http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder
        .tcp_nodelay(true)
        .connect_timeout(config.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(config.max_idle_connections)
        .user_agent(concat!("agentmesh-llm-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| error_chain(&err))
}

fn send_error(url: &str, err: reqwest::Error, config: &ProviderConfig) -> ProviderError {
    if err.is_timeout() {
        return ProviderError::Timeout(format!(
            "no connection to {url} within connect_timeout ({})",
            humantime_serde::re::humantime::format_duration(config.connect_timeout)
        ));
    }
    ProviderError::Connect {
        url: url.to_owned(),
        // The URL is in our message already.
        message: error_chain(&err.without_url()),
    }
}

async fn error_response(
    response: reqwest::Response,
    key: Option<&str>,
    timing: &Timing,
) -> ProviderError {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let body = read_body_within(response, MAX_ERROR_BODY_BYTES, timing)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let parsed = serde_json::from_str::<Value>(&text).ok();
    let (message, param) = match parsed.as_ref().and_then(error_object) {
        Some((kind, message)) => {
            let param = parsed
                .as_ref()
                .and_then(|value| value.pointer("/error/param"))
                .and_then(Value::as_str)
                .filter(|param| !param.is_empty())
                .map(str::to_owned);
            let message = if kind.is_empty() {
                message
            } else {
                format!("{message} ({kind})")
            };
            (message, param)
        }
        None if text.trim().is_empty() => (
            status
                .canonical_reason()
                .unwrap_or("no error message")
                .to_owned(),
            None,
        ),
        None => (truncate(text.trim()), None),
    };
    ProviderError::Http {
        status: status.as_u16(),
        message: redact(&message, key),
        param,
        retry_after,
    }
}

/// The `(type, message)` of a provider error body, in the shapes seen in the
/// wild: `{"error":{"message","type"|"code"}}` (OpenAI, Anthropic),
/// `{"error":"text"}` (Ollama), `{"message":..}` (vLLM), `{"detail":..}`.
pub(crate) fn error_object(value: &Value) -> Option<(String, String)> {
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    match value.get("error") {
        Some(Value::Object(error)) => {
            let kind = text(error.get("type"))
                .or_else(|| text(error.get("code")))
                .unwrap_or_default();
            let message = text(error.get("message")).unwrap_or_else(|| kind.clone());
            Some((kind, truncate(&message)))
        }
        Some(Value::String(message)) => Some((String::new(), truncate(message))),
        _ => {
            let message = text(value.get("message")).or_else(|| text(value.get("detail")))?;
            let kind = text(value.get("type")).unwrap_or_default();
            Some((kind, truncate(&message)))
        }
    }
}

/// Reads and parses a JSON body within the call's time limit.
pub(crate) async fn read_json(
    response: reqwest::Response,
    timing: &Timing,
) -> Result<Value, ProviderError> {
    body_json(&read_body(response, timing).await?)
}

/// A response body read whole (at most [`MAX_BODY_BYTES`]) within the
/// call's time limit.
pub(crate) async fn read_body(
    response: reqwest::Response,
    timing: &Timing,
) -> Result<Vec<u8>, ProviderError> {
    read_body_within(response, MAX_BODY_BYTES, timing).await
}

/// A response body parsed as JSON.
pub(crate) fn body_json(body: &[u8]) -> Result<Value, ProviderError> {
    serde_json::from_slice(body)
        .map_err(|err| ProviderError::Malformed(format!("the response body is not JSON: {err}")))
}

async fn read_body_within(
    mut response: reqwest::Response,
    limit: usize,
    timing: &Timing,
) -> Result<Vec<u8>, ProviderError> {
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| {
            ProviderError::Broken(format!(
                "the connection broke while reading the response: {}",
                error_chain(&err)
            ))
        })? {
            if body.len() + chunk.len() > limit {
                return Err(ProviderError::Malformed(format!(
                    "the response body is larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    timing.before_end(read).await?
}

/// `text`, cut at 1000 characters with an ellipsis.
pub(crate) fn truncate(text: &str) -> String {
    truncate_chars(text, MAX_QUOTED_CHARS).into_owned()
}

// === impl Timing ===

/// The time limits of one call.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    first_event_by: Instant,
    end_by: Instant,
    first_token_timeout: Duration,
    request_timeout: Duration,
    caller_deadline_binds: bool,
}

impl Timing {
    /// Limits for a call started at `start`.
    pub(crate) fn new(
        start: Instant,
        first_token_timeout: Duration,
        request_timeout: Duration,
        caller_deadline: Option<Instant>,
    ) -> Self {
        let own_end = start + request_timeout;
        let (end_by, caller_deadline_binds) = match caller_deadline {
            Some(deadline) if deadline < own_end => (deadline, true),
            _ => (own_end, false),
        };
        Self {
            first_event_by: (start + first_token_timeout).min(end_by),
            end_by,
            first_token_timeout,
            request_timeout,
            caller_deadline_binds,
        }
    }

    fn end_message(&self) -> String {
        if self.caller_deadline_binds {
            "the caller's deadline passed before the provider finished".to_owned()
        } else {
            format!(
                "the call took longer than request_timeout ({})",
                humantime_serde::re::humantime::format_duration(self.request_timeout)
            )
        }
    }

    fn first_event_message(&self) -> String {
        if self.first_event_by < self.end_by {
            format!(
                "no response within first_token_timeout ({})",
                humantime_serde::re::humantime::format_duration(self.first_token_timeout)
            )
        } else {
            self.end_message()
        }
    }

    /// The failure of a limit passing at `at`: the caller's when it is
    /// the caller's deadline (it came before the provider's own limits),
    /// else the provider's (a timeout that counts against its circuit).
    fn passed(&self, at: Instant, message: String) -> ProviderError {
        if self.caller_deadline_binds && at >= self.end_by {
            ProviderError::CallerDeadline(message)
        } else {
            ProviderError::Timeout(message)
        }
    }

    /// Runs `future` until the first-event limit.
    pub(crate) async fn before_first_event<F: Future>(
        &self,
        future: F,
    ) -> Result<F::Output, ProviderError> {
        tokio::time::timeout_at(self.first_event_by, future)
            .await
            .map_err(|_| self.passed(self.first_event_by, self.first_event_message()))
    }

    /// Runs `future` until the end of the call.
    pub(crate) async fn before_end<F: Future>(
        &self,
        future: F,
    ) -> Result<F::Output, ProviderError> {
        tokio::time::timeout_at(self.end_by, future)
            .await
            .map_err(|_| self.passed(self.end_by, self.end_message()))
    }
}

// === SSE ===

/// Turns one protocol's server-sent events into [`ProviderEvent`]s.
pub(crate) trait SseDecoder: Send + 'static {
    /// Decodes one event; may yield several provider events, or none.
    fn on_event(&mut self, event: &Event) -> Result<Vec<ProviderEvent>, ProviderError>;
    /// Whether the protocol's end marker has been seen (then `Finished` has
    /// been yielded and nothing more is read).
    fn is_complete(&self) -> bool;
    /// The end marker, for the message when a stream ends without it.
    fn end_marker(&self) -> &'static str;
}

type SseEvents = BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>;

struct SseState<D> {
    events: SseEvents,
    decoder: D,
    pending: VecDeque<ProviderEvent>,
    timing: Timing,
    received_any: bool,
    done: bool,
}

/// The provider events of an SSE response. Ends with an error when the
/// connection breaks, the bytes are not SSE, the decoder fails, a time limit
/// passes, or the body ends before the protocol's end marker: a truncated
/// answer never looks complete.
pub(crate) fn sse_stream<D: SseDecoder>(
    response: reqwest::Response,
    decoder: D,
    timing: Timing,
) -> EventStream {
    let bytes: BoxStream<'static, reqwest::Result<Bytes>> = response.bytes_stream().boxed();
    decode_sse(bytes, decoder, timing)
}

/// [`sse_stream`] over any byte stream (tests feed recorded bytes).
pub(crate) fn decode_sse<D: SseDecoder>(
    bytes: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: D,
    timing: Timing,
) -> EventStream {
    let state = SseState {
        events: super::sse_input::normalise(bytes).eventsource().boxed(),
        decoder,
        pending: VecDeque::new(),
        timing,
        received_any: false,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            let next = if state.received_any {
                state.timing.before_end(state.events.next()).await
            } else {
                state.timing.before_first_event(state.events.next()).await
            };
            let failure = match next {
                Err(timeout) => timeout,
                Ok(None) if state.decoder.is_complete() => {
                    state.done = true;
                    continue;
                }
                Ok(None) => ProviderError::Broken(format!(
                    "the stream ended before {}: the answer is incomplete",
                    state.decoder.end_marker()
                )),
                Ok(Some(Err(EventStreamError::Transport(err)))) => ProviderError::Broken(format!(
                    "the connection broke mid-stream: {}",
                    error_chain(&err)
                )),
                Ok(Some(Err(err))) => {
                    ProviderError::Malformed(format!("the event stream cannot be parsed: {err}"))
                }
                Ok(Some(Ok(event))) => {
                    state.received_any = true;
                    match state.decoder.on_event(&event) {
                        Ok(events) => {
                            state.pending.extend(events);
                            state.done = state.decoder.is_complete();
                            continue;
                        }
                        Err(err) => err,
                    }
                }
            };
            state.done = true;
            state.pending.clear();
            return Some((Err(failure), state));
        }
    })
    .boxed()
}

/// Parses an event's data as JSON.
pub(crate) fn event_json(event: &Event) -> Result<Value, ProviderError> {
    serde_json::from_str(&event.data).map_err(|err| {
        ProviderError::Malformed(format!(
            "event data is not JSON ({err}): {}",
            truncate(&event.data)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_shape_give_a_message() {
        let openai = serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": null}});
        assert_eq!(
            error_object(&openai),
            Some(("invalid_request_error".into(), "bad".into()))
        );
        let anthropic = serde_json::json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        assert_eq!(
            error_object(&anthropic),
            Some(("overloaded_error".into(), "Overloaded".into()))
        );
        let ollama = serde_json::json!({"error": "model 'x' not found"});
        assert_eq!(
            error_object(&ollama),
            Some((String::new(), "model 'x' not found".into()))
        );
        let vllm = serde_json::json!({"object": "error", "message": "no such model", "type": "NotFoundError"});
        assert_eq!(
            error_object(&vllm),
            Some(("NotFoundError".into(), "no such model".into()))
        );
        assert_eq!(error_object(&serde_json::json!({"ok": true})), None);
    }

    #[test]
    fn long_messages_are_truncated_on_a_character_boundary() {
        let text = "é".repeat(MAX_QUOTED_CHARS + 5);
        let cut = truncate(&text);
        assert_eq!(cut.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn the_tightest_limit_names_itself() {
        let start = Instant::now();
        let timing = Timing::new(
            start,
            Duration::from_secs(60),
            Duration::from_secs(300),
            Some(start + Duration::from_secs(1)),
        );
        assert!(timing.first_event_message().contains("caller's deadline"));
        let timing = Timing::new(
            start,
            Duration::from_secs(60),
            Duration::from_secs(300),
            None,
        );
        assert!(
            timing
                .first_event_message()
                .contains("first_token_timeout (1m)")
        );
        assert!(timing.end_message().contains("request_timeout (5m)"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_is_the_callers_and_the_providers_limits_its_own() {
        let never = std::future::pending::<()>;
        let start = Instant::now();
        // The caller gives up before the provider's limits: its failure.
        let timing = Timing::new(
            start,
            Duration::from_secs(60),
            Duration::from_secs(300),
            Some(start + Duration::from_millis(200)),
        );
        let err = timing.before_first_event(never()).await.unwrap_err();
        assert!(matches!(err, ProviderError::CallerDeadline(_)), "{err:?}");
        let err = timing.before_end(never()).await.unwrap_err();
        assert!(matches!(err, ProviderError::CallerDeadline(_)), "{err:?}");
        // The provider's first-token limit passes within the caller's
        // deadline: the provider's failure.
        let start = Instant::now();
        let timing = Timing::new(
            start,
            Duration::from_millis(100),
            Duration::from_secs(300),
            Some(start + Duration::from_secs(5)),
        );
        let err = timing.before_first_event(never()).await.unwrap_err();
        assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
        // Its own request limit, with no caller deadline or a later one.
        let timing = Timing::new(
            Instant::now(),
            Duration::from_secs(60),
            Duration::from_millis(300),
            None,
        );
        let err = timing.before_end(never()).await.unwrap_err();
        assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
    }
}
