//! Running pipelines against fake tools: the state and the mapping between
//! steps, fan-outs running at once, conditions, failures naming the step,
//! and progress.

use std::sync::Mutex;
use std::time::Duration;

use agentmesh_proto::tools::v1::ToolErrorKind;
use serde_json::json;
use tokio::sync::Barrier;

use super::*;
use crate::pipeline::plan::tests::{THREE_STEPS, compile};

/// Fake tools: `calculator` adds or squares numbers written `x + y` or
/// `x ^ 2`; `echo` answers its arguments; `fail` fails; `meet` waits until
/// two calls of it are running at once.
#[derive(Debug)]
struct FakeTools {
    calls: Mutex<Vec<StepCall>>,
    meeting: Barrier,
}

impl FakeTools {
    fn new() -> Self {
        Self {
            calls: Mutex::new(Vec::new()),
            meeting: Barrier::new(2),
        }
    }

    fn called(&self) -> Vec<(String, Value)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .map(|call| (call.step.clone(), call.arguments.clone()))
            .collect()
    }

    fn calculate(expression: &str) -> ToolOutcome {
        let number = |text: &str| {
            text.trim()
                .parse::<f64>()
                .map_err(|err| ToolFailure::failed(err.to_string()))
        };
        let result = if let Some((a, b)) = expression.split_once('+') {
            number(a)? + number(b)?
        } else if let Some(a) = expression.strip_suffix("^ 2") {
            number(a)?.powi(2)
        } else {
            return Err(ToolFailure::failed(format!("cannot read {expression:?}")));
        };
        Ok(json!({"result": result}))
    }
}

impl StepCaller for FakeTools {
    fn call(&self, step: StepCall) -> futures::future::BoxFuture<'_, ToolOutcome> {
        self.calls.lock().unwrap().push(step.clone());
        Box::pin(async move {
            match step.tool.as_str() {
                "calculator" => {
                    Self::calculate(step.arguments["expression"].as_str().unwrap_or(""))
                }
                "echo" => Ok(step.arguments),
                "meet" => {
                    self.meeting.wait().await;
                    Ok(json!({"met": true}))
                }
                _ => Err(ToolFailure::failed("exited with code 1")
                    .with_output(r#"{"error":"boom"}"#.into())),
            }
        })
    }
}

fn context<'a>(tools: &'a FakeTools, events: Option<&'a Events>) -> PipelineCall<'a> {
    PipelineCall {
        steps: tools,
        call_id: "call-7",
        deadline: Instant::now() + Duration::from_secs(30),
        events,
    }
}

/// Compiles with any tool name accepted.
fn pipeline(text: &str) -> Pipeline {
    Pipeline::compile(
        "p",
        &toml::from_str(text).unwrap(),
        "pipelines.p",
        1 << 20,
        |_| Ok(()),
    )
    .unwrap()
}

#[tokio::test]
async fn steps_map_their_outputs_into_the_next_ones() {
    let tools = FakeTools::new();
    let pipeline = compile(THREE_STEPS).unwrap();
    let output = pipeline
        .run(&json!({"a": 3, "b": 4}), context(&tools, None))
        .await
        .unwrap();
    // The last step echoes its arguments: a whole placeholder keeps the
    // number a number.
    assert_eq!(output, json!({"value": 25.0}));
    let called = tools.called();
    let steps: Vec<&str> = called.iter().map(|(step, _)| step.as_str()).collect();
    assert_eq!(steps, ["a2", "b2", "sum", "root"]);
    assert_eq!(called[0].1, json!({"expression": "3 ^ 2"}));
    assert_eq!(called[2].1, json!({"expression": "9.0 + 16.0"}));
    let calls = tools.calls.lock().unwrap();
    assert_eq!(calls[2].call_id, "call-7/sum");
    assert_eq!(calls[2].parent_call_id, "call-7");
    assert_eq!(calls[2].pipeline, "p");
}

#[tokio::test]
async fn the_output_template_picks_the_result() {
    let tools = FakeTools::new();
    let text = format!(
        "output = {{ root = \"${{/steps/root/output/value}}\", squares = \"${{/steps/squares/output}}\", a = \"${{/input/a}}\" }}\n{THREE_STEPS}"
    );
    let output = compile(&text)
        .unwrap()
        .run(&json!({"a": 3, "b": 4}), context(&tools, None))
        .await
        .unwrap();
    assert_eq!(
        output,
        json!({
            "root": 25.0,
            "squares": {"a2": {"result": 9.0}, "b2": {"result": 16.0}},
            "a": 3
        })
    );
}

#[tokio::test]
async fn fan_out_branches_run_at_once() {
    let tools = FakeTools::new();
    let pipeline = pipeline(
        "[[steps]]\nid = \"both\"\n[[steps.parallel]]\nid = \"x\"\ntool = \"meet\"\n[[steps.parallel]]\nid = \"y\"\ntool = \"meet\"",
    );
    // One after the other, the first would wait for the second for ever.
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        pipeline.run(&json!({}), context(&tools, None)),
    )
    .await
    .expect("both branches ran at once")
    .unwrap();
    assert_eq!(output, json!({"x": {"met": true}, "y": {"met": true}}));
}

