//! A rule's condition — `count` (of events, or the sum of a field with
//! `sum_of`), `failure_ratio` or `absence` — as
//! configured and as checked: [`compile_condition`] turns the one set in a
//! [`RuleConfig`] into a [`Condition`] the evaluator runs, or an error
//! naming the setting.

use std::time::Duration;

use agentmesh_kit::ConfigError;
use agentmesh_proto::audit::v1::{AuditEvent, Outcome};

use super::compile::Filter;
use super::config::{FailureRatioConfig, RuleConfig};
use super::fields::{self, FIELD_HELP, Field};

/// The longest window, absence duration or `for` accepted: long enough for
/// any alerting purpose, short enough that time arithmetic cannot overflow.
const MAX_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

/// When a rule's alert is active.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// At least `threshold` events within `window` (or, with `sum_of`, a
    /// sum of that field of at least `threshold`).
    Count {
        /// At least 1.
        threshold: u64,
        /// More than zero.
        window: Duration,
        /// The numeric field summed instead of counting events.
        sum_of: Option<Field>,
    },
    /// At least `min_events` events within `window`, and the share with a
    /// failure outcome at least `threshold`.
    FailureRatio {
        /// In (0, 1].
        threshold: f64,
        /// More than zero.
        window: Duration,
        /// At least 1.
        min_events: u64,
        /// Outcomes counted as failed (never empty).
        failure_outcomes: Vec<i32>,
    },
    /// No event for `duration`.
    Absence {
        /// More than zero.
        duration: Duration,
    },
}

impl Condition {
    /// The time the condition looks back over: the window, or the absence
    /// duration. Events older than this (at the evaluator's clock) are
    /// ignored.
    pub(crate) fn span(&self) -> Duration {
        match self {
            Self::Count { window, .. } | Self::FailureRatio { window, .. } => *window,
            Self::Absence { duration } => *duration,
        }
    }

    /// What `event` adds to the window: 1, or for a count with `sum_of`
    /// the field's value (see [`summand`]).
    pub(crate) fn summand(&self, event: &AuditEvent) -> u64 {
        match self {
            Self::Count {
                sum_of: Some(field),
                ..
            } => summand(&field.get(event)),
            _ => 1,
        }
    }

    /// True for an outcome counted as failed (for `{{ratio}}` of a count
    /// condition: FAILURE).
    pub(crate) fn is_failure(&self, outcome: i32) -> bool {
        match self {
            Self::FailureRatio {
                failure_outcomes, ..
            } => failure_outcomes.contains(&outcome),
            Self::Count { .. } | Self::Absence { .. } => outcome == Outcome::Failure as i32,
        }
    }
}

