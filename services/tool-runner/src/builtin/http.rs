//! `http_request`: an HTTP request a model asks for, made through the
//! outbound-URL guard (`agentmesh-egress`), so a model cannot reach the
//! host's loopback, the private network or the cloud metadata service.
//!
//! Arguments (method, url, headers, body, timeout) are checked against the
//! schema, then here (header names and values, headers the client owns);
//! the [`EgressClient`] checks the URL, the addresses its host resolves to
//! and every redirect; the answer is read up to `max_response_bytes`. The
//! result carries the status, the response headers (bounded) and the body
//! as text, cut at the cap with `truncated`. A refused destination is a
//! DENIED tool error naming the rule, for the model to see and the operator
//! to find in the audit log.
//!
//! The tool is off unless `[tool_runner.http] enabled = true`: letting
//! models reach the network is the operator's decision.

use std::collections::BTreeMap;
use std::time::Duration;

use agentmesh_egress::{ClientOptions, EgressClient, EgressConfig, EgressError, read_capped};
use agentmesh_kit::ConfigError;
use agentmesh_kit::text::truncate_bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::outcome::{ToolFailure, ToolOutcome};

/// The tool's name.
pub(crate) const NAME: &str = "http_request";

/// Most request headers a call may set.
const MAX_REQUEST_HEADERS: usize = 50;
/// Longest request header value, in bytes.
const MAX_HEADER_VALUE_BYTES: usize = 8192;
/// Most response headers returned.
const MAX_RESPONSE_HEADERS: usize = 64;
/// Longest response header value returned, in bytes.
const MAX_RESPONSE_HEADER_BYTES: usize = 1024;
/// The methods offered.
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
/// Headers the client sets itself (framing, routing, connection).
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-connection",
];

/// The tool's settings (`[tool_runner.http]`).
///
/// ```toml
/// [tool_runner.http]
/// enabled = true
/// max_response_bytes = 262144
/// max_request_bytes = 65536
/// max_timeout = "30s"
/// connect_timeout = "10s"
/// [tool_runner.http.egress]       # the guard (see agentmesh-egress)
/// allow_hosts = ["api.example.com", "*.example.org"]
/// deny_hosts = []
/// schemes = ["https"]
/// ports = []
/// allow_cidrs = []                # special ranges let through, e.g. ["10.1.2.0/24"]
/// deny_cidrs = []
/// max_redirects = 5
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpToolConfig {
    /// Offer `http_request` at all; off by default.
    pub enabled: bool,
    /// Most bytes of a response body returned; the rest is not read.
    pub max_response_bytes: usize,
    /// Largest request body, in bytes.
    pub max_request_bytes: usize,
    /// Upper bound (and default) of a call's `timeout_seconds`: the whole
    /// exchange, redirects and body included.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Time to connect to the destination.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Where requests may go.
    pub egress: EgressConfig,
}

impl Default for HttpToolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_response_bytes: 256 * 1024,
            max_request_bytes: 64 * 1024,
            max_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            egress: EgressConfig::default(),
        }
    }
}

