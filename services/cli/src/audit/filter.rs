//! What the selector and range flags of `agentmesh audit` ask for: the
//! TIME parser (RFC 3339, a date, `now`, or a duration ago), the event type
//! and outcome names, and the `EventFilter` built from them that every
//! audit request carries.

use agentmesh_proto::audit::v1 as pb;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::flags::Selectors;
use crate::time::{parse_duration, to_proto, utc_text};

/// Parses a TIME: RFC 3339 (`2026-11-21T10:00:00Z`, `…+01:00`), a date
/// (`2026-11-21`, midnight UTC), `now`, or a duration before `now` in the
/// CLI's one duration grammar (`90s`, `30m`, `1h`, `7d`, `1h30m`, `PT2H`;
/// see `time::parse_duration`).
pub(super) fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "{text:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z) or a duration ago (30m, 1h, 7d, PT2H)"
        )
    };
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    // A date alone (a date with a time but no offset is ambiguous: refused).
    if let Some(date) = (!text.contains(['T', 't', ' ', ':']))
        .then(|| text.parse::<jiff::civil::Date>().ok())
        .flatten()
    {
        return date
            .to_zoned(TimeZone::UTC)
            .map(|zoned| zoned.timestamp())
            .map_err(|_| invalid());
    }
    // A time ahead of `now` is not "ago": a negative duration is refused.
    let ago = parse_duration(text)
        .filter(|ago| !ago.is_negative())
        .ok_or_else(invalid)?;
    now.checked_sub(ago)
        .map_err(|_| format!("{text:?} reaches too far back"))
}

pub(super) fn time_arg(text: &str) -> Result<Timestamp, String> {
    parse_time(text, Timestamp::now())
}

/// The lowercase names of an enum's values after `prefix`, from 1 on.
fn names<E: TryFrom<i32>>(name: impl Fn(&E) -> &'static str, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|value| E::try_from(value).ok())
        .map(|e| name(&e).trim_start_matches(prefix).to_lowercase())
        .collect()
}

pub(super) fn parse_event_type(text: &str) -> Result<pb::EventType, String> {
    let name = format!(
        "EVENT_TYPE_{}",
        text.trim().to_uppercase().replace('-', "_")
    );
    pb::EventType::from_str_name(&name)
        .filter(|t| *t != pb::EventType::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown event type {text:?}; use one of {}",
                names(pb::EventType::as_str_name, "EVENT_TYPE_").join(", ")
            )
        })
}

pub(super) fn parse_outcome(text: &str) -> Result<pb::Outcome, String> {
    let name = format!("OUTCOME_{}", text.trim().to_uppercase());
    pb::Outcome::from_str_name(&name)
        .filter(|o| *o != pb::Outcome::Unspecified)
        .ok_or_else(|| {
            format!(
                "unknown outcome {text:?}; use one of {}",
                names(pb::Outcome::as_str_name, "OUTCOME_").join(", ")
            )
        })
}

