//! A model provider that speaks the OpenAI Chat Completions protocol and
//! fails on purpose, for the LLM gateway's resilience tests and benchmark.
//!
//! [`FaultProvider::start`] binds a loopback port and serves
//! `POST /v1/chat/completions` (and `/chat/completions`) over a small
//! hand-written HTTP/1.1 server on tokio's `TcpListener`: writing the bytes
//! ourselves is what lets a fault hang without answering, cut a chunked
//! stream mid-way, or send a broken event frame, which a full HTTP server
//! library would not allow.
//!
//! Data flow per connection: the request head and its `Content-Length` body
//! are read into a buffer (keep-alive: several requests per connection); the
//! body is checked as a Chat Completions request (400 when not); then, unless
//! the provider is switched down (503 at once), one uniform number drawn from
//! the seeded generator picks a fault by cumulative fraction of the current
//! [`FaultMix`], or none. No fault: the deterministic answer
//! ([`expected_answer`]) as SSE `chat.completion.chunk`s (one per token, the
//! finish chunk, the usage chunk when asked for, `data: [DONE]`) or as one
//! `chat.completion` object. Every request and every outcome is counted in
//! atomics the tests read ([`FaultProvider::requests`],
//! [`FaultProvider::outcomes`]); hung requests are tracked until the client
//! gives up ([`FaultProvider::open_hangs`], [`FaultProvider::hang_closes`]).
//!
//! The answer names the server (`primary-0 primary-1 …`), so a test can tell
//! an answer spliced from two providers from a whole one.
//!
//! Dropping the [`FaultProvider`] aborts the accept task, whose set of
//! connection tasks aborts with it: nothing outlives the test.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// Largest request body accepted (larger ones get 413).
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest request head accepted (larger ones get 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The answer text of server `name` for `tokens` tokens: `"{name}-0 "`,
/// `"{name}-1 "`, …, `"{name}-{tokens-1}"` concatenated (a space after every
/// token but the last).
pub fn expected_answer(name: &str, tokens: usize) -> String {
    (0..tokens)
        .map(|index| token(name, index, tokens))
        .collect()
}

fn token(name: &str, index: usize, tokens: usize) -> String {
    if index + 1 == tokens {
        format!("{name}-{index}")
    } else {
        format!("{name}-{index} ")
    }
}

// === faults ===

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// HTTP 500 with an OpenAI error body.
    Error500,
    /// HTTP 429 with `retry-after` and an OpenAI error body.
    RateLimited429,
    /// The request is read and never answered; held until the client closes.
    Hang,
    /// The answer stops part-way and the connection closes (no terminating
    /// chunk; or fewer body bytes than `Content-Length`).
    CutStream,
    /// A few good events, then a frame that is not JSON (non-streamed: a
    /// body that is not JSON).
    MalformedSse,
}

impl Fault {
    /// Every fault, in the order [`FaultMix::pick`] accumulates them.
    pub const ALL: [Fault; 5] = [
        Fault::Error500,
        Fault::RateLimited429,
        Fault::Hang,
        Fault::CutStream,
        Fault::MalformedSse,
    ];
}

/// The fraction of requests that get each fault. Fractions are in `[0, 1]`
/// and sum to at most 1; the rest are answered normally. Out-of-range values
/// are clamped (NaN counts as 0) rather than refused, and whatever goes past
/// a sum of 1 is never drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultMix {
    /// HTTP 500 `server_error`.
    pub error_500: f64,
    /// HTTP 429 `rate_limit_exceeded` with `retry-after`.
    pub rate_limited_429: f64,
    /// Never answered.
    pub hang: f64,
    /// Cut part-way.
    pub cut_stream: f64,
    /// Broken SSE frame (or non-JSON body).
    pub malformed_sse: f64,
}

impl FaultMix {
    /// No faults.
    pub const NONE: FaultMix = FaultMix {
        error_500: 0.0,
        rate_limited_429: 0.0,
        hang: 0.0,
        cut_stream: 0.0,
        malformed_sse: 0.0,
    };

    /// Every request gets `fault`.
    pub fn only(fault: Fault) -> Self {
        Self::NONE.with(fault, 1.0)
    }

    /// This mix with `fault` at `fraction`.
    pub fn with(mut self, fault: Fault, fraction: f64) -> Self {
        *self.slot(fault) = fraction;
        self
    }

