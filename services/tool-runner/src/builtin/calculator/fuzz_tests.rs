//! Fuzz targets of the calculator: arbitrary text never panics, and
//! well-formed expressions (generated as trees, printed, then parsed) give
//! exactly what a direct evaluation of the tree gives, error for error.
//! Deep nesting and huge numbers are errors, never a stack overflow.

use agentmesh_testkit::fuzz::check;
use proptest::prelude::*;

use super::{MAX_DEPTH, MAX_LENGTH, evaluate};

/// An expression tree the generator builds and the reference evaluates.
#[derive(Debug, Clone)]
enum Expr {
    Number(String),
    Neg(Box<Expr>),
    Binary(char, Box<Expr>, Box<Expr>),
    Call(&'static str, Vec<Expr>),
}

impl Expr {
    /// The expression fully parenthesised, so precedence does not matter.
    fn text(&self) -> String {
        match self {
            Self::Number(text) => text.clone(),
            Self::Neg(inner) => format!("(-{})", inner.text()),
            Self::Binary(op, lhs, rhs) => format!("({} {op} {})", lhs.text(), rhs.text()),
            Self::Call(name, args) => {
                let args: Vec<String> = args.iter().map(Self::text).collect();
                format!("{name}({})", args.join(", "))
            }
        }
    }

    /// The reference: the same operations on f64, checked as the language
    /// says (finite results only; no division by zero; roots and logs of
    /// what they are defined for). `None` is an error.
    fn value(&self) -> Option<f64> {
        let finite = |value: f64| value.is_finite().then_some(value);
        match self {
            Self::Number(text) => finite(text.parse().ok()?),
            Self::Neg(inner) => Some(-inner.value()?),
            Self::Binary(op, lhs, rhs) => {
                let (a, b) = (lhs.value()?, rhs.value()?);
                match op {
                    '+' => finite(a + b),
                    '-' => finite(a - b),
                    '*' => finite(a * b),
                    '/' if b == 0.0 => None,
                    '/' => finite(a / b),
                    '%' if b == 0.0 => None,
                    '%' => finite(a % b),
                    '^' if a == 0.0 && b < 0.0 => None,
                    _ => finite(a.powf(b)),
                }
            }
            Self::Call(name, args) => {
                let values = args.iter().map(Self::value).collect::<Option<Vec<f64>>>()?;
                let x = *values.first()?;
                finite(match *name {
                    "sqrt" if x < 0.0 => return None,
                    "sqrt" => x.sqrt(),
                    "ln" | "log10" if x <= 0.0 => return None,
                    "ln" => x.ln(),
                    "log10" => x.log10(),
                    "abs" => x.abs(),
                    "round" => x.round(),
                    "floor" => x.floor(),
                    "ceil" => x.ceil(),
                    "sin" => x.sin(),
                    "cos" => x.cos(),
                    "tan" => x.tan(),
                    "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
                    _ => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                })
            }
        }
    }
}

/// Numbers in every accepted form: integers, decimals, `.5`, `5.`, exponents.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0_u32..1000).prop_map(|n| n.to_string()),
        "[0-9]{1,6}\\.[0-9]{0,4}",
        "\\.[0-9]{1,4}",
        "[0-9]{1,3}[eE][+-]?[0-9]{1,3}",
    ]
}

fn expression() -> impl Strategy<Value = Expr> {
    number()
        .prop_map(Expr::Number)
        .prop_recursive(5, 40, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Neg(Box::new(e))),
                (
                    prop::sample::select(vec!['+', '-', '*', '/', '%', '^']),
                    inner.clone(),
                    inner.clone()
                )
                    .prop_map(|(op, a, b)| Expr::Binary(
                        op,
                        Box::new(a),
                        Box::new(b)
                    )),
                (
                    prop::sample::select(vec![
                        "sqrt", "abs", "round", "floor", "ceil", "ln", "log10", "sin", "cos", "tan"
                    ]),
                    inner.clone()
                )
                    .prop_map(|(name, e)| Expr::Call(name, vec![e])),
                (
                    prop::sample::select(vec!["min", "max"]),
                    prop::collection::vec(inner, 1..4)
                )
                    .prop_map(|(name, args)| Expr::Call(name, args)),
            ]
        })
}

/// Text made mostly of the calculator's own alphabet, so the parser gets
/// past its first character more often than with uniform noise.
fn calculator_noise() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "0", "1", "9", ".", "e", "E", "+", "-", "*", "/", "%", "^", "(", ")", ",", " ",
                "pi", "sqrt", "max(", "min(", "ln", "1e308", "\u{0}", "é", "\u{feff}"
            ])
            .prop_map(str::to_owned),
            any::<char>().prop_map(String::from),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

/// An error message stays about as long as the input (it quotes at most a
/// name from it), whatever the input.
fn check_outcome(text: &str) -> Result<(), TestCaseError> {
    match evaluate(text) {
        Ok(value) => prop_assert!(value.is_finite(), "{text:?} gave {value}"),
        Err(err) => {
            let message = err.to_string();
            prop_assert!(!message.is_empty());
            prop_assert!(
                message.len() <= text.len() + 400,
                "a {}-byte message for a {}-byte input",
                message.len(),
                text.len()
            );
        }
    }
    Ok(())
}

