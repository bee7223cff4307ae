//! The access matrix: every RPC of every service, taken from the compiled
//! descriptors (so a new RPC cannot escape it), called over real gRPC with
//! each kind of credential, against the service serving with API keys.
//!
//! For each method: no credential and an unknown key are UNAUTHENTICATED; a
//! key with every scope but the method's (and not `admin`) is
//! PERMISSION_DENIED; a key with only the method's scope gets through
//! (whatever the handler then says of an empty request, it is not an auth
//! refusal); the same key naming another tenant in `x-agentmesh-tenant` is
//! PERMISSION_DENIED; a service key forwarding an end user with the scope
//! gets through. Whose data a call may see (NOT_FOUND for another tenant's
//! run, the audit trail of one tenant) is shown by the tenancy tests of each
//! service; this file shows that no RPC is reachable without its scope.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::collections::BTreeMap;
use std::path::Path;

use agentmesh_auth::authorize::ScopeTable;
use agentmesh_auth::config::{AuthConfig, Method};
use agentmesh_auth::jwt::testing;
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_auth::scope::Scope;
use agentmesh_tests::contract::{Rpc, rpcs_of};
use agentmesh_tests::{InProcess, SERVICES};
use serde_json::json;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// The scope tables the services declare, by gRPC service name.
fn tables() -> BTreeMap<&'static str, ScopeTable> {
    [
        agentmesh_orchestrator::SCOPES,
        agentmesh_llm_gateway::SCOPES,
        agentmesh_tool_runner::SCOPES,
        agentmesh_audit::SCOPES,
        agentmesh_alerting::SCOPES,
    ]
    .into_iter()
    .map(|table| (table.service, table))
    .collect()
}

/// The keys of the matrix: per scope, one key with only that scope and one
/// with every other scope but `admin`; a service key; all of tenant acme.
struct Keys {
    only: BTreeMap<Scope, ApiKey>,
    all_but: BTreeMap<Scope, ApiKey>,
    service: ApiKey,
    file: KeysFile,
}

impl Keys {
    fn new() -> Self {
        let mut keys = Self {
            only: BTreeMap::new(),
            all_but: BTreeMap::new(),
            service: ApiKey::generate("test").unwrap(),
            file: KeysFile::default(),
        };
        let service = keys.service.clone();
        keys.add(&service, "mesh", &[Scope::Service]);
        for scope in Scope::ALL {
            let only = ApiKey::generate("test").unwrap();
            keys.add(&only, "alice", &[scope]);
            keys.only.insert(scope, only);
            let others: Vec<Scope> = Scope::ALL
                .into_iter()
                .filter(|other| *other != scope && *other != Scope::Admin)
                .collect();
            let all_but = ApiKey::generate("test").unwrap();
            keys.add(&all_but, "bob", &others);
            keys.all_but.insert(scope, all_but);
        }
        keys
    }

    fn add(&mut self, key: &ApiKey, subject: &str, scopes: &[Scope]) {
        self.file.keys.push(KeyEntry {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: "acme".into(),
            subject: subject.into(),
            scopes: scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: None,
            revoked: false,
        });
    }

    fn auth_config(&self, dir: &Path) -> AuthConfig {
        let path = dir.join("keys.toml");
        std::fs::write(&path, self.file.to_toml()).unwrap();
        AuthConfig {
            methods: vec![Method::ApiKey],
            keys_file: Some(path),
            // The matrix makes hundreds of refused calls from one address on
            // purpose; the per-peer budget has its own tests.
            max_failures_per_minute: 1_000_000,
            ..AuthConfig::default()
        }
    }
}

/// Bearer values of each kind the matrix presents, and the settings of the
/// service that accepts them.
struct Credentials {
    only: BTreeMap<Scope, String>,
    all_but: BTreeMap<Scope, String>,
    service: String,
    unknown: String,
    auth: AuthConfig,
}

impl Credentials {
    /// API keys in a keys file.
    fn api_keys(dir: &Path) -> Self {
        let keys = Keys::new();
        let bearer = |key: &ApiKey| format!("Bearer {}", key.expose());
        Self {
            only: keys
                .only
                .iter()
                .map(|(scope, key)| (*scope, bearer(key)))
                .collect(),
            all_but: keys
                .all_but
                .iter()
                .map(|(scope, key)| (*scope, bearer(key)))
                .collect(),
            service: bearer(&keys.service),
            unknown: bearer(&ApiKey::generate("test").unwrap()),
            auth: keys.auth_config(dir),
        }
    }

