//! Long-term memory in runs, end to end over real gRPC (gateway with the
//! scripted model, tool runner, orchestrator) on SQLite and on PostgreSQL:
//! a fact one run remembers (the `remember` tool) is recalled by a later
//! run of the same tenant (`recall`), never by another tenant's run, and
//! a secret in it is redacted before it is kept.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use agentmesh_orchestrator::{AgentProfile, MemoryProfile};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event::Event};
use agentmesh_tests::RunMesh;

const RULES: &str = r#"
pace = "0s"

[[rules]]
on = "user"
match = '(?i)^remember that (?P<fact>[^"\\]+)$'
tool_calls = [{ name = "remember", arguments = '{"text": "${fact}", "tags": ["fact"]}' }]

[[rules]]
on = "user"
match = '(?i)^what do you know about (?P<topic>[^"\\?]+)\?$'
tool_calls = [{ name = "recall", arguments = '{"query": "${topic}", "k": 3}' }]

[[rules]]
on = "tool"
match = '"remembered"'
text = "Noted."

[[rules]]
on = "tool"
match = '"notes":\s*\[\]'
text = "I know nothing about it."

[[rules]]
on = "tool"
match = '"text":\s*"(?P<text>[^"]+)"'
text = "I recall: ${text}"
"#;

async fn mesh(database: Option<String>) -> RunMesh {
    RunMesh::start(Some(RULES), |orchestrator| {
        if let Some(url) = database {
            orchestrator.storage.url = Some(url);
        }
        orchestrator.agents.insert(
            "keeper".to_owned(),
            AgentProfile {
                tools: Vec::new(),
                memory: MemoryProfile {
                    enabled: true,
                    ..MemoryProfile::default()
                },
                ..AgentProfile::default()
            },
        );
    })
    .await
}

/// The answer of a run of `keeper` for `tenant`.
async fn answer(mesh: &RunMesh, tenant: &str, objective: &str) -> String {
    let mut request = tonic::Request::new(pb::RunRequest {
        objective: objective.to_owned(),
        agent: "keeper".to_owned(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-agentmesh-tenant", tenant.parse().unwrap());
    let mut stream = mesh.client().run(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(response) = stream.message().await.unwrap() {
        last = response.event.and_then(|event| event.event);
    }
    match last {
        Some(Event::RunFinished(finished)) => finished.output,
        other => panic!("the run did not succeed: {other:?}"),
    }
}

async fn a_fact_is_recalled_by_its_tenant_only(mesh: RunMesh) {
    assert_eq!(
        answer(
            &mesh,
            "acme",
            "Remember that the launch code word is bluebird, api key sk-proj-abcdefghijklmnopqrstuvwxyz123456"
        )
        .await,
        "Noted."
    );
    let recalled = answer(
        &mesh,
        "acme",
        "What do you know about the launch code word?",
    )
    .await;
    assert!(
        recalled.starts_with("I recall: the launch code word is bluebird"),
        "{recalled}"
    );
    assert!(
        !recalled.contains("abcdefghijklmnopqrstuvwxyz123456"),
        "a secret was kept: {recalled}"
    );
    assert_eq!(
        answer(
            &mesh,
            "globex",
            "What do you know about the launch code word?"
        )
        .await,
        "I know nothing about it."
    );
    mesh.stop().await;
}

#[tokio::test]
async fn on_sqlite_a_fact_is_recalled_by_its_tenant_only() {
    a_fact_is_recalled_by_its_tenant_only(mesh(None).await).await;
}

#[tokio::test]
async fn on_postgres_a_fact_is_recalled_by_its_tenant_only() {
    let server = agentmesh_testkit::postgres::shared().await;
    let database = server.create_database("memory_runs").await;
    a_fact_is_recalled_by_its_tenant_only(mesh(Some(database)).await).await;
}
