//! The email integration: sends one plain-text message per notification
//! over SMTP with lettre, as Alertmanager's `email_configs` do.
//!
//! The subject is Alertmanager's (`[FIRING:1] ToolFailing (files)`); the
//! body lists the firing, then the resolved alerts with their labels,
//! annotations, start (and end), and source. Headers: From, To (one or
//! several addresses), Subject, Date, Message-ID, and `Auto-Submitted:
//! auto-generated` so that mail servers do not answer with vacation notices.
//!
//! Transport security (`tls`): "starttls" (the default) upgrades the
//! connection and refuses to send, credentials included, when the server
//! does not offer STARTTLS; "tls" speaks TLS from the start (port 465);
//! "opportunistic" upgrades when offered; "none" stays plain, for relays
//! on loopback — sending a password over it to another host is refused at
//! build time. Certificates are checked against the platform's roots.
//!
//! A connection is opened per message: notifications are rare, and a fresh
//! connection cannot be a stale one.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use agentmesh_kit::ConfigError;
use lettre::message::header::{ContentType, HeaderName, HeaderValue, To};
use lettre::message::{Mailbox, Mailboxes};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use super::http::{error_chain, install_tls_crypto};
use super::retry::DeliveryError;
use super::secret::{Redactor, Resolver, Secret, SecretSettings};
use crate::model::Notification;
use crate::receivers::text;

/// How the connection to the smarthost is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EmailTls {
    /// Plain connection upgraded with STARTTLS; refuses to send without it.
    #[default]
    Starttls,
    /// STARTTLS when the server offers it, else plain.
    Opportunistic,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// Plain text: for loopback relays only.
    None,
}

/// An email integration's settings (`email_configs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EmailConfig {
    /// The recipients: one address or several separated by commas, e.g.
    /// `"ops@example.com, Oncall <oncall@example.com>"`.
    pub(crate) to: String,
    /// The sender, e.g. `"agentmesh <alerts@example.com>"`.
    pub(crate) from: String,
    /// The SMTP server, "host:port".
    pub(crate) smarthost: String,
    /// The name given in EHLO (default "localhost", as Alertmanager).
    pub(crate) hello: String,
    /// The user to authenticate as (PLAIN or LOGIN); none = no AUTH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_username: Option<String>,
    /// The password (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_password: Option<Secret>,
    /// A file holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auth_password_env: Option<String>,
    /// How the connection is secured.
    pub(crate) tls: EmailTls,
    /// Whether resolved alerts are notified (default false, as Alertmanager).
    pub(crate) send_resolved: bool,
    /// The longest wait for each SMTP exchange.
    #[serde(with = "humantime_serde")]
    pub(crate) timeout: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            to: String::new(),
            from: String::new(),
            smarthost: String::new(),
            hello: "localhost".to_owned(),
            auth_username: None,
            auth_password: None,
            auth_password_file: None,
            auth_password_env: None,
            tls: EmailTls::Starttls,
            send_resolved: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A built email integration.
#[derive(Debug)]
pub(crate) struct Email {
    to: Mailboxes,
    from: Mailbox,
    host: String,
    port: u16,
    hello: ClientId,
    auth: Option<(String, Secret)>,
    tls: EmailTls,
    timeout: Duration,
    redactor: Redactor,
}

