//! Sub-runs end to end over real gRPC (gateway with the scripted model,
//! tool runner, orchestrator): an `orchestrator_workers` lead starts three
//! workers as sub-runs that run in parallel, each a run of its own
//! (streamable, listed by its parent); cancelling the parent cancels them;
//! a `router` sends two objectives to two different agents; and sub-runs
//! never wait behind their parent for a place.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use agentmesh_orchestrator::{AgentProfile, RouterSettings, Strategy, WorkerSettings};
use agentmesh_proto::orchestrator::v1::{self as pb, run_event::Event};
use agentmesh_tests::{RunMesh, within};

const RULES: &str = r#"
pace = "0s"

[[rules]]
role = "lead"
on = "user"
match = '(?i)^research (?P<a>\w+), (?P<b>\w+) and (?P<c>\w+)$'
tool_calls = [
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe ${a}"}' },
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe ${b}"}' },
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe ${c}"}' },
]

[[rules]]
role = "lead"
on = "tool"
text = "The team finished."

[[rules]]
role = "worker"
on = "user"
match = '^Describe slowly'
pace = "400ms"
text = "this takes a long long long long long long long long long while"

[[rules]]
role = "worker"
on = "user"
match = '^Describe (?P<x>\w+)$'
pace = "60ms"
text = "${x} is described in five words."

[[rules]]
role = "router"
match = 'Objective: (?i)what is [0-9]'
text = '{"route": "math", "reason": "arithmetic"}'

[[rules]]
role = "router"
text = '{"route": "clock", "reason": "anything else"}'

[[rules]]
role = "worker"
match = '(?i)^what is [0-9]'
text = "math answered."

[[rules]]
role = "worker"
text = "clock answered."
"#;

fn profile(strategy: Strategy) -> AgentProfile {
    AgentProfile {
        strategy,
        tools: Vec::new(),
        ..AgentProfile::default()
    }
}

async fn mesh() -> RunMesh {
    RunMesh::start(Some(RULES), |orchestrator| {
        // One place per tenant: sub-runs must not queue behind their parent.
        orchestrator.max_concurrent_runs_per_tenant = 1;
        let agents = &mut orchestrator.agents;
        agents.insert("worker".to_owned(), profile(Strategy::ToolLoop));
        agents.insert("math".to_owned(), profile(Strategy::ToolLoop));
        agents.insert("clock".to_owned(), profile(Strategy::ToolLoop));
        let mut team = profile(Strategy::OrchestratorWorkers);
        team.workers = WorkerSettings {
            agents: vec!["worker".to_owned()],
            ..WorkerSettings::default()
        };
        agents.insert("team".to_owned(), team);
        let mut triage = profile(Strategy::Router);
        triage.router = RouterSettings {
            routes: vec!["math".to_owned(), "clock".to_owned()],
            fallback: "clock".to_owned(),
        };
        agents.insert("triage".to_owned(), triage);
    })
    .await
}

async fn run(mesh: &RunMesh, agent: &str, objective: &str) -> Vec<pb::RunEvent> {
    let request = pb::RunRequest {
        objective: objective.to_owned(),
        agent: agent.to_owned(),
        ..Default::default()
    };
    let mut stream = mesh.client().run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        events.extend(response.event);
    }
    events
}

