//! Tests of the receivers as a whole: building from configuration (TOML
//! through the kit's loader, validation naming the setting, secrets from
//! values, files and the environment, nothing secret in Debug or serialized
//! output) and delivering through [`Notifier`] with retries against local
//! recording servers.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::email::EmailTls;
use super::secret::{Resolver, Secret};
use super::test_server::{Reply, TestServer};
use super::text::tests::{firing, notification};
use super::*;

/// Retries fast enough for real-time tests.
fn fast() -> DeliveryConfig {
    DeliveryConfig {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

fn test_env(name: &str) -> Result<String, std::env::VarError> {
    match name {
        "SLACK_URL" => Ok("https://hooks.slack.com/services/T0/B0/SLACKTOKEN1234".to_owned()),
        "SMTP_PASSWORD" => Ok("smtp-pa55word".to_owned()),
        "TEAM_HOOK_URL" => Ok("http://127.0.0.1:9/hook/ENVTOKEN5678".to_owned()),
        _ => Err(std::env::VarError::NotPresent),
    }
}

fn build(configs: &[ReceiverConfig]) -> Result<Receivers, ConfigError> {
    Receivers::build_with(
        configs,
        &fast(),
        "http://alerting.example.com",
        &Resolver::with_env(&test_env),
    )
}

fn webhook_receiver(name: &str, url: &str) -> ReceiverConfig {
    ReceiverConfig {
        name: name.to_owned(),
        webhook_configs: vec![WebhookConfig {
            url: Some(Secret::new(url)),
            ..WebhookConfig::default()
        }],
        ..ReceiverConfig::default()
    }
}

fn webhook0() -> IntegrationId {
    IntegrationId {
        kind: "webhook",
        index: 0,
        send_resolved: true,
    }
}

fn in_a_minute() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

// === configuration ===

/// A service configuration embedding the receivers as the alerting
/// service's does, loaded by the kit from a TOML file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TestConfig {
    server: agentmesh_kit::ServerConfig,
    log: agentmesh_kit::LogConfig,
    auth: agentmesh_kit::config::AuthConfig,
    receivers: Vec<ReceiverConfig>,
    alertmanagers: Vec<AlertmanagerConfig>,
    delivery: DeliveryConfig,
}

agentmesh_kit::service_config!(
    TestConfig,
    service = "receivers-test",
    section = "receivers_test"
);

const TOML: &str = r##"
[receivers_test]

[[receivers_test.receivers]]
name = "team"
[[receivers_test.receivers.webhook_configs]]
url = "http://127.0.0.1:9999/hook"
send_resolved = true
max_alerts = 0
timeout = "10s"
[[receivers_test.receivers.webhook_configs]]
url_file = "@HOOK_FILE@"
[[receivers_test.receivers.slack_configs]]
api_url_env = "SLACK_URL"
channel = "#alerts"
[[receivers_test.receivers.email_configs]]
to = "ops@example.com"
from = "agentmesh@example.com"
smarthost = "smtp.example.com:587"
auth_username = "agentmesh"
auth_password_env = "SMTP_PASSWORD"
[[receivers_test.receivers.pagerduty_configs]]
routing_key_file = "@PD_FILE@"

[[receivers_test.receivers]]
name = "blackhole"

[[receivers_test.alertmanagers]]
url = "http://alertmanager:9093"
resend_interval = "1m"
matchers = ['severity=~"critical|warning"']
[receivers_test.alertmanagers.basic_auth]
username = "am"
password_file = "@PD_FILE@"

[receivers_test.delivery]
initial_backoff = "1s"
max_backoff = "1m"
"##;

#[test]
fn toml_configuration_builds_and_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let hook_file = dir.path().join("hook");
    std::fs::write(&hook_file, "https://hooks.example.com/FILETOKEN9999\n").unwrap();
    let pd_file = dir.path().join("pd");
    std::fs::write(&pd_file, "PDROUTINGKEY0000\n").unwrap();
    let toml = TOML
        .replace("@HOOK_FILE@", &hook_file.display().to_string())
        .replace("@PD_FILE@", &pd_file.display().to_string());
    let config_file = dir.path().join("agentmesh.toml");
    std::fs::write(&config_file, toml).unwrap();
    let config: TestConfig = agentmesh_kit::config::load(
        Some(&config_file),
        &agentmesh_kit::config::Overrides::default(),
    )
    .unwrap();

    assert_eq!(config.receivers.len(), 2);
    let team = &config.receivers[0];
    assert_eq!(team.webhook_configs.len(), 2);
    assert!(team.webhook_configs[0].send_resolved);
    assert_eq!(team.webhook_configs[0].timeout, Duration::from_secs(10));
    assert!(
        !team.slack_configs[0].send_resolved,
        "slack defaults to send_resolved = false"
    );
    assert!(
        !team.email_configs[0].send_resolved,
        "email defaults to send_resolved = false"
    );
    assert_eq!(team.email_configs[0].tls, EmailTls::Starttls);
    assert!(
        team.pagerduty_configs[0].send_resolved,
        "pagerduty defaults to send_resolved = true"
    );
    assert_eq!(config.delivery, DeliveryConfig::default());

    let receivers = Receivers::build_with(
        &config.receivers,
        &config.delivery,
        "",
        &Resolver::with_env(&test_env),
    )
    .unwrap();
    assert_eq!(receivers.names(), vec!["team", "blackhole"]);
    assert!(receivers.contains("blackhole"));
    assert!(!receivers.contains("nobody"));
    let ids = receivers.integrations("team");
    let names: Vec<String> = ids.iter().map(IntegrationId::name).collect();
    assert_eq!(
        names,
        [
            "webhook[0]",
            "webhook[1]",
            "slack[0]",
            "email[0]",
            "pagerduty[0]"
        ]
    );
    let resolved: Vec<bool> = ids.iter().map(|id| id.send_resolved).collect();
    assert_eq!(resolved, [true, true, false, false, true]);
    assert!(receivers.integrations("blackhole").is_empty());
    assert!(receivers.integrations("nobody").is_empty());

    let forwarders = AlertmanagerForwarder::build(&config.alertmanagers).unwrap();
    assert_eq!(forwarders[0].label(), "alertmanager:9093");

    // Nothing secret in what is logged, hashed or dumped.
    let secrets = [
        "FILETOKEN9999",
        "PDROUTINGKEY0000",
        "SLACKTOKEN1234",
        "smtp-pa55word",
    ];
    let mut inline = config.clone();
    inline.receivers[0].webhook_configs[0].url =
        Some(Secret::new("http://127.0.0.1:9/INLINETOKEN42"));
    let outputs = [
        format!("{inline:?}"),
        format!("{receivers:?}"),
        format!("{forwarders:?}"),
        serde_json::to_string(&inline).unwrap(),
        agentmesh_kit::config::to_toml(&inline),
    ];
    for output in &outputs {
        for secret in secrets.iter().chain(&["INLINETOKEN42"]) {
            assert!(!output.contains(secret), "{secret} leaked into {output}");
        }
    }
    assert!(
        outputs[3].contains("\"url\":\"<secret>\""),
        "{}",
        outputs[3]
    );
}