impl Email {
    /// Builds it from `config`; `setting` is the config's path, e.g.
    /// `receivers[team].email_configs[0]`.
    pub(crate) fn build(
        config: &EmailConfig,
        setting: &str,
        resolver: &Resolver<'_>,
    ) -> Result<Self, ConfigError> {
        let to = parse_recipients(&format!("{setting}.to"), &config.to)?;
        let from = parse_sender(&format!("{setting}.from"), &config.from)?;
        let (host, port) = parse_smarthost(&format!("{setting}.smarthost"), &config.smarthost)?;
        let hello = parse_hello(&format!("{setting}.hello"), &config.hello)?;
        let password_setting = format!("{setting}.auth_password");
        let password = resolver.resolve(SecretSettings {
            setting: &password_setting,
            value: config.auth_password.as_ref(),
            file: config.auth_password_file.as_ref(),
            env: config.auth_password_env.as_ref(),
        })?;
        let auth = match (config.auth_username.as_deref().map(str::trim), password) {
            (None | Some(""), None) => None,
            (Some(user), Some(password)) if !user.is_empty() => Some((user.to_owned(), password)),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    password_setting,
                    "is required with auth_username: set auth_password, auth_password_file or auth_password_env",
                ));
            }
            (_, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{setting}.auth_username"),
                    "is required with auth_password",
                ));
            }
        };
        if auth.is_some() && config.tls == EmailTls::None && !is_loopback(&host) {
            return Err(ConfigError::new(
                format!("{setting}.tls"),
                format!(
                    "\"none\" would send the password in clear text to {host}: \
                     use \"starttls\" or \"tls\" (\"none\" is for relays on loopback)"
                ),
            ));
        }
        if config.timeout.is_zero() {
            return Err(ConfigError::new(
                format!("{setting}.timeout"),
                "must be greater than zero",
            ));
        }
        let mut redactor = Redactor::default();
        if let Some((_, password)) = &auth {
            redactor.add(password);
        }
        Ok(Self {
            to,
            from,
            host,
            port,
            hello,
            auth,
            tls: config.tls,
            timeout: config.timeout,
            redactor,
        })
    }

    /// Delivers `notification` once.
    pub(crate) async fn send(&self, notification: &Notification) -> Result<(), DeliveryError> {
        let message = self.message(notification, SystemTime::now())?;
        let transport = self.transport()?;
        transport
            .send(message)
            .await
            .map(drop)
            .map_err(|err| self.smtp_error(&err))
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, DeliveryError> {
        let parameters = || {
            // lettre takes the process's provider, else ring.
            install_tls_crypto();
            // Certificates are checked for the smarthost's name.
            TlsParameters::new(self.host.clone()).map_err(|err| {
                DeliveryError::permanent(format!("cannot set up TLS: {}", error_chain(&err)))
            })
        };
        let tls = match self.tls {
            EmailTls::None => Tls::None,
            EmailTls::Starttls => Tls::Required(parameters()?),
            EmailTls::Opportunistic => Tls::Opportunistic(parameters()?),
            EmailTls::Tls => Tls::Wrapper(parameters()?),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
                .port(self.port)
                .hello_name(self.hello.clone())
                .timeout(Some(self.timeout))
                .tls(tls);
        if let Some((user, password)) = &self.auth {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(builder.build())
    }

    /// The message for `notification`, dated `now`.
    pub(crate) fn message(
        &self,
        notification: &Notification,
        now: SystemTime,
    ) -> Result<Message, DeliveryError> {
        let domain = self.from.email.domain().to_owned();
        Message::builder()
            .from(self.from.clone())
            .mailbox(To::from(self.to.clone()))
            .subject(text::subject(notification))
            .date(now)
            .message_id(Some(format!(
                "<{}@{domain}>",
                uuid::Uuid::new_v4().simple()
            )))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(body(notification))
            .map_err(|err| DeliveryError::permanent(format!("cannot build the message: {err}")))
    }

    /// Transient replies (4xx) and connection troubles may pass; permanent
    /// replies (5xx), TLS failures and a missing STARTTLS will not.
    fn smtp_error(&self, err: &lettre::transport::smtp::Error) -> DeliveryError {
        let message = self.redactor.redact(&format!("SMTP: {}", error_chain(err)));
        let retryable = err.is_transient()
            || err.is_timeout()
            || !(err.is_permanent() || err.is_tls() || err.is_client() || err.is_response());
        DeliveryError {
            message,
            retryable,
            retry_after: None,
        }
    }
}

/// The plain-text body: the subject, then each alert as in Alertmanager's
/// text list, with its times, and a link to the receiver's alerts.
fn body(notification: &Notification) -> String {
    let mut body = text::subject(notification);
    body.push_str("\n\n");
    let firing: Vec<_> = notification.firing().collect();
    let resolved: Vec<_> = notification.resolved().collect();
    for (title, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        body.push_str(&format!("{title} alerts ({}):\n\n", alerts.len()));
        for alert in alerts {
            body.push_str(&text::alert_list([*alert]));
            body.push_str("Started: ");
            body.push_str(&text::rfc3339(text::starts_at(alert)));
            body.push('\n');
            if alert.is_resolved() {
                body.push_str("Ended: ");
                body.push_str(&text::rfc3339(text::resolved_at(alert)));
                body.push('\n');
            }
            body.push('\n');
        }
    }
    if let Some(link) = text::alerts_link(&notification.external_url, &notification.receiver) {
        body.push_str("Alerts of this receiver: ");
        body.push_str(&link);
        body.push('\n');
    }
    body
}

fn parse_recipients(setting: &str, to: &str) -> Result<Mailboxes, ConfigError> {
    if to.trim().is_empty() {
        return Err(ConfigError::new(
            setting,
            "is required: the address(es) to send to",
        ));
    }
    let mailboxes: Mailboxes = to.parse().map_err(|_| {
        ConfigError::new(
            setting,
            format!("{to:?} is not an email address or a comma-separated list of them"),
        )
    })?;
    if mailboxes.iter().next().is_none() {
        return Err(ConfigError::new(
            setting,
            "is required: the address(es) to send to",
        ));
    }
    Ok(mailboxes)
}

fn parse_sender(setting: &str, from: &str) -> Result<Mailbox, ConfigError> {
    if from.trim().is_empty() {
        return Err(ConfigError::new(
            setting,
            "is required: the sender's address",
        ));
    }
    from.trim()
        .parse()
        .map_err(|_| ConfigError::new(setting, format!("{from:?} is not an email address")))
}

/// "host:port", "[::1]:25".
fn parse_smarthost(setting: &str, smarthost: &str) -> Result<(String, u16), ConfigError> {
    let invalid = || {
        ConfigError::new(
            setting,
            format!("{smarthost:?} is not \"host:port\" (e.g. \"smtp.example.com:587\")"),
        )
    };
    let (host, port) = smarthost.trim().rsplit_once(':').ok_or_else(invalid)?;
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || host.contains(['/', ' ', '@'])
        || (host.contains(':') && host.parse::<IpAddr>().is_err())
    {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.to_owned(), port)),
        _ => Err(invalid()),
    }
}

