//! The Slack integration: POSTs a message to an incoming webhook (or any
//! Slack-compatible endpoint, e.g. Mattermost) in the shape of
//! Alertmanager's default Slack message (`notify/slack/slack.go` with the
//! `slack.default.*` templates): one attachment with the title
//! `[FIRING:2] ToolFailing`, a link to the receiver's alerts, the colour
//! "danger" while firing and "good" once resolved, a fallback line, and
//! `mrkdwn_in` for the formatted fields.
//!
//! Alertmanager's default text is empty; here it lists each alert (summary,
//! severity, description, labels), which is what most Alertmanager users
//! configure. `channel`, `username`, `title` and `text` can be overridden
//! with plain strings holding a few placeholders: `{{status}}`,
//! `{{alertname}}`, `{{count}}`, `{{receiver}}`.

use std::path::PathBuf;
use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_kit::text::truncate_chars_within;
use serde::{Deserialize, Serialize};

use super::http::{self, Auth};
use super::retry::DeliveryError;
use super::secret::{Redactor, Resolver, Secret, SecretSettings};
use super::validate_http_url;
use crate::model::Notification;
use crate::receivers::text;

/// Longest title Slack shows (Alertmanager's `maxTitleLenRunes`).
const MAX_TITLE_CHARS: usize = 1024;
/// Longest text sent: Slack cuts messages past 40 000 characters.
const MAX_TEXT_CHARS: usize = 30_000;
/// The default user name.
const DEFAULT_USERNAME: &str = "agentmesh-alerting";

/// A Slack integration's settings (`slack_configs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SlackConfig {
    /// The incoming webhook's URL (a secret: its path is the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) api_url: Option<Secret>,
    /// A file holding the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) api_url_file: Option<PathBuf>,
    /// An environment variable holding the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) api_url_env: Option<String>,
    /// Whether resolved alerts are notified (default false, as Alertmanager).
    pub(crate) send_resolved: bool,
    /// The channel, e.g. "#alerts" (default: the webhook's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) channel: Option<String>,
    /// The name the message is posted under (default "agentmesh-alerting").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) username: Option<String>,
    /// An emoji as the poster's icon, e.g. ":rotating_light:".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) icon_emoji: Option<String>,
    /// An image URL as the poster's icon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) icon_url: Option<String>,
    /// The attachment's title (default `[FIRING:2] ToolFailing …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) title: Option<String>,
    /// The attachment's text (default: the alerts listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) text: Option<String>,
    /// The longest wait for one attempt's answer.
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            api_url: None,
            api_url_file: None,
            api_url_env: None,
            send_resolved: false,
            channel: None,
            username: None,
            icon_emoji: None,
            icon_url: None,
            title: None,
            text: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A built Slack integration.
#[derive(Debug)]
pub(crate) struct Slack {
    url: Secret,
    config: SlackConfig,
    redactor: Redactor,
}

impl Slack {
    /// Builds it from `config`; `setting` is the config's path, e.g.
    /// `receivers[team].slack_configs[0]`.
    pub(crate) fn build(
        config: &SlackConfig,
        setting: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        let url_setting = format!("{setting}.api_url");
        let url = resolver.require(SecretSettings {
            setting: &url_setting,
            value: config.api_url.as_ref(),
            file: config.api_url_file.as_ref(),
            env: config.api_url_env.as_ref(),
        })?;
        validate_http_url(&url_setting, url.expose())?;
        if let Some(icon_url) = &config.icon_url {
            validate_http_url(&format!("{setting}.icon_url"), icon_url)?;
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.timeout"),
                "must be greater than zero",
            ));
        }
        let mut redactor = Redactor::default();
        redactor.add_url(&url);
        // The copy keeps only the presentation settings: the URL lives in
        // `url` alone.
        let config = SlackConfig {
            api_url: None,
            api_url_file: None,
            api_url_env: None,
            ..config.clone()
        };
        Ok(Self {
            url,
            config,
            redactor,
        })
    }

    /// Delivers `notification` once. Slack answers "ok" (incoming webhooks)
    /// or `{"ok": false, "error": …}` with a 200 (the Web API): the latter is
    /// a failure that trying again will not fix.
    pub(crate) async fn send(&self, notification: &Notification) -> Result<(), DeliveryError> {
        let body = serde_json::to_vec(&message(&self.config, notification))
            .map_err(|err| DeliveryError::permanent(format!("cannot encode the message: {err}")))?;
        let reply = http::post_json(
            self.url.expose(),
            body,
            Auth::None,
            self.config.timeout,
            &self.redactor,
        )
        .await?;
        if let Ok(serde_json::Value::Object(answer)) =
            serde_json::from_str::<serde_json::Value>(&reply.body)
            && answer.get("ok") == Some(&serde_json::Value::Bool(false))
        {
            let error = answer
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown error");
            return Err(DeliveryError::permanent(self.redactor.redact(&format!(
                "Slack answered with an error: {}",
                http::quote(error)
            ))));
        }
        Ok(())
    }
}