async fn get(mesh: &RunMesh, run_id: &str) -> pb::Run {
    mesh.client()
        .get_run(pb::GetRunRequest {
            run_id: run_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
}

/// The last event of the run's stream, read from its start.
async fn last_event(mesh: &RunMesh, run_id: &str) -> Option<Event> {
    let mut stream = mesh
        .client()
        .stream_run(pb::StreamRunRequest {
            run_id: run_id.to_owned(),
            after_sequence: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(response) = stream.message().await.unwrap() {
        last = response.event.and_then(|event| event.event);
    }
    last
}

fn micros(time: Option<&prost_types::Timestamp>) -> i64 {
    let time = time.unwrap();
    time.seconds * 1_000_000 + i64::from(time.nanos) / 1000
}

#[tokio::test]
async fn a_lead_runs_three_workers_as_parallel_sub_runs_each_a_run_of_its_own() {
    let mesh = mesh().await;
    let events = run(&mesh, "team", "Research rust, go and zig").await;
    let parent_id = events[0].run_id.clone();
    let started: Vec<pb::SubRunStarted> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::SubRunStarted(started)) => Some(started.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 3, "{events:#?}");
    let finished = events
        .iter()
        .filter(|e| matches!(&e.event, Some(Event::SubRunFinished(f)) if f.state() == pb::RunState::Succeeded))
        .count();
    assert_eq!(finished, 3);
    match &events.last().unwrap().event {
        Some(Event::RunFinished(done)) => assert_eq!(done.output, "The team finished."),
        other => panic!("the lead did not finish: {other:?}"),
    }
    // Each worker is a run of its own: its parent, its answer, its stream.
    let mut windows = Vec::new();
    for child in &started {
        let run = get(&mesh, &child.run_id).await;
        assert_eq!(run.parent_run_id, parent_id);
        assert_eq!(run.agent, "worker");
        assert!(
            run.output.ends_with("is described in five words."),
            "{}",
            run.output
        );
        windows.push((
            micros(run.start_time.as_ref()),
            micros(run.end_time.as_ref()),
        ));
        let last = last_event(&mesh, &child.run_id).await;
        assert!(matches!(last, Some(Event::RunFinished(_))), "{last:?}");
    }
    // In parallel: every worker started before any ended.
    let first_end = windows.iter().map(|(_, end)| *end).min().unwrap();
    assert!(
        windows.iter().all(|(start, _)| *start < first_end),
        "{windows:?}"
    );
    // Listed by their parent.
    let listed = mesh
        .client()
        .list_runs(pb::ListRunsRequest {
            parent_run_id: parent_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(listed.len(), 3);
    // And shown by its GetRun.
    let mut tree: Vec<(String, String, pb::RunState)> = get(&mesh, &parent_id)
        .await
        .sub_runs
        .into_iter()
        .map(|child| (child.run_id.clone(), child.agent.clone(), child.state()))
        .collect();
    let mut expected: Vec<_> = started
        .iter()
        .map(|child| {
            (
                child.run_id.clone(),
                "worker".to_owned(),
                pb::RunState::Succeeded,
            )
        })
        .collect();
    expected.sort();
    tree.sort();
    assert_eq!(tree, expected);
    mesh.stop().await;
}

#[tokio::test]
async fn cancelling_the_parent_cancels_its_sub_runs() {
    let mesh = mesh().await;
    let parent = mesh
        .client()
        .start_run(pb::StartRunRequest {
            objective: "Research slowly, slowly and slowly".to_owned(),
            agent: "team".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let children = within("three sub-runs", Duration::from_secs(20), async {
        loop {
            let listed = mesh
                .client()
                .list_runs(pb::ListRunsRequest {
                    parent_run_id: parent.clone(),
                    states: vec![pb::RunState::Running.into()],
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .runs;
            if listed.len() == 3 {
                return listed;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let cancelled = mesh
        .client()
        .cancel_run(pb::CancelRunRequest {
            run_id: parent.clone(),
            reason: "enough".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(cancelled.state(), pb::RunState::Cancelled);
    for child in children {
        let ended = within("the sub-run to end", Duration::from_secs(10), async {
            loop {
                let run = get(&mesh, &child.run_id).await;
                if run.state() != pb::RunState::Running && run.state() != pb::RunState::Queued {
                    return run;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert_eq!(ended.state(), pb::RunState::Cancelled, "{ended:?}");
        let last = last_event(&mesh, &child.run_id).await;
        match last {
            Some(Event::RunCancelled(cancelled)) => {
                assert!(cancelled.reason.contains(&parent), "{}", cancelled.reason);
            }
            other => panic!("the sub-run did not end cancelled: {other:?}"),
        }
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_router_sends_two_objectives_to_two_agents() {
    let mesh = mesh().await;
    for (objective, agent, answer) in [
        ("What is 6 * 7?", "math", "math answered."),
        ("What time is it?", "clock", "clock answered."),
    ] {
        let events = run(&mesh, "triage", objective).await;
        let started = events
            .iter()
            .find_map(|e| match &e.event {
                Some(Event::SubRunStarted(started)) => Some(started.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(started.agent, agent);
        match &events.last().unwrap().event {
            Some(Event::RunFinished(done)) => assert_eq!(done.output, answer),
            other => panic!("the router did not finish: {other:?}"),
        }
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_token_budget_shared_with_sub_runs_stops_the_tree_naming_it() {
    let mesh = mesh().await;
    let request = pb::RunRequest {
        objective: "Research rust, go and zig".to_owned(),
        agent: "team".to_owned(),
        limits: Some(pb::RunLimits {
            max_tokens: 150,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = mesh.client().run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        events.extend(response.event);
    }
    // The lead's first call and the three workers spend more than the
    // budget between them: the lead's next call is refused.
    let Some(Event::RunFailed(failed)) = &events.last().unwrap().event else {
        panic!("the tree went past its budget: {events:#?}");
    };
    let error = failed.error.clone().unwrap();
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert!(
        error.message.contains("max_tokens = 150"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("sub-runs included"),
        "{}",
        error.message
    );
    let usage = failed.usage.unwrap();
    assert!(usage.input_tokens + usage.output_tokens < 150, "{usage:?}");
    mesh.stop().await;
}

/// A merged stream of `run_id` and its sub-runs: (run id, sequence, cursor)
/// of every event but heartbeats.
async fn merged(mesh: &RunMesh, run_id: &str, cursor: &str) -> Vec<(String, i32, String)> {
    let mut stream = mesh
        .client()
        .stream_run(pb::StreamRunRequest {
            run_id: run_id.to_owned(),
            include_sub_runs: true,
            cursor: cursor.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        let event = response.event.unwrap();
        if event.sequence > 0 {
            seen.push((event.run_id, event.sequence, response.cursor));
        }
    }
    seen
}

#[tokio::test]
async fn a_parent_streams_with_its_sub_runs_and_resumes_by_cursor() {
    let mesh = mesh().await;
    let events = run(&mesh, "team", "Research rust, go and zig").await;
    let parent = events[0].run_id.clone();
    let all = merged(&mesh, &parent, "").await;
    // The parent's and its three workers' events, each run's in order,
    // none twice, every run to its end.
    let mut by_run: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
    for (run_id, sequence, _) in &all {
        by_run.entry(run_id.clone()).or_default().push(*sequence);
    }
    assert_eq!(by_run.len(), 4, "{by_run:?}");
    for (run_id, sequences) in &by_run {
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "{run_id}: {sequences:?}"
        );
        let run = get(&mesh, run_id).await;
        assert_eq!(*sequences.last().unwrap(), run.last_sequence, "{run_id}");
    }
    // Resumed from the cursor of the 10th event: exactly the rest.
    let cut = 10;
    let rest = merged(&mesh, &parent, &all[cut - 1].2).await;
    let key = |(run_id, sequence, _): &(String, i32, String)| (run_id.clone(), *sequence);
    let mut expected: Vec<_> = all[cut..].iter().map(key).collect();
    let mut got: Vec<_> = rest.iter().map(key).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // A cursor is only for a merged stream of its own run.
    let status = mesh
        .client()
        .stream_run(pb::StreamRunRequest {
            run_id: parent.clone(),
            include_sub_runs: true,
            cursor: "not-a-cursor".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    mesh.stop().await;
}

#[tokio::test]
async fn a_cost_budget_shared_with_sub_runs_stops_the_tree_naming_it() {
    // A dollar per thousand tokens, both ways, for the scripted model.
    let mesh = RunMesh::start_with(
        Some(RULES),
        |gateway| {
            gateway.prices.insert(
                "demo".to_owned(),
                agentmesh_llm_gateway::Price::new(1000.0, 1000.0),
            );
        },
        |orchestrator| {
            let mut team = profile(Strategy::OrchestratorWorkers);
            team.workers = WorkerSettings {
                agents: vec!["worker".to_owned()],
                ..WorkerSettings::default()
            };
            team.max_cost_usd = 0.15;
            orchestrator
                .agents
                .insert("worker".to_owned(), profile(Strategy::ToolLoop));
            orchestrator.agents.insert("team".to_owned(), team);
        },
    )
    .await;
    let events = run(&mesh, "team", "Research rust, go and zig").await;
    let Some(Event::RunFailed(failed)) = &events.last().unwrap().event else {
        panic!("the tree went past its budget: {events:#?}");
    };
    let error = failed.error.clone().unwrap();
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert!(
        error.message.contains("max_cost_usd = $0.150000"),
        "{}",
        error.message
    );
    mesh.stop().await;
}

#[tokio::test]
async fn the_step_limit_of_a_lead_counts_its_workers_model_calls() {
    let mesh = mesh().await;
    let request = pb::RunRequest {
        objective: "Research rust, go and zig".to_owned(),
        agent: "team".to_owned(),
        limits: Some(pb::RunLimits {
            max_steps: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = mesh.client().run(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(response) = stream.message().await.unwrap() {
        last = response.event.and_then(|event| event.event);
    }
    // One call of the lead and one of each worker: the lead's second call
    // would be the tree's fifth, over its three.
    let Some(Event::RunFailed(failed)) = last else {
        panic!("the tree went past its step limit: {last:?}");
    };
    let error = failed.error.unwrap();
    assert_eq!(error.code, tonic::Code::ResourceExhausted as i32);
    assert!(error.message.contains("max_steps = 3"), "{}", error.message);
    assert!(
        error.message.contains("sub-runs included"),
        "{}",
        error.message
    );
    mesh.stop().await;
}
