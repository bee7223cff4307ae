//! Label matchers in Alertmanager's text form (`alertname="ToolFailing"`,
//! `tool=~"fi.*"`, `severity!=info`, `x!~"a|b"`): parsed from the
//! arguments of `alerts list|watch` and `silences add` into the protobuf
//! `Matcher` the service checks (it compiles the regular expressions), and
//! printed back in the same form.

use agentmesh_proto::alerting::v1 as pb;

/// True for a Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses one matcher in Alertmanager's text form: a label name, an
/// operator (`=`, `!=`, `=~`, `!~`) and a value, optionally in double
/// quotes. Spaces around the operator and the value are ignored. In the
/// value, `\"` is a quote, `\\` a backslash and `\n` a newline; any other
/// backslash is kept as is, as Alertmanager does, so that regular
/// expressions such as `"a\.b"` mean what they say.
pub(crate) fn parse_matcher(text: &str) -> Result<pb::Matcher, String> {
    let trimmed = text.trim();
    let no_operator = || {
        format!(
            "`{trimmed}` is not a matcher: use NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX"
        )
    };
    let at = trimmed.find(['=', '!']).ok_or_else(no_operator)?;
    let name = trimmed[..at].trim_end();
    let rest = &trimmed[at..];
    let (match_type, value) = if let Some(value) = rest.strip_prefix("=~") {
        (pb::MatchType::Regex, value)
    } else if let Some(value) = rest.strip_prefix("!~") {
        (pb::MatchType::NotRegex, value)
    } else if let Some(value) = rest.strip_prefix("!=") {
        (pb::MatchType::NotEqual, value)
    } else if let Some(value) = rest.strip_prefix('=') {
        (pb::MatchType::Equal, value)
    } else {
        return Err(no_operator());
    };
    if !is_label_name(name) {
        return Err(format!(
            "`{trimmed}`: {name:?} is not a label name (letters, digits and _, not starting with a digit)"
        ));
    }
    let value = parse_value(value.trim_start()).map_err(|why| format!("`{trimmed}`: {why}"))?;
    Ok(pb::Matcher {
        name: name.to_owned(),
        value,
        r#type: match_type.into(),
    })
}

/// A matcher's value after the operator: quoted or bare, unescaped.
fn parse_value(raw: &str) -> Result<String, String> {
    let (body, quoted) = match raw.strip_prefix('"') {
        Some(body) => (body, true),
        None => (raw, false),
    };
    let mut value = String::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            '"' if quoted => {
                // The closing quote: only spaces may follow it.
                if !body[index + 1..].trim().is_empty() {
                    return Err(
                        "text follows the value's closing quote (escape a quote inside the value as \\\")"
                            .to_owned(),
                    );
                }
                return Ok(value);
            }
            '"' => {
                return Err(
                    "a quote inside the value must be escaped as \\\", or the value quoted"
                        .to_owned(),
                );
            }
            other => value.push(other),
        }
    }
    if quoted {
        return Err("the value's closing quote is missing".to_owned());
    }
    Ok(value.trim_end().to_owned())
}

/// The matchers given as arguments. As with `amtool`, a first argument
/// without an operator is the alert's name: `ToolFailing` means
/// `alertname="ToolFailing"`.
pub(crate) fn parse_matchers(texts: &[String]) -> Result<Vec<pb::Matcher>, String> {
    texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let bare = text.trim();
            if index == 0 && !bare.is_empty() && !bare.contains(['=', '!', '~', '"', ' ']) {
                Ok(pb::Matcher {
                    name: "alertname".to_owned(),
                    value: bare.to_owned(),
                    r#type: pb::MatchType::Equal.into(),
                })
            } else {
                parse_matcher(text)
            }
        })
        .collect()
}

/// A value as Alertmanager writes it between quotes.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A matcher in its text form, value quoted: `tool=~"fi.*"`.
pub(crate) fn matcher_text(matcher: &pb::Matcher) -> String {
    let operator = match pb::MatchType::try_from(matcher.r#type) {
        Ok(pb::MatchType::NotEqual) => "!=",
        Ok(pb::MatchType::Regex) => "=~",
        Ok(pb::MatchType::NotRegex) => "!~",
        Ok(pb::MatchType::Equal | pb::MatchType::Unspecified) | Err(_) => "=",
    };
    format!("{}{operator}\"{}\"", matcher.name, escape(&matcher.value))
}