#[test]
fn unknown_settings_are_refused() {
    let err = serde_json::from_value::<ReceiverConfig>(json!({"name": "x", "webhook_config": []}))
        .unwrap_err();
    assert!(err.to_string().contains("webhook_config"), "{err}");
    let err = serde_json::from_value::<WebhookConfig>(json!({"url": "http://x", "urls": "y"}))
        .unwrap_err();
    assert!(err.to_string().contains("urls"), "{err}");
}

#[test]
fn names_must_be_present_and_unique() {
    let err = build(&[ReceiverConfig::default()]).unwrap_err();
    assert_eq!(err.setting, "receivers[0].name");
    let one = webhook_receiver("team", "http://127.0.0.1:9/hook");
    let err = build(&[one.clone(), ReceiverConfig::default(), one.clone()]).unwrap_err();
    assert_eq!(err.setting, "receivers[1].name");
    let err = build(&[one.clone(), one]).unwrap_err();
    assert_eq!(err.setting, "receivers[team].name");
    assert!(err.message.contains("defined twice"), "{}", err.message);
}

#[test]
fn receivers_without_integrations_are_allowed() {
    let receivers = build(&[ReceiverConfig::named("null")]).unwrap();
    assert_eq!(receivers.names(), ["null"]);
    assert!(receivers.integrations("null").is_empty());
}

