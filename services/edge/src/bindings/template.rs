//! Path templates of `google.api.http` rules, as far as the contract uses
//! them: literal segments, `{field}` variables (one segment each) and a
//! trailing `:verb` — `/v1/runs/{run_id}:cancel`. Anything else in a rule
//! (`{name=**}`, nested field paths) is refused when the rules are read,
//! so a rule the edge cannot serve is an error at start, not a silent 404.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// The request field the segment sets.
    Variable(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
}

impl Template {
    /// Parses `text`, e.g. `/v1/runs/{run_id}:cancel`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let path = text
            .strip_prefix('/')
            .ok_or_else(|| format!("path template `{text}` does not start with `/`"))?;
        // The verb follows the last segment, after any variable's `}`.
        let tail_start = path.rfind('}').map_or(0, |at| at + 1);
        let (path, verb) = match path.get(tail_start..).and_then(|tail| tail.rfind(':')) {
            Some(colon) => {
                let at = tail_start + colon;
                (
                    path.get(..at).unwrap_or_default(),
                    Some(path.get(at + 1..).unwrap_or_default().to_owned()),
                )
            }
            None => (path, None),
        };
        let mut segments = Vec::new();
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(format!("path template `{text}` has an empty segment"));
            }
            match segment
                .strip_prefix('{')
                .and_then(|rest| rest.strip_suffix('}'))
            {
                Some(field) => {
                    if field.is_empty()
                        || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(format!(
                            "path template `{text}`: variable `{{{field}}}` is not a plain field name (the edge serves one segment per variable)"
                        ));
                    }
                    segments.push(Segment::Variable(field.to_owned()));
                }
                None if segment.contains(['{', '}', '*', '=']) => {
                    return Err(format!(
                        "path template `{text}`: segment `{segment}` is not supported"
                    ));
                }
                None => segments.push(Segment::Literal(segment.to_owned())),
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
            verb,
        })
    }

    /// The template as written (the route's label and OpenAPI path).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The variables' field names, in order.
    pub(crate) fn variables(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(field) => Some(field.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The variables' values if `path` matches, percent-decoded.
    pub(crate) fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let mut values = Vec::new();
        let mut parts = path.split('/');
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(field) => {
                    if part.is_empty() {
                        return None;
                    }
                    let value = percent_decode(part)?;
                    values.push((field.clone(), value));
                }
            }
        }
        parts.next().is_none().then_some(values)
    }
}

/// `%XX` sequences decoded (a value that is not UTF-8 after decoding does
/// not match).
fn percent_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let hex = part.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Template {
        match Template::parse(text) {
            Ok(template) => template,
            Err(err) => panic!("{err}"),
        }
    }

    #[test]
    fn variables_and_verbs_match() {
        let cancel = parsed("/v1/runs/{run_id}:cancel");
        assert_eq!(
            cancel.matches("/v1/runs/r-1:cancel"),
            Some(vec![("run_id".to_owned(), "r-1".to_owned())])
        );
        assert_eq!(cancel.matches("/v1/runs/r-1"), None);
        assert_eq!(cancel.matches("/v1/runs/:cancel"), None);
        let get = parsed("/v1/runs/{run_id}");
        assert_eq!(
            get.matches("/v1/runs/a%20b"),
            Some(vec![("run_id".to_owned(), "a b".to_owned())])
        );
        assert_eq!(get.matches("/v1/runs/a/b"), None);
        assert_eq!(get.matches("/v1/runs"), None);
        assert_eq!(parsed("/v1/runs").matches("/v1/runs"), Some(vec![]));
        assert_eq!(
            parsed("/v1/runs:stream").matches("/v1/runs:stream"),
            Some(vec![])
        );
        assert_eq!(parsed("/v1/runs:stream").matches("/v1/runs"), None);
    }

    #[test]
    fn unsupported_templates_are_refused() {
        assert!(Template::parse("v1/runs").is_err());
        assert!(Template::parse("/v1/{name=runs/*}").is_err());
        assert!(Template::parse("/v1//runs").is_err());
        assert!(Template::parse("/v1/runs/**").is_err());
    }

    #[test]
    fn bad_escapes_do_not_match() {
        let get = parsed("/v1/runs/{run_id}");
        assert_eq!(get.matches("/v1/runs/%zz"), None);
        assert_eq!(get.matches("/v1/runs/%ff"), None);
        assert_eq!(get.matches("/v1/runs/%4"), None);
    }
}