/// Alertmanager's Slack `request`.
#[derive(Debug, Serialize)]
pub(crate) struct Message {
    #[serde(skip_serializing_if = "String::is_empty")]
    channel: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    icon_emoji: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    icon_url: String,
    attachments: Vec<Attachment>,
}

/// Alertmanager's Slack `attachment` (the fields it always sends).
#[derive(Debug, Serialize)]
struct Attachment {
    #[serde(skip_serializing_if = "String::is_empty")]
    title: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    title_link: String,
    text: String,
    fallback: String,
    callback_id: String,
    footer: String,
    color: &'static str,
    mrkdwn_in: [&'static str; 3],
}

/// The message for `notification` under `config`.
pub(crate) fn message(config: &SlackConfig, notification: &Notification) -> Message {
    let render = |template: &str| render(template, notification);
    let title = truncate_chars_within(
        &config
            .title
            .as_deref()
            .map_or_else(|| text::subject(notification), render),
        MAX_TITLE_CHARS,
    )
    .into_owned();
    let title_link =
        text::alerts_link(&notification.external_url, &notification.receiver).unwrap_or_default();
    let body = config
        .text
        .as_deref()
        .map_or_else(|| default_text(notification), render);
    // Alertmanager's `slack.default.fallback`: "<title> | <link>".
    let fallback = if title_link.is_empty() {
        title.clone()
    } else {
        format!("{title} | {title_link}")
    };
    Message {
        channel: config.channel.as_deref().map(render).unwrap_or_default(),
        username: config
            .username
            .as_deref()
            .map_or_else(|| DEFAULT_USERNAME.to_owned(), render),
        icon_emoji: config.icon_emoji.clone().unwrap_or_default(),
        icon_url: config.icon_url.clone().unwrap_or_default(),
        attachments: vec![Attachment {
            title,
            title_link,
            text: truncate_chars_within(&body, MAX_TEXT_CHARS).into_owned(),
            fallback,
            callback_id: String::new(),
            footer: String::new(),
            color: if notification.status() == "firing" {
                "danger"
            } else {
                "good"
            },
            mrkdwn_in: ["fallback", "pretext", "text"],
        }],
    }
}

/// Each alert: `*Alert:* <summary or name> - `severity``, its description,
/// and its labels; resolved alerts in a firing group are marked.
fn default_text(notification: &Notification) -> String {
    let firing = notification.status() == "firing";
    let mut blocks = Vec::with_capacity(notification.alerts.len());
    for alert in &notification.alerts {
        let mut block = String::new();
        let title = alert
            .annotations
            .get("summary")
            .map_or_else(|| alert.name(), String::as_str);
        block.push_str("*Alert:* ");
        block.push_str(title);
        if let Some(severity) = alert.labels.get(crate::model::SEVERITY) {
            block.push_str(&format!(" - `{severity}`"));
        }
        if firing && alert.is_resolved() {
            block.push_str(" (resolved)");
        }
        block.push('\n');
        if let Some(description) = alert.annotations.get("description") {
            block.push_str("*Description:* ");
            block.push_str(description);
            block.push('\n');
        }
        block.push_str("*Details:*\n");
        for (name, value) in &alert.labels {
            block.push_str(&format!("  • *{name}:* `{value}`\n"));
        }
        blocks.push(block);
    }
    blocks.join("\n")
}

/// Replaces the placeholders `{{status}}`, `{{alertname}}`, `{{count}}` and
/// `{{receiver}}` (spaces inside the braces allowed); other text, including
/// unknown placeholders, is kept as written.
pub(crate) fn render(template: &str, notification: &Notification) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let value = match after[..close].trim() {
            "status" => Some(notification.status().to_owned()),
            "alertname" => Some(text::common_alertname(notification)),
            "count" => Some(notification.alerts.len().to_string()),
            "receiver" => Some(notification.receiver.clone()),
            _ => None,
        };
        match value {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::receivers::test_server::{Reply, TestServer};
    use crate::receivers::text::tests::{firing, notification, resolved};

    fn slack(url: &str, config: SlackConfig) -> Slack {
        let config = SlackConfig {
            api_url: Some(Secret::new(url)),
            ..config
        };
        Slack::build(
            &config,
            "receivers[team].slack_configs[0]",
            &Resolver::process(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_message_is_alertmanagers_default_shape() {
        let server = TestServer::start(vec![]).await;
        let config = SlackConfig {
            channel: Some("#alerts".into()),
            ..SlackConfig::default()
        };
        let integration = slack(
            &format!("{}/services/T0/B0/XXXXXXXXXXXX", server.url()),
            config,
        );
        let mut one = firing(&[
            ("alertname", "ToolFailing"),
            ("tool", "files"),
            ("severity", "critical"),
        ]);
        one.annotations.remove("description");
        let two = firing(&[
            ("alertname", "ToolFailing"),
            ("tool", "shell"),
            ("severity", "critical"),
        ]);
        integration
            .send(&notification(vec![one, two]))
            .await
            .unwrap();

        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/services/T0/B0/XXXXXXXXXXXX");
        let link = "http://alerting.example.com:50055/#/alerts?receiver=team";
        assert_eq!(
            requests[0].json(),
            json!({
                "channel": "#alerts",
                "username": "agentmesh-alerting",
                "attachments": [{
                    "title": "[FIRING:2] ToolFailing (critical)",
                    "title_link": link,
                    "text": "*Alert:* Tool calls are failing - `critical`\n*Details:*\n  • *alertname:* `ToolFailing`\n  • *severity:* `critical`\n  • *tool:* `files`\n\n\
                             *Alert:* Tool calls are failing - `critical`\n*Description:* More than 5% of calls failed\n*Details:*\n  • *alertname:* `ToolFailing`\n  • *severity:* `critical`\n  • *tool:* `shell`\n",
                    "fallback": format!("[FIRING:2] ToolFailing (critical) | {link}"),
                    "callback_id": "",
                    "footer": "",
                    "color": "danger",
                    "mrkdwn_in": ["fallback", "pretext", "text"]
                }]
            })
        );
    }

    #[test]
    fn resolved_groups_are_green() {
        let n = notification(vec![resolved(firing(&[("alertname", "ToolFailing")]))]);
        let value = serde_json::to_value(message(&SlackConfig::default(), &n)).unwrap();
        assert_eq!(value["attachments"][0]["color"], "good");
        assert_eq!(value["attachments"][0]["title"], "[RESOLVED] ToolFailing");
        assert!(value.get("channel").is_none());
    }

    #[test]
    fn overrides_use_placeholders() {
        let config = SlackConfig {
            channel: Some("#{{ alertname }}".into()),
            username: Some("bot".into()),
            title: Some(
                "{{status}}: {{alertname}} x{{count}} for {{receiver}} {{unknown}} {{".into(),
            ),
            text: Some("see runbook".into()),
            icon_emoji: Some(":fire:".into()),
            ..SlackConfig::default()
        };
        let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
        let value = serde_json::to_value(message(&config, &n)).unwrap();
        assert_eq!(value["channel"], "#ToolFailing");
        assert_eq!(value["username"], "bot");
        assert_eq!(value["icon_emoji"], ":fire:");
        assert_eq!(
            value["attachments"][0]["title"],
            "firing: ToolFailing x1 for team {{unknown}} {{"
        );
        assert_eq!(value["attachments"][0]["text"], "see runbook");
    }

    #[test]
    fn long_titles_are_cut() {
        let config = SlackConfig {
            title: Some("x".repeat(5000)),
            ..SlackConfig::default()
        };
        let n = notification(vec![firing(&[("alertname", "A")])]);
        let value = serde_json::to_value(message(&config, &n)).unwrap();
        let title = value["attachments"][0]["title"].as_str().unwrap();
        assert_eq!(title.chars().count(), 1024);
        assert!(title.ends_with('…'));
    }

    #[tokio::test]
    async fn slack_errors_are_reported() {
        let server = TestServer::start(vec![
            Reply::status(200).body("{\"ok\":false,\"error\":\"channel_not_found\"}"),
            Reply::status(400).body("invalid_payload"),
            Reply::status(404).body("no_service"),
        ])
        .await;
        let integration = slack(
            &format!("{}/services/T0/B0/XXXXXXXXXXXX", server.url()),
            SlackConfig::default(),
        );
        let n = notification(vec![firing(&[("alertname", "A")])]);
        let err = integration.send(&n).await.unwrap_err();
        assert_eq!(
            err.message,
            "Slack answered with an error: channel_not_found"
        );
        assert!(!err.retryable);
        let err = integration.send(&n).await.unwrap_err();
        assert_eq!(err.message, "HTTP 400 Bad Request: invalid_payload");
        assert!(!err.retryable);
        let err = integration.send(&n).await.unwrap_err();
        assert_eq!(err.message, "HTTP 404 Not Found: no_service");
        assert!(!format!("{integration:?}").contains("XXXXXXXXXXXX"));
    }
}