    /// JWTs signed by the test issuer's RSA key, checked against its JWKS.
    fn jwts() -> Self {
        let issuer = testing::rsa();
        let token = |subject: &str, scopes: &[Scope]| {
            let names: Vec<&str> = scopes.iter().map(|scope| scope.as_str()).collect();
            let claims = testing::claims_with(json!({"sub": subject, "scope": names.join(" ")}));
            format!("Bearer {}", issuer.sign(&claims))
        };
        let mut only = BTreeMap::new();
        let mut all_but = BTreeMap::new();
        for scope in Scope::ALL {
            only.insert(scope, token("alice", &[scope]));
            let others: Vec<Scope> = Scope::ALL
                .into_iter()
                .filter(|other| *other != scope && *other != Scope::Admin)
                .collect();
            all_but.insert(scope, token("bob", &others));
        }
        let stranger = testing::fresh_ec("rsa-1");
        Self {
            only,
            all_but,
            service: token("mesh", &[Scope::Service]),
            unknown: format!("Bearer {}", stranger.sign(&testing::claims())),
            auth: AuthConfig {
                methods: vec![Method::Jwt],
                jwt: testing::config(testing::fixture_path("jwks.json")),
                max_failures_per_minute: 1_000_000,
                ..AuthConfig::default()
            },
        }
    }
}

/// How a call ended, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The call got past authentication and authorization (the handler may
    /// still refuse an empty request: that is not an access decision).
    Through,
    Refused(Code),
}

/// Calls `rpc` with an empty request and `headers`.
async fn call(channel: &Channel, rpc: &Rpc, headers: &[(&'static str, String)]) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let mut request = tonic::Request::new(());
    for (name, value) in headers {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(value.as_str()).unwrap());
    }
    let path = rpc.path().parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let status = if rpc.server_streaming {
        // Headers back means the call was let in; an empty Subscribe or
        // WatchAlerts would stream for ever, so the stream is not read.
        grpc.server_streaming(request, path, codec).await.err()
    } else {
        grpc.unary(request, path, codec).await.err()
    };
    match status.map(|status| status.code()) {
        Some(code @ (Code::Unauthenticated | Code::PermissionDenied)) => Outcome::Refused(code),
        _ => Outcome::Through,
    }
}

fn bearer(value: &str) -> (&'static str, String) {
    ("authorization", value.to_owned())
}

#[tokio::test]
async fn every_rpc_of_every_service_demands_an_api_key_and_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    matrix(&Credentials::api_keys(dir.path())).await;
}

#[tokio::test]
async fn every_rpc_of_every_service_demands_a_jwt_and_its_scope() {
    matrix(&Credentials::jwts()).await;
}

/// Runs the matrix over every service with `credentials`.
async fn matrix(credentials: &Credentials) {
    let tables = tables();
    let mut checked = 0;
    for (name, service) in SERVICES {
        let table = tables
            .get(service)
            .unwrap_or_else(|| panic!("{service} declares no scope table"));
        let rpcs = rpcs_of(service);
        assert!(!rpcs.is_empty(), "{service} has no RPCs in the contract");
        let running = InProcess::start_with_auth(name, credentials.auth.clone()).await;
        let channel = running.channel();
        for rpc in &rpcs {
            let path = rpc.path();
            let scope = table
                .scope_of(&rpc.method)
                .unwrap_or_else(|| panic!("{path} is missing from the scope table of {service}"));
            let expect = |headers: Vec<(&'static str, String)>, want: Outcome, what: &str| {
                let channel = channel.clone();
                let rpc = rpc.clone();
                let what = format!("{path} {what}");
                async move {
                    assert_eq!(call(&channel, &rpc, &headers).await, want, "{what}");
                }
            };
            expect(
                vec![],
                Outcome::Refused(Code::Unauthenticated),
                "without a credential",
            )
            .await;
            expect(
                vec![bearer(&credentials.unknown)],
                Outcome::Refused(Code::Unauthenticated),
                "with an unknown credential",
            )
            .await;
            expect(
                vec![bearer(&credentials.all_but[&scope])],
                Outcome::Refused(Code::PermissionDenied),
                &format!("with every scope but {scope}"),
            )
            .await;
            expect(
                vec![bearer(&credentials.only[&scope])],
                Outcome::Through,
                &format!("with {scope}"),
            )
            .await;
            expect(
                vec![
                    bearer(&credentials.only[&scope]),
                    ("x-agentmesh-tenant", "globex".into()),
                ],
                Outcome::Refused(Code::PermissionDenied),
                "with a forged tenant from an end user",
            )
            .await;
            expect(
                vec![
                    bearer(&credentials.service),
                    ("x-agentmesh-tenant", "globex".into()),
                    ("x-agentmesh-subject", "carol".into()),
                    ("x-agentmesh-scopes", scope.as_str().into()),
                ],
                Outcome::Through,
                "from a service acting for an end user with the scope",
            )
            .await;
            checked += 1;
        }
        running.stop().await.unwrap();
    }
    // A floor, so that an empty descriptor walk cannot pass.
    assert!(checked >= 27, "only {checked} RPCs were checked");
}

