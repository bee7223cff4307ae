//! Chat Completions answers as typed, borrowed structs: the fast path of
//! [`super::openai_answer`].
//!
//! Parsing into these reads each string in place (escaped ones are the only
//! copies) instead of building a `serde_json::Value` tree, looking fields up
//! by path and dropping the tree; on the gateway's unary path that tree was
//! a few per cent of its CPU. They accept exactly the well-formed answers
//! (every field optional, unknown fields ignored); anything else — a field
//! of another type, an `error` object — fails to parse here and is mapped
//! by the lenient `Value` path, so both paths give the same result for the
//! same body (a fuzz target in `super::fuzz_tests`).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};

use crate::completion::ReportedUsage;

/// A `chat.completion` object, or one `chat.completion.chunk`.
#[derive(Debug, Deserialize)]
pub(crate) struct Answer<'a> {
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub choices: Option<Vec<Obj<Choice<'a>>>>,
    #[serde(default)]
    pub usage: Option<Obj<Usage>>,
    /// Any `error` member, even null: the caller takes the lenient path.
    #[serde(default)]
    error: Present,
}

/// Whether a member is there, whatever its value.
#[derive(Debug, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Self(true))
    }
}

/// One choice: `message` in a completion, `delta` in a chunk.
#[derive(Debug, Deserialize)]
pub(crate) struct Choice<'a> {
    #[serde(borrow, default)]
    pub message: Option<Obj<WireMessage<'a>>>,
    #[serde(borrow, default)]
    pub delta: Option<Obj<WireMessage<'a>>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireMessage<'a> {
    #[serde(borrow, default)]
    pub content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Vec<Obj<WireToolCall<'a>>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireToolCall<'a> {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(borrow, default)]
    pub id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub function: Option<Obj<WireFunction<'a>>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireFunction<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub arguments: Option<Cow<'a, str>>,
}

/// The `usage` object.
#[derive(Debug, Deserialize)]
pub(crate) struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Obj<PromptDetails>>,
    #[serde(default)]
    completion_tokens_details: Option<Obj<CompletionDetails>>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl Usage {
    pub(crate) fn reported(&self) -> ReportedUsage {
        ReportedUsage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cached_input_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|details| details.cached_tokens),
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|details| details.reasoning_tokens),
            estimated: false,
        }
    }
}

/// A struct read only from a JSON object: serde's derived structs also
/// read arrays (fields in order), which the lenient path reads as nothing.
#[derive(Debug)]
pub(crate) struct Obj<T>(T);

impl<T> Deref for Obj<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectOnly(PhantomData))
            .map(Obj)
    }
}

/// `text`, or "" when absent or null.
pub(crate) fn text<'b>(text: &'b Option<Cow<'_, str>>) -> &'b str {
    text.as_deref().unwrap_or("")
}

impl<'a> Answer<'a> {
    /// The answer in `body`, when it is a well-formed one without an error.
    pub(crate) fn parse(body: &'a [u8]) -> Option<Self> {
        serde_json::from_slice::<Obj<Answer<'a>>>(body)
            .ok()
            .map(|answer| answer.0)
            .filter(|answer| !answer.error.0)
    }

    /// The first choice (we ask for one).
    pub(crate) fn first_choice(&self) -> Option<&Choice<'a>> {
        self.choices
            .as_ref()
            .and_then(|choices| choices.first())
            .map(|choice| &**choice)
    }
}
