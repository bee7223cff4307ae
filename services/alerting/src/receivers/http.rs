//! What the HTTP integrations (webhook, Slack, PagerDuty, the Alertmanager
//! forwarder) share: one pooled reqwest client for the process (rustls on
//! ring, as the LLM gateway), one POST of a JSON body, and the mapping of
//! its outcome to a [`DeliveryError`]: short, with the status and the first
//! 200 characters of the server's answer, free of URLs and secrets, and
//! marked retryable for connection errors, timeouts, 429 and 5xx.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub(crate) use agentmesh_kit::client::install_tls_crypto;
use agentmesh_kit::retry_after::parse_retry_after;
pub(crate) use agentmesh_kit::status::error_chain;
use agentmesh_kit::text::truncate_chars;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

use super::retry::DeliveryError;
use super::secret::Redactor;

/// The User-Agent of every request.
pub(crate) const USER_AGENT: &str = concat!("agentmesh-alerting/", env!("CARGO_PKG_VERSION"));

/// Longest part of a server's answer quoted in an error.
const MAX_QUOTED_CHARS: usize = 200;
/// Largest answer read (integrations answer "ok" or a short JSON).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The process's client, built on first use: loading the platform's CA
/// roots can fail on a bare machine, and that must fail deliveries (which
/// say why), not the service's start.
pub(crate) fn client() -> Result<reqwest::Client, DeliveryError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(build_client)
        .clone()
        .map_err(|err| DeliveryError::permanent(format!("cannot build the HTTP client: {err}")))
}

fn build_client() -> Result<reqwest::Client, String> {
    // Checked here too: building a client without a provider would panic.
    if !install_tls_crypto() {
        return Err("no TLS crypto provider could be installed".to_owned());
    }
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(USER_AGENT)
        .build()
        .map_err(|err| error_chain(&err.without_url()))
}

/// How a request authenticates (the Alertmanager forwarder's settings).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// No Authorization header.
    None,
    /// HTTP basic authentication.
    Basic {
        /// The user name.
        username: &'a str,
        /// The password.
        password: &'a str,
    },
    /// `Authorization: <scheme> <credentials>`, e.g. a bearer token.
    Scheme {
        /// "Bearer" and the like.
        scheme: &'a str,
        /// The token.
        credentials: &'a str,
    },
}

/// A successful answer: its status and the start of its body.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// A 2xx status.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    pub(crate) status: StatusCode,
    /// The body (at most 64 KiB of it), lossily decoded.
    pub(crate) body: String,
}

/// POSTs `body` (JSON) to `url` with `auth`, waiting at most `timeout` for
/// the whole exchange; a non-2xx answer or a failure becomes a
/// [`DeliveryError`] with the texts in `redactor` removed.
pub(crate) async fn post_json(
    url: &str,
    body: Vec<u8>,
    auth: Auth<'_>,
    timeout: Duration,
    redactor: &Redactor,
) -> Result<Reply, DeliveryError> {
    let client = client()?;
    let mut request = client
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .timeout(timeout)
        .body(body);
    request = match auth {
        Auth::None => request,
        Auth::Basic { username, password } => request.basic_auth(username, Some(password)),
        Auth::Scheme {
            scheme,
            credentials,
        } => request.header(
            reqwest::header::AUTHORIZATION,
            format!("{scheme} {credentials}"),
        ),
    };
    let response = request
        .send()
        .await
        .map_err(|err| send_error(err, timeout, redactor))?;
    let status = response.status();
    let retry_after = retry_after(status, response.headers(), SystemTime::now());
    let body = read_body(response).await;
    if status.is_success() {
        return Ok(Reply {
            status,
            body: body.unwrap_or_default(),
        });
    }
    let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    let mut message = status_line(status);
    let quoted = quote(&body.unwrap_or_default());
    if !quoted.is_empty() {
        message.push_str(": ");
        message.push_str(&quoted);
    }
    if status.is_redirection() {
        message.push_str(" (the redirect was not followed)");
    }
    Err(DeliveryError {
        message: redactor.redact(&message),
        retryable,
        retry_after,
    })
}

/// "HTTP 500 Internal Server Error".
pub(crate) fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The first 200 characters of `text`, its whitespace runs collapsed into
/// single spaces (an HTML error page becomes one readable line).
pub(crate) fn quote(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&collapsed, MAX_QUOTED_CHARS).into_owned()
}

async fn read_body(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES.saturating_sub(body.len());
        body.extend(chunk.iter().take(room));
        if body.len() >= MAX_BODY_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The server's `Retry-After`, honoured on 429 and 503 only (RFC 9110 gives
/// it meaning there; elsewhere it is noise).
fn retry_after(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, now))
}

