//! Identity and access across the services of a run, with API keys on
//! every service (real gRPC between in-process services, and the real
//! binaries for a crash): tenants cannot see each other's runs (SQLite and
//! PostgreSQL), allow-lists of agents, routes and tools are enforced where
//! the call is made, a tool refused to a run's end user comes back to the
//! model as a tool error with the denial audited, and a run resumed after
//! its orchestrator was killed still acts for the identity it was started
//! with.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentmesh_auth::config::Method;
use agentmesh_auth::keys::ApiKey;
use agentmesh_auth::keys::file::{KeyEntry, KeysFile};
use agentmesh_kit::config::AuthConfig;
use agentmesh_kit::{Listeners, ServeError};
use agentmesh_proto::audit::v1 as audit;
use agentmesh_proto::llm::v1 as llm;
use agentmesh_proto::orchestrator::v1::{
    self as pb, orchestrator_service_client::OrchestratorServiceClient, run_event,
};
use agentmesh_proto::tools::v1 as tools;
use agentmesh_tests::{RunningBinary, channel, http_get, test_server_config, wait_serving, within};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// The keys of the tests: a service key every service presents to its
/// peers, an admin, and end users of two tenants.
struct Keys {
    file: PathBuf,
    credential: PathBuf,
    admin: ApiKey,
    /// acme, every agent, route and tool.
    acme: ApiKey,
    /// globex, every agent, route and tool.
    globex: ApiKey,
    /// acme, only the `default` agent and the `calculator` tool.
    acme_calculator: ApiKey,
    /// acme, only the `fast` route (direct gateway calls).
    acme_fast: ApiKey,
}

fn entry(key: &ApiKey, tenant: &str, subject: &str, scopes: &[&str]) -> KeyEntry {
    KeyEntry {
        id: key.id().to_owned(),
        sha256: key.hash().to_hex(),
        tenant: tenant.to_owned(),
        subject: subject.to_owned(),
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        label: String::new(),
        expires: None,
        agents: None,
        routes: None,
        tools: None,
        revoked: false,
    }
}

impl Keys {
    fn write(dir: &Path) -> Self {
        let key = || ApiKey::generate("test").unwrap();
        let (service, admin, acme, globex, acme_calculator, acme_fast) =
            (key(), key(), key(), key(), key(), key());
        let user = ["runs:read", "runs:write", "agents:read"];
        let file = KeysFile {
            keys: vec![
                entry(
                    &service,
                    "",
                    "mesh",
                    &[
                        "service",
                        "llm:generate",
                        "tools:read",
                        "tools:execute",
                        "audit:write",
                    ],
                ),
                entry(&admin, "", "operator", &["admin"]),
                entry(&acme, "acme", "alice", &user),
                entry(&globex, "globex", "gina", &user),
                KeyEntry {
                    agents: Some(vec!["default".into()]),
                    tools: Some(vec!["calculator".into()]),
                    ..entry(
                        &acme_calculator,
                        "acme",
                        "calc-bot",
                        &[
                            "runs:read",
                            "runs:write",
                            "agents:read",
                            "tools:read",
                            "tools:execute",
                        ],
                    )
                },
                KeyEntry {
                    routes: Some(vec!["fast".into()]),
                    ..entry(&acme_fast, "acme", "fast-bot", &["llm:generate"])
                },
            ],
            ..KeysFile::default()
        };
        let path = dir.join("keys.toml");
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        let credential = dir.join("service.key");
        std::fs::write(&credential, service.expose()).unwrap();
        Self {
            file: path,
            credential,
            admin,
            acme,
            globex,
            acme_calculator,
            acme_fast,
        }
    }

    /// API keys on, this service presenting the service key.
    fn auth(&self) -> AuthConfig {
        AuthConfig {
            methods: vec![Method::ApiKey],
            keys_file: Some(self.file.clone()),
            credential_file: Some(self.credential.clone()),
            ..AuthConfig::default()
        }
    }
}

/// A request carrying `key` as its bearer credential.
fn as_key<T>(key: &ApiKey, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", key.expose()).parse().unwrap(),
    );
    request
}

