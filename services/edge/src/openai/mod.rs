//! The OpenAI-compatible API, backed by `LlmGatewayService`: any OpenAI SDK
//! works by pointing its base URL at `http://<edge>/v1`.
//!
//! * `POST /v1/chat/completions`: `request` maps the body to a
//!   `GenerateRequest` (the model name is a gateway route); without
//!   `stream`, `Generate` answers one `chat.completion`; with it,
//!   `GenerateStream` is relayed as `chat.completion.chunk` SSE events
//!   (`stream`), ending with `data: [DONE]`.
//! * `GET /v1/models`, `GET /v1/models/{model}`: the gateway's routes.
//!
//! The gateway's retries, fallbacks, rate limits, audit and metrics apply
//! as to any call (the facade is one more client); errors come back in
//! OpenAI's shape with the matching HTTP status (`crate::error`).

mod request;
mod response;
mod stream;

use agentmesh_proto::llm::v1::{GenerateStreamRequest, ListModelsRequest, Model};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use prost::Message as _;
use serde_json::json;

use crate::caller::Caller;
use crate::error::{openai_error, openai_problem};
use crate::state::Edge;
use request::ChatRequest;
use response::Answer;

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(edge): State<Edge>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Response {
    let chat: ChatRequest = match serde_json::from_slice(&body) {
        Ok(chat) => chat,
        Err(err) => {
            return openai_problem(
                StatusCode::BAD_REQUEST,
                &format!("the request body is not a chat completion request: {err}"),
                None,
                Some("invalid_request_body"),
            );
        }
    };
    let generate = match chat.to_generate() {
        Ok(generate) => generate,
        Err(bad) => {
            return openai_problem(
                StatusCode::BAD_REQUEST,
                &bad.message,
                bad.param.as_deref(),
                Some("invalid_value"),
            );
        }
    };
    if let Some(user) = &chat.user {
        // OpenAI takes `user` for abuse monitoring; the mesh's own record
        // of who called is the caller's verified identity.
        tracing::debug!(openai.user = %user, "chat completion for an end user");
    }
    let answer = Answer::new(&chat.model);
    if chat.stream {
        // Same fields, same numbers: the stream request is the same bytes.
        let streamed = match GenerateStreamRequest::decode(generate.encode_to_vec().as_slice()) {
            Ok(streamed) => streamed,
            Err(err) => return openai_error(&tonic::Status::internal(err.to_string())),
        };
        return stream::relay(&edge, &caller, streamed, answer, chat.include_usage()).await;
    }
    let mut client = edge.peers.gateway.clone();
    match client
        .generate(caller.request(generate, Some(edge.config.completion_timeout)))
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            Json(answer.completion(
                response.message.as_ref(),
                response.finish_reason,
                response.usage.as_ref(),
            ))
            .into_response()
        }
        Err(status) => openai_error(&status),
    }
}

/// Every route the gateway lists (all its pages).
async fn all_models(edge: &Edge, caller: &Caller) -> Result<Vec<Model>, tonic::Status> {
    let mut client = edge.peers.gateway.clone();
    let mut models = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_models(caller.request(
                ListModelsRequest {
                    page_size: 1000,
                    page_token,
                },
                Some(edge.config.call_timeout),
            ))
            .await?
            .into_inner();
        models.extend(page.models);
        if page.next_page_token.is_empty() {
            return Ok(models);
        }
        page_token = page.next_page_token;
    }
}

/// `GET /v1/models`.
pub(crate) async fn list_models(State(edge): State<Edge>, caller: Caller) -> Response {
    match all_models(&edge, &caller).await {
        Ok(models) => Json(json!({
            "object": "list",
            "data": models.iter().map(response::model_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(status) => openai_error(&status),
    }
}

/// `GET /v1/models/{model}`.
pub(crate) async fn retrieve_model(
    State(edge): State<Edge>,
    Path(name): Path<String>,
    caller: Caller,
) -> Response {
    match all_models(&edge, &caller).await {
        Ok(models) => match models.iter().find(|model| model.name == name) {
            Some(model) => Json(response::model_json(model)).into_response(),
            None => openai_problem(
                StatusCode::NOT_FOUND,
                &format!("The model `{name}` does not exist: GET /v1/models lists the routes"),
                Some("model"),
                Some("model_not_found"),
            ),
        },
        Err(status) => openai_error(&status),
    }
}