fn send_error(err: reqwest::Error, timeout: Duration, redactor: &Redactor) -> DeliveryError {
    // The URL carries tokens: drop it from the error before it is printed.
    let err = err.without_url();
    if err.is_timeout() {
        return DeliveryError::transient(format!(
            "no answer within the timeout ({})",
            humantime_serde::re::humantime::format_duration(timeout)
        ));
    }
    let chain = redactor.redact(&error_chain(&err));
    if err.is_builder() {
        return DeliveryError::permanent(format!("invalid request: {chain}"));
    }
    if err.is_redirect() {
        return DeliveryError::permanent(format!("redirect failed: {chain}"));
    }
    if err.is_connect() {
        return DeliveryError::transient(format!("cannot connect: {chain}"));
    }
    // Resets, broken connections: the request may not have arrived.
    DeliveryError::transient(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::secret::Secret;
    use crate::receivers::test_server::{Reply as Scripted, TestServer};

    #[test]
    fn quotes_are_short_single_lines() {
        assert_eq!(quote("  a\n\n b  "), "a b");
        let long = "x".repeat(500);
        let quoted = quote(&long);
        assert_eq!(quoted.chars().count(), 201);
        assert!(quoted.ends_with('…'));
    }

    #[tokio::test]
    async fn error_statuses_are_classified_and_redacted() {
        let server = TestServer::start(vec![
            Scripted::status(500).body("Cannot POST /hook/SECRET-TOKEN-123\n\n oops"),
            Scripted::status(404).body("not here"),
            Scripted::status(429).header("retry-after", "7"),
            Scripted::status(503).header("retry-after", "3"),
            Scripted::status(500).header("retry-after", "3"),
            Scripted::status(202).body("ok"),
        ])
        .await;
        let url = Secret::new(format!("{}/hook/SECRET-TOKEN-123", server.url()));
        let mut redactor = Redactor::default();
        redactor.add_url(&url);
        let post = || {
            post_json(
                url.expose(),
                b"{}".to_vec(),
                Auth::None,
                Duration::from_secs(5),
                &redactor,
            )
        };

        let err = post().await.unwrap_err();
        assert_eq!(
            err.message,
            "HTTP 500 Internal Server Error: Cannot POST <secret> oops"
        );
        assert!(err.retryable);
        let err = post().await.unwrap_err();
        assert_eq!(err.message, "HTTP 404 Not Found: not here");
        assert!(!err.retryable);
        let err = post().await.unwrap_err();
        assert_eq!(err.message, "HTTP 429 Too Many Requests");
        assert!(err.retryable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        let err = post().await.unwrap_err();
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        let err = post().await.unwrap_err();
        assert_eq!(
            err.retry_after, None,
            "Retry-After only counts on 429 and 503"
        );
        let reply = post().await.unwrap();
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(reply.body, "ok");

        let requests = server.requests();
        assert_eq!(requests.len(), 6);
        assert_eq!(requests[0].path, "/hook/SECRET-TOKEN-123");
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        assert_eq!(requests[0].header("user-agent"), Some(USER_AGENT));
    }

    #[tokio::test]
    async fn authentication_headers_are_sent() {
        let server = TestServer::start(vec![]).await;
        let redactor = Redactor::default();
        let url = format!("{}/api/v2/alerts", server.url());
        post_json(
            &url,
            b"[]".to_vec(),
            Auth::Basic {
                username: "am",
                password: "pw",
            },
            Duration::from_secs(5),
            &redactor,
        )
        .await
        .unwrap();
        post_json(
            &url,
            b"[]".to_vec(),
            Auth::Scheme {
                scheme: "Bearer",
                credentials: "tok",
            },
            Duration::from_secs(5),
            &redactor,
        )
        .await
        .unwrap();
        let requests = server.requests();
        // "am:pw" in base64.
        assert_eq!(requests[0].header("authorization"), Some("Basic YW06cHc="));
        assert_eq!(requests[1].header("authorization"), Some("Bearer tok"));
    }

    #[tokio::test]
    async fn connection_failures_are_retryable_and_name_no_url() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/hook/SECRET-TOKEN-123");
        let err = post_json(
            &url,
            b"{}".to_vec(),
            Auth::None,
            Duration::from_secs(5),
            &Redactor::default(),
        )
        .await
        .unwrap_err();
        assert!(err.retryable, "{err:?}");
        assert!(err.message.starts_with("cannot connect"), "{}", err.message);
        assert!(!err.message.contains("SECRET"), "{}", err.message);
        assert!(!err.message.contains("127.0.0.1"), "{}", err.message);
    }

    #[tokio::test]
    async fn timeouts_are_retryable() {
        let server = TestServer::start(vec![Scripted::hang()]).await;
        let url = format!("{}/hook", server.url());
        let err = post_json(
            &url,
            b"{}".to_vec(),
            Auth::None,
            Duration::from_millis(50),
            &Redactor::default(),
        )
        .await
        .unwrap_err();
        assert!(err.retryable);
        assert_eq!(err.message, "no answer within the timeout (50ms)");
    }
}
