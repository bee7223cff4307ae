//! The `calculator` tool: a small, safe arithmetic evaluator.
//!
//! # Why hand-written
//!
//! The expression crates on crates.io were considered first. `evalexpr` is a
//! small language (variables, assignment, strings, booleans), more than a
//! calculator a model may call should accept; `meval` and `fasteval` are no
//! longer maintained (and `fasteval` has variables and `print`); `exmex` is
//! maintained but built around variables and a different operator set, and
//! none of them reports *where* an expression is wrong and what was expected
//! there, which is what a model needs to correct its call. The language here
//! is tiny, so a Pratt parser of ~250 lines, tested below, is the smaller
//! risk: it evaluates arithmetic and nothing else.
//!
//! # The language
//!
//! * numbers: `12`, `3.5`, `.5`, `5.`, `1e3`, `2.5E-4`;
//! * binary `+ - * / % ^` with the usual precedence (`^` binds tightest and
//!   is right-associative: `2^3^2` = 512), unary `-` and `+` (looser than
//!   `^`: `-2^2` = -4), parentheses;
//! * functions `sqrt abs round floor ceil ln log10 sin cos tan` (one
//!   argument) and `min max` (one or more); constants `pi`, `e`.
//!
//! `%` is the remainder of truncated division (its sign follows the
//! dividend, as in C and Rust); `round` rounds half away from zero;
//! trigonometric functions take radians.
//!
//! # How it evaluates
//!
//! The expression is tokenised, then parsed twice by the same recursive
//! descent: first only for syntax, so a syntax error anywhere wins over a
//! math error (division by zero) earlier in the text, then again computing
//! values. There is no syntax tree, so nothing is deeper than the parser's
//! recursion, which is bounded by [`MAX_DEPTH`]: deeply nested input is an
//! error, never a stack overflow. Every operation checks its result, so a
//! result is always a finite number.

use std::fmt;

/// How deeply parentheses, unary operators, function calls and `^` chains
/// may nest.
pub(crate) const MAX_DEPTH: usize = 64;

/// The longest expression accepted, in characters.
pub(crate) const MAX_LENGTH: usize = 4096;

/// Why an expression could not be evaluated: a sentence naming the position
/// (1-based, in characters) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CalcError(String);

/// Evaluates `expression`, returning a finite number.
pub(crate) fn evaluate(expression: &str) -> Result<f64, CalcError> {
    let length = expression.chars().count();
    if length > MAX_LENGTH {
        return Err(CalcError(format!(
            "the expression is too long ({length} characters); at most {MAX_LENGTH} are accepted"
        )));
    }
    let tokens = tokenize(expression)?;
    // Pass 1: syntax only. Pass 2: values.
    Parser::new(&tokens, false).parse_all()?;
    Parser::new(&tokens, true).parse_all()
}

/// The JSON form of a result: an integer when the value is integral and
/// exactly representable (|x| < 2^53), else a float.
pub(crate) fn to_json(value: f64) -> serde_json::Value {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT_INTEGER_LIMIT {
        // In range and integral, so the conversion is exact; `-0.0` becomes 0.
        let integer = value as i64;
        serde_json::Value::from(integer)
    } else {
        serde_json::Number::from_f64(value)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

// === tokens ===

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Caret,
    Open,
    Close,
    Comma,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(value) => write!(f, "number {value}"),
            Self::Name(name) => write!(f, "name \"{name}\""),
            Self::Plus => f.write_str("\"+\""),
            Self::Minus => f.write_str("\"-\""),
            Self::Star => f.write_str("\"*\""),
            Self::Slash => f.write_str("\"/\""),
            Self::Percent => f.write_str("\"%\""),
            Self::Caret => f.write_str("\"^\""),
            Self::Open => f.write_str("\"(\""),
            Self::Close => f.write_str("\")\""),
            Self::Comma => f.write_str("\",\""),
            Self::End => f.write_str("end of the expression"),
        }
    }
}

