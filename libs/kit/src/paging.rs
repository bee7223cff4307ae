//! Page tokens and page sizes for the List RPCs of every service.
//!
//! A List RPC answers at most `page_size` items and a `next_page_token` that
//! the client passes back unchanged to get the next page. The token says
//! where the previous page ended (a *position*: a name, `(time_us, seq)`,
//! `(create_time, run_id)`, an offset — whatever the service orders by), and
//! it is only valid with the same filters it was made for.
//!
//! # Data flow
//!
//! 1. The handler hashes the request's non-paging fields into a
//!    [`FilterHash`] ([`FilterHash::of_message`] on the request with
//!    `page_size` and `page_token` cleared, or a [`FilterHasher`] fed the
//!    fields one by one when the request has map fields, whose encoding order
//!    is not stable).
//! 2. [`Page::from_request`] clamps the page size ([`PageLimits`]) and decodes
//!    the token into the position to resume after; a token that is not ours,
//!    or was made for other filters, is INVALID_ARGUMENT on `page_token`.
//! 3. The handler fetches [`Page::fetch_size`] items (one more than the page)
//!    after that position, and [`Page::finish`] cuts the extra item off and
//!    makes the next token from the last item's position ("" on the last
//!    page).
//!
//! # The token
//!
//! `hex(version byte ‖ first 16 bytes of SHA-256(filter) ‖ JSON(position))`.
//! It is opaque to clients; the version byte lets the format change (a token
//! of another version is refused, and the client starts again). SHA-256 of
//! the filter's bytes is the same in every build and replica, so a token
//! made by one replica is good on another and after a restart (std's
//! `DefaultHasher` is neither).

use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tonic::Status;

use crate::status::invalid_argument;

/// The version byte of the tokens made now.
pub const TOKEN_VERSION: u8 = 1;

/// How many bytes of the filter's SHA-256 a token carries: enough that
/// another filter's token is never taken for this one by chance.
const FILTER_HASH_BYTES: usize = 16;

/// The longest token accepted, in characters: a bound on the work a
/// malformed token can cause.
const MAX_TOKEN_CHARS: usize = 8192;

/// A field violation: `(field, description)`, as
/// [`crate::status::invalid_argument`] takes them.
pub type Violation = (String, String);

/// What the `page_token` violation says, for every service alike.
const BAD_TOKEN: &str = "is not a next_page_token of this request: the filters and order must stay the same between pages (start again with an empty page_token)";

// === impl PageLimits ===

/// A List RPC's default and largest page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// The page size when the request asks for 0 (none).
    pub default: usize,
    /// The largest page; larger requests get this many.
    pub max: usize,
}

impl PageLimits {
    /// Limits with these sizes.
    pub const fn new(default: usize, max: usize) -> Self {
        Self { default, max }
    }

    /// The page size for a request's `page_size`: 0 is the default, above
    /// the largest is the largest, negative is a violation on `page_size`.
    pub fn size(&self, requested: i32) -> Result<usize, Violation> {
        match usize::try_from(requested) {
            Ok(0) => Ok(self.default),
            Ok(size) => Ok(size.min(self.max)),
            Err(_) => Err((
                "page_size".to_owned(),
                format!("must not be negative (0 = the default of {})", self.default),
            )),
        }
    }
}

// === impl FilterHash ===

/// A stable hash of a request's non-paging fields, which binds a page token
/// to the request it was made for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FilterHash([u8; FILTER_HASH_BYTES]);

impl FilterHash {
    /// The hash of a message's encoding: pass the request with `page_size`
    /// and `page_token` cleared. Only for messages without map fields (prost
    /// encodes a map in its hash order, which differs between processes); for
    /// those, feed a [`FilterHasher`] the entries in a fixed order.
    pub fn of_message(message: &impl Message) -> Self {
        Self::hasher().field(message.encode_to_vec()).finish()
    }

    /// A hasher to feed the filter's fields one by one.
    pub fn hasher() -> FilterHasher {
        FilterHasher(Sha256::new())
    }
}

impl std::fmt::Debug for FilterHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilterHash({})", hex::encode(self.0))
    }
}

/// Builds a [`FilterHash`] from fields fed in a fixed order.
#[derive(Debug, Clone)]
pub struct FilterHasher(Sha256);

