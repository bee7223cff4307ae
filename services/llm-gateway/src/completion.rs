//! The provider-neutral result of a model call, and how a stream of
//! provider events is assembled into it.
//!
//! Every provider turns its wire format into [`ProviderEvent`]s (streaming) or
//! a [`Completion`] (one response). [`Assembler`] folds events into the same
//! [`Completion`], so both RPCs finish through one path: usage the provider
//! did not report is estimated here, and a stop with tool calls is reported as
//! a tool-call finish whatever the provider called it.

use agentmesh_proto::llm::v1::{FinishReason, GenerateRequest, Message, Role, ToolCall, Usage};

/// One normalised piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ProviderEvent {
    /// The provider's response id and the model that answers, when known.
    Metadata {
        /// Provider's response id (may be empty).
        response_id: String,
        /// The model as the provider names it (may be empty).
        model: String,
    },
    /// A piece of answer text.
    Text(String),
    /// A piece of a tool call: `index` counts tool calls from 0; `id` and
    /// `name` are set on the call's first delta only.
    ToolCallDelta {
        /// Position of the call among the answer's tool calls.
        index: usize,
        /// The call id (first delta only).
        id: String,
        /// The tool name (first delta only).
        name: String,
        /// A fragment of the arguments JSON.
        arguments_fragment: String,
    },
    /// Token counts reported so far; later reports override earlier ones
    /// field by field (providers send cumulative counts).
    Usage(ReportedUsage),
    /// The answer is complete. Always the last event of a successful stream.
    Finished {
        /// Normalised reason.
        finish_reason: FinishReason,
        /// The provider's own string.
        provider_finish_reason: String,
    },
}

/// Token counts as a provider reported them; `None` = not reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReportedUsage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: Option<u64>,
    /// Generated tokens, reasoning included.
    pub output_tokens: Option<u64>,
    /// Part of the input served from a prompt cache.
    pub cached_input_tokens: Option<u64>,
    /// Part of the output spent on hidden reasoning.
    pub reasoning_tokens: Option<u64>,
    /// The counts are estimates (the scripted provider), not the provider's.
    pub estimated: bool,
}

impl ReportedUsage {
    /// Overrides the fields `later` reports.
    pub(crate) fn merge(&mut self, later: ReportedUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cached_input_tokens = later.cached_input_tokens.or(self.cached_input_tokens);
        self.reasoning_tokens = later.reasoning_tokens.or(self.reasoning_tokens);
        self.estimated |= later.estimated;
    }
}

/// A complete (or, after a failure, partial) answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Completion {
    /// Role assistant, text and tool calls.
    pub message: Message,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// The provider's own finish reason string.
    pub provider_finish_reason: String,
    /// Token counts the provider reported.
    pub usage: ReportedUsage,
    /// The provider's response id.
    pub response_id: String,
    /// The model as the provider reports it (empty = not reported).
    pub model: String,
}

impl Completion {
    /// Usage for the response: reported counts where there are some,
    /// estimates from `request` and the answer otherwise.
    pub(crate) fn final_usage(&self, request: &GenerateRequest) -> Usage {
        self.usage_with(request, true)
    }

    /// Usage of an answer cut short: the output count a provider reported
    /// early (Anthropic sends one at the start) misses what came after, so
    /// the larger of it and the estimate is used, flagged as estimated.
    pub(crate) fn usage_so_far(&self, request: &GenerateRequest) -> Usage {
        self.usage_with(request, false)
    }

    fn usage_with(&self, request: &GenerateRequest, complete: bool) -> Usage {
        let reported = self.usage;
        let input = reported
            .input_tokens
            .unwrap_or_else(|| estimate_input_tokens(request));
        let estimated_output = estimate_message_tokens(&self.message);
        let output = match reported.output_tokens {
            Some(count) if complete => count,
            Some(count) => count.max(estimated_output),
            None => estimated_output,
        };
        let estimated = !complete
            || reported.estimated
            || reported.input_tokens.is_none()
            || reported.output_tokens.is_none();
        Usage {
            input_tokens: clamp_tokens(input),
            output_tokens: clamp_tokens(output),
            total_tokens: clamp_tokens(input.saturating_add(output)),
            cached_input_tokens: clamp_tokens(reported.cached_input_tokens.unwrap_or(0)),
            reasoning_tokens: clamp_tokens(reported.reasoning_tokens.unwrap_or(0)),
            estimated_cost_usd: None,
            tokens_estimated: estimated,
        }
    }
}

fn clamp_tokens(count: u64) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Roughly four characters per token: the usual rule of thumb for English
/// text with the tokenizers of current models. Used only when a provider
/// reports nothing, and flagged as an estimate.
pub(crate) fn estimate_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

/// Estimated prompt tokens of a request: its messages and tool specs.
pub(crate) fn estimate_input_tokens(request: &GenerateRequest) -> u64 {
    let messages: usize = request
        .messages
        .iter()
        .map(|message| message_chars(message) + 4)
        .sum();
    let tools: usize = request
        .tools
        .iter()
        .map(|tool| tool.name.len() + tool.description.len() + tool.parameters_json.len())
        .sum();
    estimate_tokens(messages + tools)
}

fn estimate_message_tokens(message: &Message) -> u64 {
    estimate_tokens(message_chars(message))
}

fn message_chars(message: &Message) -> usize {
    message.content.chars().count()
        + message
            .tool_calls
            .iter()
            .map(|call| call.name.len() + call.arguments_json.chars().count())
            .sum::<usize>()
}