#[test]
fn bad_urls_name_the_setting_and_not_the_url() {
    for (url, expect) in [
        ("not a url", "is not a valid URL"),
        (
            "ftp://files.example.com/SECRETPATH",
            "must be an http or https URL",
        ),
        ("/relative/SECRETPATH", "is not a valid URL"),
    ] {
        let err = build(&[webhook_receiver("team", url)]).unwrap_err();
        assert_eq!(
            err.setting, "receivers[team].webhook_configs[0].url",
            "{url}"
        );
        assert!(err.message.starts_with(expect), "{url}: {}", err.message);
        assert!(!err.message.contains("SECRETPATH"), "{}", err.message);
    }
    let missing = ReceiverConfig {
        name: "team".into(),
        webhook_configs: vec![WebhookConfig::default()],
        ..ReceiverConfig::default()
    };
    let err = build(&[missing]).unwrap_err();
    assert_eq!(err.setting, "receivers[team].webhook_configs[0].url");
    assert!(err.message.starts_with("is required"), "{}", err.message);

    let slack = ReceiverConfig {
        name: "chat".into(),
        slack_configs: vec![SlackConfig {
            api_url_env: Some("UNSET_SLACK_URL".into()),
            ..SlackConfig::default()
        }],
        ..ReceiverConfig::default()
    };
    let err = build(&[slack]).unwrap_err();
    assert_eq!(err.setting, "receivers[chat].slack_configs[0].api_url_env");
    assert_eq!(
        err.message,
        "the environment variable UNSET_SLACK_URL is not set"
    );

    let both = ReceiverConfig {
        name: "team".into(),
        webhook_configs: vec![WebhookConfig {
            url: Some(Secret::new("http://127.0.0.1:9/hook")),
            url_env: Some("TEAM_HOOK_URL".into()),
            ..WebhookConfig::default()
        }],
        ..ReceiverConfig::default()
    };
    let err = build(&[both]).unwrap_err();
    assert_eq!(err.setting, "receivers[team].webhook_configs[0].url");
    assert_eq!(err.message, "set only one of url, url_file and url_env");

    let err = Receivers::build_with(
        &[],
        &DeliveryConfig {
            initial_backoff: Duration::ZERO,
            ..DeliveryConfig::default()
        },
        "",
        &Resolver::with_env(&test_env),
    )
    .unwrap_err();
    assert_eq!(err.setting, "delivery.initial_backoff");
}

#[test]
fn env_secrets_resolve() {
    let config = ReceiverConfig {
        name: "team".into(),
        webhook_configs: vec![WebhookConfig {
            url_env: Some("TEAM_HOOK_URL".into()),
            ..WebhookConfig::default()
        }],
        ..ReceiverConfig::default()
    };
    let receivers = build(&[config]).unwrap();
    assert_eq!(receivers.integrations("team"), [webhook0()]);
    assert!(!format!("{receivers:?}").contains("ENVTOKEN5678"));
}

// === delivery ===

