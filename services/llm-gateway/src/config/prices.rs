//! Prices per million tokens, the built-in ones, how a call finds its price,
//! and the checks of configured prices (see the [`crate::config`] docs).

use std::collections::BTreeMap;

use agentmesh_kit::ConfigError;
use serde::{Deserialize, Serialize};

/// The built-in prices (US dollars per million tokens, list prices).
pub(super) fn default_prices() -> BTreeMap<String, Price> {
    [
        ("gpt-4o-mini", 0.15, 0.60),
        ("gpt-4o", 2.50, 10.00),
        ("claude-sonnet-4-5", 3.00, 15.00),
        ("claude-haiku-4-5", 1.00, 5.00),
    ]
    .into_iter()
    .map(|(model, input, output)| (model.to_owned(), Price::new(input, output)))
    .collect()
}

/// What a model's tokens cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// US dollars per million input (prompt) tokens.
    pub input_per_million_usd: f64,
    /// US dollars per million output (generated) tokens.
    pub output_per_million_usd: f64,
}

impl Price {
    /// A price per million input and output tokens.
    pub fn new(input_per_million_usd: f64, output_per_million_usd: f64) -> Self {
        Self {
            input_per_million_usd,
            output_per_million_usd,
        }
    }

    /// The cost in US dollars of a call with these token counts.
    pub fn cost_usd(&self, input_tokens: i32, output_tokens: i32) -> f64 {
        f64::from(input_tokens.max(0)) * self.input_per_million_usd / 1e6
            + f64::from(output_tokens.max(0)) * self.output_per_million_usd / 1e6
    }
}

/// The price of `model` on provider instance `instance`: by
/// `instance/model`, else by the bare model name.
pub(crate) fn price_of(
    prices: &BTreeMap<String, Price>,
    instance: &str,
    model: &str,
) -> Option<Price> {
    if model.is_empty() {
        return None;
    }
    prices
        .get(&format!("{instance}/{model}"))
        .or_else(|| prices.get(model))
        .copied()
}

pub(super) fn validate_price(key: &str, price: &Price) -> Result<(), ConfigError> {
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(ConfigError::new(
            format!("prices.{key}"),
            "a price is keyed by `provider/model` or by a model name, e.g. `openai/gpt-4o` or `gpt-4o`",
        ));
    }
    for (field, value) in [
        ("input_per_million_usd", price.input_per_million_usd),
        ("output_per_million_usd", price.output_per_million_usd),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(ConfigError::new(
                format!("prices.{key}.{field}"),
                format!(
                    "{value} is not a price: use a non-negative number of US dollars per million tokens"
                ),
            ));
        }
    }
    Ok(())
}