/// The `EventFilter` the flags ask for.
pub(super) fn build_filter(
    selectors: &Selectors,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
) -> Result<pb::EventFilter, String> {
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(format!(
            "--since ({}) must be before --until ({})",
            utc_text(since),
            utc_text(until)
        ));
    }
    Ok(pb::EventFilter {
        start_time: since.map(to_proto),
        end_time: until.map(to_proto),
        tenants: selectors.tenants.clone(),
        subjects: selectors.subjects.clone(),
        run_ids: selectors.runs.clone(),
        types: selectors.types.iter().map(|t| i32::from(*t)).collect(),
        outcomes: selectors.outcomes.iter().map(|o| i32::from(*o)).collect(),
        services: selectors.services.clone(),
        trace_id: String::new(),
        tools: selectors.tools.clone(),
        models: selectors.models.clone(),
        providers: selectors.providers.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::flags::Range;
    use super::*;
    use crate::time::testing::at;
    use clap::Parser as _;

    #[test]
    fn times_in_rfc_3339() {
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(
            parse_time("2026-11-21T10:00:00Z", now),
            Ok(at("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-11-21T11:00:00+01:00", now),
            Ok(at("2026-11-21T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-11-21T10:00:00.250Z", now),
            Ok(at("2026-11-21T10:00:00.25Z"))
        );
        assert_eq!(
            parse_time("2026-11-20", now),
            Ok(at("2026-11-20T00:00:00Z"))
        );
        assert_eq!(parse_time("now", now), Ok(now));
    }

    #[test]
    fn times_as_durations_ago() {
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(parse_time("1h", now), Ok(at("2026-11-21T11:00:00Z")));
        assert_eq!(parse_time("30m", now), Ok(at("2026-11-21T11:30:00Z")));
        assert_eq!(parse_time("90s", now), Ok(at("2026-11-21T11:58:30Z")));
        assert_eq!(parse_time("7d", now), Ok(at("2026-11-14T12:00:00Z")));
        assert_eq!(parse_time("2w", now), Ok(at("2026-11-07T12:00:00Z")));
        assert_eq!(parse_time("1h30m", now), Ok(at("2026-11-21T10:30:00Z")));
        assert_eq!(parse_time(" 0s ", now), Ok(now));
    }

    #[test]
    fn durations_ago_take_the_same_forms_as_silence_durations() {
        // One duration grammar: ISO 8601 and the friendly forms that
        // `silences add --duration` takes work here too.
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(parse_time("PT2H", now), Ok(at("2026-11-21T10:00:00Z")));
        assert_eq!(parse_time("P1D", now), Ok(at("2026-11-20T12:00:00Z")));
        assert_eq!(parse_time("2 hours", now), Ok(at("2026-11-21T10:00:00Z")));
        assert_eq!(parse_time("1.5h", now), Ok(at("2026-11-21T10:30:00Z")));
        let parsed = flags(&["--since", "PT2H", "--until", "PT1H"]).unwrap();
        let (since, until) = (parsed.range.since.unwrap(), parsed.range.until.unwrap());
        // Each flag reads the clock: an hour apart, give or take the moment
        // between the two reads.
        let apart = until.duration_since(since);
        let hour = jiff::SignedDuration::from_hours(1);
        assert!(
            apart >= hour && apart < hour + jiff::SignedDuration::from_secs(60),
            "{apart:?}"
        );
    }

    #[test]
    fn bad_times_say_what_is_accepted() {
        let now = at("2026-11-21T12:00:00Z");
        for bad in [
            "",
            "h",
            "1",
            "1y",
            "-1h",
            "yesterday",
            "2026-11-21T10:00:00",
            "2026-13-01",
        ] {
            let err = parse_time(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad:?}: {err}");
        }
        assert!(parse_time("99999999999999w", now).is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        selectors: Selectors,
        #[command(flatten)]
        range: Range,
    }

    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    #[test]
    fn the_filter_follows_the_flags() {
        let parsed = flags(&[
            "--run",
            "r1",
            "--run",
            "r2",
            "--tenant",
            "acme",
            "--subject",
            "alice",
            "--type",
            "llm_call,tool-call",
            "--type",
            "RUN_STARTED",
            "--outcome",
            "failure",
            "--outcome",
            "denied",
            "--service",
            "llm-gateway",
            "--tool",
            "calculator",
            "--model",
            "gpt-4o",
            "--provider",
            "openai",
            "--since",
            "2026-11-21T10:00:00Z",
            "--until",
            "2026-11-21T11:00:00Z",
        ])
        .unwrap();
        let filter =
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until).unwrap();
        assert_eq!(
            filter,
            pb::EventFilter {
                start_time: Some(prost_types::Timestamp {
                    seconds: at("2026-11-21T10:00:00Z").as_second(),
                    nanos: 0
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: at("2026-11-21T11:00:00Z").as_second(),
                    nanos: 0
                }),
                tenants: vec!["acme".to_owned()],
                subjects: vec!["alice".to_owned()],
                run_ids: vec!["r1".to_owned(), "r2".to_owned()],
                types: vec![
                    pb::EventType::LlmCall.into(),
                    pb::EventType::ToolCall.into(),
                    pb::EventType::RunStarted.into(),
                ],
                outcomes: vec![pb::Outcome::Failure.into(), pb::Outcome::Denied.into()],
                services: vec!["llm-gateway".to_owned()],
                trace_id: String::new(),
                tools: vec!["calculator".to_owned()],
                models: vec!["gpt-4o".to_owned()],
                providers: vec!["openai".to_owned()],
            }
        );
    }

    #[test]
    fn no_flags_is_an_empty_filter() {
        let parsed = flags(&[]).unwrap();
        assert_eq!(
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until),
            Ok(pb::EventFilter::default())
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let err = flags(&["--type", "llm"]).unwrap_err().to_string();
        assert!(
            err.contains("llm_call") && err.contains("tool_call"),
            "{err}"
        );
        assert!(flags(&["--type", "unspecified"]).is_err());
        let err = flags(&["--outcome", "ok"]).unwrap_err().to_string();
        assert!(err.contains("success, failure, denied"), "{err}");
        assert!(flags(&["--since", "soon"]).is_err());
        let parsed = flags(&["--since", "1h", "--until", "2h"]).unwrap();
        let err =
            build_filter(&parsed.selectors, parsed.range.since, parsed.range.until).unwrap_err();
        assert!(err.contains("--since"), "{err}");
    }
}
