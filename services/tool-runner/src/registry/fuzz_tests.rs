//! Fuzz targets of tool argument validation: arbitrary JSON arguments
//! against every built-in tool's schema and against generated schemas of
//! command tools, and arbitrary `arguments_json` text at the request check.
//! Nothing panics; a refusal is INVALID_ARGUMENTS (or the status
//! INVALID_ARGUMENT) with a bounded message; a value the schema accepts is
//! accepted.

use agentmesh_proto::tools::v1::ToolErrorKind;
use agentmesh_testkit::fuzz::check;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::Registry;
use crate::config::{CommandToolConfig, Config};
use crate::runner::{CallRequest, ToolRunner};

/// A refusal lists at most 10 violations of at most 300 bytes each, plus the
/// JSON pointers they name; this bounds the message for any input whose keys
/// are shorter than 1 KiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Keys the built-in schemas know, so generated objects hit real properties.
const KNOWN_KEYS: &[&str] = &[
    "expression",
    "path",
    "content",
    "timezone",
    "format",
    "offset",
    "limit",
    "append",
    "recursive",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(KNOWN_KEYS).prop_map(str::to_owned),
        ".{0,40}",
        // Long keys: they are echoed as JSON pointers.
        "[a-z~/]{200,1000}",
    ]
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        ".{0,50}".prop_map(Value::String),
        // Large strings: violations quote the offending value.
        (1_usize..20_000).prop_map(|n| Value::String("x".repeat(n))),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Schemas of the shapes command tools declare.
fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "string", "number", "integer", "boolean", "null", "array", "object", "banana"
        ])
        .prop_map(|kind| json!({"type": kind})),
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| json!({"minimum": a, "maximum": b})),
        (0_u32..50).prop_map(|n| json!({"type": "string", "maxLength": n})),
        "[a-z^$.*+?()\\[\\]|\\\\]{0,12}"
            .prop_map(|pattern| json!({"type": "string", "pattern": pattern})),
        prop::collection::vec(json_value(), 0..4).prop_map(|values| json!({"enum": values})),
        Just(json!({})),
        Just(json!(true)),
        Just(json!(false)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            (
                prop::collection::btree_map(key(), inner.clone(), 0..4),
                prop::collection::vec(key(), 0..3),
                any::<bool>()
            )
                .prop_map(|(properties, required, closed)| json!({
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    "additionalProperties": !closed,
                })),
            inner
                .clone()
                .prop_map(|items| json!({"type": "array", "items": items, "maxItems": 5})),
            prop::collection::vec(inner, 1..3).prop_map(|any_of| json!({"anyOf": any_of})),
        ]
    })
}

#[test]
fn fuzz_tool_arguments_against_builtin_schemas() {
    let registry = match Registry::from_config(&Config::default()) {
        Ok(registry) => registry,
        Err(err) => panic!("the default configuration is valid: {err}"),
    };
    let tools: Vec<String> = registry.names().map(str::to_owned).collect();
    let input = (prop::sample::select(tools), json_value());
    check(
        "tool_arguments_against_builtin_schemas",
        input,
        |(name, arguments)| {
            let Some(tool) = registry.get(&name) else {
                return Err(TestCaseError::fail(format!("{name} is registered")));
            };
            match tool.check_arguments(&arguments) {
                Ok(()) => prop_assert!(tool.arguments.is_valid(&arguments)),
                Err(failure) => {
                    prop_assert_eq!(failure.kind, ToolErrorKind::InvalidArguments);
                    prop_assert!(!tool.arguments.is_valid(&arguments));
                    prop_assert!(failure.message.starts_with("arguments do not match"));
                    prop_assert!(
                        failure.message.len() <= MAX_MESSAGE_BYTES,
                        "{} bytes",
                        failure.message.len()
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_tool_arguments_against_generated_schemas() {
    check(
        "tool_arguments_against_generated_schemas",
        (schema(), json_value()),
        |(parameters, arguments)| {
            let mut config = Config::default();
            config.commands.insert(
                "fuzzed".into(),
                CommandToolConfig {
                    description: "a generated schema".into(),
                    command: vec!["true".into()],
                    parameters_json: parameters.to_string(),
                    ..CommandToolConfig::default()
                },
            );
            let registry = match Registry::from_config(&config) {
                Ok(registry) => registry,
                Err(err) => {
                    // Only the schema can be wrong, and the error says so.
                    prop_assert_eq!(err.setting, "commands.fuzzed.parameters_json");
                    return Ok(());
                }
            };
            let Some(tool) = registry.get("fuzzed") else {
                return Err(TestCaseError::fail("the command tool is registered"));
            };
            match tool.check_arguments(&arguments) {
                Ok(()) => prop_assert!(tool.arguments.is_valid(&arguments)),
                Err(failure) => {
                    prop_assert_eq!(failure.kind, ToolErrorKind::InvalidArguments);
                    prop_assert!(
                        failure.message.len() <= MAX_MESSAGE_BYTES,
                        "{} bytes",
                        failure.message.len()
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_tool_parameters_json_text() {
    check("tool_parameters_json_text", ".{0,200}", |text| {
        let mut config = Config::default();
        config.commands.insert(
            "fuzzed".into(),
            CommandToolConfig {
                description: "arbitrary schema text".into(),
                command: vec!["true".into()],
                parameters_json: text.clone(),
                ..CommandToolConfig::default()
            },
        );
        if let Err(err) = Registry::from_config(&config) {
            prop_assert_eq!(err.setting, "commands.fuzzed.parameters_json", "{:?}", text);
        }
        Ok(())
    });
}

/// The request check of `CallTool`: arbitrary `arguments_json` text is
/// accepted when it is JSON (or blank), else INVALID_ARGUMENT naming the
/// field; the status stays small whatever the text.
#[test]
fn fuzz_tool_arguments_json_text() {
    let runner = match ToolRunner::new(&Config::default()) {
        Ok(runner) => runner,
        Err(err) => panic!("the default configuration is valid: {err}"),
    };
    let text = prop_oneof![
        any::<String>(),
        json_value().prop_map(|value| value.to_string()),
        // JSON with one byte cut off or doubled.
        json_value().prop_map(|value| {
            let text = value.to_string();
            let cut: String = text.chars().skip(1).collect();
            cut
        }),
        Just("[".repeat(10_000)),
        Just("{\"a\":".repeat(5_000)),
    ];
    check("tool_arguments_json_text", text, |arguments_json| {
        let request = CallRequest {
            tool: "calculator".into(),
            arguments_json: arguments_json.clone(),
            ..CallRequest::default()
        };
        let is_json = arguments_json.trim().is_empty()
            || serde_json::from_str::<Value>(&arguments_json).is_ok();
        match runner.prepare(request, None) {
            Ok(_) => prop_assert!(is_json, "{arguments_json:?} was accepted"),
            Err(status) => {
                prop_assert!(!is_json, "{arguments_json:?}: {status:?}");
                prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                prop_assert!(status.message().contains("arguments_json"));
                prop_assert!(status.message().len() < 8 * 1024);
            }
        }
        Ok(())
    });
}
