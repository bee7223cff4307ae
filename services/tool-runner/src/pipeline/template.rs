//! JSON templates: the mapping between a pipeline's steps. A template is a
//! JSON value whose strings may hold `${<JSON pointer>}` placeholders,
//! parsed once at start and rendered against the pipeline's state for each
//! call.
//!
//! * A string that is exactly one placeholder becomes the value at the
//!   pointer, keeping its type (`"${/input/count}"` → `3`).
//! * Placeholders inside a longer string are replaced by text: a string as
//!   it is, anything else as compact JSON (`"n = ${/input/count}"` →
//!   `"n = 3"`). The text is inserted verbatim, so a tool that parses its
//!   argument (the calculator) sees whatever the input holds: constrain
//!   the input with the pipeline's schema.
//! * `$${` stands for a literal `${`. Object keys are never templates.
//!
//! Pointers are plain RFC 6901 JSON pointers, resolved with
//! `serde_json::Value::pointer`: there is no expression language, so
//! nothing in a template can compute, loop or call out.

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Template {
    /// A value without placeholders, used as it is.
    Fixed(Value),
    /// A string that is exactly one placeholder: the value at the pointer.
    Whole(String),
    /// A string with placeholders among text.
    Text(Vec<Piece>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// A part of a [`Template::Text`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Piece {
    Text(String),
    Pointer(String),
}

/// Where a template is wrong: the JSON pointer of the bad string inside it
/// (`""` for the template itself), and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TemplateError {
    pub(crate) at: String,
    pub(crate) message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "at {}: {}", self.at, self.message)
        }
    }
}

impl Template {
    /// Parses `value`, checking every placeholder's pointer syntax.
    pub(crate) fn parse(value: &Value) -> Result<Self, TemplateError> {
        let template = parse_at(value, "")?;
        Ok(template)
    }

    /// Every pointer the template reads, in order.
    pub(crate) fn pointers(&self) -> Vec<&str> {
        let mut found = Vec::new();
        self.collect_pointers(&mut found);
        found
    }