impl HttpToolConfig {
    /// Checks the settings; errors name the setting relative to
    /// `[tool_runner]`. `max_message_bytes` bounds what a result can carry.
    pub(crate) fn validate(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        // The body is returned as JSON text, which may escape each byte
        // into up to six: keep room for it in one gRPC message.
        let most = max_message_bytes / 8;
        if self.max_response_bytes == 0 || self.max_response_bytes > most {
            return Err(ConfigError::new(
                "http.max_response_bytes",
                format!(
                    "{} is out of range: use 1 to server.max_message_bytes / 8 ({most})",
                    self.max_response_bytes
                ),
            ));
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > max_message_bytes {
            return Err(ConfigError::new(
                "http.max_request_bytes",
                format!(
                    "{} is out of range: use 1 to server.max_message_bytes ({max_message_bytes})",
                    self.max_request_bytes
                ),
            ));
        }
        for (setting, value) in [
            ("http.max_timeout", self.max_timeout),
            ("http.connect_timeout", self.connect_timeout),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(3600) {
                return Err(ConfigError::new(setting, "must be between 1s and 1h"));
            }
        }
        self.egress
            .compile()
            .map_err(|(field, message)| ConfigError::new(format!("http.egress.{field}"), message))
            .map(|_| ())
    }
}

/// The tool, ready to run: its guarded client and limits.
#[derive(Debug, Clone)]
pub(crate) struct HttpTool {
    client: EgressClient,
    max_response_bytes: usize,
    max_request_bytes: usize,
    max_timeout: Duration,
}

impl HttpTool {
    /// Builds the tool when it is enabled.
    pub(crate) fn from_config(config: &HttpToolConfig) -> Result<Option<Self>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let policy = config.egress.compile().map_err(|(field, message)| {
            ConfigError::new(format!("http.egress.{field}"), message)
        })?;
        let options = ClientOptions {
            connect_timeout: config.connect_timeout,
            user_agent: concat!("agentmesh-tool-runner/", env!("CARGO_PKG_VERSION")).to_owned(),
        };
        let client = EgressClient::new(policy, &options)
            .map_err(|message| ConfigError::new("http", message))?;
        Ok(Some(Self {
            client,
            max_response_bytes: config.max_response_bytes,
            max_request_bytes: config.max_request_bytes,
            max_timeout: config.max_timeout,
        }))
    }
}

/// What a model sees of the tool.
pub(crate) const DESCRIPTION: &str = "Makes an HTTP request to a public web address and returns \
     the status, the response headers and the body as text (cut at a size limit, with \
     truncated = true). Private, loopback and cloud metadata addresses are refused, on \
     redirects too.";

/// JSON Schema of the arguments.
pub(crate) fn parameters(config: &HttpToolConfig) -> Value {
    json!({
        "type": "object",
        "properties": {
            "method": {"enum": METHODS, "description": "Default GET."},
            "url": {
                "type": "string",
                "minLength": 1,
                "maxLength": 8192,
                "description": "An absolute http or https URL."
            },
            "headers": {
                "type": "object",
                "maxProperties": MAX_REQUEST_HEADERS,
                "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE_BYTES},
                "description": "Request headers by name."
            },
            "body": {
                "type": "string",
                "maxLength": config.max_request_bytes,
                "description": format!("The request body; at most {} bytes.", config.max_request_bytes)
            },
            "timeout_seconds": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": config.max_timeout.as_secs(),
                "description": format!("The whole exchange's time limit; default and maximum {}.", config.max_timeout.as_secs())
            }
        },
        "required": ["url"],
        "additionalProperties": false
    })
}

/// JSON Schema of the output.
pub(crate) fn output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "integer"},
            "url": {"type": "string", "description": "The final URL, after redirects."},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"type": "string"},
            "truncated": {"type": "boolean"}
        },
        "required": ["status", "url", "headers", "body", "truncated"]
    })
}

/// The arguments.
#[derive(Debug, Deserialize)]
pub(crate) struct HttpArgs {
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    timeout_seconds: Option<f64>,
}

/// Makes the request.
pub(crate) async fn run(tool: Option<&HttpTool>, args: HttpArgs) -> ToolOutcome {
    let Some(tool) = tool else {
        return Err(ToolFailure::denied(
            "http_request is not enabled on this tool runner ([tool_runner.http] enabled)",
        ));
    };
    let request = build_request(tool, args)?;
    let response = tool.client.send(request).await.map_err(failure)?;
    let status = response.status().as_u16();
    let url = response.url().to_string();
    let headers = response_headers(response.headers());
    let body = read_capped(response, tool.max_response_bytes)
        .await
        .map_err(failure)?;
    Ok(json!({
        "status": status,
        "url": url,
        "headers": headers,
        "body": String::from_utf8_lossy(&body.bytes),
        "truncated": body.truncated,
    }))
}

