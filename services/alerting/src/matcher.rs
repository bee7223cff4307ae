//! Label matchers as in Alertmanager: `name="value"`, `name!="value"`,
//! `name=~"regex"`, `name!~"regex"`. Used by rule filters, routes,
//! inhibition rules, silences and the ListAlerts/WatchAlerts filters.
//!
//! Regular expressions are anchored at both ends, as Alertmanager's are: the
//! whole value must match. A missing label has the value "".

use std::fmt;

use agentmesh_proto::alerting::v1 as pb;
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::LabelSet;

/// How a [`Matcher`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn symbol(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }
}

/// A condition on one label.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    /// The label's name.
    pub(crate) name: String,
    /// The comparison.
    pub(crate) op: MatchOp,
    /// The value, or the regular expression's source.
    pub(crate) value: String,
    /// The anchored expression, for the regex comparisons.
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// Why a matcher could not be built; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct MatcherError(pub String);

impl Matcher {
    /// A matcher; fails on an empty name or an invalid regular expression.
    pub(crate) fn new(
        name: impl Into<String>,
        op: MatchOp,
        value: impl Into<String>,
    ) -> Result<Self, MatcherError> {
        let name = name.into();
        let value = value.into();
        if name.is_empty() {
            return Err(MatcherError("the label name is empty".into()));
        }
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                let invalid =
                    |err| MatcherError(format!("invalid regular expression {value:?}: {err}"));
                // The value must be a regex on its own: `a)|(b` or a
                // trailing `\` would otherwise break out of the anchors
                // around it and match values it does not name.
                Regex::new(&value).map_err(invalid)?;
                Some(Regex::new(&format!("^(?:{value})$")).map_err(invalid)?)
            }
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self {
            name,
            op,
            value,
            regex,
        })
    }

    /// An equality matcher.
    #[cfg(test)]
    pub(crate) fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::Equal,
            value: value.into(),
            regex: None,
        }
    }

    /// Parses Alertmanager's text form: `name="value"`, `name!="value"`,
    /// `name=~"re"`, `name!~"re"`; the quotes may be left out when the value
    /// has no spaces, quotes or commas.
    pub(crate) fn parse(text: &str) -> Result<Self, MatcherError> {
        let text = text.trim();
        let at = text
            .find(['=', '!'])
            .ok_or_else(|| MatcherError(format!("{text:?} has no operator (=, !=, =~ or !~)")))?;
        let name = text[..at].trim();
        let rest = &text[at..];
        let (op, value) = if let Some(value) = rest.strip_prefix("=~") {
            (MatchOp::Regex, value)
        } else if let Some(value) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, value)
        } else if let Some(value) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, value)
        } else if let Some(value) = rest.strip_prefix('=') {
            (MatchOp::Equal, value)
        } else {
            return Err(MatcherError(format!(
                "{text:?} has no operator (=, !=, =~ or !~)"
            )));
        };
        if !is_label_name(name) {
            return Err(MatcherError(format!(
                "{name:?} in {text:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_.]*)"
            )));
        }
        let value = value.trim();
        let value = if let Some(quoted) = value.strip_prefix('"') {
            let inner = quoted.strip_suffix('"').ok_or_else(|| {
                MatcherError(format!("{text:?}: the value's closing quote is missing"))
            })?;
            unescape(inner)
                .ok_or_else(|| MatcherError(format!("{text:?}: bad escape in the value")))?
        } else {
            value.to_owned()
        };
        Self::new(name, op, value)
    }

    /// From the API form; `field` names it in errors.
    pub(crate) fn from_proto(matcher: &pb::Matcher) -> Result<Self, MatcherError> {
        let op = match pb::MatchType::try_from(matcher.r#type) {
            Ok(pb::MatchType::Unspecified | pb::MatchType::Equal) => MatchOp::Equal,
            Ok(pb::MatchType::NotEqual) => MatchOp::NotEqual,
            Ok(pb::MatchType::Regex) => MatchOp::Regex,
            Ok(pb::MatchType::NotRegex) => MatchOp::NotRegex,
            Err(_) => {
                return Err(MatcherError(format!(
                    "unknown match type {}",
                    matcher.r#type
                )));
            }
        };
        Self::new(matcher.name.clone(), op, matcher.value.clone())
    }

    /// The API form.
    pub(crate) fn to_proto(&self) -> pb::Matcher {
        pb::Matcher {
            name: self.name.clone(),
            value: self.value.clone(),
            r#type: match self.op {
                MatchOp::Equal => pb::MatchType::Equal,
                MatchOp::NotEqual => pb::MatchType::NotEqual,
                MatchOp::Regex => pb::MatchType::Regex,
                MatchOp::NotRegex => pb::MatchType::NotRegex,
            } as i32,
        }
    }

    /// True when `value` (the label's value, "" when missing) matches.
    pub(crate) fn matches_value(&self, value: &str) -> bool {
        match (&self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(regex)) => regex.is_match(value),
            (MatchOp::NotRegex, Some(regex)) => !regex.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }

    /// True when the label set matches.
    pub(crate) fn matches(&self, labels: &LabelSet) -> bool {
        self.matches_value(labels.get(&self.name).map_or("", String::as_str))
    }
}

