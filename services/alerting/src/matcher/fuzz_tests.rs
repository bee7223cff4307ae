//! Fuzz targets of label matchers: arbitrary text parses or is refused
//! without panicking; a parsed matcher prints and parses back to itself (the
//! printed form is what silences and routes are stored as); the operators
//! are each other's complements; a regex matcher is anchored to the whole
//! value, whatever the value.

use agentmesh_proto::alerting::v1 as pb;
use agentmesh_testkit::fuzz::check;
use proptest::prelude::*;

use super::{MatchOp, Matcher};

fn op() -> impl Strategy<Value = MatchOp> {
    prop::sample::select(vec![
        MatchOp::Equal,
        MatchOp::NotEqual,
        MatchOp::Regex,
        MatchOp::NotRegex,
    ])
}

fn symbol(op: MatchOp) -> &'static str {
    match op {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    }
}

/// Values of every kind: plain, with quotes, backslashes, newlines, tabs
/// and other control characters, and regex syntax.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.-]{0,12}",
        ".{0,20}",
        "[\"\\\\\n\t\u{1}()|.*+?a]{0,12}",
    ]
}

#[test]
fn fuzz_matcher_arbitrary_text() {
    let text = prop_oneof![
        any::<String>(),
        ("[a-z_.]{0,8}", op(), value(), any::<bool>()).prop_map(|(name, op, value, quoted)| {
            if quoted {
                format!("{name}{}\"{value}\"", symbol(op))
            } else {
                format!("{name}{}{value}", symbol(op))
            }
        }),
    ];
    check("matcher_arbitrary_text", text, |text| {
        if let Ok(matcher) = Matcher::parse(&text) {
            let printed = matcher.to_string();
            prop_assert_eq!(
                Matcher::parse(&printed),
                Ok(matcher),
                "{:?} printed as {:?}",
                text,
                printed
            );
        }
        Ok(())
    });
}

#[test]
fn fuzz_matcher_round_trips() {
    check(
        "matcher_round_trips",
        ("[a-zA-Z_][a-zA-Z0-9_.]{0,10}", op(), value()),
        |(name, op, value)| {
            let Ok(matcher) = Matcher::new(name, op, value) else {
                // Only an invalid regular expression is refused.
                prop_assert!(matches!(op, MatchOp::Regex | MatchOp::NotRegex));
                return Ok(());
            };
            let printed = matcher.to_string();
            prop_assert_eq!(
                Matcher::parse(&printed),
                Ok(matcher.clone()),
                "printed as {:?}",
                printed
            );
            let json = serde_json::to_string(&matcher)
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            let back: Matcher = serde_json::from_str(&json)
                .map_err(|err| TestCaseError::fail(format!("{json}: {err}")))?;
            prop_assert_eq!(back, matcher.clone());
            prop_assert_eq!(Matcher::from_proto(&matcher.to_proto()), Ok(matcher));
            Ok(())
        },
    );
}

#[test]
fn fuzz_matcher_semantics() {
    check(
        "matcher_semantics",
        (value(), value()),
        |(pattern, candidate)| {
            let equal = Matcher::new("l", MatchOp::Equal, pattern.clone());
            let not_equal = Matcher::new("l", MatchOp::NotEqual, pattern.clone());
            let (Ok(equal), Ok(not_equal)) = (equal, not_equal) else {
                return Err(TestCaseError::fail("equality matchers are always valid"));
            };
            prop_assert_eq!(equal.matches_value(&candidate), candidate == pattern);
            prop_assert_eq!(not_equal.matches_value(&candidate), candidate != pattern);
            // The value as a literal regex matches exactly itself.
            let literal = Matcher::new("l", MatchOp::Regex, regex::escape(&pattern));
            prop_assert_eq!(
                literal.map(|m| m.matches_value(&candidate)),
                Ok(candidate == pattern)
            );
            if let (Ok(regex), Ok(not_regex)) = (
                Matcher::new("l", MatchOp::Regex, pattern.clone()),
                Matcher::new("l", MatchOp::NotRegex, pattern.clone()),
            ) {
                prop_assert_ne!(
                    regex.matches_value(&candidate),
                    not_regex.matches_value(&candidate)
                );
                // Anchored to the whole value: whatever matches is a match of the
                // pattern alone, from start to end.
                if regex.matches_value(&candidate) {
                    let alone = regex::Regex::new(&pattern).map_err(|err| {
                        TestCaseError::fail(format!(
                            "{pattern:?} was accepted but is no regex alone: {err}"
                        ))
                    })?;
                    prop_assert!(
                        alone.find_iter(&candidate).next().is_some() || candidate.is_empty()
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_matcher_from_proto() {
    check(
        "matcher_from_proto",
        (".{0,10}", value(), any::<i32>()),
        |(name, value, kind)| {
            let proto = pb::Matcher {
                name,
                value,
                r#type: kind,
            };
            match Matcher::from_proto(&proto) {
                Ok(matcher) => prop_assert!((0..=4).contains(&kind) && !matcher.name.is_empty()),
                Err(err) => prop_assert!(!err.0.is_empty()),
            }
            Ok(())
        },
    );
}
