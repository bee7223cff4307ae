//! Helpers of the gateway's integration tests: the gateway started in-process
//! on loopback ephemeral ports, called through the generated tonic client;
//! and a fake provider, a bare HTTP/1.1 server that records each request and
//! replays recorded responses, writing streams in small pieces cut at awkward
//! places (inside `data:`, before line ends, inside UTF-8 characters).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code,
    unreachable_pub,
    reason = "test helpers fail loudly (a test fails by panicking); each test binary uses some of them"
)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_kit::{Listeners, ServeError, ServerConfig};
use agentmesh_llm_gateway::{AuditConfig, Config, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::llm::v1::{
    GenerateStreamRequest, GenerateStreamResponse, Message, Role, StreamFinished,
    generate_stream_response::Event, llm_gateway_service_client::LlmGatewayServiceClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tonic::transport::Channel;

/// Bounds every wait of a test.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Fails the test when `future` takes longer than [`PATIENCE`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    agentmesh_testkit::within(what, PATIENCE, future).await
}

/// A recorded wire file under `tests/wire/`.
pub fn wire(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wire")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// An environment variable that is set in this process, and its value: the
/// tests cannot set one (that is `unsafe` in this edition), so the "API key"
/// they check for is a variable the test runner sets anyway.
pub fn present_env_var() -> (String, String) {
    let plausible = |value: &str| {
        !value.is_empty() && value.len() < 200 && value.bytes().all(|b| b.is_ascii_graphic())
    };
    if let Ok(value) = std::env::var("CARGO_PKG_NAME")
        && plausible(&value)
    {
        return ("CARGO_PKG_NAME".to_owned(), value);
    }
    std::env::vars()
        .find(|(name, value)| !name.is_empty() && plausible(value))
        .expect("no usable environment variable")
}

/// A variable no test environment sets.
pub const UNSET_ENV_VAR: &str = "AGENTMESH_LLM_GATEWAY_TEST_KEY_THAT_IS_NOT_SET";

// === the gateway ===

/// A gateway serving in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestGateway {
    /// Starts a gateway with `config` (its server settings replaced by
    /// loopback ephemeral ports, auditing off).
    pub async fn start(mut config: Config) -> Self {
        config.audit = AuditConfig::disabled();
        config.server = ServerConfig {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            admin_port: Some(0),
            grace_period: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agentmesh_llm_gateway::serve_with_listeners(
            config,
            listeners,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A client of the gateway.
    pub async fn client(&self) -> LlmGatewayServiceClient<Channel> {
        let channel = within(
            "connecting to the gateway",
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect(),
        )
        .await
        .unwrap();
        LlmGatewayServiceClient::new(channel)
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("stopping the gateway", &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A provider instance of `kind` at `base_url`, with short time limits.
pub fn provider(kind: ProviderKind, base_url: &str, api_key_env: &str) -> ProviderConfig {
    ProviderConfig {
        base_url: base_url.to_owned(),
        api_key_env: api_key_env.to_owned(),
        connect_timeout: Duration::from_secs(2),
        first_token_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(15),
        ..ProviderConfig::new(kind)
    }
}

/// A configuration with the scripted provider (no pace) and `providers`,
/// and a route per entry of `routes`.
pub fn config_with(providers: Vec<(&str, ProviderConfig)>, routes: Vec<(&str, &str)>) -> Config {
    let mut config = Config {
        providers: BTreeMap::from([(
            "scripted".to_owned(),
            ProviderConfig {
                pace: Some(Duration::ZERO),
                ..ProviderConfig::new(ProviderKind::Scripted)
            },
        )]),
        ..Config::default()
    };
    for (name, provider) in providers {
        config.providers.insert(name.to_owned(), provider);
    }
    config.routes = BTreeMap::from([
        (
            "default".to_owned(),
            RouteConfig::new("scripted/demo", "demo"),
        ),
        (
            "fast".to_owned(),
            RouteConfig::new("scripted/demo", "demo, fast"),
        ),
    ]);
    for (name, target) in routes {
        config.routes.insert(
            name.to_owned(),
            RouteConfig::new(target, format!("route {name}")),
        );
    }
    config
}

/// A user message.
pub fn user(text: &str) -> Message {
    Message {
        role: Role::User.into(),
        content: text.into(),
        ..Message::default()
    }
}

/// Calls GenerateStream and collects every message until the stream ends;
/// the error that ended it, if any.
pub async fn stream_all(
    client: &mut LlmGatewayServiceClient<Channel>,
    request: GenerateStreamRequest,
) -> Result<(Vec<Event>, Option<tonic::Status>), tonic::Status> {
    within("the stream", async {
        let mut stream = client.generate_stream(request).await?.into_inner();
        let mut events = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(GenerateStreamResponse { event: Some(event) })) => events.push(event),
                Ok(Some(GenerateStreamResponse { event: None })) => {
                    panic!("a message without an event")
                }
                Ok(None) => return Ok((events, None)),
                Err(status) => return Ok((events, Some(status))),
            }
        }
    })
    .await
}

/// The text deltas of `events`, concatenated.
pub fn text_of(events: &[Event]) -> String {
    // As a consumer must: a reset discards everything before it.
    let start = events
        .iter()
        .rposition(|event| matches!(event, Event::Reset(_)))
        .map_or(0, |at| at + 1);
    events[start..]
        .iter()
        .filter_map(|event| match event {
            Event::TextDelta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The number of resets among `events`.
pub fn resets(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|event| matches!(event, Event::Reset(_)))
        .count()
}

/// The last event, which must be `finished`.
pub fn finished(events: &[Event]) -> &StreamFinished {
    match events.last() {
        Some(Event::Finished(finished)) => finished,
        other => panic!("the stream did not end with `finished`: {other:?}"),
    }
}

// === the fake provider ===

/// A request the fake provider received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

/// How the fake provider answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response.
    Body {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// An event stream written in awkward pieces; `cut` closes the
    /// connection after them without ending the chunked body.
    Stream { body: Vec<u8>, cut: bool },
    /// Headers of an event stream, then nothing.
    HeadersThenSilence,
    /// Nothing at all.
    Silence,
}

impl Reply {
    /// A JSON body with `status`.
    pub fn json(status: u16, body: &str) -> Self {
        Self::Body {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            body: body.as_bytes().to_vec(),
        }
    }
}

/// A fake provider on a loopback port.
pub struct FakeProvider {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Serves `reply` to every request.
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            // Connection tasks live in the set, so aborting this task ends them.
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let reply = reply.clone();
                let recorded = Arc::clone(&recorded);
                connections.spawn(async move {
                    let _ = serve_one(socket, reply, recorded).await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// `http://addr` plus `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_one(
    mut socket: TcpStream,
    reply: Reply,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let request = read_request(&mut socket).await?;
    recorded.lock().unwrap().push(request);
    match reply {
        Reply::Body {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} Status\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(&body).await?;
            socket.flush().await?;
            socket.shutdown().await?;
        }
        Reply::Stream { body, cut } => {
            socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                )
                .await?;
            socket.flush().await?;
            for piece in awkward_pieces(&body) {
                socket
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                socket.write_all(&piece).await?;
                socket.write_all(b"\r\n").await?;
                socket.flush().await?;
                // Let each piece travel on its own.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if !cut {
                socket.write_all(b"0\r\n\r\n").await?;
                socket.flush().await?;
                socket.shutdown().await?;
            }
        }
        Reply::HeadersThenSilence => {
            socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                )
                .await?;
            socket.flush().await?;
            std::future::pending::<()>().await;
        }
        Reply::Silence => std::future::pending::<()>().await,
    }
    Ok(())
}

async fn read_request(socket: &mut TcpStream) -> std::io::Result<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..read]);
    }
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok(Recorded {
        method,
        path,
        headers,
        body,
    })
}

/// `bytes` cut before every line feed, inside every `data:` prefix, inside
/// every multi-byte UTF-8 character, and every 37 bytes besides.
pub fn awkward_pieces(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut cuts = Vec::new();
    for (at, byte) in bytes.iter().enumerate() {
        if *byte == b'\n' {
            cuts.push(at);
        }
        if bytes[at..].starts_with(b"data:") {
            cuts.push(at + 2);
        }
        // The lead byte of a multi-byte character: cut after it.
        if *byte >= 0xC0 {
            cuts.push(at + 1);
        }
        if at % 37 == 0 {
            cuts.push(at);
        }
    }
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        if cut > start && cut <= bytes.len() {
            pieces.push(bytes[start..cut].to_vec());
            start = cut;
        }
    }
    pieces
}

/// A text delta event.
pub fn text(text: &str) -> Event {
    Event::TextDelta(agentmesh_proto::llm::v1::TextDelta { text: text.into() })
}

/// A tool-call delta event.
pub fn call_delta(index: i32, id: &str, name: &str, fragment: &str) -> Event {
    Event::ToolCallDelta(agentmesh_proto::llm::v1::ToolCallDelta {
        index,
        id: id.into(),
        name: name.into(),
        arguments_json_delta: fragment.into(),
    })
}
