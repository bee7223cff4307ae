//! Forwarding alerts to Prometheus Alertmanagers, as Prometheus does: the
//! service can hand its alerts to an existing Alertmanager instead of (or
//! besides) notifying receivers itself.
//!
//! The caller (the service's forwarding loop) re-sends the active alerts
//! every `resend_interval` through [`AlertmanagerForwarder::post`], which
//! POSTs them to `<url>/api/v2/alerts` as Alertmanager's postable alerts
//! (`labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`). As in
//! Prometheus, a firing alert's `endsAt` is now + 4 × `resend_interval`: if
//! the service stops re-sending (it crashed, or the alert vanished), the
//! Alertmanager resolves the alert by itself after that. A resolved alert is
//! sent with its real end, so the Alertmanager resolves it at once. Pending
//! alerts are not sent (Prometheus sends only firing and resolved ones), and
//! `matchers` restrict what one Alertmanager gets.
//!
//! One attempt per call: the next round of the caller's loop is the retry.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

use super::http::{self, Auth};
use super::retry::DeliveryError;
use super::secret::{Redactor, Resolver, Secret, SecretSettings};
use crate::matcher::{self, Matcher};
use crate::model::{Alert, AlertState, Annotations, LabelSet};
use crate::receivers::text;

/// One Alertmanager to forward to (`[[alerting.alertmanagers]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AlertmanagerConfig {
    /// Its base URL, e.g. "http://alertmanager:9093" (with a path prefix
    /// when it is served under one); alerts go to `<url>/api/v2/alerts`.
    pub(crate) url: String,
    /// How often the active alerts are re-sent; firing alerts are sent with
    /// `endsAt` = now + 4 × this.
    #[serde(with = "humantime_serde")]
    pub(crate) resend_interval: Duration,
    /// The longest wait for one POST.
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
    /// Only alerts matching all of these are forwarded (default: all), e.g.
    /// `['severity=~"critical|warning"']`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) matchers: Vec<Matcher>,
    /// HTTP basic authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) basic_auth: Option<BasicAuthConfig>,
    /// An `Authorization` header, e.g. a bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) authorization: Option<AuthorizationConfig>,
}

impl Default for AlertmanagerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            resend_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            matchers: Vec::new(),
            basic_auth: None,
            authorization: None,
        }
    }
}

/// Basic authentication settings (Prometheus' `basic_auth`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct BasicAuthConfig {
    /// The user name.
    pub(crate) username: String,
    /// The password (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) password: Option<Secret>,
    /// A file holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) password_env: Option<String>,
}

/// `Authorization` header settings (Prometheus' `authorization`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AuthorizationConfig {
    /// The scheme (default "Bearer").
    #[serde(rename = "type")]
    pub(crate) scheme: String,
    /// The credentials, e.g. the token (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credentials: Option<Secret>,
    /// A file holding the credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credentials_file: Option<PathBuf>,
    /// An environment variable holding the credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credentials_env: Option<String>,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            scheme: "Bearer".to_owned(),
            credentials: None,
            credentials_file: None,
            credentials_env: None,
        }
    }
}

/// How a forwarder authenticates, secrets resolved.
#[derive(Debug, Clone)]
enum ForwarderAuth {
    None,
    Basic { username: String, password: Secret },
    Scheme { scheme: String, credentials: Secret },
}

/// Forwards alerts to one Alertmanager.
#[derive(Debug, Clone)]
pub(crate) struct AlertmanagerForwarder {
    endpoint: String,
    label: String,
    resend_interval: Duration,
    timeout: Duration,
    matchers: Vec<Matcher>,
    auth: ForwarderAuth,
    redactor: Redactor,
}

/// Alertmanager's `PostableAlert` (API v2).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PostableAlert {
    /// The alert's labels.
    pub(crate) labels: LabelSet,
    /// Its annotations.
    pub(crate) annotations: Annotations,
    /// When it started.
    pub(crate) starts_at: String,
    /// When it ends: its real end once resolved, else now + 4 × the resend
    /// interval.
    pub(crate) ends_at: String,
    /// The link back to its source (left out when empty: Alertmanager
    /// validates it as a URI).
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub(crate) generator_url: String,
}

impl AlertmanagerForwarder {
    /// Builds one forwarder per config, secrets read from the process
    /// environment; errors name the setting (`alertmanagers[0].url`).
    pub(crate) fn build(configs: &[AlertmanagerConfig]) -> Result<Vec<Self>, ConfigError> {
        Self::build_with(configs, &Resolver::process())
    }

