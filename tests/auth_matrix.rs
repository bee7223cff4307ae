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

#![expect(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::BTreeMap;
use std::path::Path;

use agentmesh_auth::authorize::ScopeTable;
use agentmesh_auth::config::{AuthConfig, Method};
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_auth::scope::Scope;
use agentmesh_tests::{InProcess, SERVICES};
use prost::Message;
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

/// One RPC as the descriptors declare it.
#[derive(Debug, Clone)]
struct Rpc {
    service: String,
    method: String,
    server_streaming: bool,
}

impl Rpc {
    fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// Every RPC of `service` in the compiled contract.
fn rpcs_of(service: &str) -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(agentmesh_proto::FILE_DESCRIPTOR_SET)
        .expect("the contract's descriptors decode");
    let mut rpcs = Vec::new();
    for file in &set.file {
        for declared in &file.service {
            let name = format!("{}.{}", file.package(), declared.name());
            if name != service {
                continue;
            }
            for method in &declared.method {
                assert!(
                    !method.client_streaming(),
                    "{name}/{} streams from the client: teach the matrix to call it",
                    method.name()
                );
                rpcs.push(Rpc {
                    service: name.clone(),
                    method: method.name().to_owned(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    rpcs
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

fn bearer(key: &ApiKey) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", key.expose()))
}

#[tokio::test]
async fn every_rpc_of_every_service_demands_a_credential_and_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new();
    let auth = keys.auth_config(dir.path());
    let tables = tables();
    let unknown = ApiKey::generate("test").unwrap();
    let mut checked = 0;
    for (name, service) in SERVICES {
        let table = tables
            .get(service)
            .unwrap_or_else(|| panic!("{service} declares no scope table"));
        let rpcs = rpcs_of(service);
        assert!(!rpcs.is_empty(), "{service} has no RPCs in the contract");
        let running = InProcess::start_with_auth(name, auth.clone()).await;
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
                vec![bearer(&unknown)],
                Outcome::Refused(Code::Unauthenticated),
                "with an unknown key",
            )
            .await;
            expect(
                vec![bearer(&keys.all_but[&scope])],
                Outcome::Refused(Code::PermissionDenied),
                &format!("with every scope but {scope}"),
            )
            .await;
            expect(
                vec![bearer(&keys.only[&scope])],
                Outcome::Through,
                &format!("with {scope}"),
            )
            .await;
            expect(
                vec![
                    bearer(&keys.only[&scope]),
                    ("x-agentmesh-tenant", "globex".into()),
                ],
                Outcome::Refused(Code::PermissionDenied),
                "with a forged tenant from an end user",
            )
            .await;
            expect(
                vec![
                    bearer(&keys.service),
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
    let keys = Keys::new();
    let mut auth = keys.auth_config(dir.path());
    let health = Rpc {
        service: "grpc.health.v1.Health".into(),
        method: "Check".into(),
        server_streaming: false,
    };
    let reflection = Rpc {
        service: "grpc.reflection.v1.ServerReflection".into(),
        method: "ServerReflectionInfo".into(),
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
