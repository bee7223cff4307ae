//! Redaction of secrets in audit events.
//!
//! A [`Redactor`] replaces, by [`REDACTED`], every match of:
//!
//! * the built-in patterns: bearer tokens, `authorization` values, OpenAI and
//!   Anthropic style keys (`sk-…`, `sk-proj-…`, `sk-ant-…`), AWS access key
//!   ids, GitHub, Slack, Google and Stripe keys, agentmesh API keys
//!   (`am_<env>_…`, not their public ids), PEM private keys, the
//!   password of a URL (`scheme://user:password@host`), and the value of
//!   `api_key=…`, `secret: …`, `password=…`, `token: …` and the like;
//! * the extra regular expressions of the configuration
//!   ([`crate::AuditConfig::redact_patterns`]);
//! * the literal secrets registered at runtime with [`Redactor::add_secret`]
//!   (e.g. the API keys a service read from its environment).
//!
//! A pattern with a capture group named `value` has only that group
//! replaced, so `password=hunter2` becomes `password=[REDACTED]` and the
//! reader still sees what was hidden; otherwise the whole match is replaced.
//!
//! Speed matters because every string of every event goes through here: all
//! patterns are first run together as one [`RegexSet`] (a single pass over
//! the text), and only the patterns that matched are run again to find where.
//! Text without a secret is returned borrowed, without allocation.
//!
//! Matches of different patterns may overlap (`authorization: Bearer abc`
//! matches both the authorization and the bearer pattern); the spans are
//! merged before replacing, so no fragment of a secret survives.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use agentmesh_proto::audit::v1::{
    AccessDetails, AuditEvent, CallbackDetails, CapturedContent, ChainAnchor, CircuitDetails,
    ConfigDetails, ErrorDetails, LlmCallDetails, NotificationDetails, RateLimitDetails,
    RetentionDetails, RunDetails, ToolCallDetails, audit_event::Details,
};
use regex::{Regex, RegexSet};

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Literal secrets shorter than this are ignored by [`Redactor::add_secret`]:
/// redacting every occurrence of a short string would mangle ordinary text.
pub const MIN_SECRET_LEN: usize = 8;

/// The built-in patterns. A group named `value` limits the replacement to it.
///
/// Word boundaries are ASCII (`(?-u:\b)`): a Unicode `\b` makes the regex
/// engine give up its fast DFA on any non-ASCII text (100 times slower on a
/// captured prompt), and every pattern here is about ASCII tokens anyway.
const BUILTIN_PATTERNS: &[&str] = &[
    // `authorization: <scheme> <credentials>` in headers, logs and JSON: the
    // whole value, scheme included (it may be Basic, Digest, …).
    r#"(?i)(?-u:\b)(?:proxy-)?authorization["']?\s*[:=]\s*["']?(?P<value>[^\r\n"',}]+)"#,
    // A bearer token wherever it appears; the word "Bearer" stays.
    r"(?i)(?-u:\b)bearer\s+(?P<value>[A-Za-z0-9._~+/=-]+)",
    // OpenAI (`sk-`, `sk-proj-`) and Anthropic (`sk-ant-`) style keys. The
    // word boundary keeps `task-0123456789abcdef…` intact.
    r"(?-u:\b)sk-[A-Za-z0-9_-]{16,}",
    // AWS access key ids.
    r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
    // GitHub tokens.
    r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    // Slack tokens.
    r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
    // Google API keys.
    r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
    // Stripe secret and restricted keys.
    r"(?-u:\b)[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    // agentmesh API keys (`am_<env>_<32 base62 characters>`). A key's id
    // (`am_live_` and 8 characters) is public and stays readable.
    r"(?-u:\b)am_[a-z0-9]{1,16}_[A-Za-z0-9]{32}(?-u:\b)",
    // PEM private keys, up to their end marker (or the end of the text when
    // it was cut).
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z ]*PRIVATE KEY-----|\z)",
    // The password of a URL, e.g. `postgres://user:password@host/db`.
    r"(?i)(?-u:\b)[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<value>[^/\s@]+)@",
    // `api_key=…`, `secret: …`, `"password": "…"`, `access_token=…`: the value
    // only.
    r#"(?i)(?:api[_-]?key|secret|passw(?:or)?d|token)["']?\s*[=:]\s*["']?(?P<value>[^\s"',;&]+)"#,
];