    /// [`build`](Self::build) with secrets read through `resolver`.
    pub(crate) fn build_with(
        configs: &[AlertmanagerConfig],
        resolver: &Resolver<'_>,
    ) -> Result<Vec<Self>, ConfigError> {
        let mut built: Vec<Self> = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let setting = format!("alertmanagers[{index}]");
            let forwarder = Self::build_one(config, &setting, resolver)?;
            if let Some(first) = built
                .iter()
                .position(|other| other.endpoint == forwarder.endpoint)
            {
                return Err(ConfigError::new(
                    format!("{setting}.url"),
                    format!(
                        "is the same Alertmanager as alertmanagers[{first}].url: each alert would be sent twice"
                    ),
                ));
            }
            built.push(forwarder);
        }
        Ok(built)
    }

    /// The alerts endpoint under the configured base URL, and the
    /// Alertmanager's "host:port" label; refuses credentials, queries and
    /// fragments in the URL.
    fn endpoint(
        config: &AlertmanagerConfig,
        setting: &str,
    ) -> Result<(String, String), ConfigError> {
        let url_setting = format!("{setting}.url");
        if config.url.trim().is_empty() {
            return Err(ConfigError::new(
                url_setting,
                "is required: the Alertmanager's base URL, e.g. \"http://alertmanager:9093\"",
            ));
        }
        let url = super::parse_http_url(&url_setting, config.url.trim())?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::new(
                url_setting,
                "must not hold credentials: set basic_auth (with password_file or password_env) instead",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(
                url_setting,
                "must be a base URL without query or fragment (alerts go to <url>/api/v2/alerts)",
            ));
        }
        let label = match (url.host_str(), url.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => return Err(ConfigError::new(url_setting, "has no host")),
        };
        let endpoint = format!("{}/api/v2/alerts", url.as_str().trim_end_matches('/'));
        Ok((endpoint, label))
    }

    /// The configured authentication (basic or a scheme, not both), its
    /// secrets read through `resolver` and added to `redactor`.
    fn auth(
        config: &AlertmanagerConfig,
        setting: &str,
        resolver: &Resolver<'_>,
        redactor: &mut Redactor,
    ) -> Result<ForwarderAuth, ConfigError> {
        let auth = match (&config.basic_auth, &config.authorization) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{setting}.authorization"),
                    "set either basic_auth or authorization, not both",
                ));
            }
            (Some(basic), None) => {
                if basic.username.trim().is_empty() {
                    return Err(ConfigError::new(
                        format!("{setting}.basic_auth.username"),
                        "is required",
                    ));
                }
                let password = resolver.require(SecretSettings {
                    setting: &format!("{setting}.basic_auth.password"),
                    value: basic.password.as_ref(),
                    file: basic.password_file.as_ref(),
                    env: basic.password_env.as_ref(),
                })?;
                redactor.add(&password);
                ForwarderAuth::Basic {
                    username: basic.username.trim().to_owned(),
                    password,
                }
            }
            (None, Some(authorization)) => {
                let scheme = authorization.scheme.trim();
                if scheme.is_empty()
                    || !scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._~+".contains(c))
                {
                    return Err(ConfigError::new(
                        format!("{setting}.authorization.type"),
                        format!("{scheme:?} is not an authorization scheme (e.g. \"Bearer\")"),
                    ));
                }
                let credentials = resolver.require(SecretSettings {
                    setting: &format!("{setting}.authorization.credentials"),
                    value: authorization.credentials.as_ref(),
                    file: authorization.credentials_file.as_ref(),
                    env: authorization.credentials_env.as_ref(),
                })?;
                redactor.add(&credentials);
                ForwarderAuth::Scheme {
                    scheme: scheme.to_owned(),
                    credentials,
                }
            }
            (None, None) => ForwarderAuth::None,
        };
        Ok(auth)
    }

    fn build_one(
        config: &AlertmanagerConfig,
        setting: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        let (endpoint, label) = Self::endpoint(config, setting)?;
        if config.resend_interval.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.resend_interval"),
                "must be greater than zero (e.g. \"1m\")",
            ));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.timeout"),
                "must be greater than zero",
            ));
        }
        let mut redactor = Redactor::default();
        let auth = Self::auth(config, setting, resolver, &mut redactor)?;
        Ok(Self {
            endpoint,
            label,
            resend_interval: config.resend_interval,
            timeout: config.timeout,
            matchers: config.matchers.clone(),
            auth,
            redactor,
        })
    }

    /// "host:port" of the Alertmanager, for logs (no credentials, no path).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// How often the caller re-sends the active alerts.
    pub(crate) fn resend_interval(&self) -> Duration {
        self.resend_interval
    }

    /// True when `alert` matches all the matchers (always without matchers).
    pub(crate) fn matches(&self, alert: &Alert) -> bool {
        matcher::all_match(&self.matchers, &alert.labels)
    }

    /// The postable alerts of `alerts` at `now`: pending and non-matching
    /// ones left out.
    pub(crate) fn postable(&self, alerts: &[Alert], now: SystemTime) -> Vec<PostableAlert> {
        let valid_until = now
            .checked_add(self.resend_interval.saturating_mul(4))
            .unwrap_or(now);
        alerts
            .iter()
            .filter(|alert| {
                alert.state != AlertState::Pending && alert.state != AlertState::Unspecified
            })
            .filter(|alert| self.matches(alert))
            .map(|alert| PostableAlert {
                labels: alert.labels.clone(),
                annotations: alert.annotations.clone(),
                starts_at: text::rfc3339(text::starts_at(alert)),
                ends_at: text::rfc3339(if alert.is_resolved() {
                    text::resolved_at(alert)
                } else {
                    valid_until
                }),
                generator_url: alert.generator_url.clone(),
            })
            .collect()
    }

    /// Sends `alerts` (those that are firing or resolved and match) at
    /// `now`; nothing is sent when none is left.
    pub(crate) async fn post(
        &self,
        alerts: &[Alert],
        now: SystemTime,
    ) -> Result<(), DeliveryError> {
        let postable = self.postable(alerts, now);
        if postable.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&postable)
            .map_err(|err| DeliveryError::permanent(format!("cannot encode the alerts: {err}")))?;
        let auth = match &self.auth {
            ForwarderAuth::None => Auth::None,
            ForwarderAuth::Basic { username, password } => Auth::Basic {
                username,
                password: password.expose(),
            },
            ForwarderAuth::Scheme {
                scheme,
                credentials,
            } => Auth::Scheme {
                scheme,
                credentials: credentials.expose(),
            },
        };
        http::post_json(&self.endpoint, body, auth, self.timeout, &self.redactor).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::receivers::test_server::{Reply, TestServer};
    use crate::receivers::text::tests::{firing, resolved, t0};

    fn forwarder(config: AlertmanagerConfig) -> AlertmanagerForwarder {
        AlertmanagerForwarder::build(&[config]).unwrap().remove(0)
    }

    #[tokio::test]
    async fn alerts_are_posted_as_prometheus_does() {
        let server = TestServer::start(vec![]).await;
        let am = forwarder(AlertmanagerConfig {
            url: format!("{}/prefix/", server.url()),
            resend_interval: Duration::from_secs(60),
            ..AlertmanagerConfig::default()
        });
        let one = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        let mut two = resolved(firing(&[("alertname", "ToolFailing"), ("tool", "shell")]));
        two.generator_url.clear();
        two.annotations.clear();
        let mut pending = firing(&[("alertname", "ToolFailing"), ("tool", "web")]);
        pending.state = AlertState::Pending;
        let now = t0() + Duration::from_secs(30);
        am.post(&[one, two, pending], now).await.unwrap();

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/prefix/api/v2/alerts");
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        assert_eq!(
            requests[0].json(),
            json!([
                {
                    "labels": {"alertname": "ToolFailing", "tool": "files"},
                    "annotations": {
                        "description": "More than 5% of calls failed",
                        "summary": "Tool calls are failing"
                    },
                    "startsAt": "2024-05-01T12:00:00Z",
                    // now + 4 × 1m
                    "endsAt": "2024-05-01T12:04:30Z",
                    "generatorURL": "http://agentmesh:50055/rules/ToolFailing"
                },
                {
                    "labels": {"alertname": "ToolFailing", "tool": "shell"},
                    "annotations": {},
                    "startsAt": "2024-05-01T12:00:00Z",
                    "endsAt": "2024-05-01T12:05:00Z"
                }
            ])
        );
    }

    #[tokio::test]
    async fn matchers_select_and_nothing_left_sends_nothing() {
        let server = TestServer::start(vec![]).await;
        let am = forwarder(AlertmanagerConfig {
            url: server.url().to_owned(),
            matchers: vec![Matcher::parse("severity=~\"critical|warning\"").unwrap()],
            ..AlertmanagerConfig::default()
        });
        let crit = firing(&[("alertname", "A"), ("severity", "critical")]);
        let info = firing(&[("alertname", "B"), ("severity", "info")]);
        assert!(am.matches(&crit));
        assert!(!am.matches(&info));
        let postable = am.postable(&[crit.clone(), info.clone()], t0());
        assert_eq!(postable.len(), 1);
        assert_eq!(postable[0].labels["severity"], "critical");
        am.post(&[info], t0()).await.unwrap();
        assert!(server.requests().is_empty());
        am.post(&[crit], t0()).await.unwrap();
        assert_eq!(server.requests().len(), 1);
        assert_eq!(server.requests()[0].path, "/api/v2/alerts");
    }

    #[tokio::test]
    async fn credentials_are_sent_and_never_shown() {
        let server =
            TestServer::start(vec![Reply::status(401).body("bad token 7oken-7oken-7oken")]).await;
        let am = forwarder(AlertmanagerConfig {
            url: server.url().to_owned(),
            authorization: Some(AuthorizationConfig {
                credentials: Some(Secret::new("7oken-7oken-7oken")),
                ..AuthorizationConfig::default()
            }),
            ..AlertmanagerConfig::default()
        });
        let err = am
            .post(&[firing(&[("alertname", "A")])], t0())
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert_eq!(err.message, "HTTP 401 Unauthorized: bad token <secret>");
        assert_eq!(
            server.requests()[0].header("authorization"),
            Some("Bearer 7oken-7oken-7oken")
        );
        assert!(!format!("{am:?}").contains("7oken"));
        assert!(am.label().starts_with("127.0.0.1:"));

        let basic = forwarder(AlertmanagerConfig {
            url: server.url().to_owned(),
            basic_auth: Some(BasicAuthConfig {
                username: "am".into(),
                password: Some(Secret::new("pw-pw-pw")),
                ..BasicAuthConfig::default()
            }),
            ..AlertmanagerConfig::default()
        });
        basic
            .post(&[firing(&[("alertname", "A")])], t0())
            .await
            .unwrap();
        assert_eq!(
            server.requests()[1].header("authorization"),
            Some("Basic YW06cHctcHctcHc=")
        );
    }

    #[tokio::test]
    async fn server_errors_are_retryable() {
        let server = TestServer::start(vec![Reply::status(503).header("retry-after", "5")]).await;
        let am = forwarder(AlertmanagerConfig {
            url: server.url().to_owned(),
            ..AlertmanagerConfig::default()
        });
        let err = am
            .post(&[firing(&[("alertname", "A")])], t0())
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(5)));
    }

    #[test]
    fn settings_are_checked() {
        let check =
            |config: AlertmanagerConfig| AlertmanagerForwarder::build(&[config]).unwrap_err();
        let err = check(AlertmanagerConfig::default());
        assert_eq!(err.setting, "alertmanagers[0].url");
        let err = check(AlertmanagerConfig {
            url: "alertmanager:9093".into(),
            ..AlertmanagerConfig::default()
        });
        assert_eq!(err.setting, "alertmanagers[0].url");
        let err = check(AlertmanagerConfig {
            url: "http://user:hunter2@alertmanager:9093".into(),
            ..AlertmanagerConfig::default()
        });
        assert_eq!(err.setting, "alertmanagers[0].url");
        assert!(!err.message.contains("hunter2"));
        let err = check(AlertmanagerConfig {
            url: "http://alertmanager:9093".into(),
            resend_interval: Duration::ZERO,
            ..AlertmanagerConfig::default()
        });
        assert_eq!(err.setting, "alertmanagers[0].resend_interval");
        let err = check(AlertmanagerConfig {
            url: "http://alertmanager:9093".into(),
            basic_auth: Some(BasicAuthConfig {
                username: "am".into(),
                ..BasicAuthConfig::default()
            }),
            ..AlertmanagerConfig::default()
        });
        assert_eq!(err.setting, "alertmanagers[0].basic_auth.password");

        let same = AlertmanagerConfig {
            url: "http://alertmanager:9093".into(),
            ..AlertmanagerConfig::default()
        };
        let err = AlertmanagerForwarder::build(&[same.clone(), same.clone()]).unwrap_err();
        assert_eq!(err.setting, "alertmanagers[1].url");

        let built = AlertmanagerForwarder::build(&[same]).unwrap();
        assert_eq!(built[0].label(), "alertmanager:9093");
        assert_eq!(built[0].resend_interval(), Duration::from_secs(60));
        let https = forwarder(AlertmanagerConfig {
            url: "https://am.example.com".into(),
            ..AlertmanagerConfig::default()
        });
        assert_eq!(https.label(), "am.example.com:443");
    }

    #[test]
    fn config_reads_from_toml_like_prometheus() {
        let config: AlertmanagerConfig = serde_json::from_value(json!({
            "url": "http://alertmanager:9093",
            "resend_interval": "30s",
            "timeout": "5s",
            "matchers": ["severity=\"critical\""],
            "authorization": {"credentials_file": "/run/secrets/am"}
        }))
        .unwrap();
        assert_eq!(config.resend_interval, Duration::from_secs(30));
        assert_eq!(config.authorization.as_ref().unwrap().scheme, "Bearer");
        assert_eq!(config.matchers.len(), 1);
        let serialized = serde_json::to_value(&config).unwrap();
        assert_eq!(serialized["matchers"][0], "severity=\"critical\"");
        assert!(
            serde_json::from_value::<AlertmanagerConfig>(json!({"url": "x", "bogus": 1})).is_err()
        );
    }
}