    /// The fraction of `fault`, clamped to `[0, 1]`.
    pub fn fraction(&self, fault: Fault) -> f64 {
        let value = match fault {
            Fault::Error500 => self.error_500,
            Fault::RateLimited429 => self.rate_limited_429,
            Fault::Hang => self.hang,
            Fault::CutStream => self.cut_stream,
            Fault::MalformedSse => self.malformed_sse,
        };
        if value.is_finite() {
            value.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// The fraction of requests that get some fault (at most 1).
    pub fn total(&self) -> f64 {
        Fault::ALL
            .iter()
            .map(|&fault| self.fraction(fault))
            .sum::<f64>()
            .min(1.0)
    }

    /// The fault for a uniform `draw` in `[0, 1)`: the first whose
    /// cumulative fraction (in [`Fault::ALL`] order) exceeds it, or none.
    pub fn pick(&self, draw: f64) -> Option<Fault> {
        let mut cumulative = 0.0;
        for fault in Fault::ALL {
            cumulative += self.fraction(fault);
            if draw < cumulative {
                return Some(fault);
            }
        }
        None
    }

    fn slot(&mut self, fault: Fault) -> &mut f64 {
        match fault {
            Fault::Error500 => &mut self.error_500,
            Fault::RateLimited429 => &mut self.rate_limited_429,
            Fault::Hang => &mut self.hang,
            Fault::CutStream => &mut self.cut_stream,
            Fault::MalformedSse => &mut self.malformed_sse,
        }
    }
}

/// How a [`FaultProvider`] answers.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Names the server in its answers (`"{name}-0 "`, …).
    pub name: String,
    /// Tokens in every answer (default 8).
    pub answer_tokens: usize,
    /// Wait between streamed events (default zero). A non-streamed answer
    /// waits `pace × answer_tokens` before it is sent, as long as streaming
    /// it would take.
    pub pace: Duration,
    /// The fault mix at start ([`FaultProvider::set_faults`] changes it).
    pub faults: FaultMix,
    /// Seed of the generator that draws the faults.
    pub seed: u64,
    /// The `retry-after` of a 429 (default 50 ms, sent as `0.05`).
    pub retry_after: Duration,
    /// Good token chunks before a cut or a broken frame (default 3, at most
    /// `answer_tokens - 1`).
    pub cut_after_tokens: usize,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            name: "fault".to_owned(),
            answer_tokens: 8,
            pace: Duration::ZERO,
            faults: FaultMix::NONE,
            seed: 0,
            retry_after: Duration::from_millis(50),
            cut_after_tokens: 3,
        }
    }
}

impl FaultConfig {
    /// The defaults, with the server named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// How many requests ended which way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Answered in full.
    pub ok: u64,
    /// Got [`Fault::Error500`].
    pub error_500: u64,
    /// Got [`Fault::RateLimited429`].
    pub rate_limited_429: u64,
    /// Got [`Fault::Hang`].
    pub hang: u64,
    /// Got [`Fault::CutStream`].
    pub cut_stream: u64,
    /// Got [`Fault::MalformedSse`].
    pub malformed_sse: u64,
    /// Got 503 while the provider was down.
    pub down_503: u64,
    /// Refused as not a Chat Completions request (400, 404, 413, 431).
    pub rejected: u64,
}

impl FaultCounts {
    /// All outcomes added up (equals [`FaultProvider::requests`] once every
    /// request has been decided).
    pub fn total(&self) -> u64 {
        self.ok
            + self.error_500
            + self.rate_limited_429
            + self.hang
            + self.cut_stream
            + self.malformed_sse
            + self.down_503
            + self.rejected
    }
}

// === the server ===

/// A running fault-injecting provider on a loopback port; stops when dropped.
#[derive(Debug)]
pub struct FaultProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: AbortHandle,
}

impl FaultProvider {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(config: FaultConfig) -> FaultProvider {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the fault provider");
        let addr = listener
            .local_addr()
            .expect("the fault provider's listener has an address");
        let shared = Arc::new(Shared::new(config));
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&shared))).abort_handle();
        FaultProvider {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the `base_url` of an `openai` provider.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While down, every request gets 503 at once (no fault is drawn).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Replaces the fault mix for the requests that come next.
    pub fn set_faults(&self, faults: FaultMix) {
        self.shared.lock_draw().mix = faults;
    }

    /// Requests received (what the upstream sees), whatever their outcome.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How the requests so far ended.
    pub fn outcomes(&self) -> FaultCounts {
        self.shared.counts.snapshot()
    }

    /// Hung requests whose connection the client still holds open.
    pub fn open_hangs(&self) -> usize {
        self.shared.lock_hangs().open
    }

    /// For each hung request the client gave up on, how long it was held
    /// (from the end of the request to the client closing the connection).
    pub fn hang_closes(&self) -> Vec<Duration> {
        self.shared.lock_hangs().closes.clone()
    }
}

impl Drop for FaultProvider {
    fn drop(&mut self) {
        // The accept task owns the listener and the JoinSet of connection
        // tasks; dropping its future aborts them all.
        self.server.abort();
    }
}

#[derive(Debug)]
struct Shared {
    config: FaultConfig,
    draw: Mutex<DrawState>,
    down: AtomicBool,
    requests: AtomicU64,
    next_id: AtomicU64,
    counts: Counters,
    hangs: Mutex<Hangs>,
}

#[derive(Debug)]
struct DrawState {
    mix: FaultMix,
    rng: fastrand::Rng,
}

/// Open hangs and finished holds under one lock, so a test that sees a
/// close recorded also sees the hang no longer open.
#[derive(Debug, Default)]
struct Hangs {
    open: usize,
    closes: Vec<Duration>,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    error_500: AtomicU64,
    rate_limited_429: AtomicU64,
    hang: AtomicU64,
    cut_stream: AtomicU64,
    malformed_sse: AtomicU64,
    down_503: AtomicU64,
    rejected: AtomicU64,
}

