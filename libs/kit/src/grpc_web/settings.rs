//! The `[server.grpc_web]` settings: whether the gRPC listener also speaks
//! gRPC-Web (and so HTTP/1.1), and which browser origins CORS lets call it.
//!
//! CORS is closed unless the operator opens it: no origin is allowed by
//! default, an allowed origin is written exactly as a browser sends it
//! (`https://console.example.com`, no path, no pattern), and "any origin"
//! is the explicit `"*"`, alone.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// Headers gRPC-Web clients send (or the mesh forwards) that a browser may
/// put on a cross-origin call once its preflight allows them.
pub const ALLOWED_HEADERS: [&str; 10] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "x-request-id",
    "traceparent",
    "tracestate",
    "baggage",
    "connect-protocol-version",
];

/// Response headers a browser script may read: the status of a call that
/// ends without a body (a trailers-only answer, e.g. a refused call).
pub const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The longest `max_age` accepted (browsers cap it lower anyway).
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// gRPC-Web on the gRPC listener, and its CORS answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcWebConfig {
    /// Whether the listener accepts gRPC-Web calls (over HTTP/1.1 or
    /// HTTP/2) beside gRPC. Off by default; the orchestrator turns it on.
    pub enabled: bool,
    /// Origins allowed to call from a browser, exactly as browsers send
    /// them (`scheme://host[:port]`), or `["*"]` for any origin. Empty (the
    /// default): CORS is closed, a preflight is refused and no
    /// `Access-Control-Allow-*` header is ever sent.
    pub allowed_origins: Vec<String>,
    /// Request headers allowed beside [`ALLOWED_HEADERS`].
    pub extra_allowed_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for GrpcWebConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            allowed_origins: Vec::new(),
            extra_allowed_headers: Vec::new(),
            max_age: Duration::from_secs(600),
        }
    }
}

/// The origins CORS lets in, as checked settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origins {
    /// None: CORS closed.
    Closed,
    /// Any origin (`"*"`).
    Any,
    /// Exactly these.
    Exactly(Vec<HeaderValue>),
}

impl Origins {
    /// Whether a request from `origin` gets CORS headers.
    pub(crate) fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Self::Closed => false,
            Self::Any => true,
            Self::Exactly(list) => list.contains(origin),
        }
    }
}

