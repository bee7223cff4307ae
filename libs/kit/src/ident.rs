//! The identifier rule of the contract: names of agents, tools, schemas and
//! tool calls are 1 to 64 characters of `[A-Za-z0-9_-]`, so they fit in
//! metric labels, URLs and provider APIs unchanged.
//!
//! A request field that breaks it is a field violation
//! ([`identifier_violation`], for [`crate::status::invalid_argument`]); a
//! setting that breaks it is a [`ConfigError`] ([`check_identifier_setting`]);
//! both say the rule in the same words ([`IDENTIFIER_RULE`]).

use crate::config_error::ConfigError;

/// The longest identifier, in characters (all ASCII, so also bytes).
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// The rule, as a violation's description says it.
pub const IDENTIFIER_RULE: &str = "must be 1-64 characters of letters, digits, `_` and `-`";

/// Whether `name` is 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn is_identifier(name: &str) -> bool {
    (1..=MAX_IDENTIFIER_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-'))
}

/// A field violation `(field, rule)` when `name` is not an identifier.
pub fn identifier_violation(field: impl Into<String>, name: &str) -> Option<(String, String)> {
    (!is_identifier(name)).then(|| (field.into(), IDENTIFIER_RULE.to_owned()))
}

/// A [`ConfigError`] naming `setting` when `name` is not an identifier.
pub fn check_identifier_setting(setting: impl Into<String>, name: &str) -> Result<(), ConfigError> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(ConfigError::new(
            setting,
            format!("`{name}` {IDENTIFIER_RULE}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["a", "get_weather", "A-1", &"x".repeat(64)] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "a b", "é", "a.b", "a/b", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn violations_name_the_field_and_the_rule() {
        assert_eq!(identifier_violation("tools[0].name", "ok"), None);
        let (field, rule) = identifier_violation("tools[0].name", "not ok").unwrap();
        assert_eq!(field, "tools[0].name");
        assert_eq!(rule, IDENTIFIER_RULE);
        let err = check_identifier_setting("agents.x y", "x y").unwrap_err();
        assert_eq!(err.setting, "agents.x y");
        assert!(err.message.contains("1-64 characters"), "{err}");
        assert!(check_identifier_setting("agents.ok", "ok").is_ok());
    }
}
