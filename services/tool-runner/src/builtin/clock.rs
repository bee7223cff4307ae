//! The `current_time` tool: the time now, in UTC and in an IANA time zone.
//!
//! Time zones come from jiff's database: the system's copy when there is one
//! (kept current by the operating system), else the copy compiled into the
//! binary (the `tzdb-bundle-always` feature), so the tool also works in
//! slim containers without `/usr/share/zoneinfo`. The first lookup may read
//! files, so callers run this on the blocking pool.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;

/// The time `now` as the tool's output, in `timezone` (default UTC).
pub(crate) fn current_time(
    now: Timestamp,
    timezone: Option<&str>,
) -> Result<serde_json::Value, String> {
    let name = timezone.unwrap_or("UTC");
    let zone = TimeZone::get(name).map_err(|_| {
        format!(
            "unknown time zone \"{name}\"; use an IANA time zone name such as \"Europe/Paris\", \"America/New_York\" or \"UTC\""
        )
    })?;
    let local = now.to_zoned(zone);
    Ok(json!({
        "utc": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "local": local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "timezone": name,
        "unix_seconds": now.as_second(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn utc_by_default() {
        let output = current_time(at("2026-11-21T10:00:00Z"), None).unwrap();
        assert_eq!(
            output,
            json!({
                "utc": "2026-11-21T10:00:00Z",
                "local": "2026-11-21T10:00:00+00:00",
                "timezone": "UTC",
                "unix_seconds": 1_795_255_200,
            })
        );
    }

    #[test]
    fn a_named_zone_with_its_offset() {
        let output = current_time(at("2026-11-21T10:00:00Z"), Some("Europe/Paris")).unwrap();
        assert_eq!(output["local"], "2026-11-21T11:00:00+01:00");
        assert_eq!(output["timezone"], "Europe/Paris");
        let output = current_time(at("2026-07-01T10:00:00Z"), Some("Asia/Kolkata")).unwrap();
        assert_eq!(output["local"], "2026-07-01T15:30:00+05:30");
    }

    #[test]
    fn an_unknown_zone_is_named() {
        let err = current_time(at("2026-11-21T10:00:00Z"), Some("Mars/Olympus")).unwrap_err();
        assert!(err.contains("\"Mars/Olympus\""), "{err}");
        let err = current_time(at("2026-11-21T10:00:00Z"), Some("../../etc/passwd")).unwrap_err();
        assert!(err.contains("unknown time zone"), "{err}");
    }
}
