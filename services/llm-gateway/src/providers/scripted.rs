//! The scripted provider: a deterministic stand-in for a model, for tests and
//! the offline demo. It never pretends to be real: every answer reports
//! provider `scripted`, the model part of its target (e.g. `demo`), and
//! usage flagged as estimated.
//!
//! What it answers is decided by a rules file, loaded and compiled by
//! [`crate::scripted_rules`]; this module matches a request against the
//! rules and turns the chosen answer into provider events.
//!
//! # Answers
//!
//! A rule with tool calls answers only when the request offers those tools
//! (or offers none, so the gateway can be tried by hand) and does not say
//! TOOL_CHOICE_MODE_NONE. Tool-call ids are `call_<n>`, n counting the tool
//! calls of the conversation so far plus one, so they are unique within a
//! conversation and the same on every run. A streamed call comes as a first
//! delta with id and name, then its arguments in two or more fragments, so
//! consumers exercise assembly. Text comes word by word; `max_output_tokens`
//! cuts it (finish reason LENGTH). When no rule matches, the answer says so,
//! quoting the message. Usage is estimated: input about a token per four
//! characters, output one token per streamed piece.
//!
//! The pace sleeps come between deltas, so a cancelled stream (the client
//! went away) stops at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentmesh_proto::llm::v1::{FinishReason, GenerateRequest, Message, Role, ToolChoiceMode};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use regex::Captures;

use crate::completion::{
    Assembler, Completion, ProviderEvent, ReportedUsage, estimate_input_tokens,
};
use crate::config::ProviderConfig;
use crate::error::ProviderError;
use crate::providers::{EventStream, Provider, ProviderCall};
use crate::scripted_rules::{Answer, On, Rule, RuleSet, RulesError, Template};
use agentmesh_kit::text::truncate_chars;

/// How much of an unmatched message the fallback answer quotes.
const QUOTE_CHARS: usize = 80;

// === impl Scripted ===

/// A scripted provider instance.
#[derive(Debug)]
pub(crate) struct Scripted {
    rules: Arc<RuleSet>,
    pace_override: Option<Duration>,
    responses: AtomicU64,
}

/// What a scripted call answers: the events in order, and the pace between
/// output deltas.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Script {
    /// Metadata, deltas, usage and `Finished`.
    pub events: Vec<ProviderEvent>,
    /// Delay between output deltas.
    pub pace: Duration,
}

impl Scripted {
    /// The instance `config` describes (its rules file loaded and checked).
    pub(crate) fn from_config(config: &ProviderConfig) -> Result<Self, RulesError> {
        Ok(Self::new(RuleSet::load(&config.rules_file)?, config.pace))
    }

    /// An instance answering by `rules`; `pace_override` wins over every pace
    /// in the rules.
    pub(crate) fn new(rules: RuleSet, pace_override: Option<Duration>) -> Self {
        Self {
            rules: Arc::new(rules),
            pace_override,
            responses: AtomicU64::new(0),
        }
    }

    /// The answer to `request` for model `model`.
    pub(crate) fn script(&self, model: &str, request: &GenerateRequest) -> Script {
        let number = self.responses.fetch_add(1, Ordering::Relaxed) + 1;
        let mut events = vec![ProviderEvent::Metadata {
            response_id: format!("scripted-{number}"),
            model: model.to_owned(),
        }];
        let input_tokens = estimate_input_tokens(request);
        let chosen = self
            .rules
            .rules
            .iter()
            .find_map(|rule| rule.answer_for(request).map(|captures| (rule, captures)));
        let (pieces, finish_reason, provider_reason, pace) = match chosen {
            Some((rule, captures)) => {
                let pace = self.pace_override.or(rule.pace).unwrap_or(self.rules.pace);
                match &rule.answer {
                    Answer::ToolCalls(calls) => {
                        let first_id = count_tool_calls(&request.messages) + 1;
                        let mut pieces = 0_u64;
                        for (index, (name, template)) in calls.iter().enumerate() {
                            let arguments = template.render(&captures, true);
                            events.push(ProviderEvent::ToolCallDelta {
                                index,
                                id: format!("call_{}", first_id + index),
                                name: name.clone(),
                                arguments_fragment: String::new(),
                            });
                            for fragment in halves(&arguments) {
                                pieces += 1;
                                events.push(ProviderEvent::ToolCallDelta {
                                    index,
                                    id: String::new(),
                                    name: String::new(),
                                    arguments_fragment: fragment.to_owned(),
                                });
                            }
                        }
                        (pieces, FinishReason::ToolCalls, "tool_calls", pace)
                    }
                    Answer::Text(template) => {
                        let text = template.render(&captures, false);
                        let (pieces, truncated) =
                            push_words(&mut events, &text, request.max_output_tokens);
                        if truncated {
                            (pieces, FinishReason::Length, "length", pace)
                        } else {
                            (pieces, FinishReason::Stop, "stop", pace)
                        }
                    }
                }
            }
            None => {
                let text = format!(
                    "No scripted rule matched the last message (\"{}\"). The scripted provider answers only what {} describe.",
                    quote(last_subject(request)),
                    self.rules.source_name
                );
                let pace = self.pace_override.unwrap_or(self.rules.pace);
                let (pieces, truncated) = push_words(&mut events, &text, request.max_output_tokens);
                if truncated {
                    (pieces, FinishReason::Length, "length", pace)
                } else {
                    (pieces, FinishReason::Stop, "stop", pace)
                }
            }
        };
        events.push(ProviderEvent::Usage(ReportedUsage {
            input_tokens: Some(input_tokens),
            output_tokens: Some(pieces),
            cached_input_tokens: None,
            reasoning_tokens: None,
            estimated: true,
        }));
        events.push(ProviderEvent::Finished {
            finish_reason,
            provider_finish_reason: provider_reason.to_owned(),
        });
        Script { events, pace }
    }
}