#[tokio::test]
async fn failures_are_retried_until_delivered() {
    let server = TestServer::start(vec![
        Reply::status(500).body("busy"),
        Reply::status(500).body("busy"),
        Reply::status(200),
    ])
    .await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let delivery = receivers
        .deliver("team", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(
        delivery,
        Delivery {
            attempts: 3,
            error: None
        }
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Each attempt sends the same payload.
    assert_eq!(requests[0].body, requests[2].body);
    assert_eq!(requests[2].json()["version"], "4");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = TestServer::start(vec![Reply::status(400).body("bad payload")]).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let delivery = receivers
        .deliver("team", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(delivery.attempts, 1);
    assert_eq!(
        delivery.error.as_deref(),
        Some("HTTP 400 Bad Request: bad payload")
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn the_deadline_is_honoured() {
    // A server that never answers: the attempt is cut at the deadline, well
    // before the webhook's 10 s timeout.
    let server = TestServer::start(vec![Reply::hang()]).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let deadline = Instant::now() + Duration::from_millis(50);
    let delivery = receivers.deliver("team", webhook0(), n, deadline).await;
    assert_eq!(delivery.attempts, 1);
    assert_eq!(
        delivery.error.as_deref(),
        Some("no answer before the delivery deadline")
    );

    // A server failing over and over: retried until the deadline, then the
    // last error is reported.
    let failing = (0..10_000)
        .map(|_| Reply::status(503).body("down"))
        .collect();
    let server = TestServer::start(failing).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let deadline = Instant::now() + Duration::from_millis(100);
    let delivery = receivers.deliver("team", webhook0(), n, deadline).await;
    assert!(delivery.attempts >= 2, "{delivery:?}");
    let error = delivery.error.unwrap();
    assert!(
        error.starts_with("HTTP 503 Service Unavailable: down"),
        "{error}"
    );
    // The last attempt may have been cut off before it reached the server.
    let received = server.requests().len();
    let attempts = delivery.attempts as usize;
    assert!(
        received == attempts || received + 1 == attempts,
        "{received} of {attempts}"
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    // The server asks for an hour: retrying sooner would ignore it, so the
    // delivery ends at once with the reason.
    let server = TestServer::start(vec![Reply::status(429).header("retry-after", "3600")]).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let delivery = receivers
        .deliver("team", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(delivery.attempts, 1);
    let error = delivery.error.unwrap();
    assert_eq!(
        error,
        "HTTP 429 Too Many Requests (the server asked to retry after 1h, past the delivery deadline)"
    );

    // A short Retry-After is waited out, then the retry succeeds.
    let server = TestServer::start(vec![Reply::status(503).header("retry-after", "0.01")]).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let delivery = receivers
        .deliver("team", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(
        delivery,
        Delivery {
            attempts: 2,
            error: None
        }
    );
}

#[tokio::test]
async fn unknown_integrations_deliver_nothing() {
    let receivers = build(&[webhook_receiver("team", "http://127.0.0.1:9/hook")]).unwrap();
    let n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    let other = IntegrationId {
        kind: "slack",
        index: 0,
        send_resolved: false,
    };
    let delivery = receivers
        .deliver("team", other, n.clone(), in_a_minute())
        .await;
    assert_eq!(delivery.attempts, 0);
    assert_eq!(
        delivery.error.as_deref(),
        Some("receiver team slack[0] is not configured")
    );
    let delivery = receivers
        .deliver("nobody", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(delivery.attempts, 0);
}

#[tokio::test]
async fn the_external_url_fills_in_links() {
    let server = TestServer::start(vec![]).await;
    let receivers = build(&[webhook_receiver("team", &format!("{}/hook", server.url()))]).unwrap();
    let mut n = notification(vec![firing(&[("alertname", "ToolFailing")])]);
    n.external_url.clear();
    let delivery = receivers
        .deliver("team", webhook0(), n, in_a_minute())
        .await;
    assert_eq!(delivery.error, None);
    assert_eq!(
        server.requests()[0].json()["externalURL"],
        "http://alerting.example.com"
    );
}

#[tokio::test]
async fn every_kind_delivers_through_the_notifier() {
    let server = TestServer::start(vec![]).await;
    let (smtp_port, smtp) = super::test_server::smtp_responder(false, None).await;
    let config = ReceiverConfig {
        name: "all".into(),
        webhook_configs: vec![WebhookConfig {
            url: Some(Secret::new(format!("{}/webhook", server.url()))),
            ..WebhookConfig::default()
        }],
        slack_configs: vec![SlackConfig {
            api_url: Some(Secret::new(format!("{}/slack", server.url()))),
            ..SlackConfig::default()
        }],
        email_configs: vec![EmailConfig {
            to: "ops@example.com".into(),
            from: "alerts@example.com".into(),
            smarthost: format!("127.0.0.1:{smtp_port}"),
            tls: EmailTls::None,
            ..EmailConfig::default()
        }],
        pagerduty_configs: vec![PagerDutyConfig {
            routing_key: Some(Secret::new("key")),
            url: format!("{}/pagerduty", server.url()),
            ..PagerDutyConfig::default()
        }],
    };
    let receivers = build(&[config]).unwrap();
    let n = notification(vec![firing(&[
        ("alertname", "ToolFailing"),
        ("tool", "files"),
    ])]);
    for id in receivers.integrations("all") {
        let delivery = receivers.deliver("all", id, n.clone(), in_a_minute()).await;
        assert_eq!(
            delivery,
            Delivery {
                attempts: 1,
                error: None
            },
            "{}",
            id.name()
        );
    }
    let paths: Vec<String> = server
        .requests()
        .into_iter()
        .map(|request| request.path)
        .collect();
    assert_eq!(paths, ["/webhook", "/slack", "/pagerduty"]);
    let mail = smtp.await.unwrap();
    assert!(
        mail.data
            .contains("Subject: [FIRING:1] ToolFailing (files)"),
        "{}",
        mail.data
    );
}
