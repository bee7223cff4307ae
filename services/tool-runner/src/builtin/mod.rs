//! The built-in tools: what each one is (name, description, schemas — what a
//! model sees through ListTools) and how it runs.
//!
//! * `calculator` ([`calculator`]): arithmetic, evaluated by a small parser
//!   of our own.
//! * `current_time` ([`clock`]): the time in UTC and an IANA time zone.
//! * `read_file`, `write_file`, `list_files` ([`files`]): confined to the
//!   run's workspace.
//! * `http_request` ([`http`]): an HTTP request through the outbound-URL
//!   guard; offered only when `[tool_runner.http] enabled`.
//!
//! The calculator is cheap CPU work and runs inline; everything that touches
//! the file system runs on the blocking thread pool.

pub(crate) mod calculator;
pub(crate) mod clock;
pub(crate) mod files;
pub(crate) mod http;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::outcome::{ToolFailure, ToolOutcome};
use crate::workspace::Workspace;
use files::FileLimits;

/// A tool built into the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Calculator,
    CurrentTime,
    ReadFile,
    WriteFile,
    ListFiles,
    HttpRequest,
}

impl Builtin {
    /// Every built-in tool.
    pub(crate) const ALL: [Self; 6] = [
        Self::Calculator,
        Self::CurrentTime,
        Self::ReadFile,
        Self::WriteFile,
        Self::ListFiles,
        Self::HttpRequest,
    ];

    /// Whether the configuration offers it (`http_request` is opt-in).
    pub(crate) fn enabled(self, http: &http::HttpToolConfig) -> bool {
        self != Self::HttpRequest || http.enabled
    }

    /// The tool's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Calculator => "calculator",
            Self::CurrentTime => "current_time",
            Self::ReadFile => "read_file",
            Self::WriteFile => "write_file",
            Self::ListFiles => "list_files",
            Self::HttpRequest => http::NAME,
        }
    }

    /// What the tool does, written for a model.
    pub(crate) fn description(self) -> &'static str {
        match self {
            Self::Calculator => {
                "Evaluates an arithmetic expression exactly and returns {\"result\": number}. \
                 Supports + - * / % ^ (power, right-associative), parentheses, unary minus, \
                 the functions sqrt, abs, round, floor, ceil, ln, log10, sin, cos, tan (radians), \
                 min and max (one or more arguments), and the constants pi and e. \
                 Use it instead of doing arithmetic yourself."
            }
            Self::CurrentTime => {
                "Returns the current date and time: in UTC, in the given IANA time zone \
                 (default UTC) with its offset, and as Unix seconds."
            }
            Self::ReadFile => {
                "Reads a text file from the run's workspace. Paths are relative to the \
                 workspace. Returns its content (at most max_bytes from the start), its size \
                 in bytes and whether the content was truncated."
            }
            Self::WriteFile => {
                "Writes a text file in the run's workspace, replacing it (or appending when \
                 append is true) and creating parent directories. Paths are relative to the \
                 workspace."
            }
            Self::ListFiles => {
                "Lists a directory of the run's workspace (default: the workspace itself), \
                 optionally recursively: each entry's name, path, kind (file, dir, symlink) \
                 and size of files."
            }
            Self::HttpRequest => http::DESCRIPTION,
        }
    }

    /// JSON Schema of the arguments.
    pub(crate) fn parameters(self, max_file_bytes: u64, http: &http::HttpToolConfig) -> Value {
        let path = json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
            "description": "A path relative to the run's workspace, e.g. \"notes/todo.txt\"."
        });
        match self {
            Self::Calculator => json!({
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 1024,
                        "description": "The expression, e.g. \"17 * 23 + sqrt(16)\"."
                    }
                },
                "required": ["expression"],
                "additionalProperties": false
            }),
            Self::CurrentTime => json!({
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "pattern": "^[A-Za-z0-9_+/-]{1,64}$",
                        "description": "An IANA time zone name such as \"Europe/Paris\"; default UTC."
                    }
                },
                "additionalProperties": false
            }),
            Self::ReadFile => json!({
                "type": "object",
                "properties": {
                    "path": path,
                    "max_bytes": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": max_file_bytes,
                        "description": format!("Most bytes to return from the start of the file; default and maximum {max_file_bytes}.")
                    }
                },
                "required": ["path"],
                "additionalProperties": false
            }),
            Self::WriteFile => json!({
                "type": "object",
                "properties": {
                    "path": path,
                    "content": {
                        "type": "string",
                        "description": format!("The text to write; at most {max_file_bytes} bytes.")
                    },
                    "append": {
                        "type": "boolean",
                        "description": "Append to the file instead of replacing it; default false."
                    }
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
            Self::ListFiles => json!({
                "type": "object",
                "properties": {
                    "path": {
                        "type": "string",
                        "maxLength": 4096,
                        "description": "The directory to list, relative to the workspace; default \".\"."
                    },
                    "recursive": {
                        "type": "boolean",
                        "description": "Also list subdirectories; default false."
                    }
                },
                "additionalProperties": false
            }),
            Self::HttpRequest => http::parameters(http),
        }
    }

    /// JSON Schema of the output.
    pub(crate) fn output_schema(self) -> Value {
        match self {
            Self::Calculator => json!({
                "type": "object",
                "properties": {"result": {"type": "number"}},
                "required": ["result"]
            }),
            Self::CurrentTime => json!({
                "type": "object",
                "properties": {
                    "utc": {"type": "string"},
                    "local": {"type": "string"},
                    "timezone": {"type": "string"},
                    "unix_seconds": {"type": "integer"}
                },
                "required": ["utc", "local", "timezone", "unix_seconds"]
            }),
            Self::ReadFile => json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "bytes": {"type": "integer", "description": "The file's size."},
                    "truncated": {"type": "boolean"}
                },
                "required": ["path", "content", "bytes", "truncated"]
            }),
            Self::WriteFile => json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "bytes_written": {"type": "integer"}
                },
                "required": ["path", "bytes_written"]
            }),
            Self::ListFiles => json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "entries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "description": "Relative to the listed directory."},
                                "path": {"type": "string", "description": "Relative to the workspace."},
                                "kind": {"enum": ["file", "dir", "symlink", "other"]},
                                "size": {"type": "integer"}
                            },
                            "required": ["name", "path", "kind"]
                        }
                    },
                    "truncated": {"type": "boolean"}
                },
                "required": ["path", "entries", "truncated"]
            }),
            Self::HttpRequest => http::output_schema(),
        }
    }

    /// Whether running it twice has the same effect as once.
    pub(crate) fn idempotent(self) -> bool {
        // write_file can append, and a POST is not a GET: twice is not once.
        !matches!(self, Self::WriteFile | Self::HttpRequest)
    }

    /// Labels shown by ListTools.
    pub(crate) fn labels(self) -> BTreeMap<String, String> {
        let category = match self {
            Self::Calculator => "math",
            Self::CurrentTime => "time",
            Self::ReadFile | Self::WriteFile | Self::ListFiles => "files",
            Self::HttpRequest => "network",
        };
        BTreeMap::from([("category".to_owned(), category.to_owned())])
    }
}

