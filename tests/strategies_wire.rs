//! Strategies and composite tools as a real deployment runs them, over real
//! gRPC (gateway, tool runner, orchestrator in this process):
//!
//! * the demo `planner` profile (`demo/agentmesh.toml`) on an OpenAI model:
//!   the gateway's `openai` provider talks to a mock upstream that speaks
//!   Chat Completions (SSE chunks, tool-call deltas, usage) and replays
//!   responses of such a run (`wire/plan_execute_openai/`). The upstream
//!   checks each request against what OpenAI's API accepts and that it
//!   carries nothing of agentmesh's own (no `agent_role`), picks its answer
//!   by what a model sees, and records the requests: the roles' prompts are
//!   the files of `services/orchestrator/prompts/`;
//! * the same upstream answering the gateway's one-shot `Generate`;
//! * a pipeline tool (a fan-out, then two sequential steps) called by the
//!   model inside a run: one tool call in the run's events, the pipeline's
//!   result, the answer built from it.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "strategies_wire_support.rs"]
mod support;

use std::collections::BTreeMap;

use agentmesh_orchestrator::AgentProfile;
use agentmesh_proto::llm::v1::{FinishReason, GenerateRequest, Message, Role, ToolCall, ToolSpec};
use agentmesh_proto::orchestrator::v1::{self as pb, PlanStepState, run_event::Event};
use agentmesh_tests::RunMesh;
use agentmesh_tool_runner::{PipelineConfig, StepConfig};
use serde_json::{Value, json};
use support::{GatewayAlone, MockOpenAi, Seen, openai_at, present_env_var, prompt, repository};

const OBJECTIVE: &str = "What is 17 * 23 + sqrt(144)?";

/// The synthesizer's answer in the fixtures.
const ANSWER: &str = "17 * 23 + sqrt(144) = 391 + 12 = 403.";

/// The calculator calls of the fixtures: the call's id in the run's events
/// (`<step>.<attempt>.<the model's id>`), its arguments, the tool's output.
const CALLS: [(&str, &str, &str); 3] = [
    (
        "s1.1.call_Q8mZk3VnW2bR7yTfH5sLx0Jd",
        r#"{"expression":"17 * 23"}"#,
        r#"{"result":391}"#,
    ),
    (
        "s2.1.call_7LpC2xNf9KqW4rVb0HtZ6mJs",
        r#"{"expression":"sqrt(144)"}"#,
        r#"{"result":12}"#,
    ),
    (
        "s3.1.call_Mv4Xe8TqB1nY6wKc3RhG9pZa",
        r#"{"expression":"391 + 12"}"#,
        r#"{"result":403}"#,
    ),
];

/// The demo profile `name`, as `demo/agentmesh.toml` writes it, on `model`.
fn demo_profile(name: &str, model: &str) -> AgentProfile {
    let text = std::fs::read_to_string(repository().join("demo/agentmesh.toml")).unwrap();
    let file: toml::Value = toml::from_str(&text).unwrap();
    let mut profile: AgentProfile = file["orchestrator"]["agents"][name]
        .clone()
        .try_into()
        .unwrap();
    profile.model = model.to_owned();
    profile
}

async fn run_to_end(mesh: &RunMesh, agent: &str, objective: &str) -> Vec<Event> {
    let request = pb::RunRequest {
        objective: objective.to_owned(),
        agent: agent.to_owned(),
        ..Default::default()
    };
    let mut stream = mesh.client().run(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        events.extend(response.event.and_then(|event| event.event));
    }
    events
}

/// A plan event in short: `started s2#1`, `finished s1#1 "391"`, …
fn plan_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::PlanStepStarted(started) => {
            format!("started {}#{}", started.step_id, started.attempt)
        }
        Event::PlanStepFinished(finished) => {
            let verdict = finished.verdict.clone().unwrap_or_default();
            assert_eq!(finished.state(), PlanStepState::Succeeded, "{finished:?}");
            assert!(verdict.passed, "{finished:?}");
            format!(
                "finished {}#{} {:?}",
                finished.step_id, finished.attempt, finished.result
            )
        }
        _ => return None,
    })
}

