//! Cutting text to a size without splitting a character.
//!
//! Text quoted into messages, audit events and notifications is bounded
//! either in bytes (what storage and wire limits count) or in characters
//! (what a reader sees). The `*_within` functions borrow the longest part
//! that fits; the `truncate_*` functions mark a cut with [`ELLIPSIS`].

use std::borrow::Cow;

/// The mark of a cut.
pub const ELLIPSIS: &str = "…";

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

/// The longest suffix of `text` of at most `max` bytes that starts on a
/// character boundary.
pub fn suffix_within(text: &str, max: usize) -> &str {
    let Some(earliest) = text.len().checked_sub(max) else {
        return text;
    };
    let start = (earliest..=text.len())
        .find(|at| text.is_char_boundary(*at))
        .unwrap_or(text.len());
    text.get(start..).unwrap_or_default()
}

/// The first `max` characters of `text` (all of it when shorter).
pub fn prefix_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => text.get(..end).unwrap_or(text),
        None => text,
    }
}

/// `text` cut to at most `max` bytes, followed by [`ELLIPSIS`] when cut.
pub fn truncate_bytes(text: &str, max: usize) -> Cow<'_, str> {
    let kept = prefix_within(text, max);
    if kept.len() == text.len() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{kept}{ELLIPSIS}"))
    }
}

/// The last `max` bytes of `text`, preceded by [`ELLIPSIS`] when cut (the end
/// of a log or stderr is where errors are).
pub fn truncate_bytes_tail(text: &str, max: usize) -> Cow<'_, str> {
    let kept = suffix_within(text, max);
    if kept.len() == text.len() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{ELLIPSIS}{kept}"))
    }
}

/// `text` cut to `max` characters, followed by [`ELLIPSIS`] when cut.
pub fn truncate_chars(text: &str, max: usize) -> Cow<'_, str> {
    let kept = prefix_chars(text, max);
    if kept.len() == text.len() {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{kept}{ELLIPSIS}"))
    }
}

/// `text` in at most `max` characters counting the [`ELLIPSIS`] that
/// replaces the last kept one when cut (Alertmanager's `TruncateInRunes`).
pub fn truncate_chars_within(text: &str, max: usize) -> Cow<'_, str> {
    if text.chars().nth(max).is_none() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(format!(
        "{}{ELLIPSIS}",
        prefix_chars(text, max.saturating_sub(1))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_bounds_keep_characters_whole() {
        assert_eq!(prefix_within("hello", 10), "hello");
        assert_eq!(prefix_within("hello", 3), "hel");
        assert_eq!(prefix_within("héllo", 2), "h");
        assert_eq!(prefix_within("héllo", 3), "hé");
        assert_eq!(prefix_within("é", 0), "");
        assert_eq!(suffix_within("hello", 10), "hello");
        assert_eq!(suffix_within("hello", 2), "lo");
        assert_eq!(suffix_within("helló", 1), "");
        assert_eq!(suffix_within("helló", 2), "ó");
    }

    #[test]
    fn byte_truncation_marks_the_cut() {
        assert_eq!(truncate_bytes("hello", 10), "hello");
        assert!(matches!(truncate_bytes("hello", 5), Cow::Borrowed(_)));
        assert_eq!(truncate_bytes("hello", 3), "hel…");
        assert_eq!(truncate_bytes("héllo", 2), "h…");
        assert_eq!(truncate_bytes_tail("hello", 10), "hello");
        assert_eq!(truncate_bytes_tail("hello", 3), "…llo");
        assert_eq!(truncate_bytes_tail("hellé", 1), "…");
    }

    #[test]
    fn character_truncation_counts_characters() {
        assert_eq!(prefix_chars("ééé", 2), "éé");
        assert_eq!(truncate_chars("ééé", 3), "ééé");
        assert_eq!(truncate_chars("éééé", 3), "ééé…");
        assert_eq!(truncate_chars_within("abc", 3), "abc");
        assert_eq!(truncate_chars_within("abcd", 3), "ab…");
        assert_eq!(truncate_chars_within("ééééé", 4), "ééé…");
        assert_eq!(truncate_chars_within("abcd", 0), "…");
    }
}
