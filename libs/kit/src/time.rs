//! Time as the services store it and as the contract carries it.
//!
//! Stores keep instants as `i64` microseconds since the Unix epoch (exact,
//! sortable, one column); the contract carries `google.protobuf.Timestamp`;
//! the command line reads and prints [`jiff::Timestamp`]. These are the
//! conversions between them, each written once.

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        // In 0..1_000_000_000: always fits.
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf timestamp as microseconds since the Unix epoch (saturating;
/// sub-microsecond nanoseconds are dropped).
pub fn micros_of(timestamp: &prost_types::Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(timestamp.nanos) / 1000)
}

/// As [`micros_of`], 0 for an unset timestamp.
pub fn micros_or_zero(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp.map_or(0, micros_of)
}

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A [`jiff::Timestamp`] as a protobuf timestamp.
pub fn timestamp_from_jiff(time: jiff::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.as_second(),
        nanos: time.subsec_nanosecond(),
    }
}

/// A protobuf timestamp as a [`jiff::Timestamp`], `None` when it is unset or
/// out of jiff's range.
pub fn jiff_of(timestamp: Option<&prost_types::Timestamp>) -> Option<jiff::Timestamp> {
    timestamp.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip_including_before_the_epoch() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            1_700_000_000_123_456,
            -1,
            -1_500_000,
        ] {
            let timestamp = timestamp_from_micros(micros);
            assert!((0..1_000_000_000).contains(&timestamp.nanos), "{micros}");
            assert_eq!(micros_of(&timestamp), micros);
        }
        assert_eq!(
            timestamp_from_micros(-1),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
        assert_eq!(micros_or_zero(None), 0);
        let huge = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(micros_of(&huge), i64::MAX);
    }

    #[test]
    fn jiff_round_trip() {
        let time: jiff::Timestamp = "2026-11-21T18:00:00.5Z".parse().unwrap();
        let timestamp = timestamp_from_jiff(time);
        assert_eq!(timestamp.nanos, 500_000_000);
        assert_eq!(jiff_of(Some(&timestamp)), Some(time));
        assert_eq!(jiff_of(None), None);
        assert!(now_micros() > 1_700_000_000_000_000);
    }
}
