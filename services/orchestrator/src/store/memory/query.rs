//! What a recall looks for, made safe: the caller's query is user (or
//! model) text, so it is never put into SQL, and never handed to a
//! full-text query parser as it is. It is cut into words ([`Terms`]: runs
//! of letters and digits, lowercased, at most [`MAX_TERMS`] distinct ones)
//! and each word is quoted into the backend's query syntax, any of them
//! matching:
//!
//! ```text
//! "Port of the *staging* DB?  NEAR(" ─▶ [port, of, the, staging, db, near]
//!   SQLite FTS5 MATCH      "port" OR "of" OR "the" OR "staging" OR "db" OR "near"
//!   PostgreSQL to_tsquery  'port' | 'of' | 'the' | 'staging' | 'db' | 'near'
//! ```
//!
//! Quotes, operators (`NEAR(`, `AND`, `-`, `*`, `:`, `^`), parentheses and
//! column filters are separators here, so they can neither fail a query
//! nor change what it means; the words are bound as parameters, never
//! spliced into SQL. A query without a word finds nothing.

/// Distinct words of a query that are searched for; the rest is ignored
/// (a longer query costs more and ranks no better).
pub(crate) const MAX_TERMS: usize = 32;

/// Longer "words" are no words (an encoded blob, a hash): skipped.
const MAX_TERM_CHARS: usize = 64;

/// The words of a query, lowercased, distinct, in their first order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Terms(Vec<String>);

impl Terms {
    /// The words of `query`: runs of letters and digits.
    pub(crate) fn of(query: &str) -> Self {
        let mut words: Vec<String> = Vec::new();
        for word in query.split(|c: char| !c.is_alphanumeric()) {
            if word.is_empty() || word.chars().count() > MAX_TERM_CHARS {
                continue;
            }
            let word = word.to_lowercase();
            if !words.contains(&word) {
                words.push(word);
                if words.len() == MAX_TERMS {
                    break;
                }
            }
        }
        Self(words)
    }

    /// Whether the query had no word (it then finds nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The words (what the tests look at).
    #[cfg(test)]
    pub(crate) fn words(&self) -> &[String] {
        &self.0
    }

    /// An FTS5 MATCH expression: each word a quoted string (a phrase, which
    /// FTS5 tokenizes like the indexed text, Porter stemming included), any
    /// of them matching.
    pub(crate) fn fts5_match(&self) -> String {
        self.0
            .iter()
            .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// A `to_tsquery` text: each word a quoted lexeme (normalised by the
    /// text search configuration, stop words dropped), any of them
    /// matching.
    pub(crate) fn tsquery(&self) -> String {
        self.0
            .iter()
            .map(|word| format!("'{}'", word.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// One recall's search: whose notes, which words, which notes are alive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Search<'a> {
    /// Only this tenant's notes.
    pub(crate) tenant: &'a str,
    /// Notes kept for every agent (`""`) and, unless empty, for this one.
    pub(crate) agent: &'a str,
    /// Any of these words.
    pub(crate) terms: &'a Terms,
    /// Notes that have not expired by then (microseconds).
    pub(crate) alive_at: i64,
    /// Notes created at or after this (microseconds): the retention's
    /// `max_age`, so an aged note is never recalled while it waits to be
    /// pruned.
    pub(crate) created_since: i64,
    /// At most this many, best first.
    pub(crate) limit: usize,
}
