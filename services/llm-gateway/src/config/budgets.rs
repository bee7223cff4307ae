//! Token and cost budgets per tenant and per API key over a UTC calendar
//! day or month: the settings only; [`crate::budget`] enforces them.

use serde::{Deserialize, Serialize};

use agentmesh_kit::ConfigError;

/// Longest budget `name` (a tenant name or an API key id).
const MAX_NAME_BYTES: usize = 128;

/// Whose spend a budget caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// A tenant: every call of the tenant, whichever credential made it.
    Tenant,
    /// An API key: every call made with the credential of that id (the
    /// identity's `credential_id`, e.g. the key's id, never its secret).
    Key,
}

impl BudgetScope {
    /// `tenant` or `key`: the name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::Key => "key",
        }
    }
}

/// The calendar period a budget resets on, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// From 00:00 UTC to the next 00:00 UTC.
    Day,
    /// From the 1st of the month, 00:00 UTC, to the 1st of the next.
    Month,
}

impl BudgetPeriod {
    /// `day` or `month`: the name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// One budget: at most `max_tokens` tokens (input + output) and/or
/// `max_cost_usd` estimated dollars per `period` for `name` in `scope`.
///
/// ```toml
/// [[llm_gateway.budgets]]
/// scope = "tenant"          # or "key"
/// name = "acme"             # the tenant, or the API key's id; "*" = each one on its own
/// period = "day"            # or "month" (UTC calendar periods)
/// max_tokens = 2000000
/// max_cost_usd = 25.0
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Whose spend it caps.
    pub scope: BudgetScope,
    /// The tenant or API key id it applies to; `*` applies it to every
    /// tenant (or key), each with its own spend.
    pub name: String,
    /// The period it resets on.
    pub period: BudgetPeriod,
    /// Most tokens (input + output) per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most estimated cost per period, in US dollars (calls to models
    /// without a price add no cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

impl BudgetConfig {
    /// Whether it applies to `subject` (a tenant or key id).
    pub(crate) fn applies_to(&self, subject: &str) -> bool {
        self.name == "*" || self.name == subject
    }
}

/// Checks every budget; the setting named is `budgets[i].<field>`.
pub(crate) fn validate_budgets(budgets: &[BudgetConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (index, budget) in budgets.iter().enumerate() {
        let setting = |field: &str| format!("budgets[{index}].{field}");
        if budget.name.is_empty()
            || budget.name.len() > MAX_NAME_BYTES
            || budget.name.chars().any(char::is_control)
        {
            return Err(ConfigError::new(
                setting("name"),
                format!(
                    "must be 1-{MAX_NAME_BYTES} bytes without control characters: a tenant, an API key id, or `*`"
                ),
            ));
        }
        if budget.max_tokens.is_none() && budget.max_cost_usd.is_none() {
            return Err(ConfigError::new(
                setting("max_tokens"),
                "set max_tokens, max_cost_usd or both",
            ));
        }
        if let Some(cost) = budget.max_cost_usd
            && !(cost.is_finite() && cost >= 0.0)
        {
            return Err(ConfigError::new(
                setting("max_cost_usd"),
                "must be a finite number of dollars, 0 or more",
            ));
        }
        if !seen.insert((budget.scope, budget.name.as_str(), budget.period)) {
            return Err(ConfigError::new(
                setting("name"),
                format!(
                    "another {} budget per {} for `{}` is configured; put both limits in one entry",
                    budget.scope.as_str(),
                    budget.period.as_str(),
                    budget.name
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(name: &str) -> BudgetConfig {
        BudgetConfig {
            scope: BudgetScope::Tenant,
            name: name.into(),
            period: BudgetPeriod::Day,
            max_tokens: Some(10),
            max_cost_usd: None,
        }
    }

    #[test]
    fn budgets_are_read_and_checked() {
        let text = r#"
            [[budgets]]
            scope = "key"
            name = "ak_123"
            period = "month"
            max_cost_usd = 5.5
        "#;
        #[derive(Deserialize)]
        struct File {
            budgets: Vec<BudgetConfig>,
        }
        let file: File = toml::from_str(text).unwrap();
        validate_budgets(&file.budgets).unwrap();
        assert_eq!(file.budgets[0].scope, BudgetScope::Key);
        assert_eq!(file.budgets[0].period, BudgetPeriod::Month);

        let err = validate_budgets(&[budget("")]).unwrap_err();
        assert_eq!(err.setting, "budgets[0].name");
        let none = BudgetConfig {
            max_tokens: None,
            ..budget("acme")
        };
        assert_eq!(
            validate_budgets(&[none]).unwrap_err().setting,
            "budgets[0].max_tokens"
        );
        let nan = BudgetConfig {
            max_cost_usd: Some(f64::NAN),
            ..budget("acme")
        };
        assert_eq!(
            validate_budgets(&[nan]).unwrap_err().setting,
            "budgets[0].max_cost_usd"
        );
        let err = validate_budgets(&[budget("acme"), budget("acme")]).unwrap_err();
        assert_eq!(err.setting, "budgets[1].name");
        assert!(budget("*").applies_to("anyone"));
        assert!(!budget("acme").applies_to("other"));
    }
}