/// Rules: "what time" asks for the clock (refused to `acme_calculator`),
/// "what is …?" for the calculator.
const RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)what time'
tool_calls = [{ name = "current_time", arguments = '{}' }]
# The clock is not offered to a key without it: ask anyway.
unoffered_tools = true
[[rules]]
on = "tool_error"
match = 'not allowed'
text = "I may not read the clock."
[[rules]]
on = "user"
match = '(?i)what is (?P<expr>.+?)\?'
tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
[[rules]]
on = "tool"
match = '"result":\s*(?P<result>[-0-9.e+]+)'
text = "The answer is ${result}"
"#;

/// The four services of a run with API keys on each: audit, gateway
/// (scripted), tool runner and orchestrator, in this process.
struct Mesh {
    orchestrator: SocketAddr,
    gateway: SocketAddr,
    tool_runner: SocketAddr,
    tool_runner_admin: SocketAddr,
    audit: SocketAddr,
    keys: Keys,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// The mesh, the orchestrator's runs in `storage_url` (SQLite in the
    /// test's directory when `None`).
    async fn start(storage_url: Option<String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::write(dir.path());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut spawn = |served: BoxFuture<'static, Result<(), ServeError>>| {
            tasks.push(tokio::spawn(served));
        };
        let producer = |service: &str| agentmesh_audit_client::AuditConfig {
            url: String::new(),
            spool_dir: dir.path().join("spool").join(service),
            flush_interval: Duration::from_millis(50),
            ..agentmesh_audit_client::AuditConfig::default()
        };

        let mut audit_config = agentmesh_audit::Config {
            server: test_server_config(),
            auth: keys.auth(),
            ..Default::default()
        };
        audit_config.storage.data_dir = dir.path().join("audit");
        let listeners = Listeners::bind(&audit_config.server).await.unwrap();
        let audit = listeners.grpc_addr().unwrap();
        spawn(Box::pin(agentmesh_audit::serve_with_listeners(
            audit_config,
            listeners,
            stop.clone().cancelled_owned(),
        )));
        let audit_url = format!("http://{audit}");

