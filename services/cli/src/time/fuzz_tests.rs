//! Fuzz targets of the CLI's duration grammar: arbitrary text never panics,
//! and every duration, written in each form the grammar accepts (compact
//! `1h30m`, friendly `1h 30m`, ISO 8601 `PT1H30M`, days and weeks), parses
//! back to itself.

use agentmesh_testkit::fuzz::check;
use jiff::SignedDuration;
use proptest::prelude::*;

use super::parse_duration;

/// Durations up to about 30 years either way, with nanoseconds.
fn duration() -> impl Strategy<Value = SignedDuration> {
    (-1_000_000_000_i64..1_000_000_000, 0_i32..1_000_000_000).prop_map(|(secs, nanos)| {
        let nanos = if secs < 0 { -nanos } else { nanos };
        SignedDuration::new(secs, nanos)
    })
}

#[test]
fn fuzz_cli_duration_arbitrary_text() {
    let text = prop_oneof![
        any::<String>(),
        "[0-9PTtdhmsw .,:+-]{0,30}",
        "-?[0-9]{1,25}(w|d|h|m|s|ms|us|ns)",
    ];
    check("cli_duration_arbitrary_text", text, |text| {
        if let Some(parsed) = parse_duration(&text) {
            // Whatever it accepts is a duration it can print and read again.
            prop_assert_eq!(parse_duration(&format!("{parsed:#}")), Some(parsed));
        }
        Ok(())
    });
}

#[test]
fn fuzz_cli_duration_round_trips() {
    check("cli_duration_round_trips", duration(), |duration| {
        let iso = format!("{duration}");
        prop_assert_eq!(parse_duration(&iso), Some(duration), "{}", iso);
        // ISO 8601 designators are case-insensitive.
        prop_assert_eq!(
            parse_duration(&iso.to_lowercase()),
            Some(duration),
            "{}",
            iso
        );
        let friendly = format!("{duration:#}");
        prop_assert_eq!(parse_duration(&friendly), Some(duration), "{}", friendly);
        prop_assert_eq!(parse_duration(&format!("  {friendly}\t")), Some(duration));
        Ok(())
    });
}

#[test]
fn fuzz_cli_duration_compact_units() {
    let parts = (
        0_i64..10_000,
        0_i64..1_000,
        0_i64..100_000,
        0_i64..100_000,
        any::<bool>(),
    );
    check(
        "cli_duration_compact_units",
        parts,
        |(weeks, days, hours, minutes, negative)| {
            let text = format!("{weeks}w{days}d{hours}h{minutes}m");
            let total = ((weeks * 7 + days) * 24 + hours) * 60 + minutes;
            let expected = SignedDuration::from_mins(total);
            prop_assert_eq!(parse_duration(&text), Some(expected), "{}", text);
            if negative {
                prop_assert_eq!(parse_duration(&format!("-{text}")), Some(-expected));
            }
            Ok(())
        },
    );
}