#[tokio::test]
async fn conditions_skip_steps() {
    let text = r#"
        [[steps]]
        id = "always"
        tool = "echo"
        arguments = { n = 1 }
        [[steps]]
        id = "fast"
        tool = "echo"
        arguments = { mode = "fast" }
        when = { path = "/input/mode", equals = "fast" }
        [[steps]]
        id = "flagged"
        tool = "echo"
        arguments = { flag = "${/input/flag}" }
        when = { path = "/input/flag" }
        [[steps]]
        id = "fan"
        when = { path = "/steps/fast/skipped", equals = false }
        [[steps.parallel]]
        id = "left"
        tool = "echo"
        [[steps.parallel]]
        id = "right"
        tool = "echo"
        when = { path = "/input/mode", not_equals = "fast" }
    "#;
    let pipeline = pipeline(text);
    let run = |input: Value| {
        let pipeline = &pipeline;
        async move {
            let tools = FakeTools::new();
            let output = pipeline.run(&input, context(&tools, None)).await.unwrap();
            let steps: Vec<String> = tools.called().into_iter().map(|(step, _)| step).collect();
            (steps, output)
        }
    };
    let (steps, output) = run(json!({"mode": "fast"})).await;
    assert_eq!(steps, ["always", "fast", "left"]);
    // The right branch was skipped: the fan-out collects what ran.
    assert_eq!(output, json!({"left": {}}));
    let (steps, output) = run(json!({"mode": "slow", "flag": [1]})).await;
    assert_eq!(steps, ["always", "flagged"]);
    // The output of the last step that ran.
    assert_eq!(output, json!({"flag": [1]}));
    for falsy in [
        json!(0),
        json!(""),
        json!([]),
        json!({}),
        json!(false),
        Value::Null,
    ] {
        let (steps, _) = run(json!({"flag": falsy})).await;
        assert_eq!(steps, ["always"], "{falsy}");
    }
}