/// The rule's one condition (`count`, `failure_ratio` or `absence`),
/// checked against its `filter`.
pub(super) fn compile_condition(
    config: &RuleConfig,
    filter: &Filter,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Condition, ConfigError> {
    let set: Vec<&str> = [
        config.count.as_ref().map(|_| "count"),
        config.failure_ratio.as_ref().map(|_| "failure_ratio"),
        config.absence.as_ref().map(|_| "absence"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none is set".to_owned()
        } else {
            format!("{} are set", set.join(" and "))
        };
        return Err(error(
            "",
            format!(
                "a rule needs exactly one condition, [rules.count], [rules.failure_ratio] or [rules.absence]; {found}"
            ),
        ));
    }
    if let Some(count) = &config.count {
        if count.threshold < 1 {
            return Err(error(
                ".count.threshold",
                format!("must be at least 1, got {}", count.threshold),
            ));
        }
        let window =
            required_span(count.window, "window").map_err(|m| error(".count.window", m))?;
        let sum_of = match count.sum_of.as_deref() {
            None => None,
            Some(name) => Some(Field::resolve(name).ok_or_else(|| {
                error(
                    ".count.sum_of",
                    format!("unknown event field {name:?}: sum a numeric field such as \"access.count\" ({FIELD_HELP})"),
                )
            })?),
        };
        return Ok(Condition::Count {
            threshold: u64::try_from(count.threshold).unwrap_or(1),
            window,
            sum_of,
        });
    }
    if let Some(ratio) = &config.failure_ratio {
        return compile_failure_ratio(ratio, filter, error);
    }
    let duration = config.absence.as_ref().and_then(|absence| absence.duration);
    let duration =
        required_span(duration, "duration").map_err(|m| error(".absence.duration", m))?;
    Ok(Condition::Absence { duration })
}

/// A `failure_ratio` condition: threshold in (0, 1], a window, at least
/// one event, and an outcome filter that leaves both failed and other
/// events to compare.
fn compile_failure_ratio(
    ratio: &FailureRatioConfig,
    filter: &Filter,
    error: &impl Fn(&str, String) -> ConfigError,
) -> Result<Condition, ConfigError> {
    let threshold = ratio.threshold.ok_or_else(|| {
        error(
            ".failure_ratio.threshold",
            "missing: set the failed share that fires, e.g. threshold = 0.5".to_owned(),
        )
    })?;
    if !(threshold > 0.0 && threshold <= 1.0) {
        return Err(error(
            ".failure_ratio.threshold",
            format!("must be greater than 0 and at most 1 (e.g. 0.5 for half), got {threshold}"),
        ));
    }
    let window =
        required_span(ratio.window, "window").map_err(|m| error(".failure_ratio.window", m))?;
    if ratio.min_events < 1 {
        return Err(error(
            ".failure_ratio.min_events",
            format!("must be at least 1, got {}", ratio.min_events),
        ));
    }
    let mut failure_outcomes = Vec::with_capacity(ratio.failure_outcomes.len().max(1));
    for (index, name) in ratio.failure_outcomes.iter().enumerate() {
        failure_outcomes.push(
            parse_outcome(name)
                .map_err(|m| error(&format!(".failure_ratio.failure_outcomes[{index}]"), m))?,
        );
    }
    if failure_outcomes.is_empty() {
        failure_outcomes.push(Outcome::Failure as i32);
    }
    // An outcome filter leaving only failures (or only successes) makes
    // the ratio constant: the rule would fire always or never.
    if !filter.outcomes.is_empty() {
        let failing = filter
            .outcomes
            .iter()
            .filter(|outcome| failure_outcomes.contains(outcome))
            .count();
        if failing == 0 || failing == filter.outcomes.len() {
            return Err(error(
                ".filter.outcomes",
                "a failure ratio needs both the failed and the other events: leave filter.outcomes empty \
                 (failure_ratio.failure_outcomes says which outcomes count as failed)"
                    .to_owned(),
            ));
        }
    }
    Ok(Condition::FailureRatio {
        threshold,
        window,
        min_events: u64::try_from(ratio.min_events).unwrap_or(1),
        failure_outcomes,
    })
}

/// What one event adds to a `sum_of` count: its value of the field, at
/// least 1 (so an `access.count` of 0, which means 1, counts once, and an
/// event without the field still counts), fractions rounded.
pub(crate) fn summand(value: &str) -> u64 {
    match value.trim().parse::<f64>() {
        // In range: the cast is exact up to 2^53 and saturates beyond.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked finite and at least 1; `as` saturates"
        )]
        Ok(number) if number.is_finite() && number >= 1.0 => number.round() as u64,
        _ => 1,
    }
}

/// An outcome's number from its name.
pub(super) fn parse_outcome(name: &str) -> Result<i32, String> {
    fields::parse_outcome(name)
        .map(|outcome| outcome as i32)
        .ok_or_else(|| format!("unknown outcome {name:?}: use SUCCESS, FAILURE or DENIED"))
}

/// A window or duration that must be set.
fn required_span(value: Option<Duration>, what: &str) -> Result<Duration, String> {
    let value = value.ok_or_else(|| format!("missing: set the {what}, e.g. {what} = \"5m\""))?;
    check_span(value, false)?;
    Ok(value)
}

/// Checks a window, duration or `for` (`zero_ok`: may be 0).
pub(super) fn check_span(value: Duration, zero_ok: bool) -> Result<(), String> {
    if value.is_zero() && !zero_ok {
        return Err("must be longer than 0s, e.g. \"5m\"".to_owned());
    }
    if value > MAX_SPAN {
        return Err("must be at most 366 days".to_owned());
    }
    Ok(())
}
