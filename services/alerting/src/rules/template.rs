//! The small template language of rule labels and annotations:
//! `"tool {{tool}} failed {{count}} times in {{window}}"`.
//!
//! A template is text with `{{name}}` placeholders (spaces inside the braces
//! are ignored). Prometheus's spellings `{{ $value }}` and
//! `{{ $labels.tool }}` are accepted too, so rules copied from Prometheus
//! read naturally. [`Template::parse`] runs when the rule is compiled and
//! asks the caller to resolve every name into a [`Var`] — an unknown name or
//! an unclosed `{{` is a configuration error then, never a surprise in a
//! notification. [`Template::render`] runs when the evaluator builds an
//! alert, and asks the caller for each variable's text. There is no escaping
//! and no logic: a `}}` without an opening `{{` is plain text.

use std::fmt;

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Var {
    /// `{{count}}`: matching events in the window.
    Count,
    /// `{{ratio}}`: the failed share of them, two decimals ("0.62").
    Ratio,
    /// `{{window}}`: the window (or the absence duration), e.g. "5m".
    Window,
    /// `{{value}}` / `{{$value}}`: the condition's value (count, ratio, or
    /// seconds since the last event).
    Value,
    /// `{{threshold}}`: the condition's threshold.
    Threshold,
    /// `{{alertname}}`: the rule's name.
    AlertName,
    /// `{{severity}}`: the rule's severity.
    Severity,
    /// A group label (`group_by`), by label name.
    Label(String),
    /// A field of the group's latest matching event, by field name.
    Field(String),
}

/// The variables every template may use besides labels and fields.
pub(crate) const SPECIALS: &[(&str, Var)] = &[
    ("count", Var::Count),
    ("ratio", Var::Ratio),
    ("window", Var::Window),
    ("value", Var::Value),
    ("threshold", Var::Threshold),
    ("alertname", Var::AlertName),
    ("severity", Var::Severity),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    source: String,
    parts: Vec<Part>,
}

/// How a placeholder's name is read before it is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name<'a> {
    /// `{{name}}` (also `{{$value}}` as `Plain("value")`).
    Plain(&'a str),
    /// `{{$labels.name}}`.
    Label(&'a str),
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(name) => write!(f, "{{{{{name}}}}}"),
            Self::Label(name) => write!(f, "{{{{$labels.{name}}}}}"),
        }
    }
}

impl Template {
    /// Parses `source`; `resolve` says what each name stands for, or why it
    /// stands for nothing.
    pub(crate) fn parse(
        source: &str,
        resolve: impl Fn(Name<'_>) -> Result<Var, String>,
    ) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                let at = source.len() - rest.len() + open;
                format!("the {{{{ at character {at} is not closed with }}}} in {source:?}")
            })?;
            let inner = after[..close].trim();
            let name = if inner == "$value" {
                Name::Plain("value")
            } else if let Some(label) = inner.strip_prefix("$labels.") {
                Name::Label(label)
            } else {
                Name::Plain(inner)
            };
            if inner.is_empty() {
                return Err(format!(
                    "an empty {{{{}}}} in {source:?}: put a name between the braces"
                ));
            }
            parts.push(Part::Var(resolve(name)?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The text as configured.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// The variables used.
    pub(crate) fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|part| match part {
            Part::Var(var) => Some(var),
            Part::Text(_) => None,
        })
    }

    /// The text with every variable replaced by what `value` writes for it.
    pub(crate) fn render(&self, value: impl Fn(&Var, &mut String)) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var(var) => value(var, &mut out),
            }
        }
        out
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(name: Name<'_>) -> Result<Var, String> {
        match name {
            Name::Plain(plain) => SPECIALS
                .iter()
                .find(|(special, _)| *special == plain)
                .map(|(_, var)| var.clone())
                .or_else(|| (plain == "tool").then(|| Var::Label("tool".into())))
                .or_else(|| (plain == "reason").then(|| Var::Field("reason".into())))
                .ok_or_else(|| format!("unknown variable {name}")),
            Name::Label(label) if label == "tool" => Ok(Var::Label(label.into())),
            Name::Label(_) => Err(format!("unknown label {name}")),
        }
    }

    fn render(template: &Template) -> String {
        template.render(|var, out| match var {
            Var::Count => out.push('5'),
            Var::Value => out.push('5'),
            Var::Window => out.push_str("1m"),
            Var::Label(name) => out.push_str(&format!("<{name}>")),
            Var::Field(name) => out.push_str(&format!("[{name}]")),
            _ => out.push('?'),
        })
    }

    #[test]
    fn placeholders_are_replaced() {
        let template = Template::parse(
            "tool {{tool}} failed {{ count }} times in {{window}}: {{reason}}",
            resolve,
        )
        .unwrap();
        assert_eq!(
            render(&template),
            "tool <tool> failed 5 times in 1m: [reason]"
        );
        assert_eq!(template.vars().count(), 4);
        assert_eq!(
            template.source(),
            "tool {{tool}} failed {{ count }} times in {{window}}: {{reason}}"
        );
    }

    #[test]
    fn prometheus_spellings_work() {
        let template = Template::parse("{{ $labels.tool }} at {{ $value }}", resolve).unwrap();
        assert_eq!(render(&template), "<tool> at 5");
    }

    #[test]
    fn plain_text_and_stray_braces_stay() {
        for text in ["", "no placeholders", "a }} b", "{ single }"] {
            let template = Template::parse(text, resolve).unwrap();
            assert_eq!(render(&template), text);
            assert_eq!(template.vars().count(), 0);
        }
        let template = Template::parse("{{count}}{{count}}", resolve).unwrap();
        assert_eq!(render(&template), "55");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (text, says) in [
            ("tool {{tool", "not closed"),
            ("{{count}} and {{", "character 14 is not closed"),
            ("{{ }}", "empty"),
            ("{{nope}}", "unknown variable {{nope}}"),
            ("{{$labels.nope}}", "unknown label {{$labels.nope}}"),
        ] {
            let err = Template::parse(text, resolve).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn multibyte_text_is_kept() {
        let template = Template::parse("outil « {{tool}} » ✗", resolve).unwrap();
        assert_eq!(render(&template), "outil « <tool> » ✗");
    }
}