#[tokio::test]
async fn the_demo_planner_runs_on_an_openai_model_replayed_over_its_wire_format() {
    let upstream = MockOpenAi::start(repository().join("tests/wire/plan_execute_openai")).await;
    let (key_env, key) = present_env_var();
    let profile = demo_profile("planner", "gpt");
    let mesh = RunMesh::start_with(
        None,
        |gateway| openai_at(gateway, &upstream, &key_env),
        |orchestrator| {
            orchestrator.agents.insert("planner".to_owned(), profile);
        },
    )
    .await;
    let events = run_to_end(&mesh, "planner", OBJECTIVE).await;
    assert_eq!(upstream.problems(), Vec::<String>::new());

    let Some(Event::RunFinished(finished)) = events.last() else {
        panic!("the run did not succeed: {events:#?}");
    };
    assert_eq!(finished.output, ANSWER);
    assert!(finished.output.contains("403"));
    // The synthesizer's answer streamed as it came, in the last call.
    let streamed: String = events
        .iter()
        .filter_map(|event| match event {
            Event::TokenDelta(delta) if delta.step == finished.steps => Some(delta.text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, ANSWER);
    // Every model call, its usage from the stream's last chunk.
    let seen = upstream.seen();
    assert_eq!(usize::try_from(finished.steps).unwrap(), seen.len());
    let usage = finished.usage.unwrap();
    assert_eq!(
        (
            i64::from(usage.input_tokens),
            i64::from(usage.output_tokens)
        ),
        fixture_usage(&upstream, &seen)
    );
    assert_plan(&events);
    assert_calculator_calls(&events);
    assert_requests(&seen, &key);
    mesh.stop().await;
}

/// The tokens of the fixtures served, from their usage chunks.
fn fixture_usage(upstream: &MockOpenAi, seen: &[Seen]) -> (i64, i64) {
    seen.iter()
        .filter_map(|request| {
            let chunks = upstream.chunks(&request.fixture);
            let usage = chunks.iter().rev().find(|c| c["usage"].is_object())?;
            Some((
                usage["usage"]["prompt_tokens"].as_i64()?,
                usage["usage"]["completion_tokens"].as_i64()?,
            ))
        })
        .fold((0, 0), |(input, output), (more_in, more_out)| {
            (input + more_in, output + more_out)
        })
}

/// Three steps, s1 and s2 in parallel, s3 after both; each step's result.
fn assert_plan(events: &[Event]) {
    let plan = events
        .iter()
        .find_map(|event| match event {
            Event::PlanCreated(created) => created.plan.clone(),
            _ => None,
        })
        .unwrap();
    let shape: Vec<(&str, Vec<&str>)> = plan
        .steps
        .iter()
        .map(|step| {
            let depends_on = step.depends_on.iter().map(String::as_str).collect();
            (step.id.as_str(), depends_on)
        })
        .collect();
    assert_eq!(
        shape,
        [("s1", vec![]), ("s2", vec![]), ("s3", vec!["s1", "s2"])]
    );
    let lines: Vec<String> = events.iter().filter_map(plan_line).collect();
    let at = |line: &str| {
        let found = lines.iter().position(|l| l == line);
        found.unwrap_or_else(|| panic!("no {line:?} in {lines:#?}"))
    };
    let (s1_done, s2_done) = (at("finished s1#1 \"391\""), at("finished s2#1 \"12\""));
    assert!(
        at("started s1#1").max(at("started s2#1")) < s1_done.min(s2_done),
        "s1 and s2 did not both start before either finished: {lines:#?}"
    );
    assert!(
        s1_done.max(s2_done) < at("started s3#1"),
        "s3 started before its dependencies finished: {lines:#?}"
    );
    assert!(at("started s3#1") < at("finished s3#1 \"403\""));
    assert_eq!(lines.len(), 6, "{lines:#?}");
}

/// Each step's calculator call, with the model's call id, and its result.
fn assert_calculator_calls(events: &[Event]) {
    let mut calls: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    for event in events {
        match event {
            Event::ToolCallStarted(started) => {
                let call = calls.entry(started.call_id.clone()).or_default();
                call.0.clone_from(&started.tool);
                call.1.clone_from(&started.arguments_json);
            }
            Event::ToolCallFinished(finished) => {
                assert!(!finished.is_error, "{finished:?}");
                let call = calls.entry(finished.call_id.clone()).or_default();
                call.2.clone_from(&finished.output_json);
            }
            _ => {}
        }
    }
    let expected: BTreeMap<String, (String, String, String)> = CALLS
        .iter()
        .map(|(id, arguments, output)| {
            let call = (
                "calculator".to_owned(),
                (*arguments).to_owned(),
                (*output).to_owned(),
            );
            ((*id).to_owned(), call)
        })
        .collect();
    assert_eq!(calls, expected);
}

/// What the upstream was sent: OpenAI requests with the key, the route's
/// model, streamed with usage; each role's prompt from its file; plans and
/// verdicts asked for with a strict JSON Schema; the tools in function
/// format; tool results answering the model's call ids.
fn assert_requests(seen: &[Seen], key: &str) {
    let mut served: Vec<&str> = seen.iter().map(|s| s.fixture.as_str()).collect();
    served.sort_unstable();
    assert_eq!(
        served,
        [
            "executor_s1_answer",
            "executor_s1_call",
            "executor_s2_answer",
            "executor_s2_call",
            "executor_s3_answer",
            "executor_s3_call",
            "planner",
            "synthesizer",
            "validator",
            "validator",
            "validator",
        ]
    );
    for request in seen {
        assert_eq!(request.authorization, format!("Bearer {key}"));
        let body = &request.body;
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(
            (&body["stream"], &body["stream_options"]),
            (&json!(true), &json!({"include_usage": true}))
        );
        for field in ["agent_role", "run_id", "metadata", "user"] {
            assert!(body.get(field).is_none(), "{field} was sent: {body}");
        }
        let role = request.fixture.split('_').next().unwrap();
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": prompt(role)}),
            "{}",
            request.fixture
        );
    }
    let sent =
        |fixture: &str| -> &Value { &seen.iter().find(|s| s.fixture == fixture).unwrap().body };
    assert_structured_requests(seen, sent("planner"));
    assert_executor_requests(sent);
    let synthesizer = sent("synthesizer");
    let brief = synthesizer["messages"][1]["content"].as_str().unwrap();
    for result in ["result: 391", "result: 12", "result: 403"] {
        assert!(brief.contains(result), "{brief}");
    }
}

/// The planner's and validators' requests: a strict JSON Schema, no tools.
fn assert_structured_requests(seen: &[Seen], planner: &Value) {
    let request = planner["messages"][1]["content"].as_str().unwrap();
    assert!(request.contains(OBJECTIVE), "{request}");
    assert!(
        request.contains("calculator, current_time"),
        "the planner is told the tools: {request}"
    );
    let format = &planner["response_format"];
    assert_eq!(format["type"], "json_schema");
    assert_eq!(
        (
            &format["json_schema"]["name"],
            &format["json_schema"]["strict"]
        ),
        (&json!("plan"), &json!(true))
    );
    assert_eq!(
        format["json_schema"]["schema"]["required"],
        json!(["steps"])
    );
    let validators = seen.iter().filter(|s| s.fixture == "validator");
    for validator in validators.map(|s| &s.body) {
        let schema = &validator["response_format"]["json_schema"];
        assert_eq!(
            (&schema["name"], &schema["strict"]),
            (&json!("verdict"), &json!(true))
        );
    }
    for body in seen
        .iter()
        .map(|s| &s.body)
        .filter(|b| b.get("response_format").is_some())
    {
        assert!(body.get("tools").is_none(), "{body}");
    }
}

/// The executors' requests: the tools in function format; s3 told its
/// dependencies' results; the model's call and the tool's result sent back.
fn assert_executor_requests<'s>(sent: impl Fn(&str) -> &'s Value) {
    let call = sent("executor_s1_call");
    let mut tools: Vec<&str> = call["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|tool| tool["function"]["name"].as_str().unwrap())
        .collect();
    tools.sort_unstable();
    assert_eq!(tools, ["calculator", "current_time"]);
    let calculator = call["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tool| tool["function"]["name"] == "calculator")
        .unwrap();
    assert_eq!(calculator["type"], "function");
    assert_eq!(
        calculator["function"]["parameters"]["required"],
        json!(["expression"])
    );
    let s3 = sent("executor_s3_call")["messages"][1]["content"]
        .as_str()
        .unwrap();
    assert!(
        s3.contains("Result of step s1: 391") && s3.contains("Result of step s2: 12"),
        "{s3}"
    );
    let answer = sent("executor_s1_answer");
    assert_eq!(
        answer["messages"].as_array().unwrap()[2..],
        [
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_Q8mZk3VnW2bR7yTfH5sLx0Jd", "type": "function",
                "function": {"name": "calculator", "arguments": "{\"expression\":\"17 * 23\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_Q8mZk3VnW2bR7yTfH5sLx0Jd",
                   "content": "{\"result\":391}"}),
        ]
    );
}

// === the one-shot API over the same upstream ===

/// An executor's first turn, as the orchestrator asks for it.
fn executor_turn() -> GenerateRequest {
    let step = format!(
        "Objective: {OBJECTIVE}\n\nYour step (s1): Calculate 17 * 23 using the calculator."
    );
    GenerateRequest {
        model: "gpt".to_owned(),
        messages: vec![
            message(Role::System, prompt("executor")),
            message(Role::User, step),
        ],
        tools: vec![ToolSpec {
            name: "calculator".to_owned(),
            description: "Evaluates an arithmetic expression.".to_owned(),
            parameters_json: r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#.to_owned(),
        }],
        ..GenerateRequest::default()
    }
}

fn message(role: Role, content: String) -> Message {
    Message {
        role: role.into(),
        content,
        ..Message::default()
    }
}

#[tokio::test]
async fn generate_gets_the_same_answers_as_one_completion() {
    let upstream = MockOpenAi::start(repository().join("tests/wire/plan_execute_openai")).await;
    let mut gateway = GatewayAlone::start(&upstream).await;

    // A tool call, assembled from the fixture's deltas.
    let response = gateway.client.generate(executor_turn()).await.unwrap();
    let response = response.into_inner();
    assert_eq!(
        response.message.clone().unwrap().tool_calls,
        [ToolCall {
            id: "call_Q8mZk3VnW2bR7yTfH5sLx0Jd".to_owned(),
            name: "calculator".to_owned(),
            arguments_json: r#"{"expression":"17 * 23"}"#.to_owned(),
        }]
    );
    assert_eq!(response.finish_reason(), FinishReason::ToolCalls);
    let usage = response.usage.unwrap();
    assert_eq!((usage.input_tokens, usage.output_tokens), (412, 15));

    // Text: the synthesizer's.
    let request = GenerateRequest {
        model: "gpt".to_owned(),
        messages: vec![
            message(Role::System, prompt("synthesizer")),
            message(Role::User, format!("Objective: {OBJECTIVE}")),
        ],
        ..GenerateRequest::default()
    };
    let response = gateway.client.generate(request).await.unwrap().into_inner();
    assert_eq!(response.message.clone().unwrap().content, ANSWER);
    assert_eq!(response.finish_reason(), FinishReason::Stop);

    assert_eq!(upstream.problems(), Vec::<String>::new());
    let seen = upstream.seen();
    let served: Vec<&str> = seen.iter().map(|s| s.fixture.as_str()).collect();
    assert_eq!(served, ["executor_s1_call", "synthesizer"]);
    for request in &seen {
        for field in ["stream", "stream_options"] {
            assert!(request.body.get(field).is_none(), "{}", request.body);
        }
    }
    gateway.stop().await;
}

// === a pipeline inside a run ===

/// The scripted model: asks the pipeline for the hypotenuse, then answers
/// with the length in its result.
const PIPELINE_RULES: &str = r#"
pace = "0s"

[[rules]]
on = "user"
match = 'legs (?P<a>[0-9]+) and (?P<b>[0-9]+)'
tool_calls = [{ name = "hypotenuse", arguments = '{"a": ${a}, "b": ${b}}' }]

[[rules]]
on = "tool"
match = '"length":\s*(?P<length>[0-9.]+)'
text = "The hypotenuse is ${length}."
"#;

/// Three steps: the squares of both legs at once (a fan-out), their sum,
/// its square root.
fn hypotenuse() -> PipelineConfig {
    let calculator = |id: &str, expression: &str| StepConfig {
        id: id.to_owned(),
        tool: "calculator".to_owned(),
        arguments: Some(json!({ "expression": expression })),
        ..StepConfig::default()
    };
    PipelineConfig {
        description: "Length of the hypotenuse of a right triangle with legs a and b".to_owned(),
        parameters_json: r#"{"type":"object","required":["a","b"],"additionalProperties":false,
            "properties":{"a":{"type":"number","minimum":0},"b":{"type":"number","minimum":0}}}"#
            .to_owned(),
        steps: vec![
            StepConfig {
                id: "squares".to_owned(),
                parallel: vec![
                    calculator("a2", "${/input/a} ^ 2"),
                    calculator("b2", "${/input/b} ^ 2"),
                ],
                ..StepConfig::default()
            },
            calculator(
                "sum",
                "${/steps/a2/output/result} + ${/steps/b2/output/result}",
            ),
            calculator("root", "sqrt(${/steps/sum/output/result})"),
        ],
        output: Some(json!({
            "length": "${/steps/root/output/result}",
            "squares": "${/steps/squares/output}",
        })),
        ..PipelineConfig::default()
    }
}

