//! The console's sign-in: an API key (or the bearer token an OIDC proxy
//! put on the request) exchanged for a session cookie, so that no
//! credential sits where a page's script could read it.
//!
//! ```text
//! POST /console/login {"api_key"} ─▶ the key tried on the orchestrator
//!   (401 refused; any other answer means the mesh knows it) ─▶ Sessions
//!   (the `authorization` value and an expiry, sealed) ─▶ Set-Cookie:
//!   agentmesh_session=…; HttpOnly; SameSite=Strict, and the CSRF token
//!
//! every request ─▶ guard: a live session's `authorization` is put on a
//!   request that carries none; a cookie-borne request that changes
//!   something (any verb but GET/HEAD/OPTIONS) must carry the session's
//!   `x-csrf-token`; no browser request from another origin may change
//!   anything (`guard` has the details)
//! ```
//!
//! The session is sealed in the cookie (`crate::sessions`): any replica
//! with the same key reads it.

use std::time::SystemTime;

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde_json::json;
use tonic::Code;

use crate::caller::Caller;
use crate::error::{rest_error, rest_problem};
use crate::state::Edge;

/// The cookie's name.
pub(crate) const COOKIE: &str = "agentmesh_session";

/// The header a cookie-borne mutation carries its session's CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The name the client addressed the edge by: `Host`, or over HTTP/2 the
/// `:authority` (which hyper puts in the URI).
fn addressed_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
}