fn build_request(tool: &HttpTool, args: HttpArgs) -> Result<reqwest::Request, ToolFailure> {
    let method = args.method.as_deref().unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| {
        ToolFailure::invalid_arguments(format!("method: `{method}` is not one of {METHODS:?}"))
    })?;
    let url = reqwest::Url::parse(&args.url).map_err(|err| {
        ToolFailure::invalid_arguments(format!("url: not an absolute URL: {err}"))
    })?;
    // Checked here as well as when sent: reqwest refuses to build requests
    // for some schemes, which must still be the policy's refusal.
    tool.client
        .policy()
        .check_url(&url)
        .map_err(|refusal| ToolFailure::denied(refusal.to_string()))?;
    let timeout = match args.timeout_seconds {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Duration::try_from_secs_f64(seconds)
                .map_or(tool.max_timeout, |t| t.min(tool.max_timeout))
        }
        Some(_) => {
            return Err(ToolFailure::invalid_arguments(
                "timeout_seconds: must be a positive number",
            ));
        }
        None => tool.max_timeout,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            ToolFailure::invalid_arguments(format!(
                "headers: `{}` is not a header name",
                truncate_bytes(name, 100)
            ))
        })?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(ToolFailure::invalid_arguments(format!(
                "headers: `{header}` is set by the client and cannot be given"
            )));
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            ToolFailure::invalid_arguments(format!(
                "headers: the value of `{header}` holds characters a header cannot"
            ))
        })?;
        headers.append(header, value);
    }
    let body = args.body.unwrap_or_default();
    if body.len() > tool.max_request_bytes {
        return Err(ToolFailure::invalid_arguments(format!(
            "body: {} bytes, more than the {} allowed",
            body.len(),
            tool.max_request_bytes
        )));
    }
    let mut builder = tool
        .client
        .request(method, url)
        .headers(headers)
        .timeout(timeout);
    if !body.is_empty() {
        builder = builder.body(body);
    }
    builder.build().map_err(|err| {
        ToolFailure::invalid_arguments(format!("the request cannot be built: {err}"))
    })
}

/// The response headers as one string each (repeated ones joined with
/// `, `), bounded in number and length.
fn response_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        let value = truncate_bytes(&value, MAX_RESPONSE_HEADER_BYTES);
        let full = out.len() >= MAX_RESPONSE_HEADERS;
        match out.get_mut(name.as_str()) {
            Some(existing) if existing.len() < MAX_RESPONSE_HEADER_BYTES => {
                existing.push_str(", ");
                existing.push_str(&value);
                let cut = truncate_bytes(existing, MAX_RESPONSE_HEADER_BYTES).len();
                existing.truncate(cut);
            }
            Some(_) => {}
            None if !full => {
                out.insert(name.as_str().to_owned(), value.into_owned());
            }
            None => {}
        }
    }
    out
}