/// How one request ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fault(Fault),
    Down,
    Rejected,
}

impl Counters {
    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Fault(Fault::Error500) => &self.error_500,
            Outcome::Fault(Fault::RateLimited429) => &self.rate_limited_429,
            Outcome::Fault(Fault::Hang) => &self.hang,
            Outcome::Fault(Fault::CutStream) => &self.cut_stream,
            Outcome::Fault(Fault::MalformedSse) => &self.malformed_sse,
            Outcome::Down => &self.down_503,
            Outcome::Rejected => &self.rejected,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }

    fn snapshot(&self) -> FaultCounts {
        let read = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        FaultCounts {
            ok: read(&self.ok),
            error_500: read(&self.error_500),
            rate_limited_429: read(&self.rate_limited_429),
            hang: read(&self.hang),
            cut_stream: read(&self.cut_stream),
            malformed_sse: read(&self.malformed_sse),
            down_503: read(&self.down_503),
            rejected: read(&self.rejected),
        }
    }
}

impl Shared {
    fn new(config: FaultConfig) -> Self {
        let draw = DrawState {
            mix: config.faults,
            rng: fastrand::Rng::with_seed(config.seed),
        };
        Self {
            config,
            draw: Mutex::new(draw),
            down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            counts: Counters::default(),
            hangs: Mutex::new(Hangs::default()),
        }
    }

    // A panic elsewhere cannot leave these half-updated in a way that
    // matters, so a poisoned lock is used as it is.
    fn lock_draw(&self) -> std::sync::MutexGuard<'_, DrawState> {
        self.draw.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_hangs(&self) -> std::sync::MutexGuard<'_, Hangs> {
        self.hangs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One uniform draw against the current mix.
    fn draw(&self) -> Option<Fault> {
        let mut state = self.lock_draw();
        let draw = state.rng.f64();
        state.mix.pick(draw)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(serve_connection(stream, Arc::clone(&shared)));
            }
            // Out of descriptors and the like: wait a little, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

// === HTTP/1.1 ===

/// One request read off a connection.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    /// The client wants the connection kept after the answer.
    keep_alive: bool,
    body: Vec<u8>,
}

/// Why no request could be read.
#[derive(Debug)]
enum ReadError {
    /// The connection ended or broke: nothing to answer.
    Gone,
    /// A request came but cannot be served: answer this and close.
    Refuse { status: u16, message: String },
}

/// What the connection does after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
}

async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    // Streamed events are small; Nagle's algorithm would hold them back.
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(ReadError::Gone) => return,
            Err(ReadError::Refuse { status, message }) => {
                shared.requests.fetch_add(1, Ordering::SeqCst);
                shared.counts.count(Outcome::Rejected);
                let body = error_body(&message, "invalid_request_error");
                let _ =
                    write_response(&mut stream, status, "application/json", &[], &body, true).await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        match answer(&shared, &mut stream, request).await {
            Ok(After::KeepAlive) => continue,
            Ok(After::Close) => {
                let _ = stream.shutdown().await;
                return;
            }
            Err(_) => return,
        }
    }
}

/// Reads one request; `Ok(None)` when the client closed between requests.
/// Bytes past the request stay in `buffer` for the next one.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Request>, ReadError> {
    let head_len = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end + 4;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(refuse(431, "the request head is too large"));
        }
        if fill(stream, buffer).await? == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Gone)
            };
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse(400, "the request line is malformed"));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(refuse(400, "the request line is malformed"));
    }
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length: Option<usize> = None;
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(refuse(400, "a header line is malformed"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let Ok(length) = value.parse::<usize>() else {
                    return Err(refuse(400, "the content-length is not a number"));
                };
                if content_length.is_some_and(|known| known != length) {
                    return Err(refuse(400, "the content-length is given twice"));
                }
                content_length = Some(length);
            }
            "transfer-encoding" => {
                return Err(refuse(
                    411,
                    "chunked request bodies are not supported; send a content-length",
                ));
            }
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.split(',').any(|token| token.trim() == "close") {
                    keep_alive = false;
                } else if value.split(',').any(|token| token.trim() == "keep-alive") {
                    keep_alive = true;
                }
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => {
                let length = content_length.unwrap_or(0);
                if length <= MAX_BODY_BYTES {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .map_err(|_| ReadError::Gone)?;
                }
            }
            _ => {}
        }
    }
    let length = content_length.unwrap_or(0);
    if length > MAX_BODY_BYTES {
        return Err(refuse(
            413,
            &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    while buffer.len() < head_len + length {
        if fill(stream, buffer).await? == 0 {
            return Err(ReadError::Gone);
        }
    }
    let body = buffer[head_len..head_len + length].to_vec();
    buffer.drain(..head_len + length);
    Ok(Some(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or(target).to_owned(),
        keep_alive,
        body,
    }))
}

fn refuse(status: u16, message: &str) -> ReadError {
    ReadError::Refuse {
        status,
        message: message.to_owned(),
    }
}

async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<usize, ReadError> {
    let mut chunk = [0_u8; 16 * 1024];
    let read = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn response_head(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    length: Option<usize>,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n",
        reason(status)
    );
    match length {
        Some(length) => head.push_str(&format!("content-length: {length}\r\n")),
        None => head.push_str("cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"),
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    // HTTP/1.1 keeps the connection by default: say so only when closing.
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Writes a whole response with a `Content-Length` body.
async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut bytes =
        response_head(status, content_type, extra, Some(body.len()), close).into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

fn error_body(message: &str, kind: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        .to_string()
        .into_bytes()
}

async fn write_error(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, String)],
    message: &str,
    kind: &str,
    keep_alive: bool,
) -> io::Result<After> {
    let body = error_body(message, kind);
    write_response(
        stream,
        status,
        "application/json",
        extra,
        &body,
        !keep_alive,
    )
    .await?;
    Ok(if keep_alive {
        After::KeepAlive
    } else {
        After::Close
    })
}

/// Writes one chunk of a chunked body (a whole SSE event) and flushes it.
async fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    stream.write_all(&bytes).await?;
    stream.flush().await
}

