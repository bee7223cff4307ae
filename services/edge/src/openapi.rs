//! `GET /openapi.json`: an OpenAPI 3.1 document of the HTTP API, built at
//! start from the same `google.api.http` bindings the edge routes by
//! (`crate::transcode`) and the message descriptors (schemas in the proto3
//! JSON mapping, proto field names), plus the routes that are not
//! transcoded: the WebSocket and the OpenAI-compatible API. A test walks
//! every path and verb of the document against the running edge.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::bindings::{Binding, BodyRule, Transcoder};
use crate::state::Edge;

/// `GET /openapi.json`.
pub(crate) async fn document(State(edge): State<Edge>) -> Response {
    Json(Arc::clone(&edge.openapi)).into_response()
}

/// The document.
pub(crate) fn build(transcoder: &Transcoder) -> Value {
    let mut schemas = Schemas::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for binding in transcoder.bindings() {
        paths
            .entry(binding.template.text().to_owned())
            .or_default()
            .insert(
                binding.verb.as_str().to_lowercase(),
                operation(binding, &mut schemas),
            );
    }
    add_untranscoded(&mut paths);
    let mut components = schemas.done();
    components.insert(
        "google.rpc.Status".to_owned(),
        json!({
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The gRPC status code."},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "agentmesh HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Runs over REST, Server-Sent Events and WebSocket (the google.api.http mapping of agentmesh.orchestrator.v1.OrchestratorService), the audit and alerting RPCs the web console needs (their google.api.http mappings), the mesh's deep health, and the OpenAI-compatible chat completions API. Send `Authorization: Bearer <API key or JWT>` when the mesh has auth on.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    })
}

/// The operation of one binding: its parameters (path variables; the
/// query string's fields when it has no body), body and answers.
fn operation(binding: &Binding, schemas: &mut Schemas) -> Value {
    let method = &binding.method;
    let input = method.input();
    let variables: Vec<&str> = binding.template.variables().collect();
    let mut parameters: Vec<Value> = variables
        .iter()
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let mut operation = json!({
        "operationId": method.name(),
        "tags": [method.parent_service().name()],
        "summary": format!("{} ({})", method.name(), method.full_name()),
    });
    match binding.body {
        BodyRule::Empty => {
            for field in input
                .fields()
                .filter(|field| !variables.contains(&field.name()))
            {
                query_parameters(&field, "", schemas, &mut parameters);
            }
        }
        BodyRule::Whole => {
            crate::fields::set(
                &mut operation,
                "requestBody",
                json!({
                    "required": true,
                    "content": {"application/json": {"schema": schemas.reference(&input)}},
                }),
            );
        }
    }
    let ok = if method.is_server_streaming() {
        parameters.push(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Resume after this event id (a sequence, or a merged stream's cursor).",
            "schema": {"type": "string"},
        }));
        json!({
            "description": format!(
                "Server-Sent Events: `id:` the sequence (or cursor), `event:` the kind, `data:` a {} in JSON; the stream closes after the run's terminal event.",
                method.output().full_name()
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        })
    } else {
        json!({
            "description": "OK",
            "content": {"application/json": {"schema": schemas.reference(&method.output())}},
        })
    };
    crate::fields::set(&mut operation, "parameters", Value::Array(parameters));
    crate::fields::set(
        &mut operation,
        "responses",
        json!({"200": ok, "default": error_response()}),
    );
    operation
}

fn error_response() -> Value {
    json!({
        "description": "An error: google.rpc.Status in JSON, with the HTTP status of its code.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}},
    })
}

/// The routes served by hand: the WebSocket and the OpenAI API.
fn add_untranscoded(paths: &mut BTreeMap<String, Map<String, Value>>) {
    let stream_query = ["after_sequence", "include_sub_runs", "cursor"]
        .iter()
        .map(|name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}));
    let mut ws_parameters = vec![
        json!({"name": "run_id", "in": "path", "required": true, "schema": {"type": "string"}}),
    ];
    ws_parameters.extend(stream_query);
    let openai = |summary: &str| {
        json!({
            "tags": ["OpenAI"],
            "summary": summary,
            "description": "The OpenAI API's request and answer shapes; errors in OpenAI's error shape.",
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}},
        })
    };
    let entries = [
        (
            "/v1/runs/{run_id}/ws",
            "get",
            json!({
                "operationId": "RunEventsWebSocket",
                "tags": ["OrchestratorService"],
                "summary": "A run's events over a WebSocket: one JSON text message per event, {\"event\": RunEvent, \"cursor\"?}.",
                "parameters": ws_parameters,
                "responses": {"101": {"description": "Switching Protocols"}, "default": error_response()},
            }),
        ),
        ("/v1/health", "get", health_operation()),
        (
            "/mcp",
            "post",
            json!({
                "operationId": "Mcp",
                "tags": ["MCP"],
                "summary": "The MCP server (streamable HTTP, protocol 2025-06-18): the mesh's tools and run_agent. GET opens the session's event stream, DELETE ends the session.",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "A JSON-RPC answer, as JSON or Server-Sent Events."}, "default": error_response()},
            }),
        ),
        ("/v1/chat/completions", "post", {
            let mut operation = openai(
                "Creates a chat completion (stream: true answers as SSE chunks ending with [DONE]).",
            );
            crate::fields::set(&mut operation, "operationId", json!("CreateChatCompletion"));
            crate::fields::set(
                &mut operation,
                "requestBody",
                json!({"required": true, "content": {"application/json": {"schema": {"type": "object"}}}}),
            );
            operation
        }),
        ("/v1/models", "get", {
            let mut operation = openai("Lists the gateway's model routes.");
            crate::fields::set(&mut operation, "operationId", json!("ListOpenAiModels"));
            operation
        }),
        ("/v1/models/{model}", "get", {
            let mut operation = openai("One model route.");
            crate::fields::set(&mut operation, "operationId", json!("RetrieveOpenAiModel"));
            crate::fields::set(
                &mut operation,
                "parameters",
                json!([{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}]),
            );
            operation
        }),
    ];
    for (path, verb, operation) in entries {
        paths
            .entry(path.to_owned())
            .or_default()
            .insert(verb.to_owned(), operation);
    }
}

