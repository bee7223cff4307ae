//! Times and durations as the command line reads and writes them.
//!
//! Flags are read into jiff types here: every flag that takes a length of
//! time (`silences add --duration`, and the "duration ago" form of `audit
//! --since`/`--until`) goes through the one grammar of [`parse_duration`].
//! Requests carry times as protobuf timestamps ([`to_proto`]); answers are
//! shown from them ([`from_proto`], [`proto_utc_text`]).

use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// Parses a length of time: the friendly form (`90s`, `30m`, `2h`, `1h30m`,
/// `1d`, `2w`, `2 hours`, `1.5h`) or ISO 8601 (`PT2H`, `P1D`). Days are 24
/// hours and weeks 7 days; months and years are refused (their length
/// varies). `None` when the text is not a duration; its sign is the caller's
/// concern (`-1h` parses).
pub(crate) fn parse_duration(text: &str) -> Option<SignedDuration> {
    let span: Span = text.trim().parse().ok()?;
    span.to_duration(SpanRelativeTo::days_are_24_hours()).ok()
}

// A time as the services take it, and a time the services sent (`None` when
// unset or out of range): the kit's one conversion, named for this crate.
pub(crate) use agentmesh_kit::time::{jiff_of as from_proto, timestamp_from_jiff as to_proto};

/// Seconds-precision RFC 3339 in UTC, whatever the local time zone.
pub(crate) fn utc_text(time: Timestamp) -> String {
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A time the services sent as [`utc_text`]; `-` when unset.
pub(crate) fn proto_utc_text(time: Option<&prost_types::Timestamp>) -> String {
    from_proto(time).map_or_else(|| "-".to_owned(), utc_text)
}

/// Times for tests, from RFC 3339 text.
#[cfg(test)]
pub(crate) mod testing {
    use jiff::Timestamp;

    pub(crate) fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    pub(crate) fn time(text: &str) -> Option<prost_types::Timestamp> {
        Some(super::to_proto(at(text)))
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::testing::at;
    use super::*;

    #[test]
    fn both_forms_of_durations() {
        let hours = SignedDuration::from_hours;
        for (text, expected) in [
            ("2h", hours(2)),
            ("PT2H", hours(2)),
            ("pt2h", hours(2)),
            ("P1D", hours(24)),
            ("1h30m", SignedDuration::from_mins(90)),
            ("2h30m", SignedDuration::from_mins(150)),
            ("PT2H30M", SignedDuration::from_mins(150)),
            ("1.5h", SignedDuration::from_mins(90)),
            ("90 secs", SignedDuration::from_secs(90)),
            ("2w", hours(24 * 14)),
            (" 0s ", SignedDuration::ZERO),
            ("-1h", hours(-1)),
        ] {
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "2",
            "h",
            "soon",
            "1mo",
            "1y",
            "P1Y",
            "1h-",
            "2026-11-21",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_round_trip_through_protobuf() {
        let time = at("2026-11-21T10:00:00.250Z");
        assert_eq!(from_proto(Some(&to_proto(time))), Some(time));
        assert_eq!(from_proto(None), None);
        let out_of_range = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(from_proto(Some(&out_of_range)), None);
        assert_eq!(
            proto_utc_text(Some(&to_proto(time))),
            "2026-11-21T10:00:00Z"
        );
        assert_eq!(proto_utc_text(None), "-");
    }
}