#[test]
fn numbers_are_equal_by_value_in_conditions() {
    assert!(same(&json!(0), &json!(0.0)));
    assert!(same(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    assert!(!same(&json!("1"), &json!(1)));
    assert!(same(&json!(u64::MAX), &json!(u64::MAX)));
}

#[tokio::test]
async fn a_failing_step_fails_the_pipeline_naming_it() {
    let tools = FakeTools::new();
    let pipeline = pipeline(
        "[[steps]]\nid = \"first\"\ntool = \"echo\"\n[[steps]]\nid = \"broken\"\ntool = \"fail\"\n[[steps]]\nid = \"never\"\ntool = \"echo\"",
    );
    let failure = pipeline
        .run(&json!({}), context(&tools, None))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, ToolErrorKind::ExecutionFailed);
    assert_eq!(
        failure.message,
        "step `broken` (tool `fail`) of pipeline `p` failed: exited with code 1"
    );
    assert_eq!(failure.output_json, r#"{"error":"boom"}"#);
    assert_eq!(tools.called().len(), 2, "no step runs after a failure");
}

#[tokio::test]
async fn a_failing_branch_lets_the_others_finish_and_names_them() {
    let tools = FakeTools::new();
    let pipeline = pipeline(
        "[[steps]]\nid = \"fan\"\n[[steps.parallel]]\nid = \"ok\"\ntool = \"echo\"\n[[steps.parallel]]\nid = \"bad1\"\ntool = \"fail\"\n[[steps.parallel]]\nid = \"bad2\"\ntool = \"fail\"",
    );
    let failure = pipeline
        .run(&json!({}), context(&tools, None))
        .await
        .unwrap_err();
    assert!(
        failure.message.starts_with("step `bad1` (tool `fail`)"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.ends_with("also failed: `bad2`"),
        "{}",
        failure.message
    );
    assert_eq!(tools.called().len(), 3);
}

#[tokio::test]
async fn missing_values_say_whose_they_are() {
    let tools = FakeTools::new();
    let pipeline = pipeline(
        r#"
        [[steps]]
        id = "maybe"
        tool = "echo"
        when = { path = "/input/go" }
        [[steps]]
        id = "use"
        tool = "echo"
        arguments = { v = "${/steps/maybe/output/v}", n = "${/input/n}" }
        "#,
    );
    // `n` is given: what is missing is the skipped or empty step's value.
    let failure = pipeline
        .run(&json!({"go": true, "n": 1}), context(&tools, None))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, ToolErrorKind::ExecutionFailed);
    assert!(
        failure.message.contains("the arguments of step `use` read `/steps/maybe/output/v`, but step `maybe`'s output has nothing there"),
        "{}",
        failure.message
    );
    let failure = pipeline
        .run(&json!({"n": 1}), context(&tools, None))
        .await
        .unwrap_err();
    assert!(
        failure.message.contains("step `maybe` was skipped"),
        "{}",
        failure.message
    );
    let pipeline = self::pipeline(
        "[[steps]]\nid = \"use\"\ntool = \"echo\"\narguments = { n = \"${/input/n}\" }",
    );
    let failure = pipeline
        .run(&json!({}), context(&tools, None))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, ToolErrorKind::InvalidArguments);
    assert!(
        failure.message.contains("`/input/n`"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn an_oversized_result_is_invalid_output() {
    let tools = FakeTools::new();
    let config =
        toml::from_str("[[steps]]\nid = \"big\"\ntool = \"echo\"\narguments = \"${/input}\"")
            .unwrap();
    let pipeline = Pipeline::compile("p", &config, "pipelines.p", 100, |_| Ok(())).unwrap();
    pipeline
        .run(&json!({"text": "short"}), context(&tools, None))
        .await
        .unwrap();
    let failure = pipeline
        .run(&json!({"text": "x".repeat(200)}), context(&tools, None))
        .await
        .unwrap_err();
    assert_eq!(failure.kind, ToolErrorKind::InvalidOutput);
    assert!(
        failure.message.contains("over max_output_bytes (100)"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn long_call_ids_are_cut_to_keep_the_step() {
    let tools = FakeTools::new();
    let pipeline = pipeline("[[steps]]\nid = \"step\"\ntool = \"echo\"");
    let long = "c".repeat(300);
    let mut call = context(&tools, None);
    call.call_id = &long;
    pipeline.run(&json!({}), call).await.unwrap();
    let mut call = context(&tools, None);
    call.call_id = "";
    pipeline.run(&json!({}), call).await.unwrap();
    let calls = tools.calls.lock().unwrap();
    assert_eq!(calls[0].call_id.len(), MAX_CALL_ID);
    assert!(calls[0].call_id.ends_with("c/step"));
    assert_eq!(
        calls[1].call_id, "p/step",
        "without a call id, the pipeline's name"
    );
}

#[tokio::test]
async fn each_step_is_reported_as_progress() {
    let tools = FakeTools::new();
    let (events, mut received) = mpsc::channel(16);
    compile(THREE_STEPS)
        .unwrap()
        .run(&json!({"a": 0, "b": 0}), context(&tools, Some(&events)))
        .await
        .unwrap();
    drop(events);
    let mut messages = Vec::new();
    while let Some(Ok(ExecuteToolStreamResponse {
        event: Some(Event::Progress(progress)),
    })) = received.recv().await
    {
        messages.push((
            progress.message,
            progress.percent.unwrap_or_default().round(),
        ));
    }
    assert_eq!(
        messages,
        [
            ("step `squares` done (1 of 3)".to_owned(), 33.0),
            ("step `sum` done (2 of 3)".to_owned(), 67.0),
            ("step `root` skipped (3 of 3)".to_owned(), 100.0),
        ]
    );
}

#[tokio::test]
async fn steps_end_a_little_before_the_pipeline() {
    let tools = FakeTools::new();
    let pipeline = pipeline("[[steps]]\nid = \"step\"\ntool = \"echo\"");
    for (left, reserve) in [
        (Duration::from_secs(30), MAX_STEP_RESERVE),
        (Duration::from_secs(1), Duration::from_millis(100)),
    ] {
        let mut call = context(&tools, None);
        call.deadline = Instant::now() + left;
        pipeline.run(&json!({}), call).await.unwrap();
        let step = tools.calls.lock().unwrap().pop().unwrap();
        assert!(step.deadline < call.deadline);
        // A tenth of the time left, give or take the time the test took.
        let kept = call.deadline - step.deadline;
        assert!(
            kept <= reserve && kept + Duration::from_millis(50) >= reserve,
            "{kept:?}"
        );
    }
}
