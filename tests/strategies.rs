//! Agent strategies beyond the tool loop, driven end to end over real gRPC
//! (gateway with the scripted model, tool runner, orchestrator): a
//! `plan_execute` run whose middle steps run in parallel and whose third
//! step fails validation once and is revised; an `evaluator_optimizer` run
//! that passes on round 2; and, with the services as processes, a plan run whose
//! orchestrator is killed (-9) mid-plan resuming on another one without
//! running its finished steps again, and a lead killed while its workers
//! run resuming with the same workers (none started twice).
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;

use agentmesh_orchestrator::{AgentProfile, Strategy};
use agentmesh_proto::orchestrator::v1::{
    self as pb, PlanStepState, RecoveryAction, run_event::Event,
};
use std::time::Duration;

use agentmesh_proto::orchestrator::v1::orchestrator_service_client::OrchestratorServiceClient;
use agentmesh_tests::{RunMesh, RunningBinary, channel, wait_serving, within};
use prost_types::Timestamp;

/// The scripted model of the plan run: a 4-step plan (s2 and s3 need only
/// s1), an executor that calls `slow_echo` once per step, a validator that
/// refuses s3's first result, a recovery that revises s3, a synthesizer.
const PLAN_RULES: &str = include_str!("rules/plan_execute.toml");

/// The program of `slow_echo`: echoes its arguments after a pause; s3's
/// calls take longer than the others (`S3_PAUSE` seconds, default 0.6), so
/// s2's and s3's overlap and s2 ends first.
const SLOW_ECHO: &str = r#"a=$(cat); case "$a" in *'"s3"'*) sleep "${S3_PAUSE:-0.6}";; *) sleep 0.3;; esac; printf '%s' "$a""#;

/// The `slow_echo` command tool.
fn slow_echo() -> agentmesh_tool_runner::CommandToolConfig {
    agentmesh_tool_runner::CommandToolConfig {
        description: "Echoes its arguments after a pause".to_owned(),
        command: ["sh", "-c", SLOW_ECHO].map(str::to_owned).to_vec(),
        parameters_json: r#"{"type": "object"}"#.to_owned(),
        sandbox: Some(agentmesh_tool_runner::SandboxMode::Off),
        ..Default::default()
    }
}

async fn plan_mesh() -> RunMesh {
    RunMesh::start_with_tools(
        Some(PLAN_RULES),
        |_| {},
        |tools| {
            tools.commands.insert("slow_echo".to_owned(), slow_echo());
        },
        |orchestrator| {
            orchestrator.agents.insert(
                "planner".to_owned(),
                AgentProfile {
                    strategy: Strategy::PlanExecute,
                    tools: vec!["slow_echo".to_owned()],
                    max_steps: 30,
                    ..AgentProfile::default()
                },
            );
        },
    )
    .await
}

async fn run_to_end(mesh: &RunMesh, agent: &str, objective: &str) -> Vec<pb::RunEvent> {
    let mut client = mesh.client();
    let request = pb::RunRequest {
        objective: objective.to_owned(),
        agent: agent.to_owned(),
        ..Default::default()
    };
    let mut stream = client.run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        if let Some(event) = response.event {
            events.push(event);
        }
    }
    events
}

fn micros(time: Option<&Timestamp>) -> i64 {
    let time = time.unwrap();
    time.seconds * 1_000_000 + i64::from(time.nanos) / 1000
}

/// A plan-level event in short: `started s2#1`, `finished s3#1 FAILED`, …
fn plan_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::PlanCreated(created) => {
            let plan = created.plan.as_ref().unwrap();
            let steps: Vec<String> = plan
                .steps
                .iter()
                .map(|step| format!("{}<{}", step.id, step.depends_on.join("+")))
                .collect();
            format!("created {}", steps.join(" "))
        }
        Event::PlanUpdated(updated) => format!("updated: {}", updated.reason),
        Event::PlanStepStarted(started) => {
            format!("started {}#{}", started.step_id, started.attempt)
        }
        Event::PlanStepFinished(finished) => format!(
            "finished {}#{} {} {:?}",
            finished.step_id,
            finished.attempt,
            finished.state().as_str_name(),
            finished.result
        ),
        Event::RecoveryDecided(decided) => format!(
            "recovery {} {}",
            decided.step_id,
            decided.action().as_str_name()
        ),
        Event::RunFinished(finished) => format!("run finished {:?}", finished.output),
        _ => return None,
    })
}

