//! Token budgets per tenant through real gRPC: a spent budget refuses with
//! RESOURCE_EXHAUSTED naming it (QuotaFailure, RetryInfo until the reset)
//! while other tenants are served, the spend survives a restart (SQLite),
//! and two gateways on one PostgreSQL database share one budget.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "test helpers fail loudly"
)]

mod common;

use std::path::Path;
use std::time::Duration;

use agentmesh_llm_gateway::{BudgetConfig, BudgetPeriod, BudgetScope, Config};
use agentmesh_proto::llm::v1::{GenerateRequest, GenerateStreamRequest};
use common::{TestGateway, user};
use tonic::Code;
use tonic_types::StatusExt;

/// The defaults (the scripted demo model, at full speed) with one daily
/// token budget of `max_tokens` for tenant `acme`, spend kept in `data_dir`
/// or at `url`.
fn budgeted(max_tokens: u64, data_dir: &Path, url: Option<String>) -> Config {
    let mut config = Config::default();
    if let Some(scripted) = config.providers.get_mut("scripted") {
        scripted.pace = Some(Duration::ZERO);
    }
    config.budgets = vec![BudgetConfig {
        scope: BudgetScope::Tenant,
        name: "acme".into(),
        period: BudgetPeriod::Day,
        max_tokens: Some(max_tokens),
        max_cost_usd: None,
    }];
    config.storage.data_dir = data_dir.to_path_buf();
    config.storage.url = url;
    config
}

fn request(tenant: &str) -> tonic::Request<GenerateRequest> {
    let mut request = tonic::Request::new(GenerateRequest {
        messages: vec![user("hello")],
        ..GenerateRequest::default()
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    request.set_timeout(Duration::from_secs(30));
    request
}

/// Generates as `tenant`: the tokens used, or the status.
async fn generate(gateway: &TestGateway, tenant: &str) -> Result<u64, tonic::Status> {
    let mut client = gateway.client().await;
    let response = client.generate(request(tenant)).await?.into_inner();
    let usage = response.usage.unwrap_or_default();
    Ok(u64::try_from(usage.input_tokens + usage.output_tokens).unwrap())
}

fn assert_budget_refusal(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let message = status.message();
    assert!(message.contains("tenant budget `acme`"), "{message}");
    assert!(message.contains("per day"), "{message}");
    assert!(message.contains("resets at"), "{message}");
    let quota = status.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "tenant:acme");
    let retry = status
        .get_details_retry_info()
        .expect("RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(24 * 3600),
        "{retry:?}"
    );
}

#[tokio::test]
async fn a_spent_tenant_budget_refuses_naming_it_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start(budgeted(1, dir.path(), None)).await;
    // Nothing spent yet: admitted, and its tokens are charged.
    let used = generate(&gateway, "acme").await.unwrap();
    assert!(used > 0);
    let refused = generate(&gateway, "acme").await.unwrap_err();
    assert_budget_refusal(&refused);
    // A stream is refused before it starts, the same way.
    let mut client = gateway.client().await;
    let mut stream = tonic::Request::new(GenerateStreamRequest {
        messages: vec![user("hello")],
        ..GenerateStreamRequest::default()
    });
    stream
        .metadata_mut()
        .insert("x-agentmesh-tenant", "acme".parse().unwrap());
    let refused = client.generate_stream(stream).await.unwrap_err();
    assert_budget_refusal(&refused);
    // Another tenant has no budget here.
    for _ in 0..3 {
        generate(&gateway, "globex").await.unwrap();
    }
    gateway.stop().await;
}

#[tokio::test]
async fn the_spend_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let used = {
        // Room for one call, not two.
        let gateway = TestGateway::start(budgeted(1_000_000, dir.path(), None)).await;
        let used = generate(&gateway, "acme").await.unwrap();
        gateway.stop().await;
        used
    };
    assert!(dir.path().join("llm-gateway.db").is_file());
    // Restarted with a budget the first call used up exactly.
    let gateway = TestGateway::start(budgeted(used, dir.path(), None)).await;
    let refused = generate(&gateway, "acme").await.unwrap_err();
    assert_budget_refusal(&refused);
    assert!(
        refused
            .message()
            .contains(&format!("{used} of {used} tokens")),
        "{}",
        refused.message()
    );
    gateway.stop().await;
}

#[tokio::test]
async fn two_gateways_on_one_postgres_database_share_a_budget() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("gateway_budget").await;
    let dir = tempfile::tempdir().unwrap();
    let probe = TestGateway::start(budgeted(1_000_000, dir.path(), Some(url.clone()))).await;
    // What one call costs (the scripted answer to the same prompt is the
    // same), measured against another tenant.
    let per_call = generate(&probe, "measure").await.unwrap();
    probe.stop().await;

    // Room for three calls, whichever gateway makes them.
    let config = budgeted(3 * per_call, dir.path(), Some(url));
    let first = TestGateway::start(config.clone()).await;
    let second = TestGateway::start(config).await;
    generate(&first, "acme").await.unwrap();
    generate(&second, "acme").await.unwrap();
    generate(&first, "acme").await.unwrap();
    // Spent, as both see it.
    assert_budget_refusal(&generate(&second, "acme").await.unwrap_err());
    assert_budget_refusal(&generate(&first, "acme").await.unwrap_err());
    first.stop().await;
    second.stop().await;
}
