//! The orchestrator's List page tokens through its gRPC API, across a
//! restart: a `next_page_token` from one process of the service is good on
//! the next one over the same database (as it is on another replica).
//!
//! The service runs in-process on ephemeral loopback ports with its SQLite
//! database in a temporary directory. Its peers are not running: runs are
//! stored when started and fail when driven, which is all a listing needs.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use agentmesh_kit::{Listeners, ServeError, ServerConfig};
use agentmesh_orchestrator::{AgentProfile, AuditConfig, Config};
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient,
};
use agentmesh_testkit::{eventually, within};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// How long any one step may take.
const STEP: Duration = Duration::from_secs(30);

/// An orchestrator serving on loopback over the database in `data_dir`.
struct Running {
    client: OrchestratorServiceClient<Channel>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn start(data_dir: &Path) -> Self {
        let mut config = Config {
            server: ServerConfig {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0,
                admin_port: Some(0),
                grace_period: Duration::from_secs(5),
                ..ServerConfig::default()
            },
            // Nothing listens there: runs fail when driven.
            llm_gateway_url: "http://127.0.0.1:9".into(),
            tool_runner_url: "http://127.0.0.1:9".into(),
            audit: AuditConfig::disabled(),
            ..Config::default()
        };
        config.storage.data_dir = data_dir.to_path_buf();
        config.agents = ["alpha", "beta", "default", "gamma"]
            .into_iter()
            .map(|name| (name.to_owned(), AgentProfile::default()))
            .collect::<BTreeMap<_, _>>();
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agentmesh_orchestrator::serve_with_listeners(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = agentmesh_kit::client::plain_channel(&format!("http://{addr}")).unwrap();
        Self {
            client: OrchestratorServiceClient::new(channel),
            stop,
            task,
        }
    }

    /// A page of runs, once the database is open (UNAVAILABLE until).
    async fn list_runs(&self, request: pb::ListRunsRequest) -> pb::ListRunsResponse {
        eventually("ListRuns to answer", STEP, || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move {
                match client.list_runs(request).await {
                    Ok(response) => Some(response.into_inner()),
                    Err(status) if status.code() == tonic::Code::Unavailable => None,
                    Err(status) => panic!("{status:?}"),
                }
            }
        })
        .await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the drain", STEP, self.task).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn next_page_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = Running::start(dir.path()).await;
    let labels = || [("team".to_owned(), "red".to_owned())].into();
    let mut run_ids = Vec::new();
    for objective in ["one", "two", "three"] {
        let started = eventually("StartRun to answer", STEP, || {
            let mut client = before.client.clone();
            async move {
                let request = pb::StartRunRequest {
                    objective: objective.to_owned(),
                    labels: labels(),
                    ..pb::StartRunRequest::default()
                };
                match client.start_run(request).await {
                    Ok(response) => Some(response.into_inner()),
                    Err(status) if status.code() == tonic::Code::Unavailable => None,
                    Err(status) => panic!("{status:?}"),
                }
            }
        })
        .await;
        run_ids.push(started.run_id);
    }
    let page = |page_token: String| pb::ListRunsRequest {
        page_size: 2,
        page_token,
        labels: labels(),
        ..pb::ListRunsRequest::default()
    };
    let first_runs = before.list_runs(page(String::new())).await;
    assert_eq!(first_runs.runs.len(), 2);
    assert!(!first_runs.next_page_token.is_empty());
    let first_agents = within(
        "ListAgents",
        STEP,
        before.client.clone().list_agents(pb::ListAgentsRequest {
            page_size: 2,
            page_token: String::new(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<&str> = first_agents
        .agents
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    before.stop().await;

    let after = Running::start(dir.path()).await;
    let rest = after.list_runs(page(first_runs.next_page_token)).await;
    assert!(rest.next_page_token.is_empty());
    let mut listed: Vec<String> = first_runs
        .runs
        .into_iter()
        .chain(rest.runs)
        .map(|run| run.run_id)
        .collect();
    listed.sort();
    run_ids.sort();
    assert_eq!(listed, run_ids);
    let rest_agents = within(
        "ListAgents",
        STEP,
        after.client.clone().list_agents(pb::ListAgentsRequest {
            page_size: 2,
            page_token: first_agents.next_page_token,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<&str> = rest_agents.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["default", "gamma"]);
    assert!(rest_agents.next_page_token.is_empty());
    after.stop().await;
}