#[tokio::test]
async fn a_pipeline_of_three_steps_runs_as_one_tool_call_inside_a_run() {
    let mesh = RunMesh::start_with_tools(
        Some(PIPELINE_RULES),
        |_| {},
        |tools| {
            tools
                .pipelines
                .insert("hypotenuse".to_owned(), hypotenuse());
        },
        |orchestrator| {
            let profile = orchestrator.agents.get_mut("default").unwrap();
            profile.tools = vec!["hypotenuse".to_owned(), "calculator".to_owned()];
        },
    )
    .await;
    let events = run_to_end(
        &mesh,
        "",
        "What is the hypotenuse of a right triangle with legs 3 and 4?",
    )
    .await;
    let calls: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::ToolCallStarted(_) | Event::ToolCallFinished(_)))
        .collect();
    let [
        Event::ToolCallStarted(started),
        Event::ToolCallFinished(finished),
    ] = calls[..]
    else {
        panic!("not one tool call: {events:#?}");
    };
    assert_eq!(
        (started.tool.as_str(), started.arguments_json.as_str()),
        ("hypotenuse", r#"{"a": 3, "b": 4}"#)
    );
    assert_eq!(
        (&finished.call_id, &finished.tool, finished.is_error),
        (&started.call_id, &started.tool, false),
        "{finished:?}"
    );
    let output: Value = serde_json::from_str(&finished.output_json).unwrap();
    assert_eq!(
        output,
        json!({"length": 5, "squares": {"a2": {"result": 9}, "b2": {"result": 16}}})
    );
    match events.last() {
        Some(Event::RunFinished(done)) => assert_eq!(done.output, "The hypotenuse is 5."),
        other => panic!("the run did not succeed: {other:?}"),
    }
    mesh.stop().await;
}
