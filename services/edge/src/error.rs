//! gRPC statuses as HTTP answers, in the two shapes the edge speaks:
//!
//! * the REST mapping's: `{"code": 5, "message": "…", "details": [...]}` —
//!   google.rpc.Status in the proto3 JSON mapping, as grpc-gateway and
//!   Envoy's transcoder answer — with the HTTP status of the gRPC code
//!   (google.rpc.Code's own table);
//! * the OpenAI API's: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Both carry `Retry-After` (and `retry-after-ms`, which the OpenAI SDKs
//! read first) when the status says when to retry (google.rpc.RetryInfo).

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

/// The HTTP status of a gRPC code (google.rpc.Code's mapping).
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request, as the mapping (and nginx) say.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status as google.rpc.Status JSON (`code`, `message`, `details`).
pub(crate) fn status_json(status: &tonic::Status) -> Value {
    json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details_json(&status.get_error_details()),
    })
}

/// The REST mapping's error answer.
pub(crate) fn rest_error(status: &tonic::Status) -> Response {
    let mut response = (http_status(status.code()), Json(status_json(status))).into_response();
    add_retry_after(&mut response, status);
    response
}

/// A REST error the edge itself finds (the request never reached a
/// service): INVALID_ARGUMENT naming the field, NOT_FOUND for a path no
/// route has, and so on.
pub(crate) fn rest_problem(
    code: Code,
    message: impl Into<String>,
    field: Option<&str>,
) -> Response {
    let status = match field {
        Some(field) => {
            let message = message.into();
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(field, message.clone());
            tonic::Status::with_error_details(code, message, details)
        }
        None => tonic::Status::new(code, message),
    };
    rest_error(&status)
}

/// When the status says to retry: its RetryInfo delay.
pub(crate) fn retry_delay(status: &tonic::Status) -> Option<Duration> {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
}

/// `Retry-After` (whole seconds, rounded up) and `retry-after-ms`.
pub(crate) fn add_retry_after(response: &mut Response, status: &tonic::Status) {
    let Some(delay) = retry_delay(status) else {
        return;
    };
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    let headers = response.headers_mut();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    if let Ok(millis) = u64::try_from(delay.as_millis()) {
        headers.insert("retry-after-ms", HeaderValue::from(millis));
    }
}

/// The details a person or a client acts on, in the proto3 JSON mapping of
/// google.rpc's error detail messages.
fn details_json(details: &ErrorDetails) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(bad) = details.bad_request() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": bad.field_violations.iter().map(|violation| json!({
                "field": violation.field,
                "description": violation.description,
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(retry) = details.retry_info()
        && let Some(delay) = retry.retry_delay
    {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retry_delay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    if let Some(info) = details.error_info() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": info.reason,
            "domain": info.domain,
            "metadata": info.metadata,
        }));
    }
    if let Some(failure) = details.precondition_failure() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
            "violations": failure.violations.iter().map(|violation| json!({
                "type": violation.r#type,
                "subject": violation.subject,
                "description": violation.description,
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(failure) = details.quota_failure() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": failure.violations.iter().map(|violation| json!({
                "subject": violation.subject,
                "description": violation.description,
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(resource) = details.resource_info() {
        out.push(json!({
            "@type": "type.googleapis.com/google.rpc.ResourceInfo",
            "resource_type": resource.resource_type,
            "resource_name": resource.resource_name,
            "owner": resource.owner,
            "description": resource.description,
        }));
    }
    out
}

// === the OpenAI shape ===

/// An error in the OpenAI API's shape, with the HTTP status its SDKs map
/// to their error classes (`BadRequestError`, `RateLimitError`, …).
pub(crate) fn openai_error(status: &tonic::Status) -> Response {
    let field = status
        .get_error_details()
        .bad_request()
        .and_then(|bad| bad.field_violations.first().map(|v| v.field.clone()));
    let http = http_status(status.code());
    let mut response = openai_problem(
        http,
        status.message(),
        field.as_deref(),
        openai_code(status.code()),
    );
    add_retry_after(&mut response, status);
    response
}

/// An error the facade finds itself (a bad parameter, an unknown model).
pub(crate) fn openai_problem(
    http: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let kind = match http.as_u16() {
        400 | 404 | 409 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    (
        http,
        Json(json!({
            "error": {
                "message": message,
                "type": kind,
                "param": param.map(openai_param),
                "code": code,
            }
        })),
    )
        .into_response()
}

/// The OpenAI parameter a gateway field names (`max_output_tokens` is
/// `max_tokens` there).
fn openai_param(field: &str) -> String {
    match field {
        "max_output_tokens" => "max_tokens".to_owned(),
        "response_format.schema_json" => "response_format.json_schema.schema".to_owned(),
        other => other.replace(".parameters_json", ".function.parameters"),
    }
}

/// The `code` OpenAI gives the same failure.
fn openai_code(code: Code) -> Option<&'static str> {
    match code {
        Code::ResourceExhausted => Some("rate_limit_exceeded"),
        Code::Unauthenticated => Some("invalid_api_key"),
        Code::NotFound => Some("model_not_found"),
        Code::InvalidArgument => Some("invalid_value"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_bad_request_keeps_its_field_violations() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("objective", "must not be empty");
        let status =
            tonic::Status::with_error_details(Code::InvalidArgument, "bad objective", details);
        let response = rest_error(&status);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = body_of(response).await;
        assert_eq!(body["code"], 3);
        assert_eq!(
            body["details"][0]["field_violations"][0]["field"],
            "objective"
        );
    }

    #[tokio::test]
    async fn a_rate_limit_says_when_to_retry_in_both_shapes() {
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_millis(1500)));
        let status =
            tonic::Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        let response = openai_error(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
        let body = body_of(response).await;
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(rest_error(&status).headers()["retry-after"], "2");
    }

    #[tokio::test]
    async fn openai_params_use_openai_names() {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("max_output_tokens", "too many");
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "too many", details);
        let body = body_of(openai_error(&status)).await;
        assert_eq!(body["error"]["param"], "max_tokens");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn every_code_has_an_http_status() {
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
