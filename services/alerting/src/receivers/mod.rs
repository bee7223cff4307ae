//! The receivers: where notifications go, with the wire formats of
//! Prometheus Alertmanager so that existing consumers work unchanged.
//!
//! Configuration (`[[alerting.receivers]]`, Alertmanager's names) lists
//! named receivers, each with any number of integrations: `webhook_configs`
//! (Alertmanager's webhook payload, version 4), `slack_configs` (an incoming
//! webhook message), `email_configs` (SMTP with lettre) and
//! `pagerduty_configs` (Events API v2). A receiver without integrations
//! discards what is routed to it, as in Alertmanager.
//!
//! Data flow: [`Receivers::build`] validates the configuration, reads every
//! secret (value, `_file` or `_env`; see [`secret`]) and builds the
//! integrations once. The dispatcher asks [`Notifier::integrations`] which
//! integrations a receiver has, and hands each one a [`Notification`] (one
//! aggregation group at one flush) through [`Notifier::deliver`], which
//! formats it for the integration, sends it, and retries failures that may
//! pass with backoff until the dispatcher's deadline (see [`retry`]). The
//! result — attempts and the last error, short and free of secrets — goes
//! back to the dispatcher for its audit event, log line and metrics.
//!
//! Separately, [`AlertmanagerForwarder`] (see [`alertmanager`]) posts alerts
//! to Prometheus Alertmanagers for a caller that runs the re-send loop.
//!
//! All HTTP goes through one pooled client (see [`http`]).

pub(crate) mod alertmanager;
pub(crate) mod email;
pub(crate) mod http;
pub(crate) mod pagerduty;
pub(crate) mod retry;
pub(crate) mod secret;
pub(crate) mod slack;
#[cfg(test)]
pub(crate) mod test_server;
pub(crate) mod text;
pub(crate) mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_kit::ConfigError;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::model::{Delivery, IntegrationId, Notification, Notifier};

pub(crate) use alertmanager::{AlertmanagerConfig, AlertmanagerForwarder};
pub(crate) use email::EmailConfig;
pub(crate) use pagerduty::PagerDutyConfig;
pub(crate) use retry::{DeliveryConfig, DeliveryError};
pub(crate) use slack::SlackConfig;
pub(crate) use webhook::WebhookConfig;

use email::Email;
use pagerduty::PagerDuty;
use secret::Resolver;
use slack::Slack;
use webhook::Webhook;

/// One named receiver and its integrations (`[[alerting.receivers]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ReceiverConfig {
    /// The name routes refer to.
    pub(crate) name: String,
    /// Webhooks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) webhook_configs: Vec<WebhookConfig>,
    /// Slack incoming webhooks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) slack_configs: Vec<SlackConfig>,
    /// Email.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) email_configs: Vec<EmailConfig>,
    /// PagerDuty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) pagerduty_configs: Vec<PagerDutyConfig>,
}

impl ReceiverConfig {
    /// A receiver named `name` without integrations (it discards what is
    /// routed to it).
    pub(crate) fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// One built integration.
#[derive(Debug)]
enum Integration {
    Webhook(Webhook),
    Slack(Slack),
    Email(Email),
    PagerDuty(PagerDuty),
}

impl Integration {
    async fn send(&self, notification: &Notification) -> Result<(), DeliveryError> {
        match self {
            Self::Webhook(webhook) => webhook.send(notification).await,
            Self::Slack(slack) => slack.send(notification).await,
            Self::Email(email) => email.send(notification).await,
            Self::PagerDuty(pagerduty) => pagerduty.send(notification).await,
        }
    }
}

/// A built receiver.
#[derive(Debug)]
struct Receiver {
    name: String,
    integrations: Vec<(IntegrationId, Arc<Integration>)>,
}

/// The configured receivers, ready to deliver; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Receivers {
    receivers: Arc<Vec<Receiver>>,
    delivery: DeliveryConfig,
    external_url: String,
}

impl Receivers {
    /// Validates `configs` and `delivery`, reads the secrets (environment
    /// variables from the process) and builds the integrations.
    /// `external_url` is the service's URL for links in messages (may be
    /// empty). Errors name the setting relative to the service section, e.g.
    /// `receivers[team].webhook_configs[0].url`.
    pub(crate) fn build(
        configs: &[ReceiverConfig],
        delivery: &DeliveryConfig,
        external_url: &str,
    ) -> Result<Self, ConfigError> {
        Self::build_with(configs, delivery, external_url, &Resolver::process())
    }