    fn collect_pointers<'a>(&'a self, found: &mut Vec<&'a str>) {
        match self {
            Self::Fixed(_) => {}
            Self::Whole(pointer) => found.push(pointer),
            Self::Text(pieces) => found.extend(pieces.iter().filter_map(|piece| match piece {
                Piece::Pointer(pointer) => Some(pointer.as_str()),
                Piece::Text(_) => None,
            })),
            Self::Array(items) => items.iter().for_each(|item| item.collect_pointers(found)),
            Self::Object(entries) => entries
                .iter()
                .for_each(|(_, item)| item.collect_pointers(found)),
        }
    }

    /// The value for `state`; `Err` names the first pointer that finds
    /// nothing there.
    pub(crate) fn render(&self, state: &Value) -> Result<Value, String> {
        let lookup = |pointer: &str| state.pointer(pointer).ok_or_else(|| pointer.to_owned());
        Ok(match self {
            Self::Fixed(value) => value.clone(),
            Self::Whole(pointer) => lookup(pointer)?.clone(),
            Self::Text(pieces) => {
                let mut text = String::new();
                for piece in pieces {
                    match piece {
                        Piece::Text(literal) => text.push_str(literal),
                        Piece::Pointer(pointer) => match lookup(pointer)? {
                            Value::String(inner) => text.push_str(inner),
                            other => text.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(text)
            }
            Self::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| item.render(state))
                    .collect::<Result<_, _>>()?,
            ),
            Self::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(key, item)| Ok((key.clone(), item.render(state)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }
}

fn parse_at(value: &Value, at: &str) -> Result<Template, TemplateError> {
    let template = match value {
        Value::String(text) => parse_text(text).map_err(|message| TemplateError {
            at: at.to_owned(),
            message,
        })?,
        Value::Array(items) => Template::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| parse_at(item, &format!("{at}/{index}")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(entries) => Template::Object(
            entries
                .iter()
                .map(|(key, item)| {
                    let at = format!("{at}/{}", escape_token(key));
                    Ok((key.clone(), parse_at(item, &at)?))
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => Template::Fixed(value.clone()),
    };
    // A subtree without placeholders is kept as one value: rendering it is
    // a clone, and `pointers` need not walk it.
    Ok(match template {
        Template::Array(items) if items.iter().all(is_fixed) => Template::Fixed(value.clone()),
        Template::Object(entries) if entries.iter().all(|(_, item)| is_fixed(item)) => {
            Template::Fixed(value.clone())
        }
        other => other,
    })
}

fn is_fixed(template: &Template) -> bool {
    matches!(template, Template::Fixed(_))
}

/// A string's pieces: literal text, `$${` as `${`, and `${pointer}`.
fn parse_text(text: &str) -> Result<Template, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('$') {
        literal.push_str(before);
        if let Some(escaped) = after.strip_prefix("${") {
            literal.push_str("${");
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some((pointer, tail)) = inner.split_once('}') else {
                return Err(format!(
                    "a placeholder is not closed: `${{{inner}` has no `}}` (write `$${{` for a literal `${{`)"
                ));
            };
            check_pointer(pointer)?;
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Pointer(pointer.to_owned()));
            rest = tail;
        } else {
            literal.push('$');
            rest = after;
        }
    }
    literal.push_str(rest);
    Ok(match pieces.as_slice() {
        [] => Template::Fixed(Value::String(literal)),
        [Piece::Pointer(pointer)] if literal.is_empty() => Template::Whole(pointer.clone()),
        _ => {
            if !literal.is_empty() {
                pieces.push(Piece::Text(literal));
            }
            Template::Text(pieces)
        }
    })
}

/// A JSON pointer as RFC 6901 writes it: empty (the whole document, which
/// a template may not take) or `/`-separated tokens with `~0` and `~1`.
pub(crate) fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.starts_with('/') {
        return Err(format!(
            "`{pointer}` is not a JSON pointer: start it with `/`, e.g. `/input/text` or `/steps/<id>/output`"
        ));
    }
    let mut chars = pointer.chars();
    while let Some(ch) = chars.next() {
        if ch == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "`{pointer}` is not a JSON pointer: `~` must be followed by 0 (for `~`) or 1 (for `/`)"
            ));
        }
    }
    Ok(())
}

/// The pointer's unescaped reference tokens (`/a~1b/c` → `a/b`, `c`).
pub(crate) fn tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn state() -> Value {
        json!({
            "input": {"a": 3, "name": "Ada", "list": [1, 2], "flag": true, "nothing": null},
            "steps": {"sum": {"output": {"result": 7.5}, "skipped": false}}
        })
    }

    fn render(template: Value) -> Result<Value, String> {
        Template::parse(&template).unwrap().render(&state())
    }

    #[test]
    fn a_whole_placeholder_keeps_the_type() {
        assert_eq!(render(json!("${/input/a}")).unwrap(), json!(3));
        assert_eq!(render(json!("${/input/list}")).unwrap(), json!([1, 2]));
        assert_eq!(render(json!("${/input/flag}")).unwrap(), json!(true));
        assert_eq!(render(json!("${/input/nothing}")).unwrap(), Value::Null);
        assert_eq!(
            render(json!("${/steps/sum/output}")).unwrap(),
            json!({"result": 7.5})
        );
    }

    #[test]
    fn embedded_placeholders_are_text() {
        assert_eq!(
            render(json!("${/input/a} ^ 2 + ${/steps/sum/output/result}")).unwrap(),
            json!("3 ^ 2 + 7.5")
        );
        assert_eq!(
            render(json!("hello ${/input/name}!")).unwrap(),
            json!("hello Ada!")
        );
        assert_eq!(
            render(json!("${/input/list}${/input/flag}")).unwrap(),
            json!("[1,2]true")
        );
    }

    #[test]
    fn nested_values_are_rendered_and_fixed_ones_kept() {
        let template = json!({
            "expression": "${/input/a} * 2",
            "options": {"precise": true, "items": ["${/input/name}", 1]},
            "fixed": {"k": [1, "two"]}
        });
        assert_eq!(
            render(template.clone()).unwrap(),
            json!({
                "expression": "3 * 2",
                "options": {"precise": true, "items": ["Ada", 1]},
                "fixed": {"k": [1, "two"]}
            })
        );
        let parsed = Template::parse(&template).unwrap();
        assert_eq!(parsed.pointers(), ["/input/a", "/input/name"]);
        let Template::Object(entries) = parsed else {
            panic!("an object template")
        };
        assert!(
            entries
                .iter()
                .any(|(key, item)| key == "fixed" && is_fixed(item))
        );
    }

    #[test]
    fn dollars_and_escapes() {
        assert_eq!(render(json!("costs $5")).unwrap(), json!("costs $5"));
        assert_eq!(render(json!("$${/input/a}")).unwrap(), json!("${/input/a}"));
        assert_eq!(render(json!("$$")).unwrap(), json!("$$"));
        // A `$`, then the escape.
        assert_eq!(
            render(json!("$$${/input/a}")).unwrap(),
            json!("$${/input/a}")
        );
        assert_eq!(render(json!("$ ${/input/a}")).unwrap(), json!("$ 3"));
        assert_eq!(
            Template::parse(&json!("€${/input/name}€"))
                .unwrap()
                .pointers(),
            ["/input/name"]
        );
    }

    #[test]
    fn missing_values_name_the_pointer() {
        assert_eq!(render(json!("${/input/b}")).unwrap_err(), "/input/b");
        assert_eq!(
            render(json!({"x": ["a ${/steps/other/output} b"]})).unwrap_err(),
            "/steps/other/output"
        );
    }

    #[test]
    fn bad_placeholders_are_refused_with_their_place() {
        let err = Template::parse(&json!({"a": {"b/c": "${input/a}"}})).unwrap_err();
        assert_eq!(err.at, "/a/b~1c");
        assert!(err.message.contains("start it with `/`"), "{err}");
        let err = Template::parse(&json!(["x", "${/input/a"])).unwrap_err();
        assert_eq!(err.at, "/1");
        assert!(err.message.contains("not closed"), "{err}");
        let err = Template::parse(&json!("${}")).unwrap_err();
        assert_eq!(err.at, "");
        let err = Template::parse(&json!("${/a~2}")).unwrap_err();
        assert!(err.to_string().contains("`~` must be followed"), "{err}");
    }

    #[test]
    fn pointer_tokens_are_unescaped() {
        assert_eq!(tokens("/steps/a~1b/c~0d"), ["steps", "a/b", "c~d"]);
        assert_eq!(tokens("/input"), ["input"]);
        assert_eq!(tokens("/"), [""]);
        check_pointer("/steps/x~0y~1z").unwrap();
    }
}