/// A token and its 1-based character position.
#[derive(Debug, Clone, PartialEq)]
struct Spanned {
    token: Token,
    position: usize,
}

fn tokenize(text: &str) -> Result<Vec<Spanned>, CalcError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while let Some(&c) = chars.get(index) {
        let position = index + 1;
        let single = match c {
            '+' => Some(Token::Plus),
            '-' => Some(Token::Minus),
            '*' => Some(Token::Star),
            '/' => Some(Token::Slash),
            '%' => Some(Token::Percent),
            '^' => Some(Token::Caret),
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            ',' => Some(Token::Comma),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push(Spanned { token, position });
            index += 1;
        } else if c.is_whitespace() {
            index += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let (value, next) = number(&chars, index)?;
            tokens.push(Spanned {
                token: Token::Number(value),
                position,
            });
            index = next;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = index;
            while chars
                .get(index)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                index += 1;
            }
            let name: String = chars.get(start..index).unwrap_or_default().iter().collect();
            tokens.push(Spanned {
                token: Token::Name(name),
                position,
            });
        } else {
            return Err(CalcError(format!(
                "unexpected character {c:?} at position {position}; expected a number, an operator (+ - * / % ^), a parenthesis or a function"
            )));
        }
    }
    tokens.push(Spanned {
        token: Token::End,
        position: chars.len() + 1,
    });
    Ok(tokens)
}

/// Reads a number starting at `start`: digits, an optional fraction and an
/// optional exponent. Returns its value and the index after it.
fn number(chars: &[char], start: usize) -> Result<(f64, usize), CalcError> {
    let digit_at = |index: usize| chars.get(index).is_some_and(char::is_ascii_digit);
    let mut index = start;
    while digit_at(index) {
        index += 1;
    }
    let mut digits = index - start;
    if chars.get(index) == Some(&'.') {
        index += 1;
        let fraction_start = index;
        while digit_at(index) {
            index += 1;
        }
        digits += index - fraction_start;
    }
    if digits == 0 {
        return Err(CalcError(format!(
            "unexpected \".\" at position {}; expected a digit before or after the decimal point",
            start + 1
        )));
    }
    // An exponent only when it is complete (`1e5`, `1e-5`): a lone `e` after
    // a number is left for the parser to report.
    if matches!(chars.get(index), Some('e' | 'E')) {
        let sign = usize::from(matches!(chars.get(index + 1), Some('+' | '-')));
        if digit_at(index + 1 + sign) {
            index += 1 + sign;
            while digit_at(index) {
                index += 1;
            }
        }
    }
    let text: String = chars.get(start..index).unwrap_or_default().iter().collect();
    let value: f64 = text.parse().map_err(|_| {
        CalcError(format!(
            "cannot read the number {text:?} at position {}",
            start + 1
        ))
    })?;
    if !value.is_finite() {
        return Err(CalcError(format!(
            "the number {text} at position {} is too large",
            start + 1
        )));
    }
    Ok((value, index))
}

// === parser ===

/// The functions, with how many arguments they take (`None`: one or more).
const FUNCTIONS: &[(&str, Option<usize>)] = &[
    ("sqrt", Some(1)),
    ("abs", Some(1)),
    ("round", Some(1)),
    ("floor", Some(1)),
    ("ceil", Some(1)),
    ("ln", Some(1)),
    ("log10", Some(1)),
    ("sin", Some(1)),
    ("cos", Some(1)),
    ("tan", Some(1)),
    ("min", None),
    ("max", None),
];

const EXPECTED_OPERAND: &str = "expected a number, \"(\" or a function";
const EXPECTED_OPERATOR: &str = "expected an operator or the end of the expression";

/// Binding powers (left, right) of the binary operators; higher binds tighter.
fn binding_power(token: &Token) -> Option<(u8, u8)> {
    match token {
        Token::Plus | Token::Minus => Some((1, 2)),
        Token::Star | Token::Slash | Token::Percent => Some((3, 4)),
        // Right-associative: the right side may hold another `^`.
        Token::Caret => Some((7, 6)),
        _ => None,
    }
}