#[tokio::test]
async fn plan_execute_runs_independent_steps_in_parallel_and_recovers_by_revising_a_step() {
    let mesh = plan_mesh().await;
    let events = run_to_end(&mesh, "planner", "What is 7 squared plus 7 doubled?").await;
    let kinds: Vec<Event> = events.iter().filter_map(|e| e.event.clone()).collect();
    let plan_lines: Vec<String> = kinds.iter().filter_map(plan_line).collect();
    assert_eq!(
        plan_lines,
        [
            "created s1< s2<s1 s3<s1 s4<s2+s3",
            "started s1#1",
            "finished s1#1 PLAN_STEP_STATE_SUCCEEDED \"The base is 7.\"",
            "started s2#1",
            "started s3#1",
            "finished s2#1 PLAN_STEP_STATE_SUCCEEDED \"The square is 49.\"",
            "finished s3#1 PLAN_STEP_STATE_FAILED \"The double is 12.\"",
            "recovery s3 RECOVERY_ACTION_REVISE_STEP",
            "updated: step s3 revised",
            "started s3#2",
            "finished s3#2 PLAN_STEP_STATE_SUCCEEDED \"The double is 14.\"",
            "started s4#1",
            "finished s4#1 PLAN_STEP_STATE_SUCCEEDED \"49 + 14 = 63.\"",
            "run finished \"The answer is 63.\"",
        ],
        "{kinds:#?}"
    );
    // Each plan step's own events, exactly: progress, the model's text or
    // its tool call, the tool's result, the answer's text.
    let calls: BTreeMap<String, Vec<String>> = per_call_events(&kinds);
    assert_eq!(
        calls.keys().collect::<Vec<_>>(),
        ["s1.1.call_1", "s2.1.call_1", "s3.1.call_1", "s3.2.call_1"]
    );
    for events in calls.values() {
        assert_eq!(events, &["started slow_echo", "finished ok"]);
    }
    // s2's and s3's first tool calls overlap in time.
    let span = |id: &str| {
        let started = events
            .iter()
            .find(|e| matches!(&e.event, Some(Event::ToolCallStarted(s)) if s.call_id == id));
        let finished = events
            .iter()
            .find(|e| matches!(&e.event, Some(Event::ToolCallFinished(f)) if f.call_id == id));
        (
            micros(started.unwrap().time.as_ref()),
            micros(finished.unwrap().time.as_ref()),
        )
    };
    let (s2_start, s2_end) = span("s2.1.call_1");
    let (s3_start, s3_end) = span("s3.1.call_1");
    assert!(
        s2_start < s3_end && s3_start < s2_end,
        "s2 [{s2_start}, {s2_end}] and s3 [{s3_start}, {s3_end}] do not overlap"
    );
    // The revision's reason and the final plan as GetRun shows it.
    let decided = kinds
        .iter()
        .find_map(|e| match e {
            Event::RecoveryDecided(d) => Some(d.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(decided.action(), RecoveryAction::ReviseStep);
    assert_eq!(decided.reason, "the step was asked too loosely");
    let run_id = events[0].run_id.clone();
    let run = mesh
        .client()
        .get_run(pb::GetRunRequest { run_id })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state(), pb::RunState::Succeeded);
    let plan = run.plan.unwrap();
    assert_eq!(plan.revision, 2);
    let s3 = plan.steps.iter().find(|s| s.id == "s3").unwrap();
    assert_eq!(
        (
            s3.state(),
            s3.attempts,
            s3.revisions,
            s3.description.as_str()
        ),
        (
            PlanStepState::Succeeded,
            2,
            1,
            "double the base, twice as much"
        )
    );
    mesh.stop().await;
}

/// Each tool call's events by call id: `started <tool>`, `finished ok|error`.
fn per_call_events(kinds: &[Event]) -> BTreeMap<String, Vec<String>> {
    let mut calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in kinds {
        match event {
            Event::ToolCallStarted(started) => calls
                .entry(started.call_id.clone())
                .or_default()
                .push(format!("started {}", started.tool)),
            Event::ToolCallFinished(finished) => calls
                .entry(finished.call_id.clone())
                .or_default()
                .push(format!(
                    "finished {}",
                    if finished.is_error { "error" } else { "ok" }
                )),
            _ => {}
        }
    }
    calls
}

const EVALUATOR_RULES: &str = r#"
pace = "0s"

[[rules]]
role = "generator"
on = "user"
match = 'Feedback on your answer'
text = "Paris is the capital of France (source: an atlas)."

[[rules]]
role = "generator"
on = "user"
text = "Paris."

[[rules]]
role = "evaluator"
match = 'Answer: .*source'
text = '{"passed": true, "feedback": "answers and names a source"}'

[[rules]]
role = "evaluator"
text = '{"passed": false, "feedback": "name your source"}'
"#;

#[tokio::test]
async fn evaluator_optimizer_revises_with_the_feedback_and_passes_on_round_two() {
    let mesh = RunMesh::start(Some(EVALUATOR_RULES), |orchestrator| {
        let mut profile = AgentProfile {
            strategy: Strategy::EvaluatorOptimizer,
            tools: Vec::new(),
            ..AgentProfile::default()
        };
        profile.evaluator.criteria = "Answers the question and names a source.".to_owned();
        orchestrator.agents.insert("writer".to_owned(), profile);
    })
    .await;
    let events = run_to_end(&mesh, "writer", "What is the capital of France?").await;
    let verdicts: Vec<(i32, bool, String)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(Event::Evaluation(evaluation)) => {
                let verdict = evaluation.verdict.clone().unwrap();
                Some((evaluation.round, verdict.passed, verdict.feedback))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (1, false, "name your source".to_owned()),
            (2, true, "answers and names a source".to_owned())
        ]
    );
    match &events.last().unwrap().event {
        Some(Event::RunFinished(finished)) => assert_eq!(
            finished.output,
            "Paris is the capital of France (source: an atlas)."
        ),
        other => panic!("the run did not succeed: {other:?}"),
    }

    mesh.stop().await;
}

/// The services of the crash test as processes: the gateway (the plan
/// rules), the tool runner (`slow_echo`, s3 pausing 3 s), and orchestrators
/// sharing one SQLite database in `dir`.
struct Processes {
    dir: tempfile::TempDir,
    gateway: RunningBinary,
    tools: RunningBinary,
}

/// The plan test's profile.
const PLANNER: &str = "[orchestrator.agents.planner]\nstrategy = \"plan_execute\"\n\
                       tools = [\"slow_echo\"]\nmax_steps = 30\n";

impl Processes {
    /// The services, the model answering by `rules`, the orchestrators
    /// configured by `orchestrator` (TOML).
    async fn start(rules: &str, orchestrator: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("rules.toml"), rules).unwrap();
        std::fs::write(
            path("gateway.toml"),
            format!(
                "[llm_gateway.audit]\nurl = \"\"\n[llm_gateway.providers.scripted]\nrules_file = {:?}\n",
                path("rules.toml")
            ),
        )
        .unwrap();
        let command = toml::Value::Array(
            ["sh", "-c", SLOW_ECHO]
                .map(|part| toml::Value::String(part.to_owned()))
                .to_vec(),
        );
        std::fs::write(
            path("tools.toml"),
            format!(
                "[tool_runner]\nworkspaces_dir = \"workspaces\"\n[tool_runner.audit]\nurl = \"\"\n\
                 [tool_runner.commands.slow_echo]\ndescription = \"echoes after a pause\"\n\
                 command = {command}\nsandbox = \"off\"\nenv = {{ S3_PAUSE = \"3\" }}\n\
                 parameters_json = '{{\"type\": \"object\"}}'\n"
            ),
        )
        .unwrap();
        std::fs::write(path("orchestrator.toml"), orchestrator).unwrap();
        let gateway = RunningBinary::start(
            "agentmesh-llm-gateway",
            &["--config", &path("gateway.toml")],
            &[],
            dir.path(),
        )
        .await;
        let tools = RunningBinary::start(
            "agentmesh-tool-runner",
            &["--config", &path("tools.toml")],
            &[],
            dir.path(),
        )
        .await;
        for addr in [gateway.grpc, tools.grpc] {
            wait_serving(channel(addr), "").await;
        }
        Self {
            dir,
            gateway,
            tools,
        }
    }

    /// An orchestrator on the shared database, with 2 s claims (a killed
    /// one's runs are resumed soon after).
    async fn orchestrator(&self) -> RunningBinary {
        let gateway = format!("http://{}", self.gateway.grpc);
        let tools = format!("http://{}", self.tools.grpc);
        let config = self.dir.path().join("orchestrator.toml");
        let orchestrator = RunningBinary::start(
            "agentmesh-orchestrator",
            &["--config", config.to_str().unwrap()],
            &[
                ("AGENTMESH_ORCHESTRATOR__LLM_GATEWAY_URL", &gateway),
                ("AGENTMESH_ORCHESTRATOR__TOOL_RUNNER_URL", &tools),
                ("AGENTMESH_ORCHESTRATOR__RUN_LEASE", "2s"),
                ("AGENTMESH_ORCHESTRATOR__AUDIT__URL", ""),
            ],
            self.dir.path(),
        )
        .await;
        wait_serving(channel(orchestrator.grpc), "").await;
        orchestrator
    }
}