impl GrpcWebConfig {
    /// Checks the values that types alone do not rule out.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.origins()?;
        self.extra_headers()?;
        if self.max_age > MAX_MAX_AGE {
            return Err(ConfigError::new(
                "server.grpc_web.max_age",
                "must be at most 24h (browsers keep a preflight's answer 2h at most)",
            ));
        }
        Ok(())
    }

    /// The allowed origins, checked.
    pub(crate) fn origins(&self) -> Result<Origins, ConfigError> {
        let setting = "server.grpc_web.allowed_origins";
        match self.allowed_origins.as_slice() {
            [] => return Ok(Origins::Closed),
            [any] if any == "*" => return Ok(Origins::Any),
            _ => {}
        }
        self.allowed_origins
            .iter()
            .map(|origin| {
                origin_value(origin)
                    .map_err(|problem| ConfigError::new(setting, format!("{origin:?}: {problem}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Origins::Exactly)
    }

    /// Every allowed request header: the fixed ones and the extra ones.
    pub(crate) fn allowed_headers(&self) -> Result<Vec<HeaderName>, ConfigError> {
        let mut headers: Vec<HeaderName> = ALLOWED_HEADERS
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect();
        for extra in self.extra_headers()? {
            if !headers.contains(&extra) {
                headers.push(extra);
            }
        }
        Ok(headers)
    }

    fn extra_headers(&self) -> Result<Vec<HeaderName>, ConfigError> {
        self.extra_allowed_headers
            .iter()
            .map(|name| {
                let error = |problem: &str| {
                    ConfigError::new(
                        "server.grpc_web.extra_allowed_headers",
                        format!("{name:?} {problem}"),
                    )
                };
                // "*" is a token, but CORS would read it as "any header".
                if name.contains('*') {
                    return Err(error("is a pattern: list each header by name"));
                }
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| error("is not a header name"))
            })
            .collect()
    }
}

/// `origin` as the header value a browser would send, or why it cannot be
/// one: a serialized origin is `scheme://host[:port]` in lower case.
fn origin_value(origin: &str) -> Result<HeaderValue, String> {
    if origin == "*" {
        return Err("\"*\" (any origin) must be the only entry".to_owned());
    }
    if origin.contains('*') {
        return Err("patterns are not supported: list each origin exactly".to_owned());
    }
    if origin != origin.to_ascii_lowercase() {
        return Err("write it in lower case, as browsers send it".to_owned());
    }
    let uri: Uri = origin
        .parse()
        .map_err(|_| "not an origin (scheme://host[:port])".to_owned())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority_ok = uri
        .authority()
        .is_some_and(|authority| !authority.host().is_empty() && !authority.as_str().contains('@'));
    // `Uri` normalises an empty path to "/": compare with the text instead.
    let bare = uri
        .scheme_str()
        .zip(uri.authority())
        .is_some_and(|(scheme, authority)| origin == format!("{scheme}://{authority}"));
    if !scheme_ok || !authority_ok || !bare {
        return Err("not an origin: use scheme://host[:port] with http or https, no path, no trailing slash".to_owned());
    }
    HeaderValue::from_str(origin).map_err(|_| "not a header value".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origins(origins: &[&str]) -> GrpcWebConfig {
        GrpcWebConfig {
            enabled: true,
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            ..GrpcWebConfig::default()
        }
    }

    #[test]
    fn cors_is_closed_by_default() {
        let config = GrpcWebConfig::default();
        assert!(!config.enabled);
        assert_eq!(config.origins().unwrap(), Origins::Closed);
        assert!(
            !Origins::Closed.allows(&HeaderValue::from_static("https://a.example")),
            "closed allows nothing"
        );
    }

    #[test]
    fn exact_origins_and_an_explicit_star_are_accepted() {
        let config = with_origins(&["https://console.example.com", "http://localhost:5173"]);
        let origins = config.origins().unwrap();
        assert!(origins.allows(&HeaderValue::from_static("http://localhost:5173")));
        assert!(!origins.allows(&HeaderValue::from_static("http://localhost:5174")));
        assert!(!origins.allows(&HeaderValue::from_static(
            "https://console.example.com.evil"
        )));
        assert_eq!(with_origins(&["*"]).origins().unwrap(), Origins::Any);
    }

    #[test]
    fn anything_but_an_exact_origin_is_refused_naming_the_setting() {
        for bad in [
            "https://console.example.com/",
            "https://console.example.com/app",
            "https://*.example.com",
            "HTTPS://Console.example.com",
            "console.example.com",
            "ftp://example.com",
            "https://user@example.com",
            "",
            "null",
        ] {
            let err = with_origins(&[bad]).validate().unwrap_err();
            assert_eq!(err.setting, "server.grpc_web.allowed_origins", "{bad}");
        }
        let err = with_origins(&["*", "https://a.example"])
            .validate()
            .unwrap_err();
        assert!(err.message.contains("only entry"), "{err}");
    }

    #[test]
    fn extra_headers_and_max_age_are_checked() {
        let config = GrpcWebConfig {
            extra_allowed_headers: vec!["x-custom".into(), "content-type".into()],
            ..GrpcWebConfig::default()
        };
        let headers = config.allowed_headers().unwrap();
        assert_eq!(headers.len(), ALLOWED_HEADERS.len() + 1);
        for name in ["bad header", "*", ""] {
            let bad = GrpcWebConfig {
                extra_allowed_headers: vec![name.into()],
                ..GrpcWebConfig::default()
            };
            assert_eq!(
                bad.validate().unwrap_err().setting,
                "server.grpc_web.extra_allowed_headers",
                "{name:?}"
            );
        }
        let long = GrpcWebConfig {
            max_age: Duration::from_secs(2 * 24 * 3600),
            ..GrpcWebConfig::default()
        };
        assert_eq!(
            long.validate().unwrap_err().setting,
            "server.grpc_web.max_age"
        );
    }
}
