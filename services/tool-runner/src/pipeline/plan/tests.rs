//! The checks a pipeline's configuration passes at start, each failing
//! with the setting named.

use super::*;

/// A pipeline from its TOML form (the part under `[tool_runner.pipelines.p]`).
pub(crate) fn config(text: &str) -> PipelineConfig {
    toml::from_str(text).unwrap()
}

/// Compiles `text` as pipeline `p`, where the tools are `calculator` and
/// `echo`, and `other` is a pipeline.
pub(crate) fn compile(text: &str) -> Result<Pipeline, ConfigError> {
    Pipeline::compile(
        "p",
        &config(text),
        "pipelines.p",
        1 << 20,
        |tool| match tool {
            "calculator" | "echo" => Ok(()),
            "other" => Err("`other` is a pipeline".to_owned()),
            _ => Err(format!("no tool named `{tool}`")),
        },
    )
}

/// The setting a bad pipeline is refused under, and the message.
fn refused(text: &str) -> (String, String) {
    let err = compile(text).unwrap_err();
    (err.setting, err.message)
}

pub(crate) const THREE_STEPS: &str = r#"
    description = "Adds the squares of a and b, then takes the square root"
    [[steps]]
    id = "squares"
    [[steps.parallel]]
    id = "a2"
    tool = "calculator"
    arguments = { expression = "${/input/a} ^ 2" }
    [[steps.parallel]]
    id = "b2"
    tool = "calculator"
    arguments = { expression = "${/input/b} ^ 2" }
    [[steps]]
    id = "sum"
    tool = "calculator"
    arguments = { expression = "${/steps/a2/output/result} + ${/steps/squares/output/b2/result}" }
    [[steps]]
    id = "root"
    tool = "echo"
    arguments = { value = "${/steps/sum/output/result}" }
    when = { path = "/steps/sum/output/result", not_equals = 0 }
"#;

#[test]
fn a_sequence_with_a_fan_out_compiles() {
    let pipeline = compile(THREE_STEPS).unwrap();
    assert_eq!(pipeline.stages.len(), 3);
    assert_eq!(pipeline.tools(), ["calculator", "echo"]);
    let Some(Stage::Parallel { id, branches, .. }) = pipeline.stages.first() else {
        panic!("a fan-out first")
    };
    assert_eq!(id, "squares");
    let ids: Vec<&str> = branches.iter().map(|branch| branch.id.as_str()).collect();
    assert_eq!(ids, ["a2", "b2"]);
    assert!(pipeline.output.is_none());
}

