//! The webhook integration: POSTs Alertmanager's webhook payload (version
//! "4", `notify/webhook/webhook.go` over `template.Data`) as JSON, so any
//! consumer written for Alertmanager's webhooks works unchanged.
//!
//! A notification becomes one body: receiver, status, the alerts (each with
//! status, labels, annotations, startsAt, endsAt — Go's zero time while
//! firing, as Alertmanager hides an end that has not come —, generatorURL,
//! fingerprint), the group and common labels, common annotations, external
//! URL, groupKey and truncatedAlerts (`max_alerts` cuts the list; the common
//! labels are still those of every alert, as in Alertmanager).
//!
//! One deviation: Alertmanager regex-quotes the receiver name in `receiver`
//! (a known quirk, `team.a` becomes `team\.a`); the name is sent as is.

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

use super::http::{self, Auth};
use super::retry::DeliveryError;
use super::secret::{Redactor, Resolver, Secret, SecretSettings};
use super::validate_http_url;
use crate::model::{Annotations, LabelSet, Notification};
use crate::receivers::text;

/// The webhook payload's version, as Alertmanager's.
pub(crate) const VERSION: &str = "4";

/// A webhook integration's settings (`webhook_configs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    /// Where to POST (a secret: such URLs often carry a token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<Secret>,
    /// A file holding the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url_file: Option<PathBuf>,
    /// An environment variable holding the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url_env: Option<String>,
    /// Whether resolved alerts are notified (default true, as Alertmanager).
    pub(crate) send_resolved: bool,
    /// The most alerts in one payload; 0 = all.
    pub(crate) max_alerts: usize,
    /// The longest wait for one attempt's answer.
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            url_env: None,
            send_resolved: true,
            max_alerts: 0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A built webhook integration.
#[derive(Debug)]
pub(crate) struct Webhook {
    url: Secret,
    max_alerts: usize,
    timeout: Duration,
    redactor: Redactor,
}

impl Webhook {
    /// Builds it from `config`; `setting` is the config's path, e.g.
    /// `receivers[team].webhook_configs[0]`.
    pub(crate) fn build(
        config: &WebhookConfig,
        setting: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        let url_setting = format!("{setting}.url");
        let url = resolver.require(SecretSettings {
            setting: &url_setting,
            value: config.url.as_ref(),
            file: config.url_file.as_ref(),
            env: config.url_env.as_ref(),
        })?;
        validate_http_url(&url_setting, url.expose())?;
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.timeout"),
                "must be greater than zero",
            ));
        }
        let mut redactor = Redactor::default();
        redactor.add_url(&url);
        Ok(Self {
            url,
            max_alerts: config.max_alerts,
            timeout: config.timeout,
            redactor,
        })
    }

    /// Delivers `notification` once.
    pub(crate) async fn send(&self, notification: &Notification) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&message(notification, self.max_alerts))
            .map_err(|err| DeliveryError::permanent(format!("cannot encode the payload: {err}")))?;
        http::post_json(
            self.url.expose(),
            body,
            Auth::None,
            self.timeout,
            &self.redactor,
        )
        .await?;
        Ok(())
    }
}

/// Alertmanager's webhook `Message`: `template.Data` and three fields; the
/// field order is Go's.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Message<'a> {
    receiver: &'a str,
    status: &'static str,
    alerts: Vec<WebhookAlert<'a>>,
    group_labels: &'a LabelSet,
    common_labels: LabelSet,
    common_annotations: Annotations,
    #[serde(rename = "externalURL")]
    external_url: &'a str,
    version: &'static str,
    group_key: &'a str,
    truncated_alerts: u64,
}

/// Alertmanager's `template.Alert`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookAlert<'a> {
    status: &'static str,
    labels: &'a LabelSet,
    annotations: &'a Annotations,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'a str,
    fingerprint: String,
}

