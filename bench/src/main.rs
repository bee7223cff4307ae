//! `agentmesh-bench`: the floors `make bench` (bench/run.py) measures
//! agentmesh against, each a process of its own so its CPU is counted apart:
//!
//! * `upstream`: a mock model provider speaking OpenAI's Chat Completions
//!   wire format (streaming included) with a configurable per-token pace,
//!   the testkit's fault provider with no faults.
//! * `null-gateway`: a bare tonic server implementing `LlmGatewayService`
//!   that forwards each call to the mock upstream as it is (one fixed
//!   request body, the answer read whole or relayed chunk by chunk, no
//!   parsing): the same round trips as the gateway, gRPC in and HTTP out,
//!   with nothing else. What the gateway adds over it is its own work.
//! * `postgres`: a private PostgreSQL server on a loopback port (as the
//!   tests start it), with a database for each service that stores.
//!
//! Each prints one JSON line on stdout saying where it listens (and, for
//! PostgreSQL, its server's process id), then serves until stdin closes or
//! it is signalled.

#![expect(
    clippy::print_stdout,
    reason = "the address line is the program's output"
)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::llm::v1::{
    self as llm, GenerateRequest, GenerateResponse, GenerateStreamRequest, GenerateStreamResponse,
    ListModelsRequest, ListModelsResponse, Message, Role,
    llm_gateway_service_server::{LlmGatewayService, LlmGatewayServiceServer},
};
use agentmesh_testkit::fault_provider::{FaultConfig, FaultProvider};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::{Stream, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
#[command(
    name = "agentmesh-bench",
    about = "The floors of agentmesh's benchmarks."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A mock OpenAI Chat Completions upstream.
    Upstream {
        /// Tokens in every answer.
        #[arg(long, default_value_t = 8)]
        tokens: usize,
        /// Wait between streamed tokens, in microseconds (a non-streamed
        /// answer waits as long as streaming it would take).
        #[arg(long, default_value_t = 0)]
        pace_us: u64,
        /// Speak HTTP/2 without TLS (h2c, prior knowledge) instead of
        /// HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
    /// A bare tonic LlmGatewayService forwarding to an upstream.
    NullGateway {
        /// The upstream's base URL (`http://127.0.0.1:PORT/v1`).
        #[arg(long)]
        upstream: String,
    },
    /// A private PostgreSQL server with a database for each service named
    /// (each keeps its own migrations, as in a deployment).
    Postgres {
        /// The databases, e.g. `orchestrator,audit`.
        #[arg(long, value_delimiter = ',', default_value = "orchestrator,audit")]
        databases: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            println!("{}", serde_json::json!({ "error": err.to_string() }));
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Upstream {
                tokens,
                pace_us,
                http2,
            } => {
                let provider = FaultProvider::start(FaultConfig {
                    answer_tokens: tokens.max(1),
                    pace: Duration::from_micros(pace_us),
                    http2,
                    ..FaultConfig::named("mock")
                })
                .await;
                println!("{}", serde_json::json!({ "url": provider.base_url() }));
                until_stopped().await;
            }
            Command::NullGateway { upstream } => match null_gateway(&upstream).await {
                Ok(addr) => {
                    println!("{}", serde_json::json!({ "grpc": addr.to_string() }));
                    until_stopped().await;
                }
                Err(err) => println!("{}", serde_json::json!({ "error": err.to_string() })),
            },
            Command::Postgres { databases } => {
                let server = agentmesh_testkit::postgres::private().await;
                let mut urls = serde_json::Map::new();
                for name in databases {
                    let url = server.create_database(&format!("bench_{name}")).await;
                    urls.insert(name, url.into());
                }
                println!(
                    "{}",
                    serde_json::json!({ "urls": urls, "pid": server.pid() })
                );
                until_stopped().await;
                drop(server);
            }
        }
    });
    std::process::ExitCode::SUCCESS
}

/// Until stdin closes (the driver went away) or SIGTERM/SIGINT.
async fn until_stopped() {
    let stdin_closed = async {
        let mut buffer = [0_u8; 64];
        let mut stdin = tokio::io::stdin();
        while matches!(stdin.read(&mut buffer).await, Ok(read) if read > 0) {}
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return stdin_closed.await,
    };
    tokio::select! {
        () = stdin_closed => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn null_gateway(upstream: &str) -> std::io::Result<SocketAddr> {
    agentmesh_kit::client::install_tls_crypto();
    let client = reqwest::Client::builder()
        .build()
        .map_err(std::io::Error::other)?;
    let url = format!("{upstream}/chat/completions");
    let body = |stream: bool| {
        Bytes::from(
            serde_json::json!({
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "say your tokens"}],
                "stream": stream,
            })
            .to_string(),
        )
    };
    let service = LlmGatewayServiceServer::new(NullGateway {
        client,
        url: Arc::from(url),
        unary_body: body(false),
        stream_body: body(true),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    Ok(addr)
}

/// Forwards every call to the upstream, as it is.
#[derive(Debug, Clone)]
struct NullGateway {
    client: reqwest::Client,
    url: Arc<str>,
    unary_body: Bytes,
    stream_body: Bytes,
}

impl NullGateway {
    async fn post(&self, body: &Bytes) -> Result<reqwest::Response, Status> {
        self.client
            .post(&*self.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))
    }
}

fn answer(text: String) -> Message {
    Message {
        role: Role::Assistant.into(),
        content: text,
        ..Message::default()
    }
}

type GenerateStream =
    Pin<Box<dyn Stream<Item = Result<GenerateStreamResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl LlmGatewayService for NullGateway {
    type GenerateStreamStream = GenerateStream;

    async fn generate(
        &self,
        _request: Request<GenerateRequest>,
    ) -> Result<Response<GenerateResponse>, Status> {
        let body = self
            .post(&self.unary_body)
            .await?
            .bytes()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        Ok(Response::new(GenerateResponse {
            message: Some(answer(String::from_utf8_lossy(&body).into_owned())),
            finish_reason: llm::FinishReason::Stop.into(),
            provider: "null".to_owned(),
            ..GenerateResponse::default()
        }))
    }

    async fn generate_stream(
        &self,
        _request: Request<GenerateStreamRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        use llm::generate_stream_response::Event;
        let upstream = self.post(&self.stream_body).await?.bytes_stream();
        let deltas = upstream.map(|chunk| {
            chunk
                .map(|bytes| GenerateStreamResponse {
                    event: Some(Event::TextDelta(llm::TextDelta {
                        text: String::from_utf8_lossy(&bytes).into_owned(),
                    })),
                })
                .map_err(|err| Status::unavailable(err.to_string()))
        });
        let finished = futures::stream::once(async {
            Ok(GenerateStreamResponse {
                event: Some(Event::Finished(llm::StreamFinished {
                    message: Some(answer(String::new())),
                    finish_reason: llm::FinishReason::Stop.into(),
                    provider: "null".to_owned(),
                    ..llm::StreamFinished::default()
                })),
            })
        });
        Ok(Response::new(Box::pin(deltas.chain(finished))))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse::default()))
    }
}