/// Whether the browser's `Origin` (when it sent one) is this edge, as the
/// request addresses it.
fn same_origin(headers: &HeaderMap, host: Option<&str>) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.parse::<http::Uri>().ok())
        .and_then(|uri| {
            uri.authority()
                .map(|authority| authority.as_str().to_owned())
        });
    matches!((origin_host, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

fn forbidden(message: &str) -> Response {
    rest_problem(Code::PermissionDenied, message.to_owned(), None)
}

/// Whether the edge listens on 127.0.0.1 or ::1 (its default): a browser on
/// the same machine is then its only client. (Other loopback addresses are
/// left alone: tests stand pods up on 127.0.0.N under their own names.)
fn listens_on_localhost(host: std::net::IpAddr) -> bool {
    match host {
        std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    }
}

/// Whether `host` (a `Host` value) is a loopback name, or one of `allowed`
/// (names or `name:port`, as `edge.mcp.allowed_hosts` lists them). No name
/// at all (an HTTP/1.0 client) is let through: browsers always send one.
fn allowed_host(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]")
        || allowed.iter().any(|allowed| {
            allowed.eq_ignore_ascii_case(host) || allowed.eq_ignore_ascii_case(&name)
        })
}

/// The middleware in front of every route: what a browser may do here, and
/// a session's credential onto the requests it carries.
///
/// - An edge on 127.0.0.1 or ::1 answers loopback `Host` names only (and
///   those of `edge.mcp.allowed_hosts`), so a page that rebinds its own
///   name to 127.0.0.1 cannot read the mesh (DNS rebinding).
/// - A browser's request that changes something, or opens a WebSocket,
///   from another origin is refused, with or without a session: in the
///   embedded mode, with no credentials at all, the edge is otherwise open
///   to any page the user visits (CSRF).
/// - A cookie-borne change must also carry the session's `x-csrf-token`.
pub(crate) async fn guard(State(edge): State<Edge>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = addressed_host(headers, request.uri());
    if listens_on_localhost(edge.config.server.host)
        && !allowed_host(host, &edge.config.mcp.allowed_hosts)
    {
        let mut response =
            forbidden("this edge listens on loopback: address it as localhost or 127.0.0.1");
        *response.status_mut() = StatusCode::MISDIRECTED_REQUEST;
        return response;
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let upgrade = headers.contains_key(header::UPGRADE);
    if (!safe || upgrade) && !same_origin(headers, host) {
        return forbidden("a browser request from another origin may not change anything here");
    }
    let session = match cookie(headers, COOKIE) {
        Some(id) if !headers.contains_key(header::AUTHORIZATION) => edge
            .sessions
            .find(id, SystemTime::now())
            .map(|session| (id, session)),
        _ => None,
    };
    if let Some((id, session)) = session {
        let token = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok());
        if !safe && !token.is_some_and(|token| edge.sessions.csrf_matches(id, token)) {
            return forbidden(
                "a change made with the console's session needs its x-csrf-token header",
            );
        }
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, session.authorization);
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    #[serde(default)]
    api_key: String,
}

/// `POST /console/login`.
pub(crate) async fn login(
    State(edge): State<Edge>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !is_json {
        return rest_problem(
            Code::InvalidArgument,
            "send {\"api_key\": \"…\"} as application/json".to_owned(),
            None,
        );
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(err) => {
            return rest_problem(
                Code::InvalidArgument,
                format!("the body must be {{\"api_key\": \"…\"}}: {err}"),
                None,
            );
        }
    };
    // An OIDC proxy in front of the edge signs requests itself.
    let authorization = if login.api_key.trim().is_empty() {
        headers.get(header::AUTHORIZATION).cloned()
    } else {
        HeaderValue::from_str(&format!("Bearer {}", login.api_key.trim())).ok()
    };
    let Some(authorization) = authorization else {
        return rest_problem(
            Code::InvalidArgument,
            "an API key is required (api_key)".to_owned(),
            Some("api_key"),
        );
    };
    let mut probe_headers = HeaderMap::new();
    probe_headers.insert(header::AUTHORIZATION, authorization.clone());
    let caller = Caller::of(&probe_headers);
    let mut orchestrator = edge.peers.orchestrator.clone();
    let request = caller.request(
        agentmesh_proto::orchestrator::v1::ListAgentsRequest::default(),
        Some(edge.config.call_timeout),
    );
    match orchestrator.list_agents(request).await {
        // A key the mesh knows, whatever it may do.
        Ok(_) => {}
        Err(status) if status.code() == Code::PermissionDenied => {}
        Err(status) => return rest_error(&status),
    }
    let Some((id, csrf)) = edge.sessions.open(&authorization, SystemTime::now()) else {
        return rest_problem(
            Code::InvalidArgument,
            format!(
                "no session could be made (a credential over {} bytes does not fit a cookie)",
                crate::sessions::MAX_AUTHORIZATION_BYTES
            ),
            None,
        );
    };
    let ttl = edge.sessions.ttl().as_secs();
    let secure = edge.config.console.secure_cookie
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = Json(json!({"csrf_token": csrf, "expires_in_seconds": ttl})).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /console/session`: whether this browser is signed in, its CSRF
/// token, and what the page needs to know of the edge's settings.
pub(crate) async fn session(State(edge): State<Edge>, headers: HeaderMap) -> Response {
    let now = SystemTime::now();
    let found = cookie(&headers, COOKIE)
        .and_then(|id| edge.sessions.find(id, now).map(|session| (id, session)));
    let trace = &edge.config.console.trace_url_template;
    match found {
        Some((id, session)) => Json(json!({
            "signed_in": true,
            "csrf_token": edge.sessions.csrf_of(id),
            "expires_in_seconds": session.expires.duration_since(now).unwrap_or_default().as_secs(),
            "trace_url_template": trace,
        }))
        .into_response(),
        None => Json(json!({"signed_in": false, "trace_url_template": trace})).into_response(),
    }
}

/// `POST /console/logout`: the cookie is cleared (the middleware has
/// checked the CSRF token). The session is sealed in the cookie, so a copy
/// of it stays valid until it expires.
pub(crate) async fn logout() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "agentmesh_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; agentmesh_session=abc ; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn origins_must_match_the_host() {
        let mut headers = HeaderMap::new();
        let host = Some("127.0.0.1:8080");
        assert!(same_origin(&headers, host));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers, host));
        assert!(!same_origin(&headers, None));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers, host));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers, host));
    }

    #[test]
    fn http2_requests_are_addressed_by_their_authority() {
        let headers = HeaderMap::new();
        let uri: http::Uri = "http://localhost:8080/v1/runs".parse().unwrap_or_default();
        assert_eq!(addressed_host(&headers, &uri), Some("localhost:8080"));
    }

    #[test]
    fn loopback_names_are_told_apart() {
        assert!(allowed_host(
            Some("mesh.internal:8080"),
            &["mesh.internal".to_owned()]
        ));
        assert!(!allowed_host(
            Some("evil.example"),
            &["mesh.internal".to_owned()]
        ));
        for (host, loopback) in [
            ("127.0.0.1:8080", true),
            ("localhost", true),
            ("[::1]:9", true),
            ("LOCALHOST:1", true),
            ("evil.example:8080", false),
            ("127.0.0.1.evil.example", false),
        ] {
            assert_eq!(allowed_host(Some(host), &[]), loopback, "{host}");
        }
    }
}
