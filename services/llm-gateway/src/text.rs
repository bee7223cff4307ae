//! Cutting text to a length without splitting a UTF-8 character: the one
//! place the gateway shortens what it quotes (provider error messages, the
//! scripted provider's quote of a message) or records (ids in audit events).
//! Callers pass any text; nothing here can panic on a byte index.

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a
/// character boundary.
pub(crate) fn prefix_bytes(text: &str, max_bytes: usize) -> &str {
    text.get(..text.floor_char_boundary(max_bytes))
        .unwrap_or_default()
}

/// `text` cut after `max_chars` characters, with an ellipsis when it was cut.
pub(crate) fn ellipsize(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", prefix_bytes(text, cut)),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_on_a_character_boundary() {
        assert_eq!(prefix_bytes("run-1", 128), "run-1");
        assert_eq!(prefix_bytes("éé", 3), "é");
        assert_eq!(prefix_bytes("éé", 4), "éé");
        assert_eq!(prefix_bytes("é", 1), "");
        assert_eq!(prefix_bytes("", 0), "");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(ellipsize("short", 10), "short");
        assert_eq!(ellipsize("ééé", 3), "ééé");
        assert_eq!(ellipsize("éééé", 2), "éé…");
        assert_eq!(ellipsize("abc", 0), "…");
    }
}
