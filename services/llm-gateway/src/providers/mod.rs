//! Model providers behind one trait.
//!
//! A [`Provider`] takes a validated, provider-neutral [`ProviderCall`] and
//! answers either with one [`Completion`] ([`Provider::generate`]) or with a
//! stream of [`ProviderEvent`]s ending in `Finished`
//! ([`Provider::generate_stream`]). Each module translates to and from one
//! wire protocol:
//!
//! * [`openai`]: Chat Completions (OpenAI and compatible servers);
//! * [`anthropic`]: the Messages API;
//! * [`scripted`]: a deterministic stand-in driven by regex rules.
//!
//! [`http`] holds what the two HTTP providers share: the pooled client,
//! timeouts, error responses and SSE decoding. Retries and fallbacks wrap
//! this trait (the shared attempt loop, run by [`crate::unary`] and
//! [`crate::relay`]); the providers know nothing of them.

pub(crate) mod anthropic;
#[cfg(test)]
mod fuzz_tests;
pub(crate) mod http;
pub(crate) mod openai;
mod openai_answer;
mod openai_wire;
pub(crate) mod scripted;
mod sse_input;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use agentmesh_kit::ConfigError;
use agentmesh_proto::llm::v1::GenerateRequest;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::time::Instant;

use crate::completion::{Completion, ProviderEvent};
use crate::config::{ProviderConfig, ProviderKind};
use crate::error::ProviderError;

/// One call to a provider.
#[derive(Debug, Clone)]
pub(crate) struct ProviderCall {
    /// The provider's model name (the part after `instance/`).
    pub model: String,
    /// The validated request (its `model` field is the caller's, not used).
    pub request: Arc<GenerateRequest>,
    /// When the caller stops waiting, if it said.
    pub caller_deadline: Option<Instant>,
}

/// A stream of normalised events; the last item is `Finished` or an error.
pub(crate) type EventStream = BoxStream<'static, Result<ProviderEvent, ProviderError>>;

/// A model provider.
pub(crate) trait Provider: Send + Sync + fmt::Debug {
    /// One complete answer.
    fn generate(&self, call: ProviderCall)
    -> BoxFuture<'static, Result<Completion, ProviderError>>;

    /// The answer as it is produced. Errors before the first event (no
    /// connection, an HTTP error status) come as the stream's first item.
    fn generate_stream(&self, call: ProviderCall) -> EventStream;
}

/// A configured provider instance.
#[derive(Debug, Clone)]
pub(crate) struct ProviderInstance {
    /// Its configuration.
    pub config: ProviderConfig,
    /// The client.
    pub provider: Arc<dyn Provider>,
}

/// Builds every configured provider instance. Fails on a scripted rules file
/// that cannot be loaded (HTTP clients are built on first use, so a machine
/// without CA certificates still serves the scripted demo).
pub(crate) fn build_all(
    configs: &BTreeMap<String, ProviderConfig>,
) -> Result<BTreeMap<String, ProviderInstance>, ConfigError> {
    let mut instances = BTreeMap::new();
    for (name, config) in configs {
        let provider: Arc<dyn Provider> = match config.kind {
            ProviderKind::Openai => Arc::new(openai::OpenAi::new(name, config)),
            ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(name, config)),
            ProviderKind::Scripted => {
                Arc::new(scripted::Scripted::from_config(config).map_err(|err| {
                    ConfigError::new(format!("providers.{name}.rules_file"), err.to_string())
                })?)
            }
        };
        instances.insert(
            name.clone(),
            ProviderInstance {
                config: config.clone(),
                provider,
            },
        );
    }
    Ok(instances)
}