/// The payload of `notification`, with at most `max_alerts` alerts (0 = all).
pub(crate) fn message(notification: &Notification, max_alerts: usize) -> Message<'_> {
    let total = notification.alerts.len();
    let kept = if max_alerts == 0 {
        total
    } else {
        total.min(max_alerts)
    };
    let alerts = notification
        .alerts
        .iter()
        .take(kept)
        .map(|alert| WebhookAlert {
            status: text::alert_status(alert),
            labels: &alert.labels,
            annotations: &alert.annotations,
            starts_at: text::rfc3339(text::starts_at(alert)),
            ends_at: if alert.is_resolved() {
                text::rfc3339(text::resolved_at(alert))
            } else {
                text::ZERO_TIME.to_owned()
            },
            generator_url: &alert.generator_url,
            fingerprint: alert.fingerprint.to_string(),
        })
        .collect();
    Message {
        receiver: &notification.receiver,
        status: notification.status(),
        alerts,
        group_labels: &notification.group_labels,
        common_labels: notification.common_labels(),
        common_annotations: notification.common_annotations(),
        external_url: &notification.external_url,
        version: VERSION,
        group_key: &notification.group_key,
        truncated_alerts: u64::try_from(total - kept).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::receivers::test_server::{Reply, TestServer};
    use crate::receivers::text::tests::{firing, notification, resolved};

    fn webhook(url: &str, max_alerts: usize) -> Webhook {
        let config = WebhookConfig {
            url: Some(Secret::new(url)),
            max_alerts,
            ..WebhookConfig::default()
        };
        Webhook::build(
            &config,
            "receivers[team].webhook_configs[0]",
            &Resolver::process(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_payload_is_alertmanagers_version_4() {
        let server = TestServer::start(vec![]).await;
        let one = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        let two = resolved(firing(&[("alertname", "ToolFailing"), ("tool", "shell")]));
        let (fp_one, fp_two) = (one.fingerprint.to_string(), two.fingerprint.to_string());
        let hook = webhook(&format!("{}/hook?token=abc", server.url()), 0);
        hook.send(&notification(vec![one, two])).await.unwrap();

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook?token=abc");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("user-agent"), Some(http::USER_AGENT));
        assert!(http::USER_AGENT.starts_with("agentmesh-alerting/"));
        let expected = json!({
            "receiver": "team",
            "status": "firing",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "ToolFailing", "tool": "files"},
                    "annotations": {
                        "description": "More than 5% of calls failed",
                        "summary": "Tool calls are failing"
                    },
                    "startsAt": "2024-05-01T12:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://agentmesh:50055/rules/ToolFailing",
                    "fingerprint": fp_one
                },
                {
                    "status": "resolved",
                    "labels": {"alertname": "ToolFailing", "tool": "shell"},
                    "annotations": {
                        "description": "More than 5% of calls failed",
                        "summary": "Tool calls are failing"
                    },
                    "startsAt": "2024-05-01T12:00:00Z",
                    "endsAt": "2024-05-01T12:05:00Z",
                    "generatorURL": "http://agentmesh:50055/rules/ToolFailing",
                    "fingerprint": fp_two
                }
            ],
            "groupLabels": {"alertname": "ToolFailing"},
            "commonLabels": {"alertname": "ToolFailing"},
            "commonAnnotations": {
                "description": "More than 5% of calls failed",
                "summary": "Tool calls are failing"
            },
            "externalURL": "http://alerting.example.com:50055",
            "version": "4",
            "groupKey": "{}:{alertname=\"ToolFailing\"}",
            "truncatedAlerts": 0
        });
        assert_eq!(request.json(), expected);
        // Field order as Alertmanager's (some consumers log the raw body).
        let raw = String::from_utf8(request.body.clone()).unwrap();
        let order = [
            "\"receiver\"",
            "\"status\"",
            "\"alerts\"",
            "\"groupLabels\"",
            "\"commonLabels\"",
            "\"commonAnnotations\"",
            "\"externalURL\"",
            "\"version\"",
            "\"groupKey\"",
            "\"truncatedAlerts\"",
        ];
        let positions: Vec<usize> = order.iter().map(|key| raw.find(key).unwrap()).collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{raw}");
    }

    #[test]
    fn fingerprints_are_alertmanagers() {
        // The same labels hash to the same fingerprint in Alertmanager
        // (FNV-1a 64 over the sorted pairs); the empty set is the offset basis.
        let alert = firing(&[]);
        let n = notification(vec![alert]);
        let value = serde_json::to_value(message(&n, 0)).unwrap();
        assert_eq!(value["alerts"][0]["fingerprint"], "cbf29ce484222325");
    }

    #[test]
    fn max_alerts_truncates_and_counts() {
        let alerts: Vec<_> = (0..5)
            .map(|i| firing(&[("alertname", "ToolFailing"), ("tool", &format!("t{i}"))]))
            .collect();
        let n = notification(alerts);
        let value = serde_json::to_value(message(&n, 2)).unwrap();
        assert_eq!(value["alerts"].as_array().unwrap().len(), 2);
        assert_eq!(value["truncatedAlerts"], 3);
        assert_eq!(value["alerts"][1]["labels"]["tool"], "t1");
        let value = serde_json::to_value(message(&n, 0)).unwrap();
        assert_eq!(value["alerts"].as_array().unwrap().len(), 5);
        assert_eq!(value["truncatedAlerts"], 0);
        let value = serde_json::to_value(message(&n, 10)).unwrap();
        assert_eq!(value["truncatedAlerts"], 0);
    }

    #[test]
    fn a_resolved_group_is_resolved() {
        let n = notification(vec![resolved(firing(&[("alertname", "ToolFailing")]))]);
        let value = serde_json::to_value(message(&n, 0)).unwrap();
        assert_eq!(value["status"], "resolved");
        assert_eq!(value["alerts"][0]["status"], "resolved");
        assert_eq!(value["alerts"][0]["endsAt"], "2024-05-01T12:05:00Z");
        // Empty maps are objects, as Go marshals them.
        let mut bare = firing(&[("alertname", "X")]);
        bare.annotations.clear();
        let n = notification(vec![bare]);
        let value = serde_json::to_value(message(&n, 0)).unwrap();
        assert_eq!(value["alerts"][0]["annotations"], json!({}));
        assert_eq!(value["commonAnnotations"], json!({}));
    }

    #[tokio::test]
    async fn errors_carry_no_url() {
        let server = TestServer::start(vec![
            Reply::status(500).body("no route to /hook/SECRETTOKEN99"),
        ])
        .await;
        let hook = webhook(&format!("{}/hook/SECRETTOKEN99", server.url()), 0);
        let err = hook
            .send(&notification(vec![firing(&[("alertname", "A")])]))
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert_eq!(
            err.message,
            "HTTP 500 Internal Server Error: no route to <secret>"
        );
        assert!(!format!("{hook:?}").contains("SECRETTOKEN99"));
    }
}