impl Rule {
    /// The captures when this rule answers `request`.
    fn answer_for<'r>(&self, request: &'r GenerateRequest) -> Option<Captures<'r>> {
        if self
            .role
            .as_ref()
            .is_some_and(|role| *role != request.agent_role)
        {
            return None;
        }
        let last = request.messages.last()?;
        let role = Role::try_from(last.role).unwrap_or_default();
        let subject = match self.on {
            On::User => (role == Role::User).then_some(last)?,
            On::Tool => (role == Role::Tool).then_some(last)?,
            On::ToolError => (role == Role::Tool && last.is_error).then_some(last)?,
            On::Any => request.messages.iter().rev().find(|message| {
                matches!(Role::try_from(message.role), Ok(Role::User | Role::Tool))
            })?,
        };
        if let Answer::ToolCalls(calls) = &self.answer
            && !self.unoffered_tools
            && !tools_offered(request, calls)
        {
            return None;
        }
        self.regex.captures(&subject.content)
    }
}

/// Whether a model could call these tools: the request offers them (or no
/// tools at all) and does not forbid tool calls.
fn tools_offered(request: &GenerateRequest, calls: &[(String, Template)]) -> bool {
    let forbidden = request
        .tool_choice
        .as_ref()
        .is_some_and(|choice| choice.mode == i32::from(ToolChoiceMode::None));
    let offered = request.tools.is_empty()
        || calls
            .iter()
            .all(|(name, _)| request.tools.iter().any(|tool| &tool.name == name));
    !forbidden && offered
}

fn count_tool_calls(messages: &[Message]) -> usize {
    messages
        .iter()
        .map(|message| message.tool_calls.len())
        .sum()
}

fn last_subject(request: &GenerateRequest) -> &str {
    request
        .messages
        .iter()
        .rev()
        .find(|message| matches!(Role::try_from(message.role), Ok(Role::User | Role::Tool)))
        .or(request.messages.last())
        .map_or("", |message| message.content.as_str())
}

fn quote(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&flat, QUOTE_CHARS).into_owned()
}

/// Text split into words, each keeping the whitespace after it (and the
/// first keeping any before it).
pub(crate) fn words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut previous_was_space = false;
    for (at, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if previous_was_space
            && !is_space
            && at > start
            && let Some(piece) = text.get(start..at)
            && piece.chars().any(|c| !c.is_whitespace())
        {
            pieces.push(piece);
            start = at;
        }
        previous_was_space = is_space;
    }
    if let Some(rest) = text.get(start..)
        && !rest.is_empty()
    {
        pieces.push(rest);
    }
    pieces
}

/// Pushes `text` as word deltas, at most `limit` when positive; returns the
/// number pushed and whether the text was cut.
fn push_words(events: &mut Vec<ProviderEvent>, text: &str, limit: i32) -> (u64, bool) {
    let all = words(text);
    let keep = usize::try_from(limit)
        .ok()
        .filter(|limit| *limit > 0)
        .map_or(all.len(), |limit| limit.min(all.len()));
    for word in all.iter().take(keep) {
        events.push(ProviderEvent::Text((*word).to_owned()));
    }
    (u64::try_from(keep).unwrap_or(u64::MAX), keep < all.len())
}