#[test]
fn fuzz_calculator_arbitrary_text() {
    check("calculator_arbitrary_text", any::<String>(), |text| {
        check_outcome(&text)
    });
}

#[test]
fn fuzz_calculator_operator_soup() {
    check("calculator_operator_soup", calculator_noise(), |text| {
        check_outcome(&text)
    });
}

#[test]
fn fuzz_calculator_agrees_with_a_reference() {
    check("calculator_agrees_with_a_reference", expression(), |expr| {
        let text = expr.text();
        let expected = expr.value();
        match (evaluate(&text), expected) {
            (Ok(got), Some(want)) => prop_assert!(
                got.to_bits() == want.to_bits() || (got == 0.0 && want == 0.0),
                "{text}: got {got}, the reference says {want}"
            ),
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{text}: got {got:?}, the reference says {want:?}"),
        }
        Ok(())
    });
}

/// Flat chains of `+ - * / %` without parentheses: the calculator's
/// precedence and left associativity against a two-pass reference
/// (products first, then sums, each left to right).
#[test]
fn fuzz_calculator_precedence_of_flat_chains() {
    let chain = (
        0_u32..100,
        prop::collection::vec(
            (
                prop::sample::select(vec!['+', '-', '*', '/', '%']),
                0_u32..100,
            ),
            0..12,
        ),
    );
    check(
        "calculator_precedence_of_flat_chains",
        chain,
        |(first, rest)| {
            let mut text = first.to_string();
            // Terms of the sum: (sign, product so far); None after a zero divisor.
            let mut terms: Vec<(f64, f64)> = vec![(1.0, f64::from(first))];
            let mut divided_by_zero = false;
            for (op, n) in &rest {
                text.push_str(&format!(" {op} {n}"));
                let n = f64::from(*n);
                match op {
                    '+' => terms.push((1.0, n)),
                    '-' => terms.push((-1.0, n)),
                    _ => {
                        let Some((_, product)) = terms.last_mut() else {
                            return Err(TestCaseError::fail("terms is never empty"));
                        };
                        divided_by_zero |= *op != '*' && n == 0.0;
                        *product = match op {
                            '*' => *product * n,
                            '/' => *product / n,
                            _ => *product % n,
                        };
                    }
                }
            }
            let want = terms.iter().skip(1).fold(
                terms.first().map_or(0.0, |t| t.1),
                |sum, (sign, product)| {
                    if *sign > 0.0 {
                        sum + product
                    } else {
                        sum - product
                    }
                },
            );
            match evaluate(&text) {
                Ok(got) => {
                    prop_assert!(!divided_by_zero, "{text} divides by zero but gave {got}");
                    prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", text);
                }
                Err(err) => prop_assert!(divided_by_zero, "{text}: {err}"),
            }
            Ok(())
        },
    );
}

/// Nesting of every kind, up to far past the limit: an error naming the
/// nesting beyond it, a value well within it, never a stack overflow.
#[test]
fn fuzz_calculator_deep_nesting() {
    let wrappers = prop::collection::vec(
        prop::sample::select(vec![
            ("(", ")"),
            ("-", ""),
            ("+", ""),
            ("abs(", ")"),
            ("max(1,", ")"),
            ("1^", ""),
        ]),
        0..400,
    );
    check("calculator_deep_nesting", wrappers, |wrappers| {
        let opening: String = wrappers.iter().map(|(open, _)| *open).collect();
        let closing: String = wrappers.iter().rev().map(|(_, close)| *close).collect();
        let text = format!("{opening}1{closing}");
        let result = evaluate(&text);
        if wrappers.len() <= MAX_DEPTH / 2 {
            prop_assert!(result.is_ok(), "{text}: {result:?}");
        }
        if wrappers.len() > MAX_DEPTH + 1 && text.chars().count() <= MAX_LENGTH {
            let message = result.err().map(|err| err.to_string()).unwrap_or_default();
            prop_assert!(message.contains("nested too deeply"), "{text}: {message}");
        }
        Ok(())
    });
}

/// Numbers of any size: exactly the parsed value when it is finite, else
/// an error saying it is too large.
#[test]
fn fuzz_calculator_huge_numbers() {
    let numbers = prop_oneof![
        "[1-9][0-9]{0,400}",
        "[1-9][0-9]{0,3}\\.[0-9]{0,400}",
        "[1-9][eE][0-9]{1,6}"
    ];
    check("calculator_huge_numbers", numbers, |text| {
        let parsed: f64 = text.parse().unwrap_or(f64::INFINITY);
        match evaluate(&text) {
            Ok(value) => prop_assert_eq!(value.to_bits(), parsed.to_bits()),
            Err(err) => {
                prop_assert!(!parsed.is_finite(), "{text}: {err}");
                prop_assert!(err.to_string().contains("too large"), "{err}");
            }
        }
        Ok(())
    });
}