// === Chat Completions ===

/// A checked Chat Completions request.
#[derive(Debug)]
struct Chat {
    id: String,
    model: String,
    created: u64,
    stream: bool,
    include_usage: bool,
    prompt_tokens: u64,
}

impl Chat {
    fn parse(body: &[u8], id: u64, name: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| format!("the request body is not JSON: {err}"))?;
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .ok_or("the request has no model")?;
        let messages = value
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("the request has no messages array")?;
        let words: usize = messages.iter().map(content_words).sum();
        Ok(Self {
            id: format!("chatcmpl-{name}-{id}"),
            model: model.to_owned(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            stream: value.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: value
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            prompt_tokens: words as u64 + 3,
        })
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        let completion = completion_tokens as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn chunk(&self, choices: Value, usage: Value) -> Vec<u8> {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        // As OpenAI does: with include_usage every chunk carries `usage`,
        // null until the last.
        if self.include_usage
            && let Some(object) = chunk.as_object_mut()
        {
            object.insert("usage".to_owned(), usage);
        }
        format!("data: {chunk}\n\n").into_bytes()
    }

    fn token_chunk(&self, index: usize, text: &str) -> Vec<u8> {
        let delta = if index == 0 {
            json!({"role": "assistant", "content": text})
        } else {
            json!({"content": text})
        };
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
            Value::Null,
        )
    }

    fn completion(&self, answer: &str, tokens: usize) -> Vec<u8> {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": self.usage(tokens),
        })
        .to_string()
        .into_bytes()
    }
}

/// Whitespace-separated words of a message's content (a string, or text
/// parts).
fn content_words(message: &Value) -> usize {
    match message.get("content") {
        Some(Value::String(text)) => text.split_whitespace().count(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(|text| text.split_whitespace().count())
            .sum(),
        _ => 0,
    }
}

async fn answer(shared: &Shared, stream: &mut TcpStream, request: Request) -> io::Result<After> {
    let keep_alive = request.keep_alive;
    let known_path = matches!(
        request.path.as_str(),
        "/v1/chat/completions" | "/chat/completions"
    );
    if request.method != "POST" || !known_path {
        shared.counts.count(Outcome::Rejected);
        let message = format!("no route for {} {}", request.method, request.path);
        return write_error(
            stream,
            404,
            &[],
            &message,
            "invalid_request_error",
            keep_alive,
        )
        .await;
    }
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let chat = match Chat::parse(&request.body, id, &shared.config.name) {
        Ok(chat) => chat,
        Err(message) => {
            shared.counts.count(Outcome::Rejected);
            return write_error(
                stream,
                400,
                &[],
                &message,
                "invalid_request_error",
                keep_alive,
            )
            .await;
        }
    };
    if shared.down.load(Ordering::SeqCst) {
        shared.counts.count(Outcome::Down);
        return write_error(
            stream,
            503,
            &[],
            "injected outage",
            "server_error",
            keep_alive,
        )
        .await;
    }
    let fault = shared.draw();
    shared
        .counts
        .count(fault.map_or(Outcome::Ok, Outcome::Fault));
    let config = &shared.config;
    let cut_after = config
        .cut_after_tokens
        .min(config.answer_tokens.saturating_sub(1));
    match fault {
        Some(Fault::Error500) => {
            write_error(
                stream,
                500,
                &[],
                "injected server error",
                "server_error",
                keep_alive,
            )
            .await
        }
        Some(Fault::RateLimited429) => {
            let retry_after = [("retry-after", config.retry_after.as_secs_f64().to_string())];
            write_error(
                stream,
                429,
                &retry_after,
                "injected rate limit",
                "rate_limit_exceeded",
                keep_alive,
            )
            .await
        }
        Some(Fault::Hang) => {
            hang(shared, stream).await;
            Ok(After::Close)
        }
        None if chat.stream => {
            stream_answer(config, stream, &chat, Ending::Whole, keep_alive).await
        }
        Some(Fault::CutStream) if chat.stream => {
            stream_answer(config, stream, &chat, Ending::Cut(cut_after), keep_alive).await
        }
        Some(Fault::MalformedSse) if chat.stream => {
            stream_answer(config, stream, &chat, Ending::Broken(cut_after), keep_alive).await
        }
        None => {
            if !config.pace.is_zero() {
                tokio::time::sleep(pace_total(config)).await;
            }
            let body = chat.completion(
                &expected_answer(&config.name, config.answer_tokens),
                config.answer_tokens,
            );
            write_response(stream, 200, "application/json", &[], &body, !keep_alive).await?;
            Ok(if keep_alive {
                After::KeepAlive
            } else {
                After::Close
            })
        }
        Some(Fault::CutStream) => {
            // Promise the whole body, send about half of it, then close.
            let body = chat.completion(
                &expected_answer(&config.name, config.answer_tokens),
                config.answer_tokens,
            );
            let sent = (body.len() / 2).max(1).min(body.len().saturating_sub(1));
            let mut bytes =
                response_head(200, "application/json", &[], Some(body.len()), true).into_bytes();
            bytes.extend_from_slice(&body[..sent]);
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            Ok(After::Close)
        }
        Some(Fault::MalformedSse) => {
            let body = format!("{{\"id\": \"{}\", \"choices\": [", chat.id).into_bytes();
            write_response(stream, 200, "application/json", &[], &body, true).await?;
            Ok(After::Close)
        }
    }
}

fn pace_total(config: &FaultConfig) -> Duration {
    let tokens = u32::try_from(config.answer_tokens).unwrap_or(u32::MAX);
    config.pace.saturating_mul(tokens)
}

/// How a streamed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Every event, the terminating chunk, the connection kept.
    Whole,
    /// This many token events, then the connection closes with no
    /// terminating chunk.
    Cut(usize),
    /// This many token events, a frame that is not JSON, the terminating
    /// chunk, then close.
    Broken(usize),
}

