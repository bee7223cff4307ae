//! Fuzz targets of page tokens: arbitrary text (and arbitrary bytes in hex,
//! so decoding gets past the hex layer) is refused as INVALID_ARGUMENT on
//! `page_token` unless it is a token of this request; every position
//! round-trips through its token; a token is only good with the filter it
//! was made for.

use agentmesh_testkit::fuzz::check;
use proptest::prelude::*;
use tonic::Code;

use super::{FilterHash, Page, PageLimits, TOKEN_VERSION, decode_token, encode_token};

const LIMITS: PageLimits = PageLimits::new(50, 1000);

fn filter(text: &str) -> FilterHash {
    FilterHash::hasher().field(text).finish()
}

/// Token-like text: hex of our version byte, the right or a wrong filter
/// hash, then arbitrary bytes.
fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9a-fA-F]{0,80}",
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(ours, tail)| {
            let hash = if ours { filter("f") } else { filter("g") };
            let mut bytes = vec![TOKEN_VERSION];
            bytes.extend_from_slice(&hash.0);
            bytes.extend_from_slice(&tail);
            hex::encode(bytes)
        }),
        (1_usize..20_000).prop_map(|n| "0".repeat(n)),
    ]
}

#[test]
fn fuzz_page_token_arbitrary_text() {
    check(
        "page_token_arbitrary_text",
        (token_text(), any::<i32>()),
        |(token, size)| {
            let decoded = decode_token::<(i64, String)>(&token, &filter("f"));
            match &decoded {
                Ok(None) => prop_assert!(token.is_empty()),
                Ok(Some(position)) => {
                    // Only a token of ours decodes, and it is the canonical one.
                    prop_assert_eq!(
                        encode_token(position, &filter("f")).len() <= token.len(),
                        true
                    );
                }
                Err((field, _)) => prop_assert_eq!(field, "page_token"),
            }
            match Page::<(i64, String)>::from_request(LIMITS, size, &token, filter("f")) {
                Ok(page) => {
                    prop_assert!(decoded.is_ok() && size >= 0);
                    prop_assert!(page.size() >= 1 && page.size() <= LIMITS.max);
                }
                Err(status) => {
                    prop_assert_eq!(status.code(), Code::InvalidArgument);
                    prop_assert!(decoded.is_err() || size < 0);
                    // The token is never echoed back.
                    prop_assert!(token.len() < 8 || !status.message().contains(&token));
                    prop_assert!(status.message().len() < 1024);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_page_token_round_trip() {
    let position = (any::<i64>(), ".{0,500}", any::<u64>());
    check(
        "page_token_round_trip",
        (position, ".{0,40}", ".{0,40}"),
        |(position, filter_a, filter_b)| {
            let token = encode_token(&position, &filter(&filter_a));
            prop_assert!(!token.is_empty());
            let decoded = decode_token::<(i64, String, u64)>(&token, &filter(&filter_a));
            prop_assert_eq!(decoded, Ok(Some(position.clone())));
            let page =
                Page::<(i64, String, u64)>::from_request(LIMITS, 0, &token, filter(&filter_a));
            prop_assert_eq!(
                page.ok().and_then(|page| page.after().cloned()),
                Some(position)
            );
            if filter_a != filter_b {
                let other = decode_token::<(i64, String, u64)>(&token, &filter(&filter_b));
                prop_assert!(
                    other.is_err(),
                    "a token for {filter_a:?} passed for {filter_b:?}"
                );
            }
            Ok(())
        },
    );
}

/// A valid token with one character changed is refused or decodes to some
/// position; it never panics, and a change in the version or filter part is
/// always refused.
#[test]
fn fuzz_page_token_mutations() {
    let input = (
        any::<i64>(),
        "[a-z]{0,20}",
        any::<prop::sample::Index>(),
        any::<char>(),
    );
    check(
        "page_token_mutations",
        input,
        |(seq, name, index, replacement)| {
            let token = encode_token(&(seq, name), &filter("f"));
            let at = index.index(token.chars().count());
            let mutated: String = token
                .chars()
                .enumerate()
                .map(|(i, c)| if i == at { replacement } else { c })
                .collect();
            let decoded = decode_token::<(i64, String)>(&mutated, &filter("f"));
            // The version byte and the filter hash are the first 34 hex digits.
            let changed_header = at < 34 && !mutated.eq_ignore_ascii_case(&token);
            if changed_header {
                prop_assert!(decoded.is_err(), "{mutated} was accepted");
            }
            Ok(())
        },
    );
}
