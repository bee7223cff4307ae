//! Checking a `google.protobuf.Duration` from a request.
//!
//! prost converts a Duration after normalising it, so `nanos = 2e9` quietly
//! becomes two more seconds and a mixed sign (`seconds = 1, nanos = -1`)
//! passes. The contract (google/protobuf/duration.proto) says `nanos` is
//! within ±999,999,999 and has the sign of `seconds`; a request breaking it
//! is malformed. [`length_of_time`] checks that, and that the value is not
//! negative, for fields that mean a length of time (every one of ours); its
//! error is a field violation's description.

use std::time::Duration;

/// The largest magnitude of `nanos`.
const MAX_NANOS: i32 = 999_999_999;

/// `duration` as a length of time, or what is wrong with it.
pub fn length_of_time(duration: &prost_types::Duration) -> Result<Duration, String> {
    let prost_types::Duration { seconds, nanos } = *duration;
    if !(-MAX_NANOS..=MAX_NANOS).contains(&nanos) {
        return Err(format!(
            "nanos is {nanos}; it must be between -999,999,999 and 999,999,999"
        ));
    }
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        return Err(format!(
            "seconds ({seconds}) and nanos ({nanos}) must have the same sign"
        ));
    }
    if seconds < 0 || nanos < 0 {
        return Err("must not be negative".to_owned());
    }
    let seconds = u64::try_from(seconds).unwrap_or_default();
    let nanos = u32::try_from(nanos).unwrap_or_default();
    Ok(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn valid_lengths_convert() {
        assert_eq!(length_of_time(&duration(0, 0)), Ok(Duration::ZERO));
        assert_eq!(
            length_of_time(&duration(3, 999_999_999)),
            Ok(Duration::new(3, 999_999_999))
        );
        assert_eq!(
            length_of_time(&duration(i64::MAX, 0)),
            Ok(Duration::from_secs(u64::try_from(i64::MAX).unwrap()))
        );
    }

    #[test]
    fn malformed_or_negative_lengths_are_refused() {
        for (seconds, nanos, says) in [
            (0, 2_000_000_000, "nanos is 2000000000"),
            (0, i32::MIN, "nanos is"),
            (1, -1, "same sign"),
            (-1, 1, "same sign"),
            (-1, 0, "negative"),
            (0, -5, "negative"),
        ] {
            let err = length_of_time(&duration(seconds, nanos)).unwrap_err();
            assert!(err.contains(says), "{seconds}s {nanos}ns: {err}");
        }
    }
}