        let mut gateway = agentmesh_llm_gateway::Config {
            server: test_server_config(),
            auth: keys.auth(),
            audit: agentmesh_llm_gateway::AuditConfig {
                url: audit_url.clone(),
                ..producer("llm-gateway")
            },
            ..Default::default()
        };
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, RULES).unwrap();
        gateway.providers.get_mut("scripted").unwrap().rules_file = rules.display().to_string();
        let listeners = Listeners::bind(&gateway.server).await.unwrap();
        let gateway_addr = listeners.grpc_addr().unwrap();
        spawn(Box::pin(agentmesh_llm_gateway::serve_with_listeners(
            gateway,
            listeners,
            stop.clone().cancelled_owned(),
        )));

        let mut tool_runner = agentmesh_tool_runner::Config {
            server: test_server_config(),
            auth: keys.auth(),
            audit: agentmesh_tool_runner::AuditConfig {
                url: audit_url.clone(),
                ..producer("tool-runner")
            },
            ..Default::default()
        };
        tool_runner.workspaces_dir = dir.path().join("workspaces");
        let listeners = Listeners::bind(&tool_runner.server).await.unwrap();
        let tools_addr = listeners.grpc_addr().unwrap();
        let tools_admin = listeners.admin_addr().unwrap();
        spawn(Box::pin(agentmesh_tool_runner::serve_with_listeners(
            tool_runner,
            listeners,
            stop.clone().cancelled_owned(),
        )));

        let mut orchestrator = agentmesh_orchestrator::Config {
            server: test_server_config(),
            auth: keys.auth(),
            llm_gateway_url: format!("http://{gateway_addr}"),
            tool_runner_url: format!("http://{tools_addr}"),
            audit: agentmesh_orchestrator::AuditConfig {
                url: audit_url,
                ..producer("orchestrator")
            },
            ..Default::default()
        };
        orchestrator.storage.data_dir = dir.path().join("data");
        orchestrator.storage.url = storage_url;
        // A second profile, for the agents allow-list.
        let default = orchestrator.agents["default"].clone();
        orchestrator.agents.insert("other".into(), default);
        let listeners = Listeners::bind(&orchestrator.server).await.unwrap();
        let orchestrator_addr = listeners.grpc_addr().unwrap();
        spawn(Box::pin(agentmesh_orchestrator::serve_with_listeners(
            orchestrator,
            listeners,
            stop.clone().cancelled_owned(),
        )));

        for addr in [audit, gateway_addr, tools_addr, orchestrator_addr] {
            wait_serving(channel(addr), "").await;
        }
        Self {
            orchestrator: orchestrator_addr,
            gateway: gateway_addr,
            tool_runner: tools_addr,
            tool_runner_admin: tools_admin,
            audit,
            keys,
            stop,
            tasks,
            _dir: dir,
        }
    }

    fn client(&self) -> OrchestratorServiceClient<Channel> {
        OrchestratorServiceClient::new(channel(self.orchestrator))
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            within("a service to stop", Duration::from_secs(15), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// Starts a run as `key` and follows it to its end; returns its events.
async fn run_to_end(
    client: &mut OrchestratorServiceClient<Channel>,
    key: &ApiKey,
    objective: &str,
) -> Vec<pb::RunEvent> {
    let mut stream = client
        .run(as_key(
            key,
            pb::RunRequest {
                objective: objective.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(response) = within("the run", Duration::from_secs(30), stream.message())
        .await
        .unwrap()
    {
        let event = response.event.unwrap();
        if event.sequence > 0 {
            events.push(event);
        }
    }
    events
}

fn output_of(events: &[pb::RunEvent]) -> String {
    match &events.last().unwrap().event {
        Some(run_event::Event::RunFinished(done)) => done.output.clone(),
        other => panic!("the run did not finish: {other:?}\n{events:#?}"),
    }
}

/// Every tenant sees only its own runs; an admin sees every tenant's.
async fn tenants_cannot_see_each_other_s_runs(mesh: &Mesh) {
    let mut client = mesh.client();
    let keys = &mesh.keys;
    let acme_events = run_to_end(&mut client, &keys.acme, "What is 6*7?").await;
    assert_eq!(output_of(&acme_events), "The answer is 42");
    let acme_run = acme_events[0].run_id.clone();
    let globex_events = run_to_end(&mut client, &keys.globex, "What is 2+2?").await;
    let globex_run = globex_events[0].run_id.clone();

    // Its own run: found, owned by the verified tenant and subject.
    let run = client
        .get_run(as_key(
            &keys.acme,
            pb::GetRunRequest {
                run_id: acme_run.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(
        (run.tenant.as_str(), run.subject.as_str()),
        ("acme", "alice")
    );

    // The other tenant's: NOT_FOUND everywhere, as an unknown id.
    let code = client
        .get_run(as_key(
            &keys.globex,
            pb::GetRunRequest {
                run_id: acme_run.clone(),
            },
        ))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let code = client
        .stream_run(as_key(
            &keys.globex,
            pb::StreamRunRequest {
                run_id: acme_run.clone(),
                after_sequence: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let code = client
        .cancel_run(as_key(
            &keys.globex,
            pb::CancelRunRequest {
                run_id: acme_run.clone(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    let listed = |key: &ApiKey| {
        let mut client = client.clone();
        let request = as_key(key, pb::ListRunsRequest::default());
        async move {
            let mut ids: Vec<String> = client
                .list_runs(request)
                .await
                .unwrap()
                .into_inner()
                .runs
                .into_iter()
                .map(|run| run.run_id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(
        listed(&keys.globex).await,
        std::slice::from_ref(&globex_run)
    );
    assert_eq!(listed(&keys.acme).await, std::slice::from_ref(&acme_run));
    let mut both = vec![acme_run.clone(), globex_run];
    both.sort();
    assert_eq!(listed(&keys.admin).await, both);
    client
        .get_run(as_key(&keys.admin, pb::GetRunRequest { run_id: acme_run }))
        .await
        .unwrap();

    // A tenant written in the header by an end user is refused, not taken.
    let mut forged = as_key(&keys.globex, pb::ListRunsRequest::default());
    forged
        .metadata_mut()
        .insert("x-agentmesh-tenant", "acme".parse().unwrap());
    let refused = client.list_runs(forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // No credential at all.
    let refused = client
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[tokio::test]
async fn tenants_cannot_see_each_other_s_runs_on_sqlite() {
    let mesh = Mesh::start(None).await;
    tenants_cannot_see_each_other_s_runs(&mesh).await;
    mesh.stop().await;
}

#[tokio::test]
async fn tenants_cannot_see_each_other_s_runs_on_postgres() {
    let server = agentmesh_testkit::postgres::shared().await;
    let url = server.create_database("orchestrator_access").await;
    let mesh = Mesh::start(Some(url)).await;
    tenants_cannot_see_each_other_s_runs(&mesh).await;
    mesh.stop().await;
}

/// The value of the first sample of `metric` whose line holds every one
/// of `labels`, 0 when there is none.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(metric))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_tool_outside_the_allow_list_is_a_tool_error_for_the_model_and_never_runs() {
    let mesh = Mesh::start(None).await;
    let mut client = mesh.client();
    let keys = &mesh.keys;
    let events = run_to_end(&mut client, &keys.acme_calculator, "What time is it?").await;
    // The run finished: the model got the refusal as the tool's result.
    assert_eq!(output_of(&events), "I may not read the clock.");
    let finished: Vec<&pb::ToolCallFinished> = events
        .iter()
        .filter_map(|event| match &event.event {
            Some(run_event::Event::ToolCallFinished(call)) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(finished.len(), 1, "{events:#?}");
    assert_eq!(finished[0].tool, "current_time");
    assert!(finished[0].is_error);
    assert!(
        finished[0]
            .error_message
            .contains("not allowed for this tenant or key"),
        "{}",
        finished[0].error_message
    );
    // The allowed tool still works for the same key.
    let events = run_to_end(&mut client, &keys.acme_calculator, "What is 6*7?").await;
    assert_eq!(output_of(&events), "The answer is 42");

    // The tool never ran; the refusal was counted.
    let (_, metrics) = http_get(mesh.tool_runner_admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_tool_executions_total",
            &[r#"tool="current_time""#]
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_tool_executions_total",
            &[r#"tool="calculator""#, r#"outcome="ok""#]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_auth_decisions_total",
            &[r#"result="refused""#, r#"reason="tool_not_allowed""#]
        ),
        1.0,
        "{metrics}"
    );

    // The denial reached the audit trail, naming the tool and the key.
    let mut audit_client =
        audit::audit_service_client::AuditServiceClient::new(channel(mesh.audit));
    let denial = agentmesh_testkit::eventually(
        "the AUTHORIZATION denial in the audit trail",
        Duration::from_secs(20),
        || {
            let mut audit_client = audit_client.clone();
            let admin = &keys.admin;
            async move {
                let page = audit_client
                    .query(as_key(
                        admin,
                        audit::QueryRequest {
                            filter: Some(audit::EventFilter {
                                types: vec![audit::EventType::Authorization as i32],
                                ..Default::default()
                            }),
                            order: audit::SortOrder::OldestFirst as i32,
                            page_size: 100,
                            ..Default::default()
                        },
                    ))
                    .await
                    .ok()?
                    .into_inner();
                page.events.into_iter().find(|event| {
                    matches!(&event.details, Some(audit::audit_event::Details::Access(access))
                        if access.resource == "current_time")
                })
            }
        },
    )
    .await;
    assert_eq!(denial.outcome(), audit::Outcome::Denied);
    assert_eq!(denial.reason, "tool_not_allowed");
    assert_eq!(denial.tenant, "acme");
    assert_eq!(denial.service, "tool-runner");
    let Some(audit::audit_event::Details::Access(access)) = &denial.details else {
        panic!("{denial:?}");
    };
    assert_eq!(access.credential_id, keys.acme_calculator.id());
    assert_eq!(access.actor, "mesh", "the orchestrator's service key acted");
    assert_eq!(
        access.method,
        "/agentmesh.tools.v1.ToolRunnerService/ExecuteToolStream"
    );
    // Nothing in the trail holds a secret.
    let everything = audit_client
        .query(as_key(
            &keys.admin,
            audit::QueryRequest {
                order: audit::SortOrder::OldestFirst as i32,
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{everything:?}");
    for key in [&keys.acme_calculator, &keys.admin] {
        assert!(!text.contains(key.expose()), "a key is in the audit trail");
    }

    // Called directly, the tool runner lists and runs only allowed tools.
    let mut tool_client =
        tools::tool_runner_service_client::ToolRunnerServiceClient::new(channel(mesh.tool_runner));
    let listed: Vec<String> = tool_client
        .list_tools(as_key(
            &keys.acme_calculator,
            tools::ListToolsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .tools
        .into_iter()
        .map(|tool| tool.name)
        .collect();
    assert_eq!(listed, ["calculator"]);
    let refused = tool_client
        .execute_tool(as_key(
            &keys.acme_calculator,
            tools::ExecuteToolRequest {
                tool: "read_file".into(),
                arguments_json: r#"{"path": "x"}"#.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("\"read_file\""), "{refused:?}");
    mesh.stop().await;
}

#[tokio::test]
async fn agents_outside_the_allow_list_are_refused_and_hidden() {
    let mesh = Mesh::start(None).await;
    let mut client = mesh.client();
    let keys = &mesh.keys;
    let refused = client
        .start_run(as_key(
            &keys.acme_calculator,
            pb::StartRunRequest {
                objective: "What is 1+1?".into(),
                agent: "other".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("\"other\""), "{refused:?}");
    let agents: Vec<String> = client
        .list_agents(as_key(
            &keys.acme_calculator,
            pb::ListAgentsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .agents
        .into_iter()
        .map(|agent| agent.name)
        .collect();
    assert_eq!(agents, ["default"]);
    let hidden = client
        .get_agent(as_key(
            &keys.acme_calculator,
            pb::GetAgentRequest {
                name: "other".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    // A key without the list sees and starts both.
    let agents = client
        .list_agents(as_key(&keys.acme, pb::ListAgentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 2);
    client
        .start_run(as_key(
            &keys.acme,
            pb::StartRunRequest {
                objective: "What is 1+1?".into(),
                agent: "other".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn the_gateway_refuses_routes_outside_the_allow_list() {
    let mesh = Mesh::start(None).await;
    let keys = &mesh.keys;
    let mut gateway =
        llm::llm_gateway_service_client::LlmGatewayServiceClient::new(channel(mesh.gateway));
    let ask = |model: &str| llm::GenerateRequest {
        model: model.into(),
        messages: vec![llm::Message {
            role: llm::Role::User.into(),
            content: "What is 1+1?".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    gateway
        .generate(as_key(&keys.acme_fast, ask("fast")))
        .await
        .unwrap();
    for model in ["", "default", "scripted/demo"] {
        let refused = gateway
            .generate(as_key(&keys.acme_fast, ask(model)))
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{model}: {refused:?}"
        );
        let named = if model.is_empty() { "default" } else { model };
        assert!(
            refused.message().contains(&format!("`{named}`")),
            "{refused:?}"
        );
    }
    let refused = gateway
        .generate_stream(as_key(
            &keys.acme_fast,
            llm::GenerateStreamRequest {
                model: "default".into(),
                messages: ask("").messages,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let models: Vec<String> = gateway
        .list_models(as_key(&keys.acme_fast, llm::ListModelsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|model| model.name)
        .collect();
    assert_eq!(models, ["fast"]);
    mesh.stop().await;
}

/// Rules for the crash: step 1 the calculator; step 2 asks slowly for the
/// clock (the orchestrator is killed while it streams); step 3 answers the
/// clock's refusal.
const RESUME_RULES: &str = r#"
pace = "0s"
[[rules]]
on = "user"
match = '(?i)what is (?P<expr>.+?)\?'
tool_calls = [{ name = "calculator", arguments = '{"expression": "${expr}"}' }]
[[rules]]
on = "tool_error"
match = 'not allowed'
text = "the clock is not mine to read"
[[rules]]
on = "tool"
match = '"result"'
pace = "1500ms"
tool_calls = [{ name = "current_time", arguments = '{"timezone": "UTC"}' }]
unoffered_tools = true
"#;

#[tokio::test]
async fn a_run_resumed_after_a_crash_still_acts_for_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::write(dir.path());
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RESUME_RULES).unwrap();
    let auth = [
        "--set".to_owned(),
        r#"auth.methods=["api_key"]"#.to_owned(),
        "--set".to_owned(),
        format!("auth.keys_file={:?}", keys.file.display().to_string()),
        "--set".to_owned(),
        format!(
            "auth.credential_file={:?}",
            keys.credential.display().to_string()
        ),
    ];
    let with_auth =
        |more: &[String]| -> Vec<String> { auth.iter().chain(more).cloned().collect::<Vec<_>>() };
    let start = |name: &'static str, args: Vec<String>| {
        let dir = dir.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            RunningBinary::start(name, &args, &[], &dir).await
        }
    };
    let gateway = start(
        "agentmesh-llm-gateway",
        with_auth(&[
            "--set".to_owned(),
            format!(
                "providers.scripted.rules_file={:?}",
                rules.display().to_string()
            ),
        ]),
    )
    .await;
    let tool_runner = start("agentmesh-tool-runner", with_auth(&[])).await;
    let orchestrator_args = with_auth(&[
        "--set".to_owned(),
        format!("llm_gateway_url=\"http://{}\"", gateway.grpc),
        "--set".to_owned(),
        format!("tool_runner_url=\"http://{}\"", tool_runner.grpc),
        "--set".to_owned(),
        "run_lease=\"1s\"".to_owned(),
    ]);
    let mut first = start("agentmesh-orchestrator", orchestrator_args.clone()).await;
    wait_serving(channel(first.grpc), "").await;
    let mut client = OrchestratorServiceClient::new(channel(first.grpc));
    let run_id = client
        .start_run(as_key(
            &keys.acme_calculator,
            pb::StartRunRequest {
                objective: "What is 6*7?".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .run_id;
    // Step 1 (the calculator) is stored; step 2 is streaming its slow
    // request for the clock: kill the orchestrator now.
    agentmesh_testkit::eventually("step 1 stored", Duration::from_secs(20), || {
        let mut client = client.clone();
        let request = as_key(
            &keys.acme_calculator,
            pb::GetRunRequest {
                run_id: run_id.clone(),
            },
        );
        async move {
            let run = client.get_run(request).await.ok()?.into_inner().run?;
            (run.steps >= 1).then_some(())
        }
    })
    .await;
    first.child.kill().await.unwrap();
    let (_, metrics) = http_get(tool_runner.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_auth_decisions_total",
            &[r#"reason="tool_not_allowed""#]
        ),
        0.0,
        "the clock was asked for before the crash: {metrics}"
    );

    // Another instance takes the run over once the claim runs out; its
    // calls act for the run's end user, so the clock is still refused.
    let second = start("agentmesh-orchestrator", orchestrator_args).await;
    wait_serving(channel(second.grpc), "").await;
    let mut client = OrchestratorServiceClient::new(channel(second.grpc));
    let mut stream = client
        .stream_run(as_key(
            &keys.acme_calculator,
            pb::StreamRunRequest {
                run_id: run_id.clone(),
                after_sequence: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(response) = within("the resumed run", Duration::from_secs(40), stream.message())
        .await
        .unwrap()
    {
        let event = response.event.unwrap();
        if event.sequence > 0 {
            events.push(event);
        }
    }
    assert!(
        events.iter().any(|event| matches!(&event.event,
            Some(run_event::Event::Progress(progress)) if progress.step_restarted)),
        "the run was not resumed: {events:#?}"
    );
    assert_eq!(output_of(&events), "the clock is not mine to read");
    assert!(
        events.iter().any(|event| matches!(&event.event,
            Some(run_event::Event::ToolCallFinished(call))
                if call.tool == "current_time" && call.is_error
                    && call.error_message.contains("not allowed"))),
        "{events:#?}"
    );
    let (_, metrics) = http_get(tool_runner.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_tool_executions_total",
            &[r#"tool="current_time""#]
        ),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "agentmesh_auth_decisions_total",
            &[r#"result="refused""#, r#"reason="tool_not_allowed""#]
        ),
        1.0,
        "{metrics}"
    );
    // The run is still acme's only.
    let code = client
        .get_run(as_key(&keys.globex, pb::GetRunRequest { run_id }))
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
}
