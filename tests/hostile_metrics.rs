//! Traffic must not become metric labels: 10,000 new tenants call every
//! service of the real mesh (`agentmesh up`, auth `none` on loopback, where
//! the tenant is whatever the `x-agentmesh-tenant` header says), each with
//! values of its own where a caller chooses them — a model addressed as
//! `scripted/<its own name>`, a tool of its own name, a method path no
//! service has — and the number of series on every `/metrics` page must
//! not grow with the tenant count: the pages after 10,000 tenants hold at
//! most [`SLACK`] more series than after the first 100, and no page names a
//! tenant, model or tool a caller made up.
//!
//! The slack covers series that appear on an event rather than per caller
//! (a status code or a circuit change seen for the first time later in the
//! run); every such label set is fixed by the code, so the difference is
//! bounded whatever the tenant count.

#![expect(clippy::unwrap_used, reason = "test code fails loudly")]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use agentmesh_proto::alerting::v1::{self as alerting, alerting_service_client};
use agentmesh_proto::audit::v1::{self as audit, audit_service_client};
use agentmesh_proto::llm::v1::{self as llm, llm_gateway_service_client};
use agentmesh_proto::orchestrator::v1::{self as pb, orchestrator_service_client};
use agentmesh_proto::tools::v1::{self as tools, tool_runner_service_client};
use agentmesh_tests::{SERVICES, binary, http_get, wait_serving, within};
use futures::StreamExt as _;
use tokio::process::Command;
use tonic::transport::Channel;

/// Series a page may gain between 100 and 10,000 tenants (see the module
/// doc).
const SLACK: usize = 40;
/// Calls in flight at once.
const CONCURRENCY: usize = 48;
/// The prefix of every tenant (and caller-chosen name) the test makes.
const PREFIX: &str = "hostile-";

/// `message` as tenant `tenant` sends it.
fn as_tenant<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    request.set_timeout(Duration::from_secs(30));
    request
}

/// A call of a method path no service has (answered UNIMPLEMENTED).
async fn unknown_method(channel: Channel, tenant: &str, path: String) {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return;
    }
    let path = http::uri::PathAndQuery::from_maybe_shared(path).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let _ = grpc.unary(as_tenant(tenant, ()), path, codec).await;
}

/// Everything tenant number `n` does: a call to every service, with its
/// own names wherever a caller picks one. The answers do not matter (many
/// are refusals); only what they leave in the metrics does.
async fn tenant_calls(channels: &[Channel], n: usize) {
    let tenant = format!("{PREFIX}tenant-{n}");
    let own = format!("{PREFIX}{n}");
    let [
        orchestrator,
        gateway,
        tool_runner,
        audit_channel,
        alerting_channel,
    ] = channels
    else {
        return;
    };
    let mut runs =
        orchestrator_service_client::OrchestratorServiceClient::new(orchestrator.clone());
    let _ = runs
        .start_run(as_tenant(
            &tenant,
            pb::StartRunRequest {
                objective: "What is 2 + 2?".to_owned(),
                ..Default::default()
            },
        ))
        .await;
    let mut llm_client = llm_gateway_service_client::LlmGatewayServiceClient::new(gateway.clone());
    let _ = llm_client
        .generate(as_tenant(
            &tenant,
            llm::GenerateRequest {
                model: format!("scripted/{own}"),
                messages: vec![llm::Message {
                    role: llm::Role::User.into(),
                    content: "What is 2 + 2?".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ))
        .await;
    let mut tools_client =
        tool_runner_service_client::ToolRunnerServiceClient::new(tool_runner.clone());
    for tool in [own.clone(), "calculator".to_owned()] {
        let _ = tools_client
            .execute_tool(as_tenant(
                &tenant,
                tools::ExecuteToolRequest {
                    tool,
                    arguments_json: r#"{"expression": "2 + 2"}"#.to_owned(),
                    ..Default::default()
                },
            ))
            .await;
    }
    let mut audit_client = audit_service_client::AuditServiceClient::new(audit_channel.clone());
    let _ = audit_client
        .query(as_tenant(&tenant, audit::QueryRequest::default()))
        .await;
    let mut alerts = alerting_service_client::AlertingServiceClient::new(alerting_channel.clone());
    let _ = alerts
        .list_alerts(as_tenant(&tenant, alerting::ListAlertsRequest::default()))
        .await;
    for (channel, (_, service)) in channels.iter().zip(SERVICES) {
        unknown_method(channel.clone(), &tenant, format!("/{service}/Method{own}")).await;
        unknown_method(
            channel.clone(),
            &tenant,
            format!("/{PREFIX}{n}.Service/Call"),
        )
        .await;
    }
}

/// Tenants `from..to`, `CONCURRENCY` at a time.
async fn tenants(channels: &[Channel], from: usize, to: usize) {
    futures::stream::iter(from..to)
        .for_each_concurrent(CONCURRENCY, |n| tenant_calls(channels, n))
        .await;
}

/// The series of every service's `/metrics` page: (service, sample lines).
async fn series(admins: &[SocketAddr]) -> Vec<(&'static str, Vec<String>)> {
    let mut pages = Vec::new();
    for (admin, (name, _)) in admins.iter().zip(SERVICES) {
        let (code, text) = http_get(*admin, "/metrics").await;
        assert_eq!(code, 200, "{name}");
        let lines = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                line.rsplit_once(' ')
                    .map_or(line, |(series, _)| series)
                    .to_owned()
            })
            .collect();
        pages.push((name, lines));
    }
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_new_tenants_add_no_series() {
    let dir = tempfile::tempdir().unwrap();
    let base = agentmesh_tests::free_base_port(39001, 43, 6000);
    let _up = Command::new(binary("agentmesh"))
        .args([
            "up",
            "--no-edge",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            "state",
        ])
        .args(["--log-format", "json", "--log-level", "warn"])
        .current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("AGENTMESH_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let grpc: Vec<SocketAddr> = (0..5u16)
        .map(|i| ([127, 0, 0, 1], base + i).into())
        .collect();
    let admins: Vec<SocketAddr> = (0..5u16)
        .map(|i| ([127, 0, 0, 1], base + 1000 + i).into())
        .collect();
    let channels: Vec<Channel> = grpc
        .iter()
        .map(|addr| agentmesh_tests::channel(*addr))
        .collect();
    for (channel, (_, name)) in channels.iter().zip(SERVICES) {
        wait_serving(channel.clone(), name).await;
    }

    within(
        "the first 100 tenants",
        Duration::from_secs(120),
        tenants(&channels, 0, 100),
    )
    .await;
    let early = series(&admins).await;
    within(
        "the other 9,900 tenants",
        Duration::from_secs(900),
        tenants(&channels, 100, 10_000),
    )
    .await;
    let late = series(&admins).await;

    let mut problems = Vec::new();
    for ((name, before), (_, after)) in early.iter().zip(&late) {
        let named: Vec<&String> = after.iter().filter(|line| line.contains(PREFIX)).collect();
        if !named.is_empty() {
            problems.push(format!(
                "{name}: {} series carry caller-chosen values, e.g. {:?}",
                named.len(),
                named.iter().take(3).collect::<Vec<_>>()
            ));
        }
        if after.len() > before.len() + SLACK {
            let new: Vec<&String> = after
                .iter()
                .filter(|line| !before.contains(line))
                .take(5)
                .collect();
            problems.push(format!(
                "{name}: {} series after 100 tenants, {} after 10,000; new ones include {new:?}",
                before.len(),
                after.len()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
