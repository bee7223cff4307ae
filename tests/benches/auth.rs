//! What authentication adds to a call.
//!
//! Two measures, in one run:
//! - the access decision itself (`AccessControl::check`: parse the bearer,
//!   verify the credential, check the RPC's scope), each call timed on its
//!   own, with an API key and with a JWT (verified once, then from the
//!   cache of verified tokens, as a client reusing its token gets);
//! - the whole auth layer in process (the decision plus rewriting the
//!   identity headers and the request context), in front of a handler that
//!   answers at once, against the same layer in the embedded `none` mode;
//! - a unary `ListTools` on the tool runner over loopback gRPC, the same
//!   server code with `auth.methods = ["none"]`, `["api_key"]` and
//!   `["jwt"]`, measured in interleaved rounds so drift on the machine hits
//!   all alike.
//!
//! The target of the contract: the p99 added by authentication on a unary
//! call stays under 20 µs. Run with `make bench`.

#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark program"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentmesh_auth::authenticate::Authenticator;
use agentmesh_auth::config::{AuthConfig, Method};
use agentmesh_auth::jwt::{JwtVerifier, testing};
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_auth::keys::store::KeyStore;
use agentmesh_kit::auth::{AccessControl, AuthLayer};
use agentmesh_proto::tools::v1::ListToolsRequest;
use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use agentmesh_tests::{InProcess, percentile};
use tonic::metadata::MetadataValue;

const CHECKS: usize = 200_000;
const ROUNDS: usize = 10;
const CALLS_PER_ROUND: usize = 2_000;
const PATH: &str = "/agentmesh.tools.v1.ToolRunnerService/ListTools";