/// What a built-in tool needs besides its arguments.
#[derive(Debug, Clone)]
pub(crate) struct BuiltinContext {
    /// The run's workspace directory (created on first use).
    pub(crate) workspace_dir: PathBuf,
    /// Size and count limits of the file tools.
    pub(crate) limits: FileLimits,
    /// Who owns what the file tools create (the sandbox user), if not the
    /// service.
    pub(crate) owner: Option<(u32, u32)>,
    /// `http_request`, when enabled.
    pub(crate) http: Option<http::HttpTool>,
}

#[derive(Debug, Deserialize)]
struct CalculatorArgs {
    expression: String,
}

#[derive(Debug, Deserialize)]
struct CurrentTimeArgs {
    timezone: Option<String>,
}

/// Runs a built-in tool on arguments that passed its schema.
pub(crate) async fn run(
    builtin: Builtin,
    arguments: Value,
    context: &BuiltinContext,
) -> ToolOutcome {
    match builtin {
        Builtin::Calculator => {
            let args: CalculatorArgs = parse(arguments)?;
            calculator::evaluate(&args.expression)
                .map(|value| json!({ "result": calculator::to_json(value) }))
                .map_err(|err| ToolFailure::failed(err.to_string()))
        }
        Builtin::CurrentTime => {
            let args: CurrentTimeArgs = parse(arguments)?;
            blocking(move || {
                clock::current_time(jiff::Timestamp::now(), args.timezone.as_deref())
                    .map_err(ToolFailure::failed)
            })
            .await
        }
        Builtin::ReadFile => {
            let args: files::ReadFileArgs = parse(arguments)?;
            in_workspace(context, move |workspace, limits| {
                files::read_file(workspace, &args, limits)
            })
            .await
        }
        Builtin::WriteFile => {
            let args: files::WriteFileArgs = parse(arguments)?;
            in_workspace(context, move |workspace, limits| {
                files::write_file(workspace, &args, limits)
            })
            .await
        }
        Builtin::ListFiles => {
            let args: files::ListFilesArgs = parse(arguments)?;
            in_workspace(context, move |workspace, limits| {
                files::list_files(workspace, &args, limits)
            })
            .await
        }
        Builtin::HttpRequest => http::run(context.http.as_ref(), parse(arguments)?).await,
    }
}

/// Typed arguments. The schema has been checked, so this only fails for a
/// schema and a struct that disagree; still a tool error, never a panic.
fn parse<T: DeserializeOwned>(arguments: Value) -> Result<T, ToolFailure> {
    serde_json::from_value(arguments)
        .map_err(|err| ToolFailure::invalid_arguments(format!("arguments: {err}")))
}

/// Runs file-system work on the blocking pool, in the run's workspace.
async fn in_workspace<F>(context: &BuiltinContext, work: F) -> ToolOutcome
where
    F: FnOnce(&Workspace, FileLimits) -> ToolOutcome + Send + 'static,
{
    let dir = context.workspace_dir.clone();
    let limits = context.limits;
    let owner = context.owner;
    blocking(move || {
        let workspace = Workspace::open_owned(&dir, owner).map_err(|err| {
            ToolFailure::failed(format!("cannot open the run's workspace: {err}"))
        })?;
        work(&workspace, limits)
    })
    .await
}

async fn blocking<F>(work: F) -> ToolOutcome
where
    F: FnOnce() -> ToolOutcome + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            Err(ToolFailure::failed(format!(
                "the tool stopped unexpectedly: {err}"
            )))
        })
}
