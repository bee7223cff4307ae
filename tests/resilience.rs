//! The gateway's circuit breakers and rate limits, end to end: a real
//! gateway in front of fault-injecting providers, recording into a real
//! audit service, called through the generated client; the decisions are
//! checked where an operator would look — ListModels, `/metrics`, and the
//! audit log.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_kit::{Listeners, ServeError};
use agentmesh_llm_gateway::{AuditConfig, Config, ProviderConfig, ProviderKind, RouteConfig};
use agentmesh_proto::audit::v1::{
    self as audit_pb, AuditEvent, EventFilter, EventType, audit_event::Details,
    audit_service_client::AuditServiceClient,
};
use agentmesh_proto::llm::v1::{
    CircuitState, GenerateRequest, ListModelsRequest, Message, Role,
    llm_gateway_service_client::LlmGatewayServiceClient,
};
use agentmesh_resilience::{CircuitConfig, Limit, RetryConfig};
use agentmesh_testkit::eventually;
use agentmesh_testkit::fault_provider::{
    Fault, FaultConfig, FaultMix, FaultProvider, expected_answer,
};
use agentmesh_tests::{InProcess, channel, http_get, test_server_config, within};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Bounds each wait of these tests.
const PATIENCE: Duration = Duration::from_secs(20);
use tonic_types::StatusExt;

/// A gateway serving in this process, recording into `audit`.
struct Gateway {
    grpc: SocketAddr,
    admin: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    _spool: tempfile::TempDir,
}

impl Gateway {
    async fn start(mut config: Config, audit: &InProcess) -> Self {
        let spool = tempfile::tempdir().unwrap();
        config.server = test_server_config();
        config.audit = AuditConfig {
            url: format!("http://{}", audit.grpc),
            spool_dir: spool.path().to_path_buf(),
            flush_interval: Duration::from_millis(50),
            ..AuditConfig::default()
        };
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let grpc = listeners.grpc_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(agentmesh_llm_gateway::serve_with_listeners(
            config, listeners, shutdown,
        ));
        Self {
            grpc,
            admin,
            stop,
            task,
            _spool: spool,
        }
    }

    fn client(&self) -> LlmGatewayServiceClient<tonic::transport::Channel> {
        LlmGatewayServiceClient::new(channel(self.grpc))
    }

