//! The text forms Alertmanager keys its state by: label sets
//! (`{alertname="ToolFailing", tool="files"}`) in group keys, matcher lists
//! (`{severity="critical"}`) in route keys. Notification log entries are
//! keyed by them, so they must not change between versions.

use std::fmt::Write as _;

use crate::matcher::{MatchOp, Matcher};
use crate::model::LabelSet;

/// A label set in Alertmanager's text form (Prometheus `LabelSet.String`):
/// `{alertname="ToolFailing", tool="files"}`, sorted by name, values quoted
/// as Go's `%q` does. The output depends only on the labels, so group keys
/// stay the same across restarts and versions.
pub(crate) fn label_set_string(labels: &LabelSet) -> String {
    let mut out = String::from("{");
    for (index, (name, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push('=');
        go_quote(value, &mut out);
    }
    out.push('}');
    out
}

/// Go's `strconv.Quote` for what label values hold: the usual backslash
/// escapes, `\xHH` for other ASCII controls, `\uHHHH`/`\UHHHHHHHH` for other
/// control and non-space whitespace characters; everything else as is.
/// Written out rather than using Rust's `{:?}`, whose escaping is not
/// promised to stay the same between Rust versions.
fn go_quote(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let code = u32::from(c);
                if code < 0x10000 {
                    let _ = write!(out, "\\u{code:04x}");
                } else {
                    let _ = write!(out, "\\U{code:08x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Alertmanager's `Matchers.String`: `{a="b",c=~"d"}`, values escaped as
/// OpenMetrics does (backslash, newline, double quote).
pub(super) fn matchers_string(matchers: &[Matcher]) -> String {
    let mut out = String::from("{");
    for (index, matcher) in matchers.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&matcher.name);
        out.push_str(match matcher.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        });
        out.push('"');
        for c in matcher.value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '"' => out.push_str("\\\""),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The order of Alertmanager's match types, used to sort matchers.
pub(super) fn op_rank(op: MatchOp) -> u8 {
    match op {
        MatchOp::Equal => 0,
        MatchOp::NotEqual => 1,
        MatchOp::Regex => 2,
        MatchOp::NotRegex => 3,
    }
}