    /// [`build`](Self::build) with secrets read through `resolver`.
    pub(crate) fn build_with(
        configs: &[ReceiverConfig],
        delivery: &DeliveryConfig,
        external_url: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        delivery.validate()?;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut receivers = Vec::with_capacity(configs.len());
        for (position, config) in configs.iter().enumerate() {
            let name = config.name.as_str();
            if name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("receivers[{position}].name"),
                    "is empty: every receiver needs the name routes refer to it by",
                ));
            }
            if let Some(first) = seen.insert(name, position) {
                return Err(ConfigError::new(
                    format!("receivers[{name}].name"),
                    format!(
                        "receiver {name:?} is defined twice (receivers {first} and {position}, counting from 0)"
                    ),
                ));
            }
            receivers.push(build_receiver(config, resolver)?);
        }
        Ok(Self {
            receivers: Arc::new(receivers),
            delivery: delivery.clone(),
            external_url: external_url.trim().to_owned(),
        })
    }

    /// The receivers' names, in configuration order.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.receivers
            .iter()
            .map(|receiver| receiver.name.as_str())
            .collect()
    }

    /// True when a receiver is named `name`.
    #[cfg(test)]
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|receiver| receiver.name == name)
    }
}

fn build_receiver(
    config: &ReceiverConfig,
    resolver: &Resolver<'_>,
) -> Result<Receiver, ConfigError> {
    let base = format!("receivers[{}]", config.name);
    let mut integrations = Vec::new();
    let mut add =
        |kind: &'static str, index: usize, send_resolved: bool, integration: Integration| {
            integrations.push((
                IntegrationId {
                    kind,
                    index,
                    send_resolved,
                },
                Arc::new(integration),
            ));
        };
    for (index, webhook) in config.webhook_configs.iter().enumerate() {
        let setting = format!("{base}.webhook_configs[{index}]");
        let built = Webhook::build(webhook, &setting, resolver)?;
        add(
            "webhook",
            index,
            webhook.send_resolved,
            Integration::Webhook(built),
        );
    }
    for (index, slack) in config.slack_configs.iter().enumerate() {
        let setting = format!("{base}.slack_configs[{index}]");
        let built = Slack::build(slack, &setting, resolver)?;
        add(
            "slack",
            index,
            slack.send_resolved,
            Integration::Slack(built),
        );
    }
    for (index, email) in config.email_configs.iter().enumerate() {
        let setting = format!("{base}.email_configs[{index}]");
        let built = Email::build(email, &setting, resolver)?;
        add(
            "email",
            index,
            email.send_resolved,
            Integration::Email(built),
        );
    }
    for (index, pagerduty) in config.pagerduty_configs.iter().enumerate() {
        let setting = format!("{base}.pagerduty_configs[{index}]");
        let built = PagerDuty::build(pagerduty, &setting, resolver)?;
        add(
            "pagerduty",
            index,
            pagerduty.send_resolved,
            Integration::PagerDuty(built),
        );
    }
    Ok(Receiver {
        name: config.name.clone(),
        integrations,
    })
}

impl Notifier for Receivers {
    fn integrations(&self, receiver: &str) -> Vec<IntegrationId> {
        self.find(receiver)
            .map(|receiver| receiver.integrations.iter().map(|(id, _)| *id).collect())
            .unwrap_or_default()
    }

    fn deliver(
        &self,
        receiver: &str,
        integration: IntegrationId,
        mut notification: Notification,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'static, Delivery> {
        let found = self.find(receiver).and_then(|found| {
            found
                .integrations
                .iter()
                .find(|(id, _)| id.kind == integration.kind && id.index == integration.index)
                .map(|(_, built)| Arc::clone(built))
        });
        let delivery = self.delivery.clone();
        let what = format!("receiver {receiver} {}", integration.name());
        if notification.external_url.is_empty() {
            notification.external_url.clone_from(&self.external_url);
        }
        Box::pin(async move {
            let Some(built) = found else {
                return Delivery {
                    attempts: 0,
                    error: Some(format!("{what} is not configured")),
                };
            };
            retry::with_retries(&delivery, deadline, &what, || built.send(&notification)).await
        })
    }
}

/// Parses an http(s) URL for `setting`. The message never quotes the URL:
/// it may be a secret.
pub(crate) fn parse_http_url(setting: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text.trim())
        .map_err(|err| ConfigError::new(setting, format!("is not a valid URL ({err})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(
            setting,
            format!("must be an http or https URL, not {}", url.scheme()),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(setting, "has no host"));
    }
    Ok(url)
}

/// Checks that `text` is an http(s) URL with a host.
pub(crate) fn validate_http_url(setting: &str, text: &str) -> Result<(), ConfigError> {
    parse_http_url(setting, text).map(drop)
}

#[cfg(test)]
mod tests;