/// `text` in two fragments split at a character boundary near the middle
/// (one fragment when it has a single character).
fn halves(text: &str) -> Vec<&str> {
    let middle = text.len() / 2;
    let cut = (middle..text.len())
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(text.len());
    match text.split_at_checked(cut) {
        Some((first, second)) if !first.is_empty() && !second.is_empty() => vec![first, second],
        _ => vec![text],
    }
}

// === impl Provider ===

impl Provider for Scripted {
    fn generate(
        &self,
        call: ProviderCall,
    ) -> BoxFuture<'static, Result<Completion, ProviderError>> {
        let script = self.script(&call.model, &call.request);
        async move {
            let mut assembler = Assembler::default();
            for event in &script.events {
                assembler.push(event);
            }
            Ok(assembler.into_completion())
        }
        .boxed()
    }

    fn generate_stream(&self, call: ProviderCall) -> EventStream {
        let script = self.script(&call.model, &call.request);
        let pace = script.pace;
        let state = (VecDeque::from(script.events), false);
        futures::stream::unfold(state, move |(mut events, mut output_sent)| async move {
            let event = events.pop_front()?;
            let is_output = matches!(
                event,
                ProviderEvent::Text(_) | ProviderEvent::ToolCallDelta { .. }
            );
            if is_output {
                if output_sent && !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
                output_sent = true;
            }
            Some((Ok(event), (events, output_sent)))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::llm::v1::{ToolCall, ToolSpec};
    use futures::StreamExt;

    use super::*;

    fn user(text: &str) -> Message {
        Message {
            role: Role::User.into(),
            content: text.into(),
            ..Message::default()
        }
    }

    fn tool_result(content: &str, is_error: bool) -> Message {
        Message {
            role: Role::Tool.into(),
            content: content.into(),
            tool_call_id: "call_1".into(),
            is_error,
            ..Message::default()
        }
    }

    fn demo() -> Scripted {
        Scripted::new(RuleSet::load("").unwrap(), Some(Duration::ZERO))
    }

    fn answer(scripted: &Scripted, messages: Vec<Message>) -> Completion {
        let request = GenerateRequest {
            messages,
            ..GenerateRequest::default()
        };
        let mut assembler = Assembler::default();
        for event in scripted.script("demo", &request).events {
            assembler.push(&event);
        }
        assembler.into_completion()
    }

    fn calls(completion: &Completion) -> Vec<(String, String, String)> {
        completion
            .message
            .tool_calls
            .iter()
            .map(|call| {
                (
                    call.id.clone(),
                    call.name.clone(),
                    call.arguments_json.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn the_demo_does_arithmetic_through_the_calculator() {
        let scripted = demo();
        for (question, expression) in [
            ("What is 17 * 23 + sqrt(144)?", "17 * 23 + sqrt(144)"),
            ("What is 2+2?", "2+2"),
            ("calculate 2^10", "2^10"),
            ("Compute (1 + 2) / 3.", "(1 + 2) / 3"),
        ] {
            let completion = answer(&scripted, vec![user(question)]);
            assert_eq!(
                calls(&completion),
                [(
                    "call_1".to_owned(),
                    "calculator".to_owned(),
                    format!("{{\"expression\": \"{expression}\"}}")
                )],
                "{question}"
            );
            assert_eq!(completion.finish_reason, FinishReason::ToolCalls);
        }
        for (result, text) in [
            ("{\"result\":403}", "The answer is 403."),
            ("{\"result\": 4}", "The answer is 4."),
            ("{\"result\":-2.5e-3}", "The answer is -2.5e-3."),
        ] {
            let completion = answer(
                &scripted,
                vec![
                    user("What is 17 * 23 + sqrt(144)?"),
                    tool_result(result, false),
                ],
            );
            assert_eq!(completion.message.content, text);
            assert_eq!(completion.finish_reason, FinishReason::Stop);
        }
    }

    #[test]
    fn the_demo_tells_the_time() {
        let scripted = demo();
        let completion = answer(&scripted, vec![user("What time is it in Europe/Paris?")]);
        assert_eq!(calls(&completion)[0].1, "current_time");
        assert_eq!(calls(&completion)[0].2, "{\"timezone\": \"Europe/Paris\"}");
        let completion = answer(&scripted, vec![user("what's the current time?")]);
        assert_eq!(calls(&completion)[0].2, "{}");
        let completion = answer(
            &scripted,
            vec![
                user("What time is it?"),
                tool_result(
                    r#"{"utc":"2026-11-21T10:00:00Z","local":"2026-11-21T11:00:00+01:00","timezone":"Europe/Paris"}"#,
                    false,
                ),
            ],
        );
        assert_eq!(
            completion.message.content,
            "It is 2026-11-21T11:00:00+01:00 (Europe/Paris)."
        );
        let completion = answer(
            &scripted,
            vec![
                user("What time is it?"),
                tool_result(r#"{"utc":"2026-11-21T10:00:00Z"}"#, false),
            ],
        );
        assert_eq!(
            completion.message.content,
            "It is 2026-11-21T10:00:00Z (UTC)."
        );
    }

    #[test]
    fn the_demo_reports_tool_failures_once() {
        let scripted = demo();
        for (content, is_error, text) in [
            (
                r#"{"error":"division by zero"}"#,
                false,
                "The tool failed: division by zero",
            ),
            (
                r#"{"error":{"message":"bad input","code":3}}"#,
                true,
                "The tool failed: bad input",
            ),
            (
                "timezone not found",
                true,
                "The tool failed: timezone not found",
            ),
        ] {
            let completion = answer(
                &scripted,
                vec![user("What is 1/0?"), tool_result(content, is_error)],
            );
            assert_eq!(completion.message.content, text, "{content}");
            assert!(completion.message.tool_calls.is_empty());
        }
    }

    #[test]
    fn anything_else_gets_the_demo_explanation() {
        let completion = answer(&demo(), vec![user("Tell me a story")]);
        let text = &completion.message.content;
        assert!(text.contains("scripted demo model"), "{text}");
        assert!(text.contains("OPENAI_API_KEY"), "{text}");
        assert!(text.contains("ANTHROPIC_API_KEY"), "{text}");
        assert!(completion.message.tool_calls.is_empty());
        assert!(
            !answer(&demo(), vec![user("What is your name?")])
                .message
                .content
                .is_empty()
        );
        assert!(calls(&answer(&demo(), vec![user("What is your name?")])).is_empty());
    }

    #[test]
    fn tool_call_ids_count_the_calls_so_far() {
        let history = vec![
            user("What is 1+1?"),
            Message {
                role: Role::Assistant.into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "calculator".into(),
                    arguments_json: "{}".into(),
                }],
                ..Message::default()
            },
            tool_result("{\"result\":2}", false),
            Message {
                role: Role::Assistant.into(),
                content: "The answer is 2.".into(),
                ..Message::default()
            },
            user("What is 2+2?"),
        ];
        assert_eq!(calls(&answer(&demo(), history))[0].0, "call_2");
    }

    #[test]
    fn tool_rules_need_the_tool_offered() {
        let request = GenerateRequest {
            messages: vec![user("What is 2+2?")],
            tools: vec![ToolSpec {
                name: "search".into(),
                ..ToolSpec::default()
            }],
            ..GenerateRequest::default()
        };
        let script = demo().script("demo", &request);
        assert!(
            !script
                .events
                .iter()
                .any(|event| matches!(event, ProviderEvent::ToolCallDelta { .. }))
        );
        // Unless the rule ignores the tool list, as some models do.
        let rules = RuleSet::parse(
            r#"
            [[rules]]
            on = "user"
            tool_calls = [{ name = "calculator" }]
            unoffered_tools = true
            "#,
            "test rules",
        )
        .unwrap();
        let script = Scripted::new(rules, None).script("demo", &request);
        assert!(
            script
                .events
                .iter()
                .any(|event| matches!(event, ProviderEvent::ToolCallDelta { name, .. } if name == "calculator"))
        );
    }

    #[test]
    fn captures_are_json_escaped_in_arguments_only() {
        let rules = RuleSet::parse(
            r#"
            [[rules]]
            on = "user"
            match = '^say (?P<what>.*)$'
            tool_calls = [{ name = "echo", arguments = '{"text": "${what}"}' }]
            [[rules]]
            on = "tool"
            text = "got ${0}"
            "#,
            "test rules",
        )
        .unwrap();
        let scripted = Scripted::new(rules, None);
        let completion = answer(&scripted, vec![user(r#"say "hi" \ there"#)]);
        let arguments = &completion.message.tool_calls[0].arguments_json;
        let parsed: serde_json::Value = serde_json::from_str(arguments).unwrap();
        assert_eq!(parsed["text"], r#""hi" \ there"#);
        let completion = answer(&scripted, vec![user("x"), tool_result("\"quoted\"", false)]);
        assert_eq!(completion.message.content, "got \"quoted\"");
    }

    #[test]
    fn streamed_calls_come_in_fragments() {
        let request = GenerateRequest {
            messages: vec![user("What is 2+2?")],
            ..GenerateRequest::default()
        };
        let script = demo().script("demo", &request);
        let fragments: Vec<&ProviderEvent> = script
            .events
            .iter()
            .filter(
                |event| matches!(event, ProviderEvent::ToolCallDelta { id, .. } if id.is_empty()),
            )
            .collect();
        assert!(fragments.len() >= 2, "{:?}", script.events);
        assert_eq!(script.pace, Duration::ZERO);
        assert_eq!(
            RuleSet::load("").unwrap().pace,
            Duration::from_millis(25),
            "the demo file's pace"
        );
    }

    #[test]
    fn no_match_says_so_and_quotes_the_message() {
        let rules =
            RuleSet::parse("[[rules]]\non = \"tool\"\ntext = \"x\"\n", "test rules").unwrap();
        let completion = answer(
            &Scripted::new(rules, None),
            vec![user(&"long words ".repeat(20))],
        );
        let text = &completion.message.content;
        assert!(
            text.starts_with("No scripted rule matched the last message (\"long words"),
            "{text}"
        );
        assert!(text.contains('…'), "{text}");
        assert!(text.contains("test rules"), "{text}");
    }

    #[test]
    fn words_keep_their_whitespace() {
        assert_eq!(
            words("The answer is 403."),
            ["The ", "answer ", "is ", "403."]
        );
        assert_eq!(words("  two\n lines "), ["  two\n ", "lines "]);
        assert_eq!(words(""), Vec::<&str>::new());
        assert_eq!(halves("{}"), ["{", "}"]);
        assert_eq!(halves("é"), ["é"]);
        assert_eq!(halves("aé"), ["a", "é"]);
    }

    fn call(text: &str) -> ProviderCall {
        ProviderCall {
            model: "demo".into(),
            request: Arc::new(GenerateRequest {
                messages: vec![user(text)],
                ..GenerateRequest::default()
            }),
            caller_deadline: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn streams_sleep_between_deltas_only() {
        let rules = RuleSet::parse(
            "pace = \"100ms\"\n[[rules]]\ntext = \"one two three\"\n",
            "test rules",
        )
        .unwrap();
        let scripted = Scripted::new(rules, None);
        let mut stream = scripted.generate_stream(call("hi"));
        // Metadata and the first word come at once (the clock is paused and
        // does not move unless a timer is awaited).
        let start = tokio::time::Instant::now();
        assert!(matches!(
            stream.next().await,
            Some(Ok(ProviderEvent::Metadata { .. }))
        ));
        assert_eq!(
            stream.next().await,
            Some(Ok(ProviderEvent::Text("one ".into())))
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The second word waits for the pace.
        let mut next = stream.next();
        assert!(futures::FutureExt::now_or_never(&mut next).is_none());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(next.await, Some(Ok(ProviderEvent::Text("two ".into()))));
    }

    #[test]
    fn the_instance_pace_wins_over_rule_and_file_paces() {
        let text = "pace = \"1s\"\n[[rules]]\non = \"tool\"\npace = \"2s\"\ntext = \"a\"\n[[rules]]\ntext = \"b\"\n";
        let paced = |pace_override| {
            let scripted = Scripted::new(RuleSet::parse(text, "t").unwrap(), pace_override);
            let on_user = scripted.script("m", &call("x").request).pace;
            let on_tool = scripted
                .script(
                    "m",
                    &GenerateRequest {
                        messages: vec![user("x"), tool_result("{}", false)],
                        ..GenerateRequest::default()
                    },
                )
                .pace;
            (on_user, on_tool)
        };
        assert_eq!(
            paced(None),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
        assert_eq!(
            paced(Some(Duration::ZERO)),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn a_text_answer_is_cut_at_max_output_tokens() {
        let request = GenerateRequest {
            messages: vec![user("hello there")],
            max_output_tokens: 3,
            ..GenerateRequest::default()
        };
        let mut assembler = Assembler::default();
        for event in demo().script("demo", &request).events {
            assembler.push(&event);
        }
        let completion = assembler.into_completion();
        assert_eq!(completion.finish_reason, FinishReason::Length);
        assert_eq!(completion.usage.output_tokens, Some(3));
        assert!(completion.usage.estimated);
    }
}
