//! Property-based fuzz targets that run on stable Rust, bounded by a case
//! count in CI and by wall-clock time under `make fuzz`.
//!
//! A target is an ordinary `#[test]` named `fuzz_…` that calls [`check`]
//! with a proptest [`Strategy`] and a property. [`check`] generates inputs
//! from the strategy and runs the property on each, in one of two modes:
//!
//! * **cases** (the default, CI): `PROPTEST_CASES` inputs (256 when unset);
//! * **time** (`FUZZ_SECONDS=n`, set by `make fuzz`): inputs until `n`
//!   seconds have passed, however many that is.
//!
//! A panic in the property counts as a failure like a failed
//! `prop_assert!`. The first failure is shrunk to a minimal input by
//! proptest, and the test fails naming it. Either way one line goes to
//! stderr: `fuzz <target>: <executions> executions in <s> s, <findings>
//! findings`, which `make fuzz` collects into its summary.
//!
//! Inputs come from a random seed (proptest's default), so every run explores
//! new inputs; `PROPTEST_RNG_SEED=<u64>` makes a run repeatable.

use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::sync::Once;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseResult, TestError, TestRunner};

/// Cases per target when `PROPTEST_CASES` is unset (proptest's own default).
pub const DEFAULT_CASES: u32 = 256;

/// The environment variable that switches to time mode.
pub const SECONDS_VAR: &str = "FUZZ_SECONDS";

/// Longest rendering of a failing input in a report.
const MAX_REPORTED_INPUT: usize = 4096;

/// How long a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many inputs.
    Cases(u64),
    /// As many inputs as fit in this time.
    Time(Duration),
}

impl Budget {
    /// The budget the environment asks for: `FUZZ_SECONDS` when set (and a
    /// positive number), else `PROPTEST_CASES`, else [`DEFAULT_CASES`].
    pub fn from_env() -> Self {
        match std::env::var(SECONDS_VAR)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            Some(seconds) if seconds > 0 => Self::Time(Duration::from_secs(seconds)),
            // Proptest reads PROPTEST_CASES into its default configuration.
            _ => Self::Cases(u64::from(Config::default().cases)),
        }
    }
}

thread_local! {
    /// Whether this thread is running a property (its panics are findings,
    /// reported once, not printed at each shrinking step).
    static IN_PROPERTY: Cell<bool> = const { Cell::new(false) };
    /// Where the first panic of the current run happened.
    static FIRST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that keeps properties' panics
/// quiet (recording where the first one happened) and leaves every other
/// panic to the previous hook.
fn quiet_panics_in_properties() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_PROPERTY.with(Cell::get) {
                FIRST_PANIC.with(|first| {
                    first.borrow_mut().get_or_insert_with(|| {
                        info.location()
                            .map_or_else(String::new, ToString::to_string)
                    });
                });
            } else {
                previous(info);
            }
        }));
    });
}

/// What one run of a target did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Inputs the property ran on (rejected ones not counted).
    pub executions: u64,
    /// Inputs the property rejected as not applicable (`prop_assume!`).
    pub rejected: u64,
    /// The failure, with its minimal input, if one was found.
    pub finding: Option<String>,
    /// How long the run took.
    pub elapsed: Duration,
}

/// Runs `property` on inputs from `strategy` for the budget the environment
/// asks for ([`Budget::from_env`]), prints the summary line, and panics with
/// the minimal failing input when the property fails.
pub fn check<S>(target: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let report = run(Budget::from_env(), &strategy, property);
    eprintln!(
        "fuzz {target}: {} executions in {:.1} s, {} findings",
        report.executions,
        report.elapsed.as_secs_f64(),
        usize::from(report.finding.is_some())
    );
    if let Some(finding) = report.finding {
        eprintln!("fuzz {target}: finding: {finding}");
        panic!("fuzz target {target} failed: {finding}");
    }
}