/// Right binding power of unary `-`/`+`: looser than `^`, tighter than `*`.
const UNARY_POWER: u8 = 5;

struct Parser<'t> {
    tokens: &'t [Spanned],
    next: usize,
    /// False on the syntax-only pass: no arithmetic, no math errors.
    evaluate: bool,
}

impl<'t> Parser<'t> {
    fn new(tokens: &'t [Spanned], evaluate: bool) -> Self {
        Self {
            tokens,
            next: 0,
            evaluate,
        }
    }

    fn peek(&self) -> &Spanned {
        const END: Spanned = Spanned {
            token: Token::End,
            position: 0,
        };
        self.tokens.get(self.next).unwrap_or(&END)
    }

    fn advance(&mut self) -> Spanned {
        let token = self.peek().clone();
        if self.next < self.tokens.len() {
            self.next += 1;
        }
        token
    }

    fn parse_all(mut self) -> Result<f64, CalcError> {
        if self.peek().token == Token::End {
            return Err(CalcError(format!(
                "the expression is empty; {EXPECTED_OPERAND}"
            )));
        }
        let value = self.expression(0, 0)?;
        let rest = self.peek();
        if rest.token != Token::End {
            return Err(unexpected(rest, EXPECTED_OPERATOR));
        }
        Ok(value)
    }

    fn expression(&mut self, min_power: u8, depth: usize) -> Result<f64, CalcError> {
        if depth > MAX_DEPTH {
            return Err(CalcError(format!(
                "the expression is nested too deeply at position {} (at most {MAX_DEPTH} levels of parentheses, signs, functions and powers)",
                self.peek().position
            )));
        }
        let mut value = self.operand(depth)?;
        loop {
            let operator = self.peek().clone();
            let Some((left, right)) = binding_power(&operator.token) else {
                break;
            };
            if left < min_power {
                break;
            }
            self.advance();
            let rhs = self.expression(right, depth + 1)?;
            value = self.binary(&operator, value, rhs)?;
        }
        Ok(value)
    }

    fn operand(&mut self, depth: usize) -> Result<f64, CalcError> {
        let start = self.advance();
        match start.token {
            Token::Number(value) => Ok(value),
            Token::Minus => Ok(-self.expression(UNARY_POWER, depth + 1)?),
            Token::Plus => self.expression(UNARY_POWER, depth + 1),
            Token::Open => {
                let value = self.expression(0, depth + 1)?;
                let close = self.advance();
                if close.token != Token::Close {
                    return Err(CalcError(format!(
                        "unexpected {} at position {}; expected \")\" to close the \"(\" at position {}",
                        close.token, close.position, start.position
                    )));
                }
                Ok(value)
            }
            Token::Name(ref name) => match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                _ => self.call(name, start.position, depth),
            },
            _ => Err(unexpected(&start, EXPECTED_OPERAND)),
        }
    }

    fn call(&mut self, name: &str, position: usize, depth: usize) -> Result<f64, CalcError> {
        let Some(&(_, arity)) = FUNCTIONS.iter().find(|(known, _)| *known == name) else {
            let known: Vec<&str> = FUNCTIONS.iter().map(|(name, _)| *name).collect();
            return Err(CalcError(format!(
                "unknown name \"{name}\" at position {position}; the functions are {} and the constants pi and e",
                known.join(", ")
            )));
        };
        let open = self.advance();
        if open.token != Token::Open {
            return Err(CalcError(format!(
                "unexpected {} at position {}; expected \"(\" after the function {name}",
                open.token, open.position
            )));
        }
        let mut args = Vec::new();
        if self.peek().token == Token::Close {
            let close = self.advance();
            return Err(CalcError(format!(
                "{name} at position {position} needs {}, got none (\")\" at position {})",
                describe_arity(arity),
                close.position
            )));
        }
        loop {
            args.push(self.expression(0, depth + 1)?);
            let next = self.advance();
            match next.token {
                Token::Comma => {}
                Token::Close => break,
                _ => {
                    return Err(CalcError(format!(
                        "unexpected {} at position {}; expected \",\" or \")\" in the arguments of {name}",
                        next.token, next.position
                    )));
                }
            }
        }
        if let Some(arity) = arity
            && args.len() != arity
        {
            return Err(CalcError(format!(
                "{name} at position {position} takes {}, got {}",
                describe_arity(Some(arity)),
                args.len()
            )));
        }
        if !self.evaluate {
            return Ok(0.0);
        }
        apply(name, position, &args)
    }

    fn binary(&self, operator: &Spanned, lhs: f64, rhs: f64) -> Result<f64, CalcError> {
        if !self.evaluate {
            return Ok(0.0);
        }
        let position = operator.position;
        let value = match operator.token {
            Token::Plus => lhs + rhs,
            Token::Minus => lhs - rhs,
            Token::Star => lhs * rhs,
            Token::Slash => {
                if rhs == 0.0 {
                    return Err(CalcError(format!(
                        "division by zero at position {position}"
                    )));
                }
                lhs / rhs
            }
            Token::Percent => {
                if rhs == 0.0 {
                    return Err(CalcError(format!("modulo by zero at position {position}")));
                }
                lhs % rhs
            }
            Token::Caret => {
                if lhs == 0.0 && rhs < 0.0 {
                    return Err(CalcError(format!(
                        "0 raised to a negative power (at position {position}) is a division by zero"
                    )));
                }
                lhs.powf(rhs)
            }
            _ => return Err(unexpected(operator, EXPECTED_OPERATOR)),
        };
        finite(value, &format!("{} at position {position}", operator.token))
    }
}