fn keys_file(key: &ApiKey) -> KeysFile {
    KeysFile {
        keys: vec![KeyEntry {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: "acme".into(),
            subject: "bench".into(),
            scopes: vec!["tools:read".into(), "tools:execute".into()],
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: None,
            revoked: false,
        }],
        ..KeysFile::default()
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Times `check` on its own, `CHECKS` times.
fn decision_cost(access: &AccessControl, headers: &http::HeaderMap) -> Vec<Duration> {
    let peer = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let mut times = Vec::with_capacity(CHECKS);
    for _ in 0..CHECKS {
        let start = Instant::now();
        let decided = access.check(PATH, headers, peer, None);
        times.push(start.elapsed());
        assert!(black_box(decided).is_ok());
    }
    times.sort();
    times
}

/// Times a call through the auth layer over a handler that answers at
/// once, `CHECKS` times; the request is built outside the timing.
async fn layer_cost(access: AccessControl, headers: &http::HeaderMap) -> Vec<Duration> {
    use tower::{Layer as _, Service as _};
    let handler = tower::service_fn(|_request: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let mut service = AuthLayer::new(std::sync::Arc::new(access)).layer(handler);
    let mut times = Vec::with_capacity(CHECKS);
    for _ in 0..CHECKS {
        let mut request = http::Request::builder().uri(PATH).body(()).unwrap();
        *request.headers_mut() = headers.clone();
        let start = Instant::now();
        let response = service.call(request).await.unwrap();
        times.push(start.elapsed());
        assert!(black_box(response).headers().get("grpc-status").is_none());
    }
    times.sort();
    times
}

async fn round(
    client: &mut ToolRunnerServiceClient<tonic::transport::Channel>,
    bearer: Option<&str>,
    into: &mut Vec<Duration>,
) {
    for _ in 0..CALLS_PER_ROUND {
        let mut request = tonic::Request::new(ListToolsRequest::default());
        if let Some(bearer) = bearer {
            request
                .metadata_mut()
                .insert("authorization", MetadataValue::try_from(bearer).unwrap());
        }
        let start = Instant::now();
        client.list_tools(request).await.unwrap();
        into.push(start.elapsed());
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let key = ApiKey::generate("bench").unwrap();
        let bearer = format!("Bearer {}", key.expose());
        let file = keys_file(&key);

        // The decision alone.
        let access = AccessControl::with_authenticator(
            Authenticator::with_keys(KeyStore::from_file(&file).unwrap(), 30),
            &[agentmesh_tool_runner::SCOPES],
            &AuthConfig::default(),
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", bearer.parse().unwrap());
        let checks = decision_cost(&access, &headers);

        let jwt_config = testing::config(testing::fixture_path("jwks.json"));
        let token = format!(
            "Bearer {}",
            testing::rsa().sign(&testing::claims_with(
                serde_json::json!({"scope": "tools:read", "exp": testing::now() + 3600})
            ))
        );
        let jwt_access = AccessControl::with_authenticator(
            Authenticator::none().with_jwt(JwtVerifier::from_config(&jwt_config).unwrap()),
            &[agentmesh_tool_runner::SCOPES],
            &AuthConfig::default(),
        );
        let mut jwt_headers = http::HeaderMap::new();
        jwt_headers.insert("authorization", token.parse().unwrap());
        let jwt_checks = decision_cost(&jwt_access, &jwt_headers);

        // The whole layer, embedded mode against API keys and JWTs.
        let embedded = || {
            AccessControl::with_authenticator(
                Authenticator::none(),
                &[agentmesh_tool_runner::SCOPES],
                &AuthConfig::default(),
            )
        };
        let layer_none = layer_cost(embedded(), &http::HeaderMap::new()).await;
        let layer_key = layer_cost(
            AccessControl::with_authenticator(
                Authenticator::with_keys(KeyStore::from_file(&file).unwrap(), 30),
                &[agentmesh_tool_runner::SCOPES],
                &AuthConfig::default(),
            ),
            &headers,
        )
        .await;
        let layer_jwt = layer_cost(
            AccessControl::with_authenticator(
                Authenticator::none().with_jwt(JwtVerifier::from_config(&jwt_config).unwrap()),
                &[agentmesh_tool_runner::SCOPES],
                &AuthConfig::default(),
            ),
            &jwt_headers,
        )
        .await;

        // The same unary call without and with authentication.
        let dir = tempfile::tempdir().unwrap();
        let keys_path = dir.path().join("keys.toml");
        std::fs::write(&keys_path, file.to_toml()).unwrap();
        let open = InProcess::start("tool-runner").await;
        let guarded = InProcess::start_with_auth(
            "tool-runner",
            AuthConfig {
                methods: vec![Method::ApiKey],
                keys_file: Some(keys_path),
                ..AuthConfig::default()
            },
        )
        .await;
        let signed = InProcess::start_with_auth(
            "tool-runner",
            AuthConfig {
                methods: vec![Method::Jwt],
                jwt: jwt_config,
                ..AuthConfig::default()
            },
        )
        .await;
        let mut open_client = ToolRunnerServiceClient::new(open.channel());
        let mut guarded_client = ToolRunnerServiceClient::new(guarded.channel());
        let mut signed_client = ToolRunnerServiceClient::new(signed.channel());
        let (mut none, mut api_key, mut jwt) = (Vec::new(), Vec::new(), Vec::new());
        // Warm-up, then interleaved rounds.
        round(&mut open_client, None, &mut Vec::new()).await;
        round(&mut guarded_client, Some(&bearer), &mut Vec::new()).await;
        round(&mut signed_client, Some(&token), &mut Vec::new()).await;
        for _ in 0..ROUNDS {
            round(&mut open_client, None, &mut none).await;
            round(&mut guarded_client, Some(&bearer), &mut api_key).await;
            round(&mut signed_client, Some(&token), &mut jwt).await;
        }
        none.sort();
        api_key.sort();
        jwt.sort();
        open.stop().await.unwrap();
        guarded.stop().await.unwrap();
        signed.stop().await.unwrap();

        println!("the access decision alone (AccessControl::check, {CHECKS} calls each)");
        for (name, times) in [("API key", &checks), ("cached JWT", &jwt_checks)] {
            println!(
                "  {name:<11} p50 {:.2} µs   p99 {:.2} µs   p99.9 {:.2} µs",
                micros(percentile(times, 0.5)),
                micros(percentile(times, 0.99)),
                micros(percentile(times, 0.999)),
            );
        }
        println!("the auth layer in process, over a handler that answers at once ({CHECKS} calls each)");
        for (name, times) in [("none", &layer_none), ("API key", &layer_key), ("cached JWT", &layer_jwt)] {
            println!(
                "  {name:<11} p50 {:.2} µs   p99 {:.2} µs",
                micros(percentile(times, 0.5)),
                micros(percentile(times, 0.99)),
            );
        }
        for (name, times) in [("API keys", &layer_key), ("JWTs", &layer_jwt)] {
            println!(
                "  added by {name}: p50 {:+.2} µs, p99 {:+.2} µs (target: p99 under 20 µs)",
                micros(percentile(times, 0.5)) - micros(percentile(&layer_none, 0.5)),
                micros(percentile(times, 0.99)) - micros(percentile(&layer_none, 0.99)),
            );
        }
        let calls = ROUNDS * CALLS_PER_ROUND;
        println!(
            "unary ListTools on loopback, one connection, {calls} calls each in {ROUNDS} interleaved rounds"
        );
        println!("{:<10} {:>12} {:>12}", "auth", "median µs", "p99 µs");
        for (name, times) in [("none", &none), ("api_key", &api_key), ("jwt", &jwt)] {
            println!(
                "{name:<10} {:>12.1} {:>12.1}",
                micros(percentile(times, 0.5)),
                micros(percentile(times, 0.99)),
            );
        }
        for (name, times) in [("API keys", &api_key), ("JWTs", &jwt)] {
            println!(
                "over the network, added by {name}: median {:+.1} µs, p99 {:+.1} µs (loopback noise included)",
                micros(percentile(times, 0.5)) - micros(percentile(&none, 0.5)),
                micros(percentile(times, 0.99)) - micros(percentile(&none, 0.99)),
            );
        }

        // The same figures as one JSON line, for bench/run.py's report.
        let us = |times: &[Duration]| {
            serde_json::json!({
                "p50": micros(percentile(times, 0.5)),
                "p99": micros(percentile(times, 0.99)),
            })
        };
        println!(
            "{}",
            serde_json::json!({
                "bench": "auth",
                "checks": CHECKS,
                "calls": calls,
                "decision_us": {"api_key": us(&checks), "jwt": us(&jwt_checks)},
                "layer_us": {"none": us(&layer_none), "api_key": us(&layer_key), "jwt": us(&layer_jwt)},
                "unary_us": {"none": us(&none), "api_key": us(&api_key), "jwt": us(&jwt)},
            })
        );
    });
}