fn parse_hello(setting: &str, hello: &str) -> Result<ClientId, ConfigError> {
    let hello = hello.trim();
    if hello.is_empty() || hello.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            setting,
            "must be a host name (e.g. \"localhost\")",
        ));
    }
    Ok(match hello.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(hello.to_owned()),
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::test_server::smtp_responder;
    use crate::receivers::text::tests::{firing, notification, resolved};

    fn config(port: u16, tls: EmailTls) -> EmailConfig {
        EmailConfig {
            to: "ops@example.com, Oncall <oncall@example.com>".into(),
            from: "agentmesh <alerts@example.com>".into(),
            smarthost: format!("127.0.0.1:{port}"),
            hello: "agentmesh.test".into(),
            tls,
            timeout: Duration::from_secs(5),
            ..EmailConfig::default()
        }
    }

    fn build(config: &EmailConfig) -> Result<Email, ConfigError> {
        Email::build(
            config,
            "receivers[team].email_configs[0]",
            &Resolver::process(),
        )
    }

    #[tokio::test]
    async fn a_message_reaches_a_plain_relay() {
        let (port, capture) = smtp_responder(false, None).await;
        let email = build(&config(port, EmailTls::None)).unwrap();
        let alert = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        email.send(&notification(vec![alert])).await.unwrap();
        let capture = capture.await.unwrap();
        assert_eq!(capture.hello, "agentmesh.test");
        assert!(
            capture.mail_from.starts_with("<alerts@example.com>"),
            "{}",
            capture.mail_from
        );
        assert_eq!(capture.rcpt_to.len(), 2);
        assert!(capture.rcpt_to[0].starts_with("<ops@example.com>"));
        let data = capture.data;
        assert!(
            data.contains("Subject: [FIRING:1] ToolFailing (files)\r\n"),
            "{data}"
        );
        assert!(
            data.contains("From: agentmesh <alerts@example.com>\r\n"),
            "{data}"
        );
        assert!(
            data.contains("To: ops@example.com, Oncall <oncall@example.com>\r\n"),
            "{data}"
        );
        assert!(data.contains("\r\nDate: "), "{data}");
        assert!(data.contains("\r\nMessage-ID: <"), "{data}");
        assert!(data.contains("@example.com>\r\n"), "{data}");
        assert!(
            data.contains("Auto-Submitted: auto-generated\r\n"),
            "{data}"
        );
        assert!(
            data.contains("Content-Type: text/plain; charset=utf-8\r\n"),
            "{data}"
        );
        // Lines past 76 characters make lettre pick quoted-printable.
        let data = if data.contains("Content-Transfer-Encoding: quoted-printable\r\n") {
            decode_quoted_printable(&data)
        } else {
            data
        };
        assert!(data.contains(" - tool = files"), "{data}");
        assert!(data.contains("Started: 2024-05-01T12:00:00Z"), "{data}");
        assert!(
            data.contains("Source: http://agentmesh:50055/rules/ToolFailing"),
            "{data}"
        );
        assert!(
            data.contains(
                "Alerts of this receiver: http://alerting.example.com:50055/#/alerts?receiver=team"
            ),
            "{data}"
        );
    }

    /// Enough of RFC 2045's quoted-printable for the tests: soft line
    /// breaks and `=XX` escapes.
    fn decode_quoted_printable(text: &str) -> String {
        let joined = text.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && let Some(hex) = joined.get(i + 1..i + 3)
                && let Ok(byte) = u8::from_str_radix(hex, 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn starttls_is_required_by_default() {
        let (port, capture) = smtp_responder(false, None).await;
        let mut config = config(port, EmailTls::Starttls);
        config.smarthost = format!("localhost:{port}");
        let email = build(&config).unwrap();
        let err = email
            .send(&notification(vec![firing(&[("alertname", "A")])]))
            .await
            .unwrap_err();
        assert!(err.message.contains("STARTTLS"), "{}", err.message);
        assert!(!err.retryable);
        // Nothing was sent over the plain connection.
        let capture = capture.await.unwrap();
        assert!(capture.mail_from.is_empty());
        assert!(capture.data.is_empty());
    }

    #[tokio::test]
    async fn transient_replies_are_retryable_and_permanent_ones_not() {
        let (port, _capture) = smtp_responder(false, Some("451 4.3.0 try again later")).await;
        let email = build(&config(port, EmailTls::None)).unwrap();
        let err = email
            .send(&notification(vec![firing(&[("alertname", "A")])]))
            .await
            .unwrap_err();
        assert!(err.retryable, "{err:?}");
        assert!(
            err.message.starts_with("SMTP: transient error (451)"),
            "{}",
            err.message
        );

        let (port, _capture) = smtp_responder(false, Some("554 5.7.1 rejected")).await;
        let email = build(&config(port, EmailTls::None)).unwrap();
        let err = email
            .send(&notification(vec![firing(&[("alertname", "A")])]))
            .await
            .unwrap_err();
        assert!(!err.retryable, "{err:?}");
        assert!(
            err.message.starts_with("SMTP: permanent error (554)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_body_lists_firing_and_resolved_alerts() {
        let one = firing(&[("alertname", "ToolFailing"), ("tool", "files")]);
        let two = resolved(firing(&[("alertname", "ToolFailing"), ("tool", "shell")]));
        let text = body(&notification(vec![one, two]));
        assert!(
            text.starts_with("[FIRING:1] ToolFailing\n\nFiring alerts (1):\n\nLabels:\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "Resolved alerts (1):\n\nLabels:\n - alertname = ToolFailing\n - tool = shell\n"
            ),
            "{text}"
        );
        assert!(text.contains("Ended: 2024-05-01T12:05:00Z\n"), "{text}");
        assert!(text.ends_with("Alerts of this receiver: http://alerting.example.com:50055/#/alerts?receiver=team\n"), "{text}");
    }

    #[test]
    fn settings_are_checked() {
        let setting = |config: &EmailConfig| build(config).unwrap_err().setting;
        let good = config(25, EmailTls::Starttls);
        assert!(build(&good).is_ok());
        assert_eq!(
            setting(&EmailConfig {
                to: String::new(),
                ..good.clone()
            }),
            "receivers[team].email_configs[0].to"
        );
        assert_eq!(
            setting(&EmailConfig {
                to: "not an address".into(),
                ..good.clone()
            }),
            "receivers[team].email_configs[0].to"
        );
        assert_eq!(
            setting(&EmailConfig {
                from: "nobody".into(),
                ..good.clone()
            }),
            "receivers[team].email_configs[0].from"
        );
        for bad in [
            "smtp.example.com",
            "smtp.example.com:0",
            ":25",
            "host:port",
            "a b:25",
            "smtp.example.com:99999",
        ] {
            assert_eq!(
                setting(&EmailConfig {
                    smarthost: bad.into(),
                    ..good.clone()
                }),
                "receivers[team].email_configs[0].smarthost",
                "{bad}"
            );
        }
        assert!(
            build(&EmailConfig {
                smarthost: "[::1]:25".into(),
                ..good.clone()
            })
            .is_ok()
        );
        assert_eq!(
            setting(&EmailConfig {
                hello: " ".into(),
                ..good.clone()
            }),
            "receivers[team].email_configs[0].hello"
        );

        let with_user = EmailConfig {
            auth_username: Some("agentmesh".into()),
            ..good.clone()
        };
        assert_eq!(
            setting(&with_user),
            "receivers[team].email_configs[0].auth_password"
        );
        let with_password = EmailConfig {
            auth_password: Some(Secret::new("pa55word")),
            ..good.clone()
        };
        assert_eq!(
            setting(&with_password),
            "receivers[team].email_configs[0].auth_username"
        );
        let plain_remote = EmailConfig {
            auth_username: Some("agentmesh".into()),
            auth_password: Some(Secret::new("pa55word")),
            smarthost: "smtp.example.com:25".into(),
            tls: EmailTls::None,
            ..good.clone()
        };
        let err = build(&plain_remote).unwrap_err();
        assert_eq!(err.setting, "receivers[team].email_configs[0].tls");
        assert!(!err.message.contains("pa55word"));
        let plain_local = EmailConfig {
            smarthost: "localhost:25".into(),
            ..plain_remote
        };
        let email = build(&plain_local).unwrap();
        assert!(!format!("{email:?}").contains("pa55word"));
    }

    #[test]
    fn tls_modes_parse() {
        #[derive(Deserialize)]
        struct Wrapper {
            tls: EmailTls,
        }
        for (text, mode) in [
            ("starttls", EmailTls::Starttls),
            ("opportunistic", EmailTls::Opportunistic),
            ("tls", EmailTls::Tls),
            ("none", EmailTls::None),
        ] {
            let parsed: Wrapper =
                serde_json::from_str(&format!("{{\"tls\": \"{text}\"}}")).unwrap();
            assert_eq!(parsed.tls, mode);
        }
        assert!(serde_json::from_str::<Wrapper>("{\"tls\": \"ssl\"}").is_err());
    }
}
