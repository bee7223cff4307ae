//! The PagerDuty integration: sends Events API v2 events, as Alertmanager's
//! `pagerduty_configs` with a `routing_key` do.
//!
//! A firing group triggers an incident and a resolved group resolves it;
//! both carry the same `dedup_key`, the SHA-256 (hex) of the group key as
//! Alertmanager computes it, so PagerDuty pairs them up, across restarts
//! too. The summary is Alertmanager's subject (cut to PagerDuty's 1024
//! characters); the custom details are Alertmanager's defaults (the firing
//! and resolved alert lists and their counts). The severity is the
//! configured one, else the most severe "severity" label among the alerts
//! mapped onto PagerDuty's critical/error/warning/info, else "error".

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_kit::text::truncate_chars_within;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::http::{self, Auth};
use super::retry::DeliveryError;
use super::secret::{Redactor, Resolver, Secret, SecretSettings};
use super::validate_http_url;
use crate::model::{Alert, Notification};
use crate::receivers::text;

/// The Events API v2 endpoint.
pub(crate) const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty's longest summary.
const MAX_SUMMARY_CHARS: usize = 1024;
/// The default `client` (Alertmanager sends "Alertmanager").
const DEFAULT_CLIENT: &str = "agentmesh-alerting";
/// PagerDuty's severities, most severe first.
const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// A PagerDuty integration's settings (`pagerduty_configs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PagerDutyConfig {
    /// The integration's routing key (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routing_key: Option<Secret>,
    /// A file holding the routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routing_key_file: Option<PathBuf>,
    /// An environment variable holding the routing key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) routing_key_env: Option<String>,
    /// The Events API endpoint.
    pub(crate) url: String,
    /// Whether resolved groups resolve the incident (default true, as
    /// Alertmanager).
    pub(crate) send_resolved: bool,
    /// critical, error, warning or info; default: from the alerts'
    /// "severity" label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) severity: Option<String>,
    /// The event's source (default: `client`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// The client named in PagerDuty (default "agentmesh-alerting").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    /// The client's link (default: the receiver's alerts under the external
    /// URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_url: Option<String>,
    /// The event's class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) class: Option<String>,
    /// The event's component.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) component: Option<String>,
    /// The event's group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    /// The longest wait for one attempt's answer.
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
}

impl Default for PagerDutyConfig {
    fn default() -> Self {
        Self {
            routing_key: None,
            routing_key_file: None,
            routing_key_env: None,
            url: DEFAULT_URL.to_owned(),
            send_resolved: true,
            severity: None,
            source: None,
            client: None,
            client_url: None,
            class: None,
            component: None,
            group: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A built PagerDuty integration.
#[derive(Debug)]
pub(crate) struct PagerDuty {
    routing_key: Secret,
    config: PagerDutyConfig,
    redactor: Redactor,
}

impl PagerDuty {
    /// Builds it from `config`; `setting` is the config's path, e.g.
    /// `receivers[team].pagerduty_configs[0]`.
    pub(crate) fn build(
        config: &PagerDutyConfig,
        setting: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        let routing_key = resolver.require(SecretSettings {
            setting: &format!("{setting}.routing_key"),
            value: config.routing_key.as_ref(),
            file: config.routing_key_file.as_ref(),
            env: config.routing_key_env.as_ref(),
        })?;
        validate_http_url(&format!("{setting}.url"), &config.url)?;
        if let Some(client_url) = &config.client_url {
            validate_http_url(&format!("{setting}.client_url"), client_url)?;
        }
        if let Some(severity) = &config.severity
            && !SEVERITIES.contains(&severity.as_str())
        {
            return Err(ConfigError::new(
                format!("{setting}.severity"),
                format!("{severity:?} is not one of critical, error, warning, info"),
            ));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.timeout"),
                "must be greater than zero",
            ));
        }
        let mut redactor = Redactor::default();
        redactor.add(&routing_key);
        let config = PagerDutyConfig {
            routing_key: None,
            routing_key_file: None,
            routing_key_env: None,
            ..config.clone()
        };
        Ok(Self {
            routing_key,
            config,
            redactor,
        })
    }

    /// Delivers `notification` once; PagerDuty answers 202 when it took the
    /// event.
    pub(crate) async fn send(&self, notification: &Notification) -> Result<(), DeliveryError> {
        let event = event(&self.config, self.routing_key.expose(), notification);
        let body = serde_json::to_vec(&event)
            .map_err(|err| DeliveryError::permanent(format!("cannot encode the event: {err}")))?;
        http::post_json(
            &self.config.url,
            body,
            Auth::None,
            self.config.timeout,
            &self.redactor,
        )
        .await?;
        Ok(())
    }
}

/// An Events API v2 event (Alertmanager's `pagerDutyMessage`).
#[derive(Debug, Serialize)]
pub(crate) struct Event<'a> {
    routing_key: &'a str,
    event_action: &'static str,
    dedup_key: String,
    payload: Payload,
    #[serde(skip_serializing_if = "String::is_empty")]
    client: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    client_url: String,
}