/// Replaces secrets in text and events by [`REDACTED`].
///
/// `Send + Sync` and cheap to clone: clones share the compiled patterns and
/// the registered secrets (a secret added through one clone is redacted by
/// all).
#[derive(Clone)]
pub struct Redactor {
    patterns: Arc<Patterns>,
    secrets: Arc<RwLock<Vec<String>>>,
}

/// The compiled patterns: the set finds which match, the individual regexes
/// find where.
struct Patterns {
    set: RegexSet,
    each: Vec<Pattern>,
}

struct Pattern {
    regex: Regex,
    /// Index of the `value` group, when the pattern has one.
    value_group: Option<usize>,
}

impl fmt::Debug for Redactor {
    // Never prints the secrets themselves.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.each.len())
            .field("secrets", &self.read_secrets().len())
            .finish()
    }
}

impl Redactor {
    /// The built-in patterns plus `extra` regular expressions (a group named
    /// `value` limits the replacement to that group). Fails on the first
    /// invalid extra pattern. Extra patterns should use ASCII word boundaries
    /// (`(?-u:\b)`) rather than `\b`, which is slow on non-ASCII text.
    pub fn new(extra: &[String]) -> Result<Self, regex::Error> {
        let sources: Vec<&str> = BUILTIN_PATTERNS
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .collect();
        let mut each = Vec::with_capacity(sources.len());
        for source in &sources {
            let regex = Regex::new(source)?;
            let value_group = regex.capture_names().position(|name| name == Some("value"));
            each.push(Pattern { regex, value_group });
        }
        let set = RegexSet::new(&sources)?;
        Ok(Self {
            patterns: Arc::new(Patterns { set, each }),
            secrets: Arc::new(RwLock::new(Vec::new())),
        })
    }

    /// Registers a literal secret: every occurrence is redacted from now on.
    /// Secrets shorter than [`MIN_SECRET_LEN`] bytes are ignored (surrounding
    /// whitespace does not count).
    pub fn add_secret(&self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let mut secrets = self.secrets.write().unwrap_or_else(PoisonError::into_inner);
        if !secrets.iter().any(|known| known == secret) {
            secrets.push(secret.to_owned());
        }
    }

    /// `text` with every secret replaced by [`REDACTED`]; borrowed (no
    /// allocation) when there is none.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let secrets = self.read_secrets();
        self.redact_with(&secrets, text)
    }

    /// Redacts every free-text string of `event` in place: the top-level
    /// strings (except `event_id`, the idempotency key, and the fields the
    /// audit service sets), attribute keys and values, and every string of
    /// the details, captured content included. Hex digests are left alone.
    pub fn redact_event(&self, event: &mut AuditEvent) {
        let secrets = self.read_secrets();
        let walk = Walk {
            redactor: self,
            secrets: &secrets,
        };
        walk.event(event);
    }

    fn read_secrets(&self) -> std::sync::RwLockReadGuard<'_, Vec<String>> {
        self.secrets.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn redact_with<'a>(&self, secrets: &[String], text: &'a str) -> Cow<'a, str> {
        if text.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for secret in secrets {
            spans.extend(
                text.match_indices(secret.as_str())
                    .map(|(start, found)| (start, start + found.len())),
            );
        }
        let matched = self.patterns.set.matches(text);
        for index in matched.iter() {
            let Some(pattern) = self.patterns.each.get(index) else {
                continue;
            };
            match pattern.value_group {
                Some(group) => {
                    for captures in pattern.regex.captures_iter(text) {
                        let span = captures.get(group).or_else(|| captures.get(0));
                        if let Some(span) = span.filter(|span| !span.is_empty()) {
                            spans.push((span.start(), span.end()));
                        }
                    }
                }
                None => spans.extend(
                    pattern
                        .regex
                        .find_iter(text)
                        .filter(|found| !found.is_empty())
                        .map(|found| (found.start(), found.end())),
                ),
            }
        }
        if spans.is_empty() {
            return Cow::Borrowed(text);
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            // Merge overlapping and touching spans into one replacement.
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            let start = start.max(copied);
            if let Some(before) = text.get(copied..start) {
                out.push_str(before);
            }
            out.push_str(REDACTED);
            copied = copied.max(end);
        }
        if let Some(rest) = text.get(copied..) {
            out.push_str(rest);
        }
        Cow::Owned(out)
    }
}