#[cfg(test)]
mod tests {
    use super::super::fake::matcher;
    use super::*;

    #[test]
    fn the_four_operators() {
        use pb::MatchType::{Equal, NotEqual, NotRegex, Regex};
        for (text, expected) in [
            (
                r#"alertname="ToolFailing""#,
                matcher("alertname", Equal, "ToolFailing"),
            ),
            (r#"tool=~"fi.*""#, matcher("tool", Regex, "fi.*")),
            ("severity!=info", matcher("severity", NotEqual, "info")),
            (r#"x!~"a|b""#, matcher("x", NotRegex, "a|b")),
            ("x!~a|b", matcher("x", NotRegex, "a|b")),
            ("tool=files", matcher("tool", Equal, "files")),
            ("_x1=~.+", matcher("_x1", Regex, ".+")),
        ] {
            assert_eq!(parse_matcher(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn spaces_quotes_and_escapes() {
        use pb::MatchType::{Equal, NotEqual, Regex};
        for (text, expected) in [
            (r#"  tool = "files"  "#, matcher("tool", Equal, "files")),
            ("tool =  files ", matcher("tool", Equal, "files")),
            (
                r#"summary="a \"b\" c""#,
                matcher("summary", Equal, r#"a "b" c"#),
            ),
            (r#"x="back\\slash""#, matcher("x", Equal, r"back\slash")),
            (r#"x="two\nlines""#, matcher("x", Equal, "two\nlines")),
            // Other escapes stay, so that regular expressions work.
            (r#"host=~"a\.b""#, matcher("host", Regex, r"a\.b")),
            (r#"x="a=b,c!=d""#, matcher("x", Equal, "a=b,c!=d")),
            (r#"x="with spaces""#, matcher("x", Equal, "with spaces")),
            ("x=", matcher("x", Equal, "")),
            (r#"x!="""#, matcher("x", NotEqual, "")),
            (r#"x="ends\\""#, matcher("x", Equal, r"ends\")),
        ] {
            assert_eq!(parse_matcher(text), Ok(expected), "{text}");
        }
        // A trailing backslash in a bare value is kept.
        assert_eq!(parse_matcher(r"x=a\"), Ok(matcher("x", Equal, r"a\")));
    }

    #[test]
    fn malformed_matchers_say_what_is_wrong() {
        for (text, expected) in [
            ("tool", "is not a matcher"),
            ("", "is not a matcher"),
            ("tool~files", "is not a matcher"),
            ("tool!files", "is not a matcher"),
            ("=files", "is not a label name"),
            ("1tool=files", "is not a label name"),
            ("to-ol=files", "is not a label name"),
            ("tool.name=x", "is not a label name"),
            (r#"tool="files"#, "closing quote is missing"),
            (r#"tool="fi"les"#, "follows the value's closing quote"),
            (r#"tool=fi"les"#, "must be escaped"),
            (r#"tool="a\""#, "closing quote is missing"),
        ] {
            let err = parse_matcher(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(
            parse_matcher("tool")
                .unwrap_err()
                .contains("NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX")
        );
    }

    #[test]
    fn a_first_bare_word_is_the_alert_name() {
        let texts = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            parse_matchers(&texts(&["ToolFailing", "tool=files"])),
            Ok(vec![
                matcher("alertname", pb::MatchType::Equal, "ToolFailing"),
                matcher("tool", pb::MatchType::Equal, "files"),
            ])
        );
        // Only the first: later ones must be matchers.
        assert!(parse_matchers(&texts(&["tool=files", "ToolFailing"])).is_err());
        // A typo of an operator is an error, not a name.
        assert!(parse_matchers(&texts(&["tool~files"])).is_err());
        assert_eq!(parse_matchers(&[]), Ok(Vec::new()));
    }

    #[test]
    fn matchers_print_as_they_parse() {
        for text in [
            r#"alertname="ToolFailing""#,
            r#"tool=~"fi.*""#,
            r#"severity!="info""#,
            r#"x!~"a|b""#,
            r#"x="a \"quoted\" back\\slash""#,
            r#"x="two\nlines""#,
        ] {
            let parsed = parse_matcher(text).unwrap();
            assert_eq!(matcher_text(&parsed), text);
            assert_eq!(parse_matcher(&matcher_text(&parsed)), Ok(parsed));
        }
        assert_eq!(
            matcher_text(&matcher("x", pb::MatchType::Unspecified, "y")),
            r#"x="y""#
        );
    }
}