impl FilterHasher {
    /// Adds one field. Each field is length-prefixed, so `("ab", "c")` and
    /// `("a", "bc")` hash differently.
    #[must_use]
    pub fn field(mut self, bytes: impl AsRef<[u8]>) -> Self {
        let bytes = bytes.as_ref();
        self.0
            .update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The hash of the fields fed so far.
    pub fn finish(self) -> FilterHash {
        let digest = self.0.finalize();
        let mut hash = [0; FILTER_HASH_BYTES];
        for (byte, from) in hash.iter_mut().zip(digest.iter()) {
            *byte = *from;
        }
        FilterHash(hash)
    }
}

// === tokens ===

/// The token for the page after `position`, for requests with `filter`.
pub fn encode_token<P: Serialize>(position: &P, filter: &FilterHash) -> String {
    // Serialising plain positions (numbers, strings, tuples of them) cannot
    // fail; were one to, an empty token ends the listing instead of failing
    // the call.
    let Ok(json) = serde_json::to_vec(position) else {
        return String::new();
    };
    let mut bytes = Vec::with_capacity(1 + FILTER_HASH_BYTES + json.len());
    bytes.push(TOKEN_VERSION);
    bytes.extend_from_slice(&filter.0);
    bytes.extend_from_slice(&json);
    hex::encode(bytes)
}

/// The position a token resumes after: `None` for the empty token (the first
/// page), a violation on `page_token` when the token is not one of ours, is
/// of another version, or was made for another filter.
pub fn decode_token<P: DeserializeOwned>(
    token: &str,
    filter: &FilterHash,
) -> Result<Option<P>, Violation> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || ("page_token".to_owned(), BAD_TOKEN.to_owned());
    if token.len() > MAX_TOKEN_CHARS {
        return Err(bad());
    }
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let (version, rest) = bytes.split_first().ok_or_else(bad)?;
    if *version != TOKEN_VERSION {
        return Err(bad());
    }
    let (hash, json) = rest.split_at_checked(FILTER_HASH_BYTES).ok_or_else(bad)?;
    if hash != filter.0 {
        return Err(bad());
    }
    serde_json::from_slice(json).map(Some).map_err(|_| bad())
}

// === impl Page ===

/// One page of a List request: its size and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<P> {
    size: usize,
    after: Option<P>,
    filter: FilterHash,
}

impl<P: Serialize + DeserializeOwned> Page<P> {
    /// The page a request asks for, or INVALID_ARGUMENT naming `page_size`
    /// and/or `page_token`.
    pub fn from_request(
        limits: PageLimits,
        page_size: i32,
        page_token: &str,
        filter: FilterHash,
    ) -> Result<Self, Status> {
        Self::check(limits, page_size, page_token, filter).map_err(invalid_argument)
    }

    /// As [`Self::from_request`], with the violations returned for a handler
    /// that reports them together with its own.
    pub fn check(
        limits: PageLimits,
        page_size: i32,
        page_token: &str,
        filter: FilterHash,
    ) -> Result<Self, Vec<Violation>> {
        let size = limits.size(page_size);
        let after = decode_token(page_token, &filter);
        match (size, after) {
            (Ok(size), Ok(after)) => Ok(Self {
                size,
                after,
                filter,
            }),
            (size, after) => Err(size.err().into_iter().chain(after.err()).collect()),
        }
    }

    /// How many items the page holds at most.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many items to fetch: one more than the page, to know whether
    /// another page follows.
    pub fn fetch_size(&self) -> usize {
        self.size.saturating_add(1)
    }

    /// The position to resume after (`None`: from the start).
    pub fn after(&self) -> Option<&P> {
        self.after.as_ref()
    }

    /// The token for the page after `last`.
    pub fn token_after(&self, last: &P) -> String {
        encode_token(last, &self.filter)
    }