#[tokio::test]
async fn health_is_open_and_reflection_is_exempt_only_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut auth = Keys::new().auth_config(dir.path());
    let health = Rpc {
        service: "grpc.health.v1.Health".into(),
        method: "Check".into(),
        input_type: ".grpc.health.v1.HealthCheckRequest".into(),
        server_streaming: false,
    };
    let reflection = Rpc {
        service: "grpc.reflection.v1.ServerReflection".into(),
        method: "ServerReflectionInfo".into(),
        input_type: ".grpc.reflection.v1.ServerReflectionRequest".into(),
        server_streaming: true,
    };
    let open = InProcess::start_with_auth("tool-runner", auth.clone()).await;
    assert_eq!(call(&open.channel(), &health, &[]).await, Outcome::Through);
    open.stop().await.unwrap();

    auth.reflection_exempt = false;
    let strict = InProcess::start_with_auth("tool-runner", auth).await;
    assert_eq!(
        call(&strict.channel(), &health, &[]).await,
        Outcome::Through
    );
    assert_eq!(
        call(&strict.channel(), &reflection, &[]).await,
        Outcome::Refused(Code::Unauthenticated)
    );
    strict.stop().await.unwrap();
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused_on_the_wire() {
    let issuer = testing::rsa();
    let list_tools = Rpc {
        service: "agentmesh.tools.v1.ToolRunnerService".into(),
        method: "ListTools".into(),
        input_type: ".agentmesh.tools.v1.ListToolsRequest".into(),
        server_streaming: false,
    };
    let running = InProcess::start_with_auth("tool-runner", Credentials::jwts().auth).await;
    let channel = running.channel();
    let good = testing::claims_with(json!({"scope": "tools:read"}));
    let now = testing::now();
    let header = |alg: &str| json!({"alg": alg, "kid": issuer.kid, "typ": "JWT"});
    let unsigned = {
        let input = format!(
            "{}.{}",
            testing::b64(header("none").to_string().as_bytes()),
            testing::b64(good.to_string().as_bytes())
        );
        format!("{input}.")
    };
    let cases = [
        ("a good token", issuer.sign(&good), Outcome::Through),
        (
            "an expired token",
            issuer.sign(&testing::claims_with(
                json!({"scope": "tools:read", "iat": now - 7200, "exp": now - 3600}),
            )),
            Outcome::Refused(Code::Unauthenticated),
        ),
        (
            "a token for another audience",
            issuer.sign(&testing::claims_with(
                json!({"scope": "tools:read", "aud": "somebody-else"}),
            )),
            Outcome::Refused(Code::Unauthenticated),
        ),
        (
            "an alg: none token",
            unsigned,
            Outcome::Refused(Code::Unauthenticated),
        ),
        (
            "an HS256 token keyed with the RSA public key",
            testing::hs256(
                &header("HS256"),
                &good,
                testing::fixture("rsa-public.pem").as_bytes(),
            ),
            Outcome::Refused(Code::Unauthenticated),
        ),
    ];
    for (what, token, want) in cases {
        let headers = [bearer(&format!("Bearer {token}"))];
        assert_eq!(call(&channel, &list_tools, &headers).await, want, "{what}");
    }
    running.stop().await.unwrap();
}