// === the walk over an event ===

/// Visits every string of an event. Each struct is destructured without
/// `..`, so a field added to the contract fails to compile here until it
/// is decided whether it can hold a secret.
struct Walk<'r> {
    redactor: &'r Redactor,
    secrets: &'r [String],
}

impl Walk<'_> {
    fn text(&self, text: &mut String) {
        if let Cow::Owned(redacted) = self.redactor.redact_with(self.secrets, text) {
            *text = redacted;
        }
    }

    fn texts(&self, texts: &mut [String]) {
        for text in texts {
            self.text(text);
        }
    }

    fn map(&self, map: &mut HashMap<String, String>) {
        for value in map.values_mut() {
            self.text(value);
        }
        // Keys are rarely secret; rebuild only the entries whose key is.
        let renamed: Vec<(String, String)> = map
            .keys()
            .filter_map(|key| match self.redactor.redact_with(self.secrets, key) {
                Cow::Owned(redacted) => Some((key.clone(), redacted)),
                Cow::Borrowed(_) => None,
            })
            .collect();
        for (key, redacted) in renamed {
            if let Some(value) = map.remove(&key) {
                map.insert(redacted, value);
            }
        }
    }

    fn captured(&self, content: Option<&mut CapturedContent>) {
        let Some(CapturedContent {
            size_bytes: _,
            sha256: _,
            text,
            truncated: _,
        }) = content
        else {
            return;
        };
        if let Some(text) = text {
            self.text(text);
        }
    }

    fn event(&self, event: &mut AuditEvent) {
        let AuditEvent {
            // The idempotency key: kept verbatim so a re-sent event is
            // recognised.
            event_id: _,
            time: _,
            r#type: _,
            service,
            tenant,
            subject,
            run_id,
            trace_id,
            span_id,
            outcome: _,
            reason,
            request_id,
            details,
            attributes,
            // Set by the audit service, ignored in Record.
            cursor: _,
            chain: _,
            hash: _,
            previous_hash: _,
            record_time: _,
        } = event;
        for text in [
            service, tenant, subject, run_id, trace_id, span_id, reason, request_id,
        ] {
            self.text(text);
        }
        self.map(attributes);
        if let Some(details) = details {
            self.details(details);
        }
    }

    // Kept whole: one arm per kind of details, each destructured without
    // `..` so that a field added to the contract fails to compile here until
    // it is redacted (or said not to need it); split, the arms would only be
    // spread over functions that each still must list every field.
    fn details(&self, details: &mut Details) {
        match details {
            Details::Run(RunDetails {
                agent,
                session_id,
                model,
                objective,
                steps: _,
                input_tokens: _,
                output_tokens: _,
                estimated_cost_usd: _,
                duration: _,
                error_code,
                labels,
            }) => {
                for text in [agent, session_id, model, error_code] {
                    self.text(text);
                }
                self.captured(objective.as_mut());
                self.map(labels);
            }
            Details::LlmCall(LlmCallDetails {
                provider,
                model,
                route,
                input_tokens: _,
                output_tokens: _,
                latency: _,
                time_to_first_token: _,
                estimated_cost_usd: _,
                tokens_estimated: _,
                finish_reason,
                streaming: _,
                attempts: _,
                error_code,
                prompt,
                completion,
            }) => {
                for text in [provider, model, route, finish_reason, error_code] {
                    self.text(text);
                }
                self.captured(prompt.as_mut());
                self.captured(completion.as_mut());
            }
            Details::ToolCall(ToolCallDetails {
                tool,
                call_id,
                arguments,
                output,
                duration: _,
                is_error: _,
                error,
                error_kind,
                attempts: _,
            }) => {
                for text in [tool, call_id, error, error_kind] {
                    self.text(text);
                }
                self.captured(arguments.as_mut());
                self.captured(output.as_mut());
            }
            Details::Access(AccessDetails {
                method,
                mechanism,
                permission,
                resource,
                peer,
                credential_id,
                count: _,
                actor,
            }) => {
                for text in [
                    method,
                    mechanism,
                    permission,
                    resource,
                    peer,
                    credential_id,
                    actor,
                ] {
                    self.text(text);
                }
            }
            Details::RateLimit(RateLimitDetails {
                scope,
                key,
                resource,
                limit: _,
                period: _,
                retry_after: _,
                method,
            }) => {
                for text in [scope, key, resource, method] {
                    self.text(text);
                }
            }
            Details::Circuit(CircuitDetails {
                target,
                from_state,
                to_state,
                consecutive_failures: _,
                failure_ratio: _,
                open_duration: _,
                last_error,
            }) => {
                for text in [target, from_state, to_state, last_error] {
                    self.text(text);
                }
            }
            Details::Config(ConfigDetails {
                source,
                sha256: _,
                version,
                changed_settings,
            }) => {
                for text in [source, version] {
                    self.text(text);
                }
                self.texts(changed_settings);
            }
            Details::Error(ErrorDetails {
                code,
                message,
                component,
            }) => {
                for text in [code, message, component] {
                    self.text(text);
                }
            }
            Details::Retention(RetentionDetails {
                cutoff_time: _,
                deleted_count: _,
                anchors,
            }) => {
                for ChainAnchor {
                    chain,
                    anchor_hash: _,
                } in anchors
                {
                    self.text(chain);
                }
            }
            Details::Notification(NotificationDetails {
                receiver,
                receiver_kind,
                group_key,
                status,
                alert_count: _,
                attempts: _,
                error,
            }) => {
                for text in [receiver, receiver_kind, group_key, status, error] {
                    self.text(text);
                }
            }
            Details::Callback(CallbackDetails {
                delivery_id,
                event,
                host,
                attempts: _,
                http_status: _,
                error,
                delay: _,
            }) => {
                for text in [delivery_id, event, host, error] {
                    self.text(text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(&[]).unwrap()
    }

    #[test]
    fn clean_text_is_borrowed() {
        let r = redactor();
        for text in [
            "",
            "run finished after 3 steps",
            "input_tokens: 120, output_tokens: 30",
            "task-0123456789abcdef0123",
            "basic arithmetic",
        ] {
            assert!(matches!(r.redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn bearer_tokens() {
        let r = redactor();
        assert_eq!(
            r.redact("sent Bearer abc.DEF-123_~+/= to the provider"),
            "sent Bearer [REDACTED] to the provider"
        );
        assert_eq!(r.redact("bearer   xyz"), "bearer   [REDACTED]");
    }

    #[test]
    fn authorization_values() {
        let r = redactor();
        assert_eq!(
            r.redact("authorization: Bearer abc.def"),
            "authorization: [REDACTED]"
        );
        assert_eq!(
            r.redact("Authorization: Basic dXNlcjpwYXNz\nnext line"),
            "Authorization: [REDACTED]\nnext line"
        );
        assert_eq!(
            r.redact(r#"{"authorization": "Token 123456", "x": 1}"#),
            r#"{"authorization": "[REDACTED]", "x": 1}"#
        );
    }

    #[test]
    fn provider_keys() {
        let r = redactor();
        for key in [
            "sk-abcdefghijklmnop1234",
            "sk-proj-abcdefghijklmnop_1234-xyz",
            "sk-ant-api03-abcdefghijklmnopqrstuv",
            "AKIAABCDEFGHIJKLMNOP",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            "xoxb-1234567890-abcdef",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "sk_live_abcdefghijklmnop1234",
            "am_live_4fT9qLx2abcdefghijklmnopqrstuvwx",
        ] {
            let text = format!("key {key} used");
            assert_eq!(r.redact(&text), "key [REDACTED] used", "{key}");
        }
        // An agentmesh key's id is public: audit events name it.
        assert_eq!(
            r.redact("key am_live_4fT9qLx2 used"),
            "key am_live_4fT9qLx2 used"
        );
    }

    #[test]
    fn generic_assignments_keep_the_name() {
        let r = redactor();
        assert_eq!(r.redact("api_key=abc123"), "api_key=[REDACTED]");
        assert_eq!(r.redact("x-api-key: abc123 ok"), "x-api-key: [REDACTED] ok");
        assert_eq!(
            r.redact(r#"{"password": "hunter2", "user": "bob"}"#),
            r#"{"password": "[REDACTED]", "user": "bob"}"#
        );
        assert_eq!(
            r.redact("client_secret = 's3cr3t', access_token:xyz"),
            "client_secret = '[REDACTED]', access_token:[REDACTED]"
        );
    }

    #[test]
    fn url_passwords_and_private_keys() {
        let r = redactor();
        assert_eq!(
            r.redact("connect postgres://app:pa55word@db:5432/audit failed"),
            "connect postgres://app:[REDACTED]@db:5432/audit failed"
        );
        assert_eq!(
            r.redact("k=-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- end"),
            "k=[REDACTED] end"
        );
    }

    #[test]
    fn extra_patterns() {
        let r =
            Redactor::new(&[r"acct-\d{6}".to_owned(), r"pin (?P<value>\d{4})".to_owned()]).unwrap();
        assert_eq!(
            r.redact("account acct-123456 pin 1234"),
            "account [REDACTED] pin [REDACTED]"
        );
        assert!(Redactor::new(&["(unclosed".to_owned()]).is_err());
    }

    #[test]
    fn literal_secrets() {
        let r = redactor();
        r.add_secret("short");
        assert_eq!(r.redact("a short text"), "a short text");
        r.add_secret("my-very-private-value");
        assert_eq!(
            r.redact("x my-very-private-value y my-very-private-value"),
            "x [REDACTED] y [REDACTED]"
        );
        // Clones share the registered secrets.
        let clone = r.clone();
        clone.add_secret("another-secret-1");
        assert_eq!(r.redact("another-secret-1"), "[REDACTED]");
        assert!(!format!("{r:?}").contains("another"));
    }

    #[test]
    fn overlapping_matches_leave_no_fragment() {
        let r = redactor();
        r.add_secret("abcdefgh12345678");
        assert_eq!(
            r.redact("token: Bearer abcdefgh12345678 done"),
            "token: [REDACTED] [REDACTED] done"
        );
        assert_eq!(
            r.redact("Authorization: Bearer xyz, other"),
            "Authorization: [REDACTED], other"
        );
    }

    #[test]
    fn multibyte_text_is_kept_intact() {
        let r = redactor();
        assert_eq!(
            r.redact("héllo password=ünïcode wörld"),
            "héllo password=[REDACTED] wörld"
        );
    }

    #[test]
    fn every_field_of_an_event() {
        let r = redactor();
        let secret = "s3cret-value-42";
        r.add_secret(secret);
        let captured = |text: &str| CapturedContent {
            size_bytes: 1,
            sha256: "00".to_owned(),
            text: Some(text.to_owned()),
            truncated: false,
        };
        let mut event = AuditEvent {
            event_id: "id-1".to_owned(),
            reason: format!("failed with {secret}"),
            subject: format!("user {secret}"),
            attributes: HashMap::from([
                ("k".to_owned(), format!("v {secret}")),
                (format!("key-{secret}"), "v".to_owned()),
            ]),
            details: Some(Details::Run(RunDetails {
                agent: secret.to_owned(),
                objective: Some(captured(&format!("use {secret}"))),
                labels: HashMap::from([("l".to_owned(), secret.to_owned())]),
                ..RunDetails::default()
            })),
            ..AuditEvent::default()
        };
        r.redact_event(&mut event);
        assert_eq!(event.event_id, "id-1");
        assert_eq!(event.reason, "failed with [REDACTED]");
        assert_eq!(event.subject, "user [REDACTED]");
        assert_eq!(event.attributes["k"], "v [REDACTED]");
        assert_eq!(event.attributes["key-[REDACTED]"], "v");
        let Some(Details::Run(run)) = &event.details else {
            panic!("details changed");
        };
        assert_eq!(run.agent, "[REDACTED]");
        assert_eq!(
            run.objective.as_ref().unwrap().text.as_deref(),
            Some("use [REDACTED]")
        );
        assert_eq!(run.labels["l"], "[REDACTED]");

        let mut llm = AuditEvent {
            details: Some(Details::LlmCall(LlmCallDetails {
                prompt: Some(captured("Authorization: Bearer abc")),
                completion: Some(captured("here is sk-abcdefghijklmnopqrstu")),
                ..LlmCallDetails::default()
            })),
            ..AuditEvent::default()
        };
        r.redact_event(&mut llm);
        let Some(Details::LlmCall(call)) = &llm.details else {
            panic!("details changed");
        };
        assert_eq!(
            call.prompt.as_ref().unwrap().text.as_deref(),
            Some("Authorization: [REDACTED]")
        );
        assert_eq!(
            call.completion.as_ref().unwrap().text.as_deref(),
            Some("here is [REDACTED]")
        );

        let mut tool = AuditEvent {
            details: Some(Details::ToolCall(ToolCallDetails {
                arguments: Some(captured(&format!("{{\"api_key\": \"{secret}\"}}"))),
                error: format!("denied for {secret}"),
                ..ToolCallDetails::default()
            })),
            ..AuditEvent::default()
        };
        r.redact_event(&mut tool);
        let Some(Details::ToolCall(call)) = &tool.details else {
            panic!("details changed");
        };
        assert_eq!(
            call.arguments.as_ref().unwrap().text.as_deref(),
            Some("{\"api_key\": \"[REDACTED]\"}")
        );
        assert_eq!(call.error, "denied for [REDACTED]");

        let mut error = AuditEvent {
            details: Some(Details::Error(ErrorDetails {
                message: format!("postgres://u:{secret}@db failed"),
                ..ErrorDetails::default()
            })),
            ..AuditEvent::default()
        };
        r.redact_event(&mut error);
        let Some(Details::Error(details)) = &error.details else {
            panic!("details changed");
        };
        assert_eq!(details.message, "postgres://u:[REDACTED]@db failed");

        let mut notification = AuditEvent {
            details: Some(Details::Notification(NotificationDetails {
                error: format!("webhook said {secret}"),
                ..NotificationDetails::default()
            })),
            ..AuditEvent::default()
        };
        r.redact_event(&mut notification);
        let Some(Details::Notification(details)) = &notification.details else {
            panic!("details changed");
        };
        assert_eq!(details.error, "webhook said [REDACTED]");
    }

    #[test]
    fn redactor_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Redactor>();
    }
}