fn unexpected(found: &Spanned, expected: &str) -> CalcError {
    CalcError(format!(
        "unexpected {} at position {}; {expected}",
        found.token, found.position
    ))
}

fn describe_arity(arity: Option<usize>) -> &'static str {
    match arity {
        Some(1) => "exactly 1 argument",
        _ => "at least 1 argument",
    }
}

/// Applies a function to already-evaluated arguments.
fn apply(name: &str, position: usize, args: &[f64]) -> Result<f64, CalcError> {
    let first = args.first().copied().unwrap_or(f64::NAN);
    let value = match name {
        "sqrt" => {
            if first < 0.0 {
                return Err(CalcError(format!(
                    "sqrt at position {position} of a negative number ({first}) is not a real number"
                )));
            }
            first.sqrt()
        }
        "ln" | "log10" => {
            if first <= 0.0 {
                return Err(CalcError(format!(
                    "{name} at position {position} is only defined for positive numbers, got {first}"
                )));
            }
            if name == "ln" {
                first.ln()
            } else {
                first.log10()
            }
        }
        "abs" => first.abs(),
        "round" => first.round(),
        "floor" => first.floor(),
        "ceil" => first.ceil(),
        "sin" => first.sin(),
        "cos" => first.cos(),
        "tan" => first.tan(),
        "min" => args.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => args.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        _ => {
            return Err(CalcError(format!(
                "unknown function \"{name}\" at position {position}"
            )));
        }
    };
    finite(value, &format!("{name} at position {position}"))
}