fn failure(err: EgressError) -> ToolFailure {
    match err {
        EgressError::Refused(refusal) => ToolFailure::denied(refusal.to_string()),
        EgressError::Timeout(message) => ToolFailure::timeout(format!("http_request {message}")),
        EgressError::Transport(message) => {
            ToolFailure::failed(format!("http_request failed: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_proto::tools::v1::ToolErrorKind;

    fn tool(config: HttpToolConfig) -> HttpTool {
        HttpTool::from_config(&HttpToolConfig {
            enabled: true,
            ..config
        })
        .unwrap()
        .unwrap()
    }

    fn args(value: Value) -> HttpArgs {
        serde_json::from_value(value).unwrap()
    }

    #[tokio::test]
    async fn refused_destinations_are_denied_tool_errors_naming_the_rule() {
        let tool = tool(HttpToolConfig::default());
        for (url, rule) in [
            ("http://127.0.0.1:9/", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
            ("http://[::1]/", "loopback"),
            ("http://10.0.0.1/", "private"),
            ("ftp://example.com/", "scheme"),
        ] {
            let err = run(Some(&tool), args(json!({"url": url})))
                .await
                .unwrap_err();
            assert_eq!(err.kind, ToolErrorKind::Denied, "{url}");
            assert!(err.message.contains(rule), "{url}: {}", err.message);
        }
    }

    #[tokio::test]
    async fn a_disabled_tool_is_denied() {
        let err = run(None, args(json!({"url": "https://example.com/"})))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ToolErrorKind::Denied);
        assert!(err.message.contains("enabled"));
    }

    #[test]
    fn bad_headers_and_bodies_are_invalid_arguments() {
        let tool = tool(HttpToolConfig {
            max_request_bytes: 4,
            ..HttpToolConfig::default()
        });
        let url = "https://example.com/";
        for (value, field) in [
            (json!({"url": url, "headers": {"Host": "x"}}), "headers"),
            (
                json!({"url": url, "headers": {"Transfer-Encoding": "chunked"}}),
                "headers",
            ),
            (json!({"url": url, "headers": {"bad name": "x"}}), "headers"),
            (
                json!({"url": url, "headers": {"x-a": "line\nbreak"}}),
                "headers",
            ),
            (json!({"url": url, "body": "too long"}), "body"),
            (json!({"url": "not a url"}), "url"),
            (json!({"url": url, "method": "G E T"}), "method"),
            (
                json!({"url": url, "timeout_seconds": -1.0}),
                "timeout_seconds",
            ),
        ] {
            let err = build_request(&tool, args(value.clone())).unwrap_err();
            assert_eq!(err.kind, ToolErrorKind::InvalidArguments, "{value}");
            assert!(err.message.starts_with(field), "{value}: {}", err.message);
        }
        let request = build_request(
            &tool,
            args(json!({"url": url, "method": "POST", "body": "abcd", "headers": {"Authorization": "Bearer t"}, "timeout_seconds": 999})),
        )
        .unwrap();
        assert_eq!(request.method(), reqwest::Method::POST);
        assert_eq!(request.timeout(), Some(&Duration::from_secs(30)));
        assert_eq!(request.headers()["authorization"], "Bearer t");
    }

    #[test]
    fn it_is_registered_only_when_enabled() {
        use crate::config::Config;
        use crate::registry::Registry;
        let registry = Registry::from_config(&Config::default()).unwrap();
        assert!(registry.get(NAME).is_none());
        let mut config = Config::default();
        config.http.enabled = true;
        let registry = Registry::from_config(&config).unwrap();
        let tool = registry.get(NAME).unwrap();
        assert!(!tool.descriptor.idempotent);
        assert_eq!(tool.descriptor.labels["category"], "network");
        assert!(
            tool.check_arguments(&json!({"url": "https://example.com/"}))
                .is_ok()
        );
        let err = tool
            .check_arguments(&json!({"url": "https://example.com/", "method": "TRACE"}))
            .unwrap_err();
        assert_eq!(err.kind, ToolErrorKind::InvalidArguments);
    }

    #[test]
    fn response_headers_are_bounded() {
        let mut headers = HeaderMap::new();
        for i in 0..100 {
            headers.insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let long = "a".repeat(5000);
        headers.append("set-cookie", HeaderValue::from_str(&long).unwrap());
        headers.append("set-cookie", HeaderValue::from_str(&long).unwrap());
        let out = response_headers(&headers);
        assert_eq!(out.len(), MAX_RESPONSE_HEADERS);
        assert!(out.values().all(|v| v.len() <= MAX_RESPONSE_HEADER_BYTES));
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let setting =
            |config: HttpToolConfig| config.validate(4 * 1024 * 1024).unwrap_err().setting;
        assert_eq!(
            setting(HttpToolConfig {
                max_response_bytes: 0,
                ..HttpToolConfig::default()
            }),
            "http.max_response_bytes"
        );
        assert_eq!(
            setting(HttpToolConfig {
                max_request_bytes: 0,
                ..HttpToolConfig::default()
            }),
            "http.max_request_bytes"
        );
        assert_eq!(
            setting(HttpToolConfig {
                max_timeout: Duration::ZERO,
                ..HttpToolConfig::default()
            }),
            "http.max_timeout"
        );
        assert_eq!(
            setting(HttpToolConfig {
                egress: EgressConfig {
                    allow_cidrs: vec!["x".into()],
                    ..EgressConfig::default()
                },
                ..HttpToolConfig::default()
            }),
            "http.egress.allow_cidrs"
        );
        HttpToolConfig::default().validate(4 * 1024 * 1024).unwrap();
    }
}