    /// Cuts `items` (fetched with [`Self::fetch_size`]) to the page and
    /// returns the next page's token: from the last kept item's position
    /// when more followed, "" when this is the last page.
    pub fn finish<T>(&self, items: &mut Vec<T>, position: impl FnOnce(&T) -> P) -> String {
        if items.len() <= self.size {
            return String::new();
        }
        items.truncate(self.size);
        items
            .last()
            .map(|last| self.token_after(&position(last)))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    const LIMITS: PageLimits = PageLimits::new(50, 1000);

    fn filter(text: &str) -> FilterHash {
        FilterHash::hasher().field(text).finish()
    }

    #[test]
    fn positions_round_trip() {
        let by_time = filter("a");
        let token = encode_token(&(1_700_000_000_000_123_i64, 42_i64), &by_time);
        assert_eq!(
            decode_token::<(i64, i64)>(&token, &by_time).unwrap(),
            Some((1_700_000_000_000_123, 42))
        );
        let token = encode_token(&"é/tool-name", &by_time);
        assert_eq!(
            decode_token::<String>(&token, &by_time).unwrap().as_deref(),
            Some("é/tool-name")
        );
        assert_eq!(decode_token::<String>("", &by_time).unwrap(), None);
    }

    #[test]
    fn a_token_of_another_filter_is_refused() {
        let token = encode_token(&(1_i64, "run-1"), &filter("states=RUNNING"));
        let (field, description) =
            decode_token::<(i64, String)>(&token, &filter("states=FAILED")).unwrap_err();
        assert_eq!(field, "page_token");
        assert!(description.contains("must stay the same between pages"));
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let filter = filter("x");
        for token in [
            "garbage",
            "abc",
            "00",
            "01",
            &"0".repeat(MAX_TOKEN_CHARS + 2),
        ] {
            assert!(decode_token::<i64>(token, &filter).is_err(), "{token}");
        }
        let mut bytes = hex::decode(encode_token(&7_i64, &filter)).unwrap();
        bytes[0] = TOKEN_VERSION + 1;
        assert!(decode_token::<i64>(&hex::encode(bytes), &filter).is_err());
        // A good token whose position is of another shape.
        let token = encode_token(&"name", &filter);
        assert!(decode_token::<(i64, i64)>(&token, &filter).is_err());
    }

    #[test]
    fn a_bad_token_is_invalid_argument_on_page_token() {
        let status = Page::<String>::from_request(LIMITS, 0, "garbage", filter("x")).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "page_token");
        assert!(violations[0].description.contains("filters"));
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(LIMITS.size(0), Ok(50));
        assert_eq!(LIMITS.size(7), Ok(7));
        assert_eq!(LIMITS.size(1000), Ok(1000));
        assert_eq!(LIMITS.size(5000), Ok(1000));
        let (field, _) = LIMITS.size(-1).unwrap_err();
        assert_eq!(field, "page_size");
        let violations = Page::<String>::check(LIMITS, -1, "garbage", filter("x")).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["page_size", "page_token"]);
    }

    #[test]
    fn finish_cuts_the_extra_item_and_resumes_after_the_last() {
        let limits = PageLimits::new(2, 2);
        let page = Page::<String>::from_request(limits, 0, "", filter("f")).unwrap();
        assert_eq!(page.fetch_size(), 3);
        let mut items = vec!["a", "b", "c"];
        let token = page.finish(&mut items, |item| (*item).to_owned());
        assert_eq!(items, ["a", "b"]);
        let next = Page::<String>::from_request(limits, 0, &token, filter("f")).unwrap();
        assert_eq!(next.after().map(String::as_str), Some("b"));
        let mut last = vec!["c"];
        assert_eq!(next.finish(&mut last, |item| (*item).to_owned()), "");
        assert_eq!(last, ["c"]);
    }

    #[test]
    fn filter_hashes_separate_fields_and_follow_messages() {
        assert_ne!(
            FilterHash::hasher().field("ab").field("c").finish(),
            FilterHash::hasher().field("a").field("bc").finish()
        );
        let one = prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        };
        let two = prost_types::Timestamp {
            seconds: 2,
            nanos: 0,
        };
        assert_eq!(FilterHash::of_message(&one), FilterHash::of_message(&one));
        assert_ne!(FilterHash::of_message(&one), FilterHash::of_message(&two));
    }

    /// A token made by an earlier build (and checked against the format above
    /// computed by hand), committed here: it must still decode
    /// in this build (and after any restart), so the hash and the format are
    /// stable. Changing the format means a new [`TOKEN_VERSION`], not a new
    /// literal here.
    #[test]
    fn a_token_from_another_build_still_decodes() {
        const GOLDEN: &str = "014c3b49bac7df661ce4d59cba2a3e9ffe5b313730303030303030303030303030302c2272756e2d31225d";
        let filter = FilterHash::of_message(&prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        assert_eq!(
            decode_token::<(i64, String)>(GOLDEN, &filter).unwrap(),
            Some((1_700_000_000_000_000, "run-1".to_owned()))
        );
        assert_eq!(
            encode_token(&(1_700_000_000_000_000_i64, "run-1"), &filter),
            GOLDEN
        );
    }
}