/// True when every matcher matches `labels`.
pub(crate) fn all_match(matchers: &[Matcher], labels: &LabelSet) -> bool {
    matchers.iter().all(|matcher| matcher.matches(labels))
}

impl fmt::Display for Matcher {
    /// The text form [`Matcher::parse`] reads back exactly: the value quoted
    /// with only the escapes `unescape` knows (`\\`, `\"`, `\n`), as
    /// matchers are stored in this form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}\"", self.name, self.op.symbol())?;
        for c in self.value.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                other => fmt::Write::write_char(f, other)?,
            }
        }
        f.write_str("\"")
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// True for a label name: `[a-zA-Z_][a-zA-Z0-9_]*`, plus dots so that rule
/// filters can name event fields such as `tool_call.tool`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// True for a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_prometheus_label_name(name: &str) -> bool {
    is_label_name(name) && !name.contains('.')
}

fn unescape(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            // As Alertmanager: \" \\ \n are escapes; any other backslash
            // stays, so a regex such as `a\.b` keeps its meaning.
            match chars.next()? {
                'n' => out.push('\n'),
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                other => {
                    out.push('\\');
                    out.push(other);
                }
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels;

    #[test]
    fn the_four_operators_parse_and_match() {
        let set = labels(&[("severity", "critical"), ("tool", "files")]);
        for (text, expected) in [
            (r#"severity="critical""#, true),
            (r#"severity!="critical""#, false),
            (r#"tool=~"fi.*""#, true),
            (r#"tool=~"fi""#, false), // anchored
            (r#"tool!~"fi""#, true),
            ("tool=files", true),
            (r#"missing="""#, true),
            (r#"missing!="""#, false),
        ] {
            let matcher = Matcher::parse(text).unwrap();
            assert_eq!(matcher.matches(&set), expected, "{text}");
            // The text form round-trips.
            assert_eq!(Matcher::parse(&matcher.to_string()).unwrap(), matcher);
        }
    }

    #[test]
    fn bad_matchers_say_what_is_wrong() {
        for (text, says) in [
            ("severity", "no operator"),
            (r#"tool=~"(""#, "invalid regular expression"),
            (r#"1x="a""#, "not a label name"),
            (r#"a="b"#, "closing quote"),
        ] {
            let err = Matcher::parse(text).unwrap_err();
            assert!(err.0.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn proto_round_trip() {
        let matcher = Matcher::parse(r#"tool!~"a|b""#).unwrap();
        assert_eq!(Matcher::from_proto(&matcher.to_proto()).unwrap(), matcher);
        let unset = pb::Matcher {
            name: "a".into(),
            value: "b".into(),
            r#type: 0,
        };
        assert_eq!(Matcher::from_proto(&unset).unwrap().op, MatchOp::Equal);
    }
}
