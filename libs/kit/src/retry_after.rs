//! The HTTP `Retry-After` header (RFC 9110 §10.2.3), as model providers and
//! notification receivers send it with 429 and 503 answers.

use std::time::{Duration, SystemTime};

/// The longest wait a `Retry-After` is taken for, so a bogus value cannot
/// park a caller forever (deadlines usually end it sooner anyway).
const MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a `Retry-After` value: delay seconds, or an HTTP date; at most a
/// day. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(MAX.as_secs_f64())));
    }
    let timestamp = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let at = SystemTime::from(timestamp);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_or_a_date_at_most_a_day() {
        // RFC 9110's example date is 1994-11-06T08:49:37Z = 784111777.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:48:37 GMT", now),
            Some(Duration::ZERO)
        );
    }
}