    async fn stop(self) {
        self.stop.cancel();
        within("stopping the gateway", PATIENCE, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn openai(url: &str) -> ProviderConfig {
    ProviderConfig {
        base_url: url.to_owned(),
        connect_timeout: Duration::from_secs(2),
        first_token_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        ..ProviderConfig::new(ProviderKind::Openai)
    }
}

fn request(tenant: Option<&str>) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(GenerateRequest {
        model: "chain".into(),
        messages: vec![Message {
            role: Role::User.into(),
            content: "hello".into(),
            ..Message::default()
        }],
        ..GenerateRequest::default()
    });
    if let Some(tenant) = tenant {
        request
            .metadata_mut()
            .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    }
    request
}

/// The audit events of `event_type` so far; none while the audit service is
/// still opening its database (UNAVAILABLE), as callers poll anyway.
async fn audit_events(audit: &InProcess, event_type: EventType) -> Vec<AuditEvent> {
    let answer = AuditServiceClient::new(audit.channel())
        .query(audit_pb::QueryRequest {
            filter: Some(EventFilter {
                types: vec![event_type as i32],
                ..EventFilter::default()
            }),
            order: audit_pb::SortOrder::OldestFirst as i32,
            page_size: 100,
            page_token: String::new(),
        })
        .await;
    match answer {
        Err(status) if status.code() == tonic::Code::Unavailable => Vec::new(),
        answer => answer.unwrap().into_inner().events,
    }
}

async fn primary_state(client: &mut LlmGatewayServiceClient<tonic::transport::Channel>) -> i32 {
    let models = client
        .list_models(ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    let chain = models.iter().find(|model| model.name == "chain").unwrap();
    chain.targets[0].circuit_state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_down_primary_opens_its_circuit_and_closes_it_after_recovery() {
    let audit = InProcess::start("audit").await;
    // The primary hangs on every call: each attempt costs its timeout.
    let primary = FaultProvider::start(FaultConfig {
        faults: FaultMix::only(Fault::Hang),
        ..FaultConfig::named("primary")
    })
    .await;
    let secondary = FaultProvider::start(FaultConfig::named("secondary")).await;
    let mut config = Config::default();
    config
        .providers
        .insert("primary".into(), openai(&primary.base_url()));
    config
        .providers
        .insert("secondary".into(), openai(&secondary.base_url()));
    config.routes.insert(
        "chain".into(),
        RouteConfig::new("primary/model-a", "").with_fallbacks(["secondary/model-b"]),
    );
    config.retry = RetryConfig {
        max_attempts: 1,
        ..RetryConfig::default()
    };
    config.circuit_breaker = CircuitConfig {
        consecutive_failures: 3,
        failure_ratio: 0.0,
        open_for: Duration::from_secs(2),
        ..CircuitConfig::default()
    };
    let gateway = Gateway::start(config, &audit).await;
    let mut client = gateway.client();
    let answer = expected_answer("secondary", 8);

    // Three calls time out at the primary, each then answered by the
    // fallback; the third failure opens the circuit.
    for _ in 0..3 {
        let response = within("a call", PATIENCE, client.generate(request(None)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.provider, "secondary");
        assert_eq!(response.attempts, 2);
        assert_eq!(response.message.unwrap().content, answer);
    }
    assert_eq!(primary.requests(), 3);
    assert_eq!(primary_state(&mut client).await, CircuitState::Open as i32);

    // Open: calls go straight to the fallback, never waiting on the primary.
    for _ in 0..5 {
        let response = within("a call", PATIENCE, client.generate(request(None)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.provider, "secondary");
        assert_eq!(response.attempts, 1);
    }
    assert_eq!(
        primary.requests(),
        3,
        "an open circuit sends nothing to the primary"
    );
    let (_, metrics) = http_get(gateway.admin, "/metrics").await;
    assert!(
        metrics.contains(
            r#"agentmesh_circuit_state{target="primary/model-a",service="llm-gateway"} 1"#
        ),
        "{metrics}"
    );

    // The primary recovers; after the cool-down a probe closes the circuit.
    primary.set_faults(FaultMix::NONE);
    eventually("the circuit closes", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let response = client.generate(request(None)).await.ok()?.into_inner();
            (response.provider == "primary").then_some(())
        }
    })
    .await;
    assert_eq!(
        primary_state(&mut client).await,
        CircuitState::Closed as i32
    );

    let opened = eventually(
        "CIRCUIT_OPENED in the audit log",
        Duration::from_secs(20),
        || async {
            let events = audit_events(&audit, EventType::CircuitOpened).await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    let Some(Details::Circuit(details)) = &opened[0].details else {
        panic!("{:?}", opened[0]);
    };
    assert_eq!(details.target, "primary/model-a");
    assert_eq!(details.from_state, "CLOSED");
    assert_eq!(details.to_state, "OPEN");
    assert_eq!(details.consecutive_failures, 3);
    assert!(!details.last_error.is_empty());
    let closed = eventually(
        "CIRCUIT_CLOSED in the audit log",
        Duration::from_secs(20),
        || async {
            let events = audit_events(&audit, EventType::CircuitClosed).await;
            (!events.is_empty()).then_some(events)
        },
    )
    .await;
    let Some(Details::Circuit(details)) = &closed[0].details else {
        panic!("{:?}", closed[0]);
    };
    assert_eq!(
        (details.from_state.as_str(), details.to_state.as_str()),
        ("HALF_OPEN", "CLOSED")
    );
    let (_, metrics) = http_get(gateway.admin, "/metrics").await;
    for line in [
        r#"agentmesh_circuit_state{target="primary/model-a",service="llm-gateway"} 0"#,
        r#"agentmesh_circuit_transitions_total{target="primary/model-a",to="OPEN",service="llm-gateway"} 1"#,
        r#"agentmesh_circuit_transitions_total{target="primary/model-a",to="CLOSED",service="llm-gateway"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing in\n{metrics}");
    }
    gateway.stop().await;
    audit.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_limit_is_refused_while_another_is_served() {
    let audit = InProcess::start("audit").await;
    let provider = FaultProvider::start(FaultConfig::named("only")).await;
    let mut config = Config::default();
    config
        .providers
        .insert("only".into(), openai(&provider.base_url()));
    config
        .routes
        .insert("chain".into(), RouteConfig::new("only/model", ""));
    // Each tenant: 60 requests a minute, at most 5 at once.
    config.rate_limits.tenant = Limit {
        requests_per_minute: 60,
        burst: 5,
        ..Limit::default()
    };
    let gateway = Gateway::start(config, &audit).await;
    let client = gateway.client();

    // "noisy" sends 250 calls (50 times its burst) while "quiet" sends 5.
    let noisy = (0..250).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.generate(request(Some("noisy"))).await })
    });
    let quiet = (0..5).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.generate(request(Some("quiet"))).await })
    });
    let (noisy, quiet): (Vec<_>, Vec<_>) = (noisy.collect(), quiet.collect());
    let mut refused = 0;
    let mut served = 0;
    for call in noisy {
        match within("a noisy call", PATIENCE, call).await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("noisy"), "{}", status.message());
                let retry = status.get_details_retry_info().expect("RetryInfo");
                assert!(retry.retry_delay.unwrap() > Duration::ZERO);
                refused += 1;
            }
        }
    }
    for call in quiet {
        within("a quiet call", PATIENCE, call)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(served <= 6, "{served} noisy calls served");
    assert!(refused >= 244, "{refused} noisy calls refused");

    let limited = eventually(
        "RATE_LIMITED in the audit log",
        Duration::from_secs(20),
        || async {
            let events = audit_events(&audit, EventType::RateLimited).await;
            (events.len() >= 100).then_some(events)
        },
    )
    .await;
    assert!(limited.iter().all(|event| event.tenant == "noisy"));
    let Some(Details::RateLimit(details)) = &limited[0].details else {
        panic!("{:?}", limited[0]);
    };
    assert_eq!(
        (
            details.scope.as_str(),
            details.key.as_str(),
            details.resource.as_str()
        ),
        ("tenant", "noisy", "requests")
    );
    assert_eq!(details.limit, 60.0);
    assert!(details.method.ends_with("/Generate"));
    let (_, metrics) = http_get(gateway.admin, "/metrics").await;
    assert!(
        metrics.contains(r#"agentmesh_rate_limited_total{resource="requests",scope="tenant",service="llm-gateway"}"#),
        "{metrics}"
    );
    gateway.stop().await;
    audit.stop().await.unwrap();
}