async fn stream_answer(
    config: &FaultConfig,
    stream: &mut TcpStream,
    chat: &Chat,
    ending: Ending,
    keep_alive: bool,
) -> io::Result<After> {
    let close = ending != Ending::Whole || !keep_alive;
    let head = response_head(200, "text/event-stream", &[], None, close);
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;

    let tokens = config.answer_tokens;
    let mut events: Vec<Vec<u8>> = Vec::new();
    let token_events = match ending {
        Ending::Whole => tokens,
        Ending::Cut(count) | Ending::Broken(count) => count,
    };
    if tokens == 0 && ending == Ending::Whole {
        // Still say who is speaking, as OpenAI does.
        events.push(chat.token_chunk(0, ""));
    }
    for index in 0..token_events {
        events.push(chat.token_chunk(index, &token(&config.name, index, tokens)));
    }
    match ending {
        Ending::Whole => {
            events.push(chat.chunk(
                json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
                Value::Null,
            ));
            if chat.include_usage {
                events.push(chat.chunk(json!([]), chat.usage(tokens)));
            }
            events.push(b"data: [DONE]\n\n".to_vec());
        }
        Ending::Broken(_) => events.push(b"data: {\"choices\": [\n\n".to_vec()),
        Ending::Cut(_) => {}
    }

    for (index, event) in events.iter().enumerate() {
        if index > 0 && !config.pace.is_zero() {
            tokio::time::sleep(config.pace).await;
        }
        write_chunk(stream, event).await?;
    }
    if matches!(ending, Ending::Cut(_)) {
        // No terminating chunk: the caller shuts the socket down.
        return Ok(After::Close);
    }
    stream.write_all(b"0\r\n\r\n").await?;
    stream.flush().await?;
    Ok(if close {
        After::Close
    } else {
        After::KeepAlive
    })
}

/// Holds a request unanswered until the client closes the connection, then
/// records how long it was held.
async fn hang(shared: &Shared, stream: &mut TcpStream) {
    let started = Instant::now();
    let open = OpenHang::new(shared);
    let mut scratch = [0_u8; 1024];
    loop {
        match stream.read(&mut scratch).await {
            Ok(0) | Err(_) => break,
            // A client that keeps writing is still there: keep holding.
            Ok(_) => {}
        }
    }
    open.closed(started.elapsed());
}

/// Counts a hang as open until it is closed or its task is aborted.
#[derive(Debug)]
struct OpenHang<'a> {
    shared: &'a Shared,
    done: bool,
}

impl<'a> OpenHang<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.lock_hangs().open += 1;
        Self {
            shared,
            done: false,
        }
    }

    fn closed(mut self, held: Duration) {
        let mut hangs = self.shared.lock_hangs();
        hangs.open = hangs.open.saturating_sub(1);
        hangs.closes.push(held);
        self.done = true;
    }
}