/// An event's payload.
#[derive(Debug, Serialize)]
struct Payload {
    summary: String,
    source: String,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    custom_details: std::collections::BTreeMap<&'static str, String>,
}

/// The dedup key of a group: hex SHA-256 of its key (Alertmanager's
/// `notify.Key.Hash`).
pub(crate) fn dedup_key(group_key: &str) -> String {
    hex::encode(Sha256::digest(group_key.as_bytes()))
}

/// The event for `notification`.
pub(crate) fn event<'a>(
    config: &PagerDutyConfig,
    routing_key: &'a str,
    notification: &Notification,
) -> Event<'a> {
    let firing = notification.status() == "firing";
    let client = config
        .client
        .clone()
        .unwrap_or_else(|| DEFAULT_CLIENT.to_owned());
    let client_url = config
        .client_url
        .clone()
        .or_else(|| text::alerts_link(&notification.external_url, &notification.receiver))
        .unwrap_or_default();
    let firing_alerts: Vec<&Alert> = notification.firing().collect();
    let resolved_alerts: Vec<&Alert> = notification.resolved().collect();
    let custom_details = [
        ("firing", text::alert_list(firing_alerts.iter().copied())),
        (
            "resolved",
            text::alert_list(resolved_alerts.iter().copied()),
        ),
        ("num_firing", firing_alerts.len().to_string()),
        ("num_resolved", resolved_alerts.len().to_string()),
    ]
    .into_iter()
    .collect();
    Event {
        routing_key,
        event_action: if firing { "trigger" } else { "resolve" },
        dedup_key: dedup_key(&notification.group_key),
        payload: Payload {
            summary: truncate_chars_within(&text::subject(notification), MAX_SUMMARY_CHARS)
                .into_owned(),
            source: config.source.clone().unwrap_or_else(|| client.clone()),
            severity: severity(config, notification),
            class: config.class.clone(),
            component: config.component.clone(),
            group: config.group.clone(),
            custom_details,
        },
        client,
        client_url,
    }
}

/// The configured severity, else the most severe of the alerts' "severity"
/// labels (the firing alerts', or all when none fires), else "error".
fn severity(config: &PagerDutyConfig, notification: &Notification) -> &'static str {
    if let Some(configured) = config.severity.as_deref()
        && let Some(known) = SEVERITIES.iter().find(|known| **known == configured)
    {
        return known;
    }
    let firing: Vec<&Alert> = notification.firing().collect();
    let alerts: Vec<&Alert> = if firing.is_empty() {
        notification.alerts.iter().collect()
    } else {
        firing
    };
    alerts
        .iter()
        .filter_map(|alert| alert.labels.get(crate::model::SEVERITY))
        .filter_map(|label| map_severity(label))
        .min_by_key(|severity| SEVERITIES.iter().position(|known| known == severity))
        .unwrap_or("error")
}

