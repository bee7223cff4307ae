//! The commit notification of PostgreSQL: what a replica's commit tells
//! the others, and how they read it.
//!
//! [`Store::append`](super::Store::append) sends `pg_notify(CHANNEL,
//! payload)` inside the transaction that stores a write; PostgreSQL delivers
//! it to every session listening on [`CHANNEL`] when the transaction
//! commits, and never when it rolls back. The payload is small text, the
//! commit's last sequence number and the writing process's id:
//!
//! ```text
//! 1234 0b7c6d0e2f0a4f5c9a1d3e5f7a9b1c3d
//! ```
//!
//! It is a hint, not data: a listener uses it only to skip its own commits
//! and the ones it has already woken its subscribers for, and reads the
//! log's real state from the store before it wakes them (anyone connected
//! to the database can send a notification on any channel).

/// The channel every replica of the audit service listens on.
pub(crate) const CHANNEL: &str = "agentmesh_audit";

/// The payload of a commit whose last sequence number is `last_seq`, written
/// by the process `origin`.
pub(crate) fn payload(last_seq: i64, origin: &str) -> String {
    format!("{last_seq} {origin}")
}

/// A commit notification as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Notice<'a> {
    /// The commit's last sequence number.
    pub last_seq: i64,
    /// The process that committed it.
    pub origin: &'a str,
}

impl<'a> Notice<'a> {
    /// Reads a payload; `None` when it is not one [`payload`] writes (sent
    /// by something else, or a future format).
    pub(crate) fn parse(payload: &'a str) -> Option<Self> {
        let (seq, origin) = payload.split_once(' ')?;
        let last_seq = seq.parse().ok().filter(|seq: &i64| *seq > 0)?;
        let valid = !origin.is_empty() && origin.bytes().all(|b| b.is_ascii_alphanumeric());
        valid.then_some(Self { last_seq, origin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_and_anything_else_is_refused() {
        let written = payload(42, "abc123");
        assert_eq!(
            Notice::parse(&written),
            Some(Notice {
                last_seq: 42,
                origin: "abc123"
            })
        );
        for other in [
            "",
            "42",
            "42 ",
            " abc",
            "x abc",
            "0 abc",
            "-1 abc",
            "42 a b",
            "42 a-b",
            "99999999999999999999 abc",
        ] {
            assert_eq!(Notice::parse(other), None, "{other:?}");
        }
    }
}