impl Drop for OpenHang<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut hangs = self.shared.lock_hangs();
            hangs.open = hangs.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every network step of a test is bounded, so a bug fails instead of
    /// hanging the run.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(PATIENCE, future)
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
    }

    /// A raw HTTP/1.1 client: one connection, requests written by hand,
    /// responses parsed just enough to check the bytes the server sent.
    struct Client {
        stream: TcpStream,
        buffer: Vec<u8>,
    }

    #[derive(Debug)]
    struct Head {
        status: u16,
        headers: Vec<(String, String)>,
    }

    impl Head {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        }
    }

    impl Client {
        async fn connect(provider: &FaultProvider) -> Self {
            let stream = bounded("connect", TcpStream::connect(provider.addr()))
                .await
                .unwrap();
            Self {
                stream,
                buffer: Vec::new(),
            }
        }

        async fn send_raw(&mut self, bytes: &[u8]) {
            bounded("write", self.stream.write_all(bytes))
                .await
                .unwrap();
        }

        async fn post(&mut self, path: &str, body: &Value) {
            let body = body.to_string();
            let request = format!(
                "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            self.send_raw(request.as_bytes()).await;
        }

        /// Reads more bytes; false at end of stream.
        async fn fill(&mut self) -> bool {
            let mut chunk = [0_u8; 4096];
            match bounded("read", self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => false,
                Ok(read) => {
                    self.buffer.extend_from_slice(&chunk[..read]);
                    true
                }
            }
        }

        async fn head(&mut self) -> Head {
            let end = loop {
                if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                    break end;
                }
                assert!(self.fill().await, "the connection ended before a head");
            };
            let text = String::from_utf8(self.buffer[..end].to_vec()).unwrap();
            self.buffer.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap();
            let headers = lines
                .map(|line| {
                    let (name, value) = line.split_once(':').unwrap();
                    (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                })
                .collect();
            Head {
                status: status.parse().unwrap(),
                headers,
            }
        }

        /// The `Content-Length` body of `head`.
        async fn body(&mut self, head: &Head) -> Vec<u8> {
            let length: usize = head.header("content-length").unwrap().parse().unwrap();
            while self.buffer.len() < length {
                assert!(self.fill().await, "the connection ended inside a body");
            }
            self.buffer.drain(..length).collect()
        }

        async fn json(&mut self, head: &Head) -> Value {
            serde_json::from_slice(&self.body(head).await).unwrap()
        }

        /// The next chunk of a chunked body; `None` when the connection
        /// ends first, `Some(empty)` for the terminating chunk.
        async fn chunk(&mut self) -> Option<Vec<u8>> {
            loop {
                if let Some(line_end) = find(&self.buffer, b"\r\n") {
                    let size_text = std::str::from_utf8(&self.buffer[..line_end]).unwrap();
                    let size = usize::from_str_radix(size_text, 16).unwrap();
                    let total = line_end + 2 + size + 2;
                    if self.buffer.len() >= total {
                        let data = self.buffer[line_end + 2..line_end + 2 + size].to_vec();
                        assert_eq!(&self.buffer[total - 2..total], b"\r\n");
                        self.buffer.drain(..total);
                        return Some(data);
                    }
                }
                if !self.fill().await {
                    return None;
                }
            }
        }

        /// Whether the server closed the connection (nothing more to read).
        async fn at_eof(&mut self) -> bool {
            self.buffer.is_empty() && !self.fill().await
        }
    }

    fn chat_request(stream: bool) -> Value {
        let mut body = json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is two plus two?"},
            ],
        });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// Prompt words in `chat_request` (2 + 5) plus 3.
    const PROMPT_TOKENS: u64 = 10;

    fn event_data(chunk: &[u8]) -> String {
        let text = std::str::from_utf8(chunk).unwrap();
        let data = text.strip_prefix("data: ").unwrap();
        data.strip_suffix("\n\n").unwrap().to_owned()
    }

    /// Reads a whole streamed answer: the events' data, until the
    /// terminating chunk.
    async fn stream_events(client: &mut Client) -> Vec<String> {
        let mut events = Vec::new();
        loop {
            let chunk = client.chunk().await.expect("the stream was cut");
            if chunk.is_empty() {
                return events;
            }
            events.push(event_data(&chunk));
        }
    }

    #[tokio::test]
    async fn a_healthy_stream_is_the_expected_answer_with_usage_and_done() {
        let provider = FaultProvider::start(FaultConfig::named("primary")).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("transfer-encoding"), Some("chunked"));
        assert_eq!(head.header("connection"), None);

        let events = stream_events(&mut client).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|data| serde_json::from_str(data).unwrap())
            .collect();
        // 8 tokens, the finish chunk, the usage chunk.
        assert_eq!(chunks.len(), 10);
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["model"], "test-model");
            assert_eq!(chunk["id"], chunks[0]["id"]);
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|chunk| chunk.pointer("/choices/0/delta/content"))
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(text, expected_answer("primary", 8));
        assert_eq!(
            text,
            "primary-0 primary-1 primary-2 primary-3 primary-4 primary-5 primary-6 primary-7"
        );
        assert_eq!(chunks[8]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[8]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[9]["choices"], json!([]));
        assert_eq!(
            chunks[9]["usage"],
            json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 8, "total_tokens": PROMPT_TOKENS + 8})
        );
        assert_eq!(provider.requests(), 1);
        assert_eq!(
            provider.outcomes(),
            FaultCounts {
                ok: 1,
                ..FaultCounts::default()
            }
        );
    }

    #[tokio::test]
    async fn a_one_shot_request_gets_a_completion_object() {
        let config = FaultConfig {
            answer_tokens: 3,
            ..FaultConfig::named("backup")
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client.post("/chat/completions", &chat_request(false)).await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("application/json"));
        let body = client.json(&head).await;
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "backup-0 backup-1 backup-2"
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens"], PROMPT_TOKENS);
        assert_eq!(body["usage"]["completion_tokens"], 3);
        assert_eq!(body["usage"]["total_tokens"], PROMPT_TOKENS + 3);
    }

    #[tokio::test]
    async fn a_rate_limited_answer_says_when_to_retry() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::RateLimited429),
            ..FaultConfig::default()
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 429);
        assert_eq!(head.header("retry-after"), Some("0.05"));
        let body = client.json(&head).await;
        assert_eq!(body["error"]["type"], "rate_limit_exceeded");
        assert_eq!(body["error"]["message"], "injected rate limit");
        assert_eq!(provider.outcomes().rate_limited_429, 1);
    }

    #[tokio::test]
    async fn a_server_error_is_a_500_with_an_openai_error_body() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::Error500),
            ..FaultConfig::default()
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 500);
        let body = client.json(&head).await;
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["message"], "injected server error");
    }

    #[tokio::test]
    async fn a_cut_stream_sends_some_tokens_then_ends_without_the_last_chunk() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::CutStream),
            ..FaultConfig::named("primary")
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("connection"), Some("close"));
        let mut text = String::new();
        for _ in 0..3 {
            let chunk = client.chunk().await.expect("a token chunk");
            assert!(!chunk.is_empty(), "the terminating chunk came early");
            let value: Value = serde_json::from_str(&event_data(&chunk)).unwrap();
            text.push_str(value["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(text, "primary-0 primary-1 primary-2 ");
        assert_eq!(
            client.chunk().await,
            None,
            "the stream went on after the cut"
        );
        assert_eq!(provider.outcomes().cut_stream, 1);
    }

    #[tokio::test]
    async fn a_cut_one_shot_answer_is_shorter_than_its_length() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::CutStream),
            ..FaultConfig::default()
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        let promised: usize = head.header("content-length").unwrap().parse().unwrap();
        while client.fill().await {}
        assert!(!client.buffer.is_empty());
        assert!(client.buffer.len() < promised);
    }

    #[tokio::test]
    async fn a_broken_frame_follows_the_good_tokens_and_the_stream_closes_cleanly() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::MalformedSse),
            cut_after_tokens: 2,
            ..FaultConfig::default()
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.header("connection"), Some("close"));
        let events = stream_events(&mut client).await;
        assert_eq!(events.len(), 3);
        assert!(serde_json::from_str::<Value>(&events[1]).is_ok());
        assert_eq!(events[2], "{\"choices\": [");
        assert!(serde_json::from_str::<Value>(&events[2]).is_err());
        assert!(client.at_eof().await);

        // One-shot: a 200 whose body is not JSON.
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        let body = client.body(&head).await;
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        assert_eq!(provider.outcomes().malformed_sse, 2);
    }

    #[tokio::test]
    async fn a_hung_request_is_held_until_the_client_leaves() {
        let config = FaultConfig {
            faults: FaultMix::only(Fault::Hang),
            ..FaultConfig::default()
        };
        let provider = FaultProvider::start(config).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        crate::eventually("the hang to start", PATIENCE, || async {
            (provider.open_hangs() == 1).then_some(())
        })
        .await;
        assert!(provider.hang_closes().is_empty());
        assert!(client.buffer.is_empty());
        drop(client);
        let closes = crate::eventually("the hang to be closed", PATIENCE, || async {
            let closes = provider.hang_closes();
            (!closes.is_empty()).then_some(closes)
        })
        .await;
        assert_eq!(closes.len(), 1);
        assert_eq!(provider.open_hangs(), 0);
        assert_eq!(provider.outcomes().hang, 1);
    }

    #[tokio::test]
    async fn an_outage_answers_503_and_ends_when_switched_back() {
        let provider = FaultProvider::start(FaultConfig::default()).await;
        provider.set_down(true);
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 503);
        let body = client.json(&head).await;
        assert_eq!(body["error"]["message"], "injected outage");
        assert_eq!(body["error"]["type"], "server_error");

        // The same connection serves the next request.
        provider.set_down(false);
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        let _ = client.json(&head).await;
        assert_eq!(
            provider.outcomes(),
            FaultCounts {
                ok: 1,
                down_503: 1,
                ..FaultCounts::default()
            }
        );
    }

    #[tokio::test]
    async fn faults_can_be_switched_at_run_time() {
        let provider = FaultProvider::start(FaultConfig::default()).await;
        let mut client = Client::connect(&provider).await;
        provider.set_faults(FaultMix::only(Fault::Error500));
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 500);
        let _ = client.body(&head).await;
        provider.set_faults(FaultMix::NONE);
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
    }

    #[tokio::test]
    async fn one_connection_carries_several_requests() {
        let provider = FaultProvider::start(FaultConfig::named("primary")).await;
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(true))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        let events = stream_events(&mut client).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 200);
        let body = client.json(&head).await;
        assert_eq!(
            body["choices"][0]["message"]["content"],
            expected_answer("primary", 8)
        );
        assert_eq!(provider.requests(), 2);
        assert_eq!(provider.outcomes().ok, 2);
    }

    #[tokio::test]
    async fn bad_requests_get_json_errors() {
        let provider = FaultProvider::start(FaultConfig::default()).await;
        let mut client = Client::connect(&provider).await;

        client.post("/v1/models", &json!({})).await;
        let head = client.head().await;
        assert_eq!(head.status, 404);
        assert_eq!(
            client.json(&head).await["error"]["type"],
            "invalid_request_error"
        );

        client
            .send_raw(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 5\r\n\r\n{nope")
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 400);
        assert!(client.json(&head).await["error"]["message"].is_string());

        client
            .post("/v1/chat/completions", &json!({"model": "m"}))
            .await;
        let head = client.head().await;
        assert_eq!(head.status, 400);
        let _ = client.json(&head).await;

        let too_large = format!(
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        client.send_raw(too_large.as_bytes()).await;
        let head = client.head().await;
        assert_eq!(head.status, 413);
        assert_eq!(head.header("connection"), Some("close"));

        let mut client = Client::connect(&provider).await;
        client.send_raw(b"garbage\r\n\r\n").await;
        let head = client.head().await;
        assert_eq!(head.status, 400);

        assert_eq!(provider.requests(), 5);
        assert_eq!(provider.outcomes().rejected, 5);
        assert_eq!(provider.outcomes().total(), 5);

        // The server is still fine.
        let mut client = Client::connect(&provider).await;
        client
            .post("/v1/chat/completions", &chat_request(false))
            .await;
        assert_eq!(client.head().await.status, 200);
    }

    #[test]
    fn a_seeded_mix_draws_roughly_its_fractions() {
        let mix = FaultMix {
            error_500: 0.10,
            rate_limited_429: 0.05,
            hang: 0.05,
            cut_stream: 0.05,
            malformed_sse: 0.05,
        };
        assert!((mix.total() - 0.30).abs() < 1e-9);
        let shared = Shared::new(FaultConfig {
            faults: mix,
            seed: 42,
            ..FaultConfig::default()
        });
        let draws: Vec<Option<Fault>> = (0..1000).map(|_| shared.draw()).collect();
        let share = |wanted: Option<Fault>| {
            draws.iter().filter(|&&drawn| drawn == wanted).count() as f64 / 1000.0
        };
        for fault in Fault::ALL {
            let drawn = share(Some(fault));
            let want = mix.fraction(fault);
            assert!(
                (drawn - want).abs() <= 0.05,
                "{fault:?}: drew {drawn}, want {want}"
            );
        }
        assert!((share(None) - 0.70).abs() <= 0.05);

        // The same seed draws the same sequence.
        let again = Shared::new(FaultConfig {
            faults: mix,
            seed: 42,
            ..FaultConfig::default()
        });
        let replay: Vec<Option<Fault>> = (0..1000).map(|_| again.draw()).collect();
        assert_eq!(draws, replay);
    }

    #[test]
    fn picking_accumulates_fractions_in_order_and_ignores_nonsense() {
        let mix = FaultMix::NONE
            .with(Fault::Error500, 0.25)
            .with(Fault::Hang, 0.25);
        assert_eq!(mix.pick(0.0), Some(Fault::Error500));
        assert_eq!(mix.pick(0.2499), Some(Fault::Error500));
        assert_eq!(mix.pick(0.25), Some(Fault::Hang));
        assert_eq!(mix.pick(0.4999), Some(Fault::Hang));
        assert_eq!(mix.pick(0.5), None);
        assert_eq!(FaultMix::NONE.pick(0.0), None);
        assert_eq!(
            FaultMix::only(Fault::CutStream).pick(0.9999),
            Some(Fault::CutStream)
        );
        let nonsense = FaultMix {
            error_500: f64::NAN,
            rate_limited_429: -1.0,
            hang: 7.0,
            ..FaultMix::NONE
        };
        assert_eq!(nonsense.pick(0.0), Some(Fault::Hang));
        assert_eq!(nonsense.total(), 1.0);
    }

    #[test]
    fn the_expected_answer_spaces_every_token_but_the_last() {
        assert_eq!(expected_answer("a", 3), "a-0 a-1 a-2");
        assert_eq!(expected_answer("a", 1), "a-0");
        assert_eq!(expected_answer("a", 0), "");
    }
}