/// A "severity" label's value as a PagerDuty severity.
fn map_severity(label: &str) -> Option<&'static str> {
    match label.trim().to_ascii_lowercase().as_str() {
        "critical" | "crit" | "fatal" | "page" => Some("critical"),
        "error" | "err" | "high" => Some("error"),
        "warning" | "warn" | "medium" => Some("warning"),
        "info" | "informational" | "low" | "none" => Some("info"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::receivers::test_server::{Reply, TestServer};
    use crate::receivers::text::tests::{firing, notification, resolved};

    fn pagerduty(url: &str, config: PagerDutyConfig) -> PagerDuty {
        let config = PagerDutyConfig {
            routing_key: Some(Secret::new("R0UT1NGKEY0000000000000000000000")),
            url: url.to_owned(),
            ..config
        };
        PagerDuty::build(
            &config,
            "receivers[team].pagerduty_configs[0]",
            &Resolver::process(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn trigger_and_resolve_share_the_dedup_key() {
        let server = TestServer::start(vec![
            Reply::status(202).body("{\"status\":\"success\",\"message\":\"Event processed\"}"),
            Reply::status(202).body("{\"status\":\"success\",\"message\":\"Event processed\"}"),
        ])
        .await;
        let integration = pagerduty(
            &format!("{}/v2/enqueue", server.url()),
            PagerDutyConfig::default(),
        );
        let alert = firing(&[
            ("alertname", "ToolFailing"),
            ("tool", "files"),
            ("severity", "critical"),
        ]);
        integration
            .send(&notification(vec![alert.clone()]))
            .await
            .unwrap();
        integration
            .send(&notification(vec![resolved(alert)]))
            .await
            .unwrap();

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/v2/enqueue");
        let (trigger, resolve) = (requests[0].json(), requests[1].json());
        // SHA-256 of the group key, as Alertmanager's Key.Hash().
        let key = dedup_key("{}:{alertname=\"ToolFailing\"}");
        assert_eq!(key.len(), 64);
        assert_eq!(trigger["dedup_key"], key);
        assert_eq!(resolve["dedup_key"], key);
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(resolve["event_action"], "resolve");
        let link = "http://alerting.example.com:50055/#/alerts?receiver=team";
        assert_eq!(
            trigger,
            json!({
                "routing_key": "R0UT1NGKEY0000000000000000000000",
                "event_action": "trigger",
                "dedup_key": key,
                "payload": {
                    "summary": "[FIRING:1] ToolFailing (critical files)",
                    "source": "agentmesh-alerting",
                    "severity": "critical",
                    "custom_details": {
                        "firing": "Labels:\n - alertname = ToolFailing\n - severity = critical\n - tool = files\nAnnotations:\n - description = More than 5% of calls failed\n - summary = Tool calls are failing\nSource: http://agentmesh:50055/rules/ToolFailing\n",
                        "resolved": "",
                        "num_firing": "1",
                        "num_resolved": "0"
                    }
                },
                "client": "agentmesh-alerting",
                "client_url": link
            })
        );
        assert_eq!(
            resolve["payload"]["summary"],
            "[RESOLVED] ToolFailing (critical files)"
        );
        assert_eq!(resolve["payload"]["custom_details"]["num_resolved"], "1");
    }

    #[test]
    fn known_dedup_key() {
        // The SHA-256 of the empty string, in lower-case hex.
        assert_eq!(
            dedup_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn severity_comes_from_the_setting_or_the_labels() {
        let crit = firing(&[("alertname", "A"), ("severity", "critical")]);
        let warn = firing(&[("alertname", "A"), ("severity", "warning"), ("x", "1")]);
        let plain = firing(&[("alertname", "A"), ("x", "2")]);
        let config = PagerDutyConfig::default();
        assert_eq!(
            severity(&config, &notification(vec![warn.clone(), crit.clone()])),
            "critical"
        );
        assert_eq!(
            severity(&config, &notification(vec![warn.clone(), plain.clone()])),
            "warning"
        );
        assert_eq!(
            severity(&config, &notification(vec![plain.clone()])),
            "error"
        );
        // A resolved critical alert does not raise a firing warning.
        assert_eq!(
            severity(
                &config,
                &notification(vec![warn.clone(), resolved(crit.clone())])
            ),
            "warning"
        );
        assert_eq!(
            severity(&config, &notification(vec![resolved(crit)])),
            "critical"
        );
        let info = firing(&[("alertname", "A"), ("severity", "Info")]);
        assert_eq!(severity(&config, &notification(vec![info])), "info");
        let configured = PagerDutyConfig {
            severity: Some("warning".into()),
            ..PagerDutyConfig::default()
        };
        assert_eq!(severity(&configured, &notification(vec![plain])), "warning");
    }

    #[test]
    fn summaries_are_cut_at_1024_characters() {
        let long = "x".repeat(3000);
        let n = notification(vec![firing(&[
            ("alertname", "ToolFailing"),
            ("detail", &long),
        ])]);
        let value = serde_json::to_value(event(&PagerDutyConfig::default(), "key", &n)).unwrap();
        let summary = value["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), 1024);
        assert!(summary.ends_with('…'));
    }

    #[test]
    fn settings_are_checked() {
        let resolver = Resolver::process();
        let build = |config: PagerDutyConfig| {
            PagerDuty::build(&config, "receivers[team].pagerduty_configs[0]", &resolver)
        };
        let err = build(PagerDutyConfig::default()).unwrap_err();
        assert_eq!(
            err.setting,
            "receivers[team].pagerduty_configs[0].routing_key"
        );
        let keyed = PagerDutyConfig {
            routing_key: Some(Secret::new("k3y-value-1234")),
            ..PagerDutyConfig::default()
        };
        let built = build(keyed.clone()).unwrap();
        assert!(!format!("{built:?}").contains("k3y-value-1234"));
        let err = build(PagerDutyConfig {
            severity: Some("high".into()),
            ..keyed.clone()
        })
        .unwrap_err();
        assert_eq!(err.setting, "receivers[team].pagerduty_configs[0].severity");
        let err = build(PagerDutyConfig {
            url: "ftp://events.pagerduty.com".into(),
            ..keyed
        })
        .unwrap_err();
        assert_eq!(err.setting, "receivers[team].pagerduty_configs[0].url");
    }

    #[tokio::test]
    async fn errors_do_not_echo_the_routing_key() {
        let server = TestServer::start(vec![Reply::status(400).body(
            "{\"status\":\"invalid event\",\"message\":\"Event object is invalid\",\"errors\":[\"routing_key R0UT1NGKEY0000000000000000000000 unknown\"]}",
        )])
        .await;
        let integration = pagerduty(
            &format!("{}/v2/enqueue", server.url()),
            PagerDutyConfig::default(),
        );
        let err = integration
            .send(&notification(vec![firing(&[("alertname", "A")])]))
            .await
            .unwrap_err();
        assert!(!err.retryable);
        assert!(
            err.message
                .starts_with("HTTP 400 Bad Request: {\"status\":\"invalid event\""),
            "{}",
            err.message
        );
        assert!(!err.message.contains("R0UT1NG"), "{}", err.message);
    }
}