/// Runs `property` on inputs from `strategy` within `budget`; stops at the
/// first failure, shrunk to a minimal input.
pub fn run<S>(budget: Budget, strategy: &S, property: impl Fn(S::Value) -> TestCaseResult) -> Report
where
    S: Strategy,
    S::Value: Debug,
{
    quiet_panics_in_properties();
    FIRST_PANIC.with(|first| first.borrow_mut().take());
    IN_PROPERTY.with(|flag| flag.set(true));
    let started = Instant::now();
    let (cases, deadline) = match budget {
        Budget::Cases(cases) => (cases, None),
        Budget::Time(limit) => (u64::MAX, Some(started + limit)),
    };
    let mut runner = TestRunner::new(config());
    let mut report = Report {
        executions: 0,
        rejected: 0,
        finding: None,
        elapsed: Duration::ZERO,
    };
    // A strategy that rejects nearly everything would loop forever.
    let max_rejected = cases.saturating_mul(10).saturating_add(10_000);
    while report.executions < cases && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        let tree = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree,
            Err(reason) => {
                report.finding = Some(format!("the strategy cannot generate inputs: {reason}"));
                break;
            }
        };
        match runner.run_one(tree, &property) {
            Ok(true) => report.executions += 1,
            Ok(false) => {
                report.rejected += 1;
                if report.rejected > max_rejected {
                    report.finding = Some(format!(
                        "the property rejected {} inputs and accepted {}",
                        report.rejected, report.executions
                    ));
                    break;
                }
            }
            Err(TestError::Fail(reason, input)) => {
                report.executions += 1;
                let location = FIRST_PANIC
                    .with(|first| first.borrow_mut().take())
                    .map(|location| format!(" (panicked at {location})"))
                    .unwrap_or_default();
                report.finding = Some(format!(
                    "{reason}{location}; minimal failing input: {}",
                    render(&input)
                ));
                break;
            }
            Err(TestError::Abort(reason)) => {
                report.finding = Some(format!("aborted: {reason}"));
                break;
            }
        }
    }
    IN_PROPERTY.with(|flag| flag.set(false));
    report.elapsed = started.elapsed();
    report
}

/// Proptest's configuration for [`run`]: no failure files (a finding is
/// reported, not replayed from disk), rejections bounded by [`run`] itself
/// (proptest's global count would end a long timed run), and shrinking
/// bounded so a finding is reported within a minute.
fn config() -> Config {
    Config {
        failure_persistence: None,
        max_global_rejects: u32::MAX,
        max_shrink_iters: 100_000,
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

/// `input` in `{:?}` form, cut to [`MAX_REPORTED_INPUT`] characters.
fn render(input: &impl Debug) -> String {
    let text = format!("{input:?}");
    let length = text.chars().count();
    if length <= MAX_REPORTED_INPUT {
        return text;
    }
    let cut: String = text.chars().take(MAX_REPORTED_INPUT).collect();
    format!("{cut}… ({length} characters)")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_case_budget_runs_exactly_that_many_inputs() {
        let report = run(Budget::Cases(50), &any::<u32>(), |_| Ok(()));
        assert_eq!(report.executions, 50);
        assert_eq!(report.finding, None);
    }

    #[test]
    fn a_time_budget_stops_at_its_deadline() {
        let report = run(
            Budget::Time(Duration::from_millis(200)),
            &any::<u8>(),
            |_| {
                std::thread::sleep(Duration::from_millis(10));
                Ok(())
            },
        );
        assert!(report.executions > 0);
        assert!(report.elapsed >= Duration::from_millis(200));
        assert_eq!(report.finding, None);
    }

    #[test]
    fn a_failure_is_shrunk_to_a_minimal_input() {
        let report = run(Budget::Cases(10_000), &(0_u32..100_000), |value| {
            prop_assert!(value < 1000, "too large");
            Ok(())
        });
        let finding = report.finding.expect("a value over 1000 is generated");
        assert!(
            finding.ends_with("minimal failing input: 1000"),
            "{finding}"
        );
    }

    #[test]
    fn a_panic_is_a_finding() {
        let report = run(Budget::Cases(1_000), &any::<u8>(), |value| {
            assert!(value < 200, "boom");
            Ok(())
        });
        let finding = report.finding.expect("a value over 200 is generated");
        assert!(finding.contains("minimal failing input: 200"), "{finding}");
        assert!(
            finding.contains("(panicked at libs/testkit/src/fuzz.rs:"),
            "{finding}"
        );
    }

    #[test]
    fn long_inputs_are_cut_in_reports() {
        let text = render(&"x".repeat(10_000));
        assert!(text.len() < 5000);
        assert!(text.ends_with("(10002 characters)"), "{text}");
    }
}