/// `GET /v1/health`.
fn health_operation() -> Value {
    json!({
        "operationId": "MeshHealth",
        "tags": ["Health"],
        "summary": "The mesh's deep health: the edge's, then each service's /health/deep read from its admin port. Needs what listing alerting rules needs (alerts:read).",
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}, "default": error_response()},
    })
}

/// The query parameters of a request field: one for a scalar, repeated
/// or map field; one per field, dotted (`filter.run_ids`), for a singular
/// message that is not a well-known type (as the edge reads them).
fn query_parameters(
    field: &FieldDescriptor,
    prefix: &str,
    schemas: &mut Schemas,
    parameters: &mut Vec<Value>,
) {
    let name = format!("{prefix}{}", field.name());
    if let Kind::Message(message) = field.kind()
        && !field.is_list()
        && !field.is_map()
        && well_known(message.full_name()).is_none()
        && !prefix.contains('.')
    {
        for inner in message.fields() {
            query_parameters(&inner, &format!("{name}."), schemas, parameters);
        }
        return;
    }
    let schema = schemas.field(field);
    if field.is_map() {
        parameters.push(json!({
            "name": name, "in": "query", "required": false,
            "style": "deepObject", "explode": true, "schema": schema,
            "description": format!("As `{name}[key]=value`."),
        }));
        return;
    }
    parameters.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
}

/// The schemas referenced so far, each message once.
#[derive(Debug, Default)]
struct Schemas {
    done: BTreeMap<String, Value>,
}

impl Schemas {
    fn done(self) -> Map<String, Value> {
        self.done.into_iter().collect()
    }

    /// A `$ref` to `message`'s schema (or the inline schema of a well-known
    /// type), adding it and what it references.
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(inline) = well_known(message.full_name()) {
            return inline;
        }
        let name = message.full_name().to_owned();
        if !self.done.contains_key(&name) {
            // Placeholder first: a message may reference itself.
            self.done.insert(name.clone(), Value::Null);
            let properties: Map<String, Value> = message
                .fields()
                .map(|field| (field.name().to_owned(), self.field(&field)))
                .collect();
            self.done.insert(
                name.clone(),
                json!({"type": "object", "properties": properties}),
            );
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// A field's schema, as the JSON mapping writes it.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map()
            && let Kind::Message(entry) = field.kind()
        {
            let value = self.kind(&entry.map_entry_value_field().kind());
            return json!({"type": "object", "additionalProperties": value});
        }
        let schema = self.kind(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": schema})
        } else {
            schema
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(descriptor) => json!({
                "type": "string",
                "enum": descriptor.values().map(|value| value.name().to_owned()).collect::<Vec<_>>(),
            }),
            Kind::Message(message) => self.reference(message),
        }
    }
}

/// The JSON mapping's own forms of the well-known types.
fn well_known(name: &str) -> Option<Value> {
    Some(match name {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => {
            json!({"type": "string", "description": "Seconds with an `s` suffix, e.g. `1.5s`."})
        }
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Any" => {
            json!({"type": "object", "properties": {"@type": {"type": "string"}}})
        }
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.rpc.Status" => json!({"$ref": "#/components/schemas/google.rpc.Status"}),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_is_documented_with_its_schemas() {
        let transcoder = match Transcoder::for_contract() {
            Ok(transcoder) => transcoder,
            Err(err) => panic!("{err}"),
        };
        let document = build(&transcoder);
        for (path, verb) in [
            ("/v1/runs", "post"),
            ("/v1/runs", "get"),
            ("/v1/runs/{run_id}", "get"),
            ("/v1/runs/{run_id}:cancel", "post"),
            ("/v1/runs/{run_id}/events", "get"),
            ("/v1/runs/{run_id}/ws", "get"),
            ("/v1/agents", "get"),
            ("/v1/chat/completions", "post"),
            ("/v1/audit/events", "get"),
            ("/v1/audit/report", "get"),
            ("/v1/audit:verifyChain", "get"),
            ("/v1/alerts", "get"),
            ("/v1/silences", "post"),
            ("/v1/silences/{id}", "delete"),
            ("/v1/rules", "get"),
            ("/v1/health", "get"),
        ] {
            assert!(document["paths"][path][verb].is_object(), "{verb} {path}");
        }
        let schemas = &document["components"]["schemas"];
        let run = &schemas["agentmesh.orchestrator.v1.Run"];
        assert_eq!(run["properties"]["create_time"]["format"], "date-time");
        assert_eq!(run["properties"]["state"]["type"], "string");
        // Every $ref points at a schema that exists.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap_or_default();
            assert!(schemas[name].is_object(), "missing schema {name}");
        }
        let list = &document["paths"]["/v1/runs"]["get"]["parameters"];
        assert!(
            list.as_array()
                .is_some_and(|params| params.iter().any(|p| p["name"] == "states"))
        );
        let query = &document["paths"]["/v1/audit/events"]["get"]["parameters"];
        assert!(query.as_array().is_some_and(|params| {
            params.iter().any(|p| p["name"] == "filter.run_ids")
                && params.iter().any(|p| p["name"] == "filter.start_time")
        }));
    }
}
