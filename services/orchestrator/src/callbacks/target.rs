//! Where a callback may go, checked at StartRun: the request's URL alone
//! ([`parse`]: an absolute http(s) URL within the size limit, no
//! credentials, a known `events` value), then against the operator's
//! policy ([`Callbacks::check_destination`]): host and port rules, and every
//! address the host resolves to (loopback, private, link-local and the other
//! special ranges refused unless `callbacks.egress.allow_cidrs` lets them
//! through). The delivery checks the resolved address again (the egress
//! client's resolver), so a name that later resolves elsewhere (DNS
//! rebinding) is refused then too.

use std::time::Duration;

use agentmesh_kit::status::{Violations, invalid_argument};
use agentmesh_proto::orchestrator::v1 as pb;
use reqwest::Url;
use tonic::Status;

use super::Callbacks;

/// Longest callback URL, in bytes.
pub(crate) const MAX_URL_BYTES: usize = 2048;
/// Longest wait for the host's addresses at StartRun.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The field the violations name.
const URL_FIELD: &str = "callback.url";

/// A callback as the request asks for it, its URL well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestedCallback {
    pub(crate) url: Url,
    pub(crate) every_step: bool,
}

/// Checks the request's callback alone, adding a violation for each
/// problem; `None` when it has one.
pub(crate) fn parse(
    callback: pb::RunCallback,
    violations: &mut Violations,
) -> Option<RequestedCallback> {
    let every_step = match pb::CallbackEvents::try_from(callback.events) {
        Ok(pb::CallbackEvents::Unspecified | pb::CallbackEvents::Terminal) => Some(false),
        Ok(pb::CallbackEvents::EveryStep) => Some(true),
        Err(_) => {
            violations.add(
                "callback.events",
                format!(
                    "{} is not a CallbackEvents value (use CALLBACK_EVENTS_TERMINAL or \
                     CALLBACK_EVENTS_EVERY_STEP)",
                    callback.events
                ),
            );
            None
        }
    };
    let url = url(&callback.url).map_err(|problem| violations.add(URL_FIELD, problem));
    Some(RequestedCallback {
        url: url.ok()?,
        every_step: every_step?,
    })
}

/// The URL, or what is wrong with it.
fn url(text: &str) -> Result<Url, String> {
    if text.trim().is_empty() {
        return Err("must be set: the http:// or https:// URL to POST the run's end to".into());
    }
    if text.len() > MAX_URL_BYTES {
        return Err(format!(
            "is {} bytes; the limit is {MAX_URL_BYTES} bytes",
            text.len()
        ));
    }
    let url = Url::parse(text).map_err(|err| format!("is not an absolute URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "has the scheme `{}`: use an http:// or https:// URL",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password: deliveries are authenticated by their \
             signature"
                .into(),
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(url)
}

impl Callbacks {
    /// Checks `url` against the callback egress policy, resolving its host
    /// name: INVALID_ARGUMENT naming `callback.url` when a rule refuses it
    /// or any address it resolves to (or it resolves to none),
    /// UNAVAILABLE when resolution takes too long.
    pub(crate) async fn check_destination(&self, url: &Url) -> Result<(), Status> {
        let policy = self.client.policy();
        policy
            .check_url(url)
            .map_err(|refusal| refused(refusal.to_string()))?;
        // An IP address was checked with the URL; a name is resolved now.
        let Some(host) = url.domain() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses = match tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host, port)),
        )
        .await
        {
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the callback host {host} did not resolve within \
                         {RESOLVE_TIMEOUT:?}; retry"
                )));
            }
            Ok(Err(err)) => {
                return Err(refused(format!("the host {host} does not resolve: {err}")));
            }
            Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
        };
        if addresses.is_empty() {
            return Err(refused(format!("the host {host} resolves to no address")));
        }
        // Every address must pass: a name that also resolves to an
        // internal address is refused, not delivered to its public half.
        for address in addresses {
            policy
                .check_ip(address.ip())
                .map_err(|rule| refused(format!("destination refused: {host}: {rule}")))?;
        }
        Ok(())
    }
}

/// INVALID_ARGUMENT naming `callback.url`.
fn refused(problem: String) -> Status {
    invalid_argument([(URL_FIELD, problem)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str, events: pb::CallbackEvents) -> Result<RequestedCallback, Vec<String>> {
        let mut violations = Violations::new();
        let callback = parse(
            pb::RunCallback {
                url: url.to_owned(),
                events: events.into(),
            },
            &mut violations,
        );
        callback.ok_or_else(|| {
            violations
                .kept()
                .iter()
                .map(|(field, problem)| format!("{field}: {problem}"))
                .collect()
        })
    }

    #[test]
    fn a_well_formed_callback_keeps_its_url_and_events() {
        let terminal = parsed(
            "https://hooks.example.com/agentmesh?x=1",
            pb::CallbackEvents::Unspecified,
        )
        .unwrap();
        assert_eq!(
            terminal.url.as_str(),
            "https://hooks.example.com/agentmesh?x=1"
        );
        assert!(!terminal.every_step);
        let steps = parsed(
            "http://hooks.example.com:8080/",
            pb::CallbackEvents::EveryStep,
        )
        .unwrap();
        assert!(steps.every_step);
    }

    #[test]
    fn malformed_urls_are_named() {
        let too_long = format!("https://example.com/{}", "x".repeat(MAX_URL_BYTES));
        for (url, says) in [
            ("", "must be set"),
            ("/relative/path", "not an absolute URL"),
            ("ftp://example.com/x", "scheme `ftp`"),
            ("file:///etc/passwd", "scheme `file`"),
            ("https://user:pw@example.com/", "user name or password"),
            (too_long.as_str(), "the limit is 2048 bytes"),
        ] {
            let problems = parsed(url, pb::CallbackEvents::Terminal).unwrap_err();
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(problems[0].starts_with("callback.url: "), "{problems:?}");
            assert!(problems[0].contains(says), "{url}: {problems:?}");
        }
    }

    #[test]
    fn an_unknown_events_value_is_named() {
        let mut violations = Violations::new();
        let callback = parse(
            pb::RunCallback {
                url: "https://example.com/".into(),
                events: 7,
            },
            &mut violations,
        );
        assert!(callback.is_none());
        assert_eq!(violations.kept()[0].0, "callback.events");
    }
}
