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
//!
//! With [`FaultConfig::http2`] it speaks HTTP/2 without TLS instead (h2c,
//! prior knowledge; module `h2`, hyper's server): answers as without
//! faults and the outage switch only.
//!
//! Layout: this module holds the faults, their configuration and counts, and
//! the server (accept loop, shared state); `http` reads requests and writes
//! responses; `chat` answers Chat Completions, faults included.

mod chat;
mod h2;
mod http;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat::*;
use http::*;
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
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) instead of HTTP/1.1
    /// (default false). Faults are not drawn then: they need bytes written
    /// by hand.
    pub http2: bool,
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
            http2: false,
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

    /// Requests that came over HTTP/2 (in the [`FaultConfig::http2`] mode).
    pub fn http2_requests(&self) -> u64 {
        self.shared.http2_requests.load(Ordering::SeqCst)
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
    http2_requests: AtomicU64,
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
            http2_requests: AtomicU64::new(0),
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
                if shared.config.http2 {
                    connections.spawn(h2::serve_connection_h2(stream, Arc::clone(&shared)));
                } else {
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
            }
            // Out of descriptors and the like: wait a little, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
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