/// Refuses infinite and undefined results, naming the operation.
fn finite(value: f64, what: &str) -> Result<f64, CalcError> {
    if value.is_nan() {
        Err(CalcError(format!(
            "the result of {what} is not a real number"
        )))
    } else if value.is_infinite() {
        Err(CalcError(format!(
            "the result of {what} is too large (overflow)"
        )))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expression: &str) -> f64 {
        evaluate(expression).unwrap_or_else(|err| panic!("{expression}: {err}"))
    }

    fn error(expression: &str) -> String {
        match evaluate(expression) {
            Ok(value) => panic!("{expression} gave {value}, expected an error"),
            Err(err) => err.to_string(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn numbers_in_every_form() {
        assert_eq!(eval("42"), 42.0);
        assert_eq!(eval("3.25"), 3.25);
        assert_eq!(eval(".5"), 0.5);
        assert_eq!(eval("5."), 5.0);
        assert_eq!(eval("1e3"), 1000.0);
        assert_eq!(eval("2.5E-2"), 0.025);
        assert_eq!(eval("1e+2"), 100.0);
        assert_eq!(eval("  7\t"), 7.0);
    }

    #[test]
    fn precedence() {
        assert_eq!(eval("17*23+12"), 403.0);
        assert_eq!(eval("2+3*4"), 14.0);
        assert_eq!(eval("(2+3)*4"), 20.0);
        assert_eq!(eval("10-4/2"), 8.0);
        assert_eq!(eval("2*3^2"), 18.0);
        assert_eq!(eval("7+10%4"), 9.0);
        assert_eq!(eval("-2^2"), -4.0);
        assert_eq!(eval("(-2)^2"), 4.0);
        assert_eq!(eval("2^-1"), 0.5);
        assert_eq!(eval("-3*-2"), 6.0);
        assert_eq!(eval("+4 - +1"), 3.0);
        assert_eq!(eval("--3"), 3.0);
    }

    #[test]
    fn associativity() {
        assert_eq!(eval("10-3-2"), 5.0);
        assert_eq!(eval("64/4/2"), 8.0);
        assert_eq!(eval("100%7%3"), 2.0);
        assert_eq!(eval("2^3^2"), 512.0);
    }

    #[test]
    fn modulo_follows_the_dividend() {
        assert_eq!(eval("7%3"), 1.0);
        assert_eq!(eval("-7%3"), -1.0);
        assert_eq!(eval("7.5%2"), 1.5);
    }

    #[test]
    fn every_function_and_constant() {
        assert_eq!(eval("sqrt(16)"), 4.0);
        assert_eq!(eval("abs(-2.5)"), 2.5);
        assert_eq!(eval("round(2.5)"), 3.0);
        assert_eq!(eval("round(-2.5)"), -3.0);
        assert_eq!(eval("floor(-1.5)"), -2.0);
        assert_eq!(eval("ceil(1.2)"), 2.0);
        assert!(close(eval("ln(e)"), 1.0));
        assert!(close(eval("log10(1000)"), 3.0));
        assert!(close(eval("sin(pi/2)"), 1.0));
        assert!(close(eval("cos(pi)"), -1.0));
        assert!(close(eval("tan(pi/4)"), 1.0));
        assert_eq!(eval("min(3)"), 3.0);
        assert_eq!(eval("min(3, -1, 2)"), -1.0);
        assert_eq!(eval("max(3, -1, 2*4)"), 8.0);
        assert!(close(eval("pi"), std::f64::consts::PI));
        assert!(close(eval("2*e"), 2.0 * std::f64::consts::E));
        assert_eq!(eval("max(min(4, 9), sqrt(81)) + abs(-(1))"), 10.0);
    }

    #[test]
    fn syntax_errors_say_where_and_what_was_expected() {
        assert_eq!(
            error("(1 + 2 *)"),
            "unexpected \")\" at position 9; expected a number, \"(\" or a function"
        );
        assert_eq!(
            error("1 + 2)"),
            "unexpected \")\" at position 6; expected an operator or the end of the expression"
        );
        assert_eq!(
            error("(1 + 2"),
            "unexpected end of the expression at position 7; expected \")\" to close the \"(\" at position 1"
        );
        assert_eq!(
            error("2 $ 3"),
            "unexpected character '$' at position 3; expected a number, an operator (+ - * / % ^), a parenthesis or a function"
        );
        assert!(error("").contains("empty"));
        assert!(error("   ").contains("empty"));
        assert!(error("2 3").contains("unexpected number 3 at position 3"));
        assert!(error("2e").contains("unexpected name \"e\" at position 2"));
        assert!(error(".").contains("position 1"));
        assert!(error("1..2").contains("position 3"));
        assert!(error("x + 1").starts_with("unknown name \"x\" at position 1"));
        assert!(error("sqrt 4").contains("expected \"(\" after the function sqrt"));
        assert!(error("sqrt(1, 2)").contains("sqrt at position 1 takes exactly 1 argument, got 2"));
        assert!(error("max()").contains("max at position 1 needs at least 1 argument"));
        assert!(error("min(1; 2)").contains("unexpected character ';' at position 6"));
        assert!(error("min(1 2)").contains("expected \",\" or \")\" in the arguments of min"));
        assert!(error("pi(2)").contains("unexpected \"(\" at position 3"));
        assert!(error("1 +").contains("unexpected end of the expression at position 4"));
        assert!(error("* 2").contains("unexpected \"*\" at position 1"));
    }

    #[test]
    fn math_errors_name_the_operation() {
        assert_eq!(error("1 + 4/0"), "division by zero at position 6");
        assert_eq!(error("5 % (2-2)"), "modulo by zero at position 3");
        assert!(error("0^-1").contains("negative power"));
        assert!(error("sqrt(-4)").contains("sqrt at position 1 of a negative number (-4)"));
        assert!(error("ln(0)").contains("only defined for positive numbers"));
        assert!(error("log10(-1)").contains("log10 at position 1"));
        assert!(error("(-8)^(1/3)").contains("not a real number"));
        assert!(error("10^400").contains("too large (overflow)"));
        assert!(error("2^2^2^2^2").contains("overflow"));
        assert!(error("1e308*10").contains("overflow"));
        assert!(error("1e999").contains("too large"));
    }

    #[test]
    fn a_syntax_error_wins_over_an_earlier_math_error() {
        assert!(error("1/0 + )").contains("unexpected \")\""));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(error(&deep).contains("too long"));
        let deep = format!("{}1{}", "(".repeat(1_000), ")".repeat(1_000));
        assert!(error(&deep).contains("nested too deeply"));
        assert!(error(&"-".repeat(500)).contains("nested too deeply"));
        assert!(error(&format!("2{}", "^2".repeat(500))).contains("nested too deeply"));
        let shallow = format!("{}1{}", "(".repeat(30), ")".repeat(30));
        assert_eq!(eval(&shallow), 1.0);
        // Long flat chains are not nesting.
        assert_eq!(eval(&vec!["1"; 1000].join("+")), 1000.0);
    }

    #[test]
    fn results_print_as_integers_when_exact() {
        assert_eq!(to_json(403.0).to_string(), "403");
        assert_eq!(to_json(-0.0).to_string(), "0");
        assert_eq!(to_json(-12.0).to_string(), "-12");
        assert_eq!(to_json(0.5).to_string(), "0.5");
        assert_eq!(
            to_json(9_007_199_254_740_991.0).to_string(),
            "9007199254740991"
        );
        assert_eq!(
            to_json(9_007_199_254_740_992.0).to_string(),
            "9007199254740992.0"
        );
        assert_eq!(to_json(1e300).to_string(), "1e+300");
        assert_eq!(
            serde_json::json!({"result": to_json(eval("17*23+12"))}).to_string(),
            r#"{"result":403}"#
        );
    }

    /// A tiny deterministic generator (xorshift), so the property test needs
    /// no extra crate and is reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn garbage_never_panics_and_results_are_finite() {
        const ALPHABET: &[u8] = b"0123456789.eE+-*/%^(),  pisqrtmaxlnabs\x00\xff";
        let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let length = usize::try_from(random.next() % 40).unwrap();
            let bytes: Vec<u8> = (0..length)
                .map(|_| {
                    let pick = usize::try_from(random.next()).unwrap() % (ALPHABET.len() + 8);
                    ALPHABET
                        .get(pick)
                        .copied()
                        .unwrap_or_else(|| u8::try_from(random.next() % 256).unwrap())
                })
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(value) = evaluate(&text) {
                assert!(value.is_finite(), "{text:?} gave {value}");
            }
        }
    }
}