/// The run's stored events from the start, up to its terminal event.
async fn stored_events(orchestrator: &RunningBinary, run_id: &str) -> Vec<Event> {
    let mut client = OrchestratorServiceClient::new(channel(orchestrator.grpc));
    let request = pb::StreamRunRequest {
        run_id: run_id.to_owned(),
        after_sequence: 0,
        ..Default::default()
    };
    let mut stream = client.stream_run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        match response.event.and_then(|event| event.event) {
            Some(Event::Heartbeat(_)) | None => {}
            Some(event) => events.push(event),
        }
    }
    events
}

#[tokio::test]
async fn a_plan_resumes_after_its_orchestrator_is_killed_without_running_finished_steps_again() {
    let processes = Processes::start(PLAN_RULES, PLANNER).await;
    let mut doomed = processes.orchestrator().await;
    let mut client = OrchestratorServiceClient::new(channel(doomed.grpc));
    let run_id = client
        .start_run(pb::StartRunRequest {
            objective: "What is 7 squared plus 7 doubled?".to_owned(),
            agent: "planner".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    // Killed once s2 has finished (stored), while s3's tool still pauses.
    let request = pb::StreamRunRequest {
        run_id: run_id.clone(),
        after_sequence: 0,
        ..Default::default()
    };
    let mut stream = client.stream_run(request).await.unwrap().into_inner();
    let s2_finished = async {
        while let Some(response) = stream.message().await.unwrap() {
            if let Some(Event::PlanStepFinished(finished)) =
                response.event.and_then(|event| event.event)
                && finished.step_id == "s2"
            {
                return;
            }
        }
        panic!("the stream ended before s2 finished");
    };
    within("s2 to finish", Duration::from_secs(30), s2_finished).await;
    doomed.signal("KILL").await;
    let _ = doomed.exit_and_log(Duration::from_secs(5)).await;

    let survivor = processes.orchestrator().await;
    let events = within(
        "the resumed run to end",
        Duration::from_secs(60),
        stored_events(&survivor, &run_id),
    )
    .await;
    let lines: Vec<String> = events.iter().filter_map(plan_line).collect();
    let count = |line: &str| lines.iter().filter(|l| l.starts_with(line)).count();
    assert_eq!(
        (
            count("started s1#"),
            count("started s2#"),
            count("started s4#")
        ),
        (1, 1, 1),
        "{lines:#?}"
    );
    let tool_calls = per_call_events(&events);
    assert!(
        tool_calls
            .keys()
            .filter(|id| id.starts_with("s1.") || id.starts_with("s2."))
            .count()
            == 2,
        "finished steps' tools ran again: {tool_calls:?}"
    );
    assert!(
        events
            .iter()
            .any(|event| matches!(event, Event::Progress(p) if p.step_restarted)),
        "no restart marker: {lines:#?}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("run finished \"The answer is 63.\""),
        "{lines:#?}"
    );
}

/// A lead delegating to three slow workers (3 s each).
const TEAM_RULES: &str = r#"
pace = "0s"
[[rules]]
role = "lead"
on = "user"
tool_calls = [
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe rust"}' },
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe go"}' },
  { name = "delegate", arguments = '{"agent": "worker", "objective": "Describe zig"}' },
]
[[rules]]
role = "lead"
on = "tool"
text = "The team finished."
[[rules]]
role = "worker"
pace = "300ms"
text = "one two three four five six seven eight nine ten"
"#;

const TEAM: &str = "[orchestrator.agents.worker]\ntools = []\n\
                    [orchestrator.agents.team]\nstrategy = \"orchestrator_workers\"\ntools = []\n\
                    [orchestrator.agents.team.workers]\nagents = [\"worker\"]\n";

#[tokio::test]
async fn a_lead_and_its_workers_resume_after_their_orchestrator_is_killed_without_new_workers() {
    let processes = Processes::start(TEAM_RULES, TEAM).await;
    let mut doomed = processes.orchestrator().await;
    let mut client = OrchestratorServiceClient::new(channel(doomed.grpc));
    let parent = client
        .start_run(pb::StartRunRequest {
            objective: "Research three languages".to_owned(),
            agent: "team".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let running = pb::ListRunsRequest {
        parent_run_id: parent.clone(),
        states: vec![pb::RunState::Running.into()],
        ..Default::default()
    };
    within("three running workers", Duration::from_secs(30), async {
        while client
            .list_runs(running.clone())
            .await
            .unwrap()
            .into_inner()
            .runs
            .len()
            < 3
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    doomed.signal("KILL").await;
    let _ = doomed.exit_and_log(Duration::from_secs(5)).await;

    let survivor = processes.orchestrator().await;
    let events = within(
        "the resumed lead to end",
        Duration::from_secs(60),
        stored_events(&survivor, &parent),
    )
    .await;
    match events.last() {
        Some(Event::RunFinished(finished)) => assert_eq!(finished.output, "The team finished."),
        other => panic!("the lead did not finish: {other:?}"),
    }
    // The workers it had started were found again, not started twice.
    let mut client = OrchestratorServiceClient::new(channel(survivor.grpc));
    let workers = client
        .list_runs(pb::ListRunsRequest {
            parent_run_id: parent,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(workers.len(), 3, "{workers:#?}");
    assert!(
        workers.iter().all(|w| w.state() == pb::RunState::Succeeded),
        "{workers:#?}"
    );
}