#[test]
fn a_pipeline_needs_steps() {
    let (setting, message) = refused(r#"description = "d""#);
    assert_eq!(setting, "pipelines.p.steps");
    assert!(message.contains("at least one step"), "{message}");
}

#[test]
fn steps_call_known_tools_and_never_pipelines() {
    let (setting, message) = refused(
        r#"
        [[steps]]
        id = "one"
        tool = "calculator"
        [[steps]]
        id = "two"
        tool = "nope"
        "#,
    );
    assert_eq!(setting, "pipelines.p.steps[1].tool");
    assert_eq!(message, "no tool named `nope`");
    let (setting, message) = refused(
        r#"
        [[steps]]
        id = "fan"
        [[steps.parallel]]
        id = "inner"
        tool = "other"
        "#,
    );
    assert_eq!(setting, "pipelines.p.steps[0].parallel[0].tool");
    assert!(message.contains("is a pipeline"), "{message}");
}

#[test]
fn step_ids_are_identifiers_and_unique() {
    let cases = [
        (
            "[[steps]]\nid = \"a\"\ntool = \"echo\"\n[[steps]]\nid = \"a\"\ntool = \"echo\"",
            "pipelines.p.steps[1].id",
        ),
        (
            "[[steps]]\nid = \"a\"\ntool = \"echo\"\n[[steps]]\nid = \"f\"\n[[steps.parallel]]\nid = \"a\"\ntool = \"echo\"",
            "pipelines.p.steps[1].parallel[0].id",
        ),
        (
            "[[steps]]\nid = \"f\"\n[[steps.parallel]]\nid = \"x\"\ntool = \"echo\"\n[[steps.parallel]]\nid = \"x\"\ntool = \"echo\"",
            "pipelines.p.steps[0].parallel[1].id",
        ),
        (
            "[[steps]]\nid = \"f\"\n[[steps.parallel]]\nid = \"f\"\ntool = \"echo\"",
            "pipelines.p.steps[0].parallel[0].id",
        ),
        (
            "[[steps]]\nid = \"a b\"\ntool = \"echo\"",
            "pipelines.p.steps[0].id",
        ),
        ("[[steps]]\ntool = \"echo\"", "pipelines.p.steps[0].id"),
    ];
    for (text, expected) in cases {
        let (setting, message) = refused(text);
        assert_eq!(setting, expected, "{text}");
        assert!(!message.is_empty());
    }
    let (_, message) = refused(cases[0].0);
    assert!(message.contains("`a` is used twice"), "{message}");
}

#[test]
fn a_step_is_a_tool_call_or_a_fan_out() {
    let (setting, message) = refused("[[steps]]\nid = \"a\"");
    assert_eq!(setting, "pipelines.p.steps[0].tool");
    assert!(message.contains("needs a `tool`"), "{message}");
    let (setting, _) = refused(
        "[[steps]]\nid = \"f\"\ntool = \"echo\"\n[[steps.parallel]]\nid = \"x\"\ntool = \"echo\"",
    );
    assert_eq!(setting, "pipelines.p.steps[0].tool");
    let (setting, _) = refused(
        "[[steps]]\nid = \"f\"\narguments = { a = 1 }\n[[steps.parallel]]\nid = \"x\"\ntool = \"echo\"",
    );
    assert_eq!(setting, "pipelines.p.steps[0].arguments");
    let (setting, message) = refused(
        "[[steps]]\nid = \"f\"\n[[steps.parallel]]\nid = \"g\"\n[[steps.parallel.parallel]]\nid = \"x\"\ntool = \"echo\"",
    );
    assert_eq!(setting, "pipelines.p.steps[0].parallel[0].parallel");
    assert!(message.contains("do not nest"), "{message}");
}

#[test]
fn placeholders_read_only_the_input_and_earlier_steps() {
    // A later step.
    let (setting, message) = refused(
        r#"
        [[steps]]
        id = "first"
        tool = "echo"
        arguments = { v = "${/steps/second/output}" }
        [[steps]]
        id = "second"
        tool = "echo"
        "#,
    );
    assert_eq!(setting, "pipelines.p.steps[0].arguments");
    assert!(message.contains("step `second`"), "{message}");
    assert!(message.contains("no step has run here"), "{message}");
    // Itself.
    let (setting, _) =
        refused("[[steps]]\nid = \"a\"\ntool = \"echo\"\narguments = { v = \"${/steps/a}\" }");
    assert_eq!(setting, "pipelines.p.steps[0].arguments");
    // A sibling branch of the same fan-out.
    let (setting, message) = refused(
        r#"
        [[steps]]
        id = "before"
        tool = "echo"
        [[steps]]
        id = "fan"
        [[steps.parallel]]
        id = "x"
        tool = "echo"
        [[steps.parallel]]
        id = "y"
        tool = "echo"
        arguments = { v = "${/steps/x/output}" }
        "#,
    );
    assert_eq!(setting, "pipelines.p.steps[1].parallel[1].arguments");
    assert!(message.contains("steps run here: before"), "{message}");
    // Neither input nor steps, and not a pointer.
    for template in ["${/config/x}", "${/steps}", "${input/a}", "${/input/a"] {
        let text =
            format!("[[steps]]\nid = \"a\"\ntool = \"echo\"\narguments = {{ v = \"{template}\" }}");
        let (setting, message) = refused(&text);
        assert_eq!(setting, "pipelines.p.steps[0].arguments", "{template}");
        assert!(
            message.starts_with("at /v: ") || message.contains("reads neither"),
            "{template}: {message}"
        );
    }
}

#[test]
fn conditions_and_the_output_are_checked_too() {
    let (setting, message) =
        refused("[[steps]]\nid = \"a\"\ntool = \"echo\"\nwhen = { path = \"/steps/b/output\" }");
    assert_eq!(setting, "pipelines.p.steps[0].when.path");
    assert!(message.contains("step `b`"), "{message}");
    let (setting, _) = refused(
        "[[steps]]\nid = \"a\"\ntool = \"echo\"\nwhen = { path = \"/input/x\", equals = 1, not_equals = 2 }",
    );
    assert_eq!(setting, "pipelines.p.steps[0].when");
    let (setting, _) =
        refused("output = \"${/steps/zzz/output}\"\n[[steps]]\nid = \"a\"\ntool = \"echo\"");
    assert_eq!(setting, "pipelines.p.output");
    // The output reads any step, the fan-out's branches included.
    let text = format!(
        "output = {{ a = \"${{/steps/a2/output}}\", all = \"${{/steps}}x\" }}\n{THREE_STEPS}"
    );
    let (setting, _) = refused(&text);
    assert_eq!(
        setting, "pipelines.p.output",
        "`/steps` alone names no step"
    );
    let text = format!(
        "output = {{ a = \"${{/steps/a2/output}}\", n = \"${{/input/a}}\" }}\n{THREE_STEPS}"
    );
    compile(&text).unwrap();
}

#[test]
fn unknown_fields_are_refused_when_parsed() {
    let err =
        toml::from_str::<PipelineConfig>("[[steps]]\nid = \"a\"\ntol = \"echo\"").unwrap_err();
    assert!(err.to_string().contains("unknown field `tol`"), "{err}");
}
