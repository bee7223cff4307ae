use std::sync::Mutex;

use agentmesh_auth::decision::Decision;
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_auth::keys::store::KeyStore;
use http::header::HeaderValue;
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;

const TABLE: ScopeTable = ScopeTable {
    service: "agentmesh.test.v1.TestService",
    methods: &[("Read", Scope::RunsRead), ("Write", Scope::RunsWrite)],
};

#[derive(Debug, Default)]
struct Collect(Mutex<Vec<Decision>>);

impl DecisionSink for Collect {
    fn record(&self, decision: Decision) {
        self.0.lock().unwrap().push(decision);
    }
}

struct Fixture {
    access: Arc<AccessControl>,
    key: ApiKey,
    decisions: Arc<Collect>,
    registry: prometheus::Registry,
}

fn fixture() -> Fixture {
    let key = ApiKey::generate("test").unwrap();
    let file = KeysFile {
        keys: vec![KeyEntry {
            id: key.id().to_owned(),
            sha256: key.hash().to_hex(),
            tenant: "acme".into(),
            subject: "alice".into(),
            scopes: vec!["runs:read".into()],
            label: String::new(),
            expires: None,
            agents: None,
            routes: None,
            tools: None,
            revoked: false,
        }],
        ..KeysFile::default()
    };
    let authenticator = Authenticator::with_keys(KeyStore::from_file(&file).unwrap(), 100);
    let registry = prometheus::Registry::new();
    let access = AccessControl::with_authenticator(authenticator, &[TABLE], &AuthConfig::default())
        .counted(&registry)
        .unwrap();
    let decisions = Arc::new(Collect::default());
    access.set_sink(decisions.clone());
    Fixture {
        access: Arc::new(access),
        key,
        decisions,
        registry,
    }
}

fn request(path: &str, headers: &[(&'static str, &str)]) -> Request<()> {
    let mut request = Request::builder().uri(path).body(()).unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    request
}

fn grpc_status(response: &Response<Body>) -> Option<&str> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn calls_without_a_valid_credential_or_scope_never_reach_the_handler() {
    let f = fixture();
    let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
    let mut service = AuthLayer::new(f.access.clone()).layer(inner);

    let refused = service
        .ready()
        .await
        .unwrap()
        .call(request("/agentmesh.test.v1.TestService/Read", &[]))
        .await
        .unwrap();
    assert_eq!(grpc_status(&refused), Some("16"), "UNAUTHENTICATED");

    let bearer = format!("Bearer {}", f.key.expose());
    let denied = service
        .ready()
        .await
        .unwrap()
        .call(request(
            "/agentmesh.test.v1.TestService/Write",
            &[("authorization", &bearer)],
        ))
        .await
        .unwrap();
    assert_eq!(grpc_status(&denied), Some("7"), "PERMISSION_DENIED");
    let message = denied.headers()["grpc-message"].to_str().unwrap();
    assert!(
        message.contains("runs%3Awrite") || message.contains("runs:write"),
        "{message}"
    );

    let forged = service
        .ready()
        .await
        .unwrap()
        .call(request(
            "/agentmesh.test.v1.TestService/Read",
            &[("authorization", &bearer), ("x-agentmesh-tenant", "globex")],
        ))
        .await
        .unwrap();
    assert_eq!(grpc_status(&forged), Some("7"), "PERMISSION_DENIED");
    drop(service);
    assert!(
        handle.next_request().await.is_none(),
        "no refused call reached the handler"
    );

    let recorded = f.decisions.0.lock().unwrap().clone();
    let reasons: Vec<&str> = recorded.iter().map(|decision| decision.reason).collect();
    assert_eq!(
        reasons,
        [
            "missing",
            "missing_scope",
            "forwarded_identity_from_non_service"
        ]
    );
    assert!(recorded.iter().all(|decision| !decision.allowed));
    let mut buffer = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &f.registry.gather(),
        &mut buffer,
    )
    .unwrap();
    let metrics = String::from_utf8(buffer).unwrap();
    assert!(
        metrics.contains(
            r#"agentmesh_auth_decisions_total{reason="missing_scope",result="refused"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_allowed_call_carries_the_verified_identity_to_the_handler() {
    let f = fixture();
    let (inner, mut handle) = mock::pair::<Request<()>, Response<Body>>();
    let mut service = AuthLayer::new(f.access.clone()).layer(inner);
    let bearer = format!("Bearer {}", f.key.expose());
    let call = service.ready().await.unwrap().call(request(
        "/agentmesh.test.v1.TestService/Read",
        &[("authorization", &bearer), ("x-agentmesh-tenant", "acme")],
    ));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert_eq!(seen.headers()["x-agentmesh-tenant"], "acme");
    assert_eq!(seen.headers()["x-agentmesh-scopes"], "runs:read");
    assert_eq!(seen.headers()["x-agentmesh-credential"], f.key.id());
    let identity = seen.extensions().get::<Arc<Identity>>().unwrap();
    assert_eq!(identity.subject, "alice");
    let context = seen.extensions().get::<RequestContext>().unwrap();
    assert_eq!(context.identity().unwrap().tenant, "acme");
    assert_eq!(context.header("x-agentmesh-subject"), Some("alice"));
    reply.send_response(Response::new(Body::empty()));
    call.await.unwrap();

    // Health checks pass without credentials, and untouched.
    let health = service
        .ready()
        .await
        .unwrap()
        .call(request("/grpc.health.v1.Health/Check", &[]));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert!(seen.extensions().get::<Arc<Identity>>().is_none());
    reply.send_response(Response::new(Body::empty()));
    health.await.unwrap();

    let recorded = f.decisions.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "the first use of the key is audited");
    assert!(recorded[0].allowed);
}