/// A stop that requested tool calls is a tool-call finish: OpenAI says
/// `stop` when a specific tool was forced, and consumers decide whether to
/// run tools from the finish reason.
pub(crate) fn normalise_finish(reason: FinishReason, message: &Message) -> FinishReason {
    if reason == FinishReason::Stop && !message.tool_calls.is_empty() {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

/// An empty assistant message.
pub(crate) fn assistant_message() -> Message {
    Message {
        role: Role::Assistant.into(),
        ..Message::default()
    }
}

// === impl Assembler ===

/// Folds a stream's events into a [`Completion`].
#[derive(Debug, Clone)]
pub(crate) struct Assembler {
    completion: Completion,
    /// Whether `Finished` came (only tests ask: the call paths act on the
    /// event itself).
    #[cfg(test)]
    finished: bool,
    output_started: bool,
}

impl Default for Assembler {
    fn default() -> Self {
        Self {
            completion: Completion {
                message: assistant_message(),
                finish_reason: FinishReason::Unspecified,
                provider_finish_reason: String::new(),
                usage: ReportedUsage::default(),
                response_id: String::new(),
                model: String::new(),
            },
            #[cfg(test)]
            finished: false,
            output_started: false,
        }
    }
}

impl Assembler {
    /// Takes in one event.
    pub(crate) fn push(&mut self, event: &ProviderEvent) {
        let completion = &mut self.completion;
        match event {
            ProviderEvent::Metadata { response_id, model } => {
                if !response_id.is_empty() {
                    completion.response_id.clone_from(response_id);
                }
                if !model.is_empty() {
                    completion.model.clone_from(model);
                }
            }
            ProviderEvent::Text(text) => {
                self.output_started |= !text.is_empty();
                completion.message.content.push_str(text);
            }
            ProviderEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments_fragment,
            } => {
                self.output_started = true;
                let calls = &mut completion.message.tool_calls;
                if calls.len() <= *index {
                    calls.resize_with(index.saturating_add(1), ToolCall::default);
                }
                if let Some(call) = calls.get_mut(*index) {
                    if !id.is_empty() {
                        call.id.clone_from(id);
                    }
                    if !name.is_empty() {
                        call.name.clone_from(name);
                    }
                    call.arguments_json.push_str(arguments_fragment);
                }
            }
            ProviderEvent::Usage(usage) => completion.usage.merge(*usage),
            ProviderEvent::Finished {
                finish_reason,
                provider_finish_reason,
            } => {
                completion.finish_reason = normalise_finish(*finish_reason, &completion.message);
                completion
                    .provider_finish_reason
                    .clone_from(provider_finish_reason);
                #[cfg(test)]
                {
                    self.finished = true;
                }
            }
        }
    }

    /// Whether any text or tool call has been received.
    pub(crate) fn output_started(&self) -> bool {
        self.output_started
    }

    /// Whether the `Finished` event has been received.
    #[cfg(test)]
    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }

    /// What has been assembled so far.
    pub(crate) fn completion(&self) -> &Completion {
        &self.completion
    }

    /// The assembled completion.
    pub(crate) fn into_completion(self) -> Completion {
        self.completion
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(index: usize, id: &str, name: &str, fragment: &str) -> ProviderEvent {
        ProviderEvent::ToolCallDelta {
            index,
            id: id.into(),
            name: name.into(),
            arguments_fragment: fragment.into(),
        }
    }

    #[test]
    fn deltas_assemble_into_a_message() {
        let mut assembler = Assembler::default();
        assert!(!assembler.output_started());
        for event in [
            ProviderEvent::Metadata {
                response_id: "r1".into(),
                model: "m-2024".into(),
            },
            ProviderEvent::Text("Hel".into()),
            ProviderEvent::Text("lo".into()),
            delta(0, "call_a", "calc", ""),
            delta(1, "call_b", "time", "{}"),
            delta(0, "", "", "{\"x\":"),
            delta(0, "", "", "1}"),
            ProviderEvent::Usage(ReportedUsage {
                input_tokens: Some(10),
                ..ReportedUsage::default()
            }),
            ProviderEvent::Usage(ReportedUsage {
                output_tokens: Some(5),
                ..ReportedUsage::default()
            }),
            ProviderEvent::Finished {
                finish_reason: FinishReason::Stop,
                provider_finish_reason: "stop".into(),
            },
        ] {
            assembler.push(&event);
        }
        assert!(assembler.is_finished());
        let completion = assembler.into_completion();
        assert_eq!(completion.message.content, "Hello");
        assert_eq!(completion.message.tool_calls.len(), 2);
        assert_eq!(completion.message.tool_calls[0].arguments_json, "{\"x\":1}");
        assert_eq!(completion.message.tool_calls[1].name, "time");
        // A stop with tool calls is a tool-call finish.
        assert_eq!(completion.finish_reason, FinishReason::ToolCalls);
        assert_eq!(completion.response_id, "r1");
        let usage = completion.final_usage(&GenerateRequest::default());
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (10, 5, 15)
        );
        assert!(!usage.tokens_estimated);
    }

    #[test]
    fn missing_usage_is_estimated_and_flagged() {
        let mut assembler = Assembler::default();
        assembler.push(&ProviderEvent::Text("12345678".into()));
        let request = GenerateRequest {
            messages: vec![Message {
                role: Role::User.into(),
                content: "abcd".repeat(10),
                ..Message::default()
            }],
            ..GenerateRequest::default()
        };
        let usage = assembler.completion().final_usage(&request);
        assert_eq!(usage.output_tokens, 2);
        assert_eq!(usage.input_tokens, 11);
        assert!(usage.tokens_estimated);
    }
}
