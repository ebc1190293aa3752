//! Arithmetic expressions, parsed (never evaluated as code) and computed
//! exactly: `+ - * / ^`, parentheses, decimals, `%` as hundredths, `x% of y`,
//! and the words plus, minus, times, multiplied by, divided by, over, of.
//!
//! Grammar (`^` binds right, tightest; unary minus below it, so −2^2 = −4):
//! expr := term (("+" | "-") term)*;  term := unary (("*" | "/" | "of") unary)*;
//! unary := ("-" | "+") unary | power;  power := postfix ("^" unary)?;
//! postfix := primary "%"?;  primary := number | "(" expr ")".

use crate::rational::{Rational, RationalError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArithError {
    #[error("not an arithmetic expression: {0}")]
    Syntax(String),
    #[error(transparent)]
    Value(#[from] RationalError),
    #[error("exponents must be whole numbers from -64 to 64")]
    Exponent,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Rational),
    Op(char),
    Open,
    Close,
}

fn lex(text: &str) -> Result<Vec<Tok>, ArithError> {
    let lower = text.to_lowercase();
    let mut s = lower.as_str();
    let mut out = Vec::new();
    let words: [(&str, char); 8] = [
        ("multiplied by", '*'),
        ("divided by", '/'),
        ("times", '*'),
        ("plus", '+'),
        ("minus", '-'),
        ("over", '/'),
        ("of", 'o'),
        ("percent", '%'),
    ];
    'next: while let Some(c) = s.chars().next() {
        if c.is_whitespace() || c == ',' && !out.is_empty() && s[1..].starts_with(' ') {
            s = &s[c.len_utf8()..];
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            let end = s
                .char_indices()
                .find(|&(i, ch)| {
                    !(ch.is_ascii_digit()
                        || ch == '.'
                        || ch == '_'
                        || (ch == ',' && s[i + 1..].starts_with(|d: char| d.is_ascii_digit())))
                })
                .map_or(s.len(), |(i, _)| i);
            let literal: String = s[..end]
                .chars()
                .filter(|&ch| ch != ',' && ch != '_')
                .collect();
            let n = Rational::parse_decimal(&literal)
                .ok_or_else(|| ArithError::Syntax(format!("bad number {:?}", &s[..end])))?;
            out.push(Tok::Num(n));
            s = &s[end..];
            continue;
        }
        for (w, op) in words {
            if let Some(rest) = s.strip_prefix(w) {
                if !rest.starts_with(|ch: char| ch.is_alphabetic()) {
                    out.push(Tok::Op(op));
                    s = rest;
                    continue 'next;
                }
            }
        }
        let tok = match c {
            '+' | '-' | '*' | '/' | '^' | '%' => Tok::Op(c),
            '×' | 'x' => Tok::Op('*'),
            '÷' => Tok::Op('/'),
            '−' => Tok::Op('-'),
            '(' => Tok::Open,
            ')' => Tok::Close,
            _ => return Err(ArithError::Syntax(format!("unexpected {c:?}"))),
        };
        out.push(tok);
        s = &s[c.len_utf8()..];
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Tok::Op(op)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Rational, ArithError> {
        if depth > 64 {
            return Err(ArithError::Syntax("nested too deeply".into()));
        }
        let mut v = self.term(depth)?;
        loop {
            if self.eat('+') {
                v = v.plus(self.term(depth)?)?;
            } else if self.eat('-') {
                v = v.minus(self.term(depth)?)?;
            } else {
                return Ok(v);
            }
        }
    }

    fn term(&mut self, depth: usize) -> Result<Rational, ArithError> {
        let mut v = self.unary(depth)?;
        loop {
            if self.eat('*') || self.eat('o') {
                v = v.times(self.unary(depth)?)?;
            } else if self.eat('/') {
                v = v.over(self.unary(depth)?)?;
            } else {
                return Ok(v);
            }
        }
    }

    fn unary(&mut self, depth: usize) -> Result<Rational, ArithError> {
        if self.eat('-') {
            return Ok(self.unary(depth + 1)?.negated());
        }
        if self.eat('+') {
            return self.unary(depth + 1);
        }
        let base = self.postfix(depth)?;
        if self.eat('^') {
            let exp = self.unary(depth + 1)?;
            if !exp.is_integer() || exp > Rational::int(64) || exp < Rational::int(-64) {
                return Err(ArithError::Exponent);
            }
            return Ok(base.pow(exp.to_f64() as i32)?);
        }
        Ok(base)
    }

    fn postfix(&mut self, depth: usize) -> Result<Rational, ArithError> {
        let v = self.primary(depth)?;
        if self.eat('%') {
            return Ok(v.over(Rational::int(100))?);
        }
        Ok(v)
    }

    fn primary(&mut self, depth: usize) -> Result<Rational, ArithError> {
        match self.toks.get(self.at).cloned() {
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(n)
            }
            Some(Tok::Open) => {
                self.at += 1;
                let v = self.expr(depth + 1)?;
                if self.toks.get(self.at) != Some(&Tok::Close) {
                    return Err(ArithError::Syntax("a `(` is not closed".into()));
                }
                self.at += 1;
                Ok(v)
            }
            Some(t) => Err(ArithError::Syntax(format!(
                "expected a number, found {t:?}"
            ))),
            None => Err(ArithError::Syntax("the expression ends too early".into())),
        }
    }
}

/// The exact value of `text`.
pub fn evaluate(text: &str) -> Result<Rational, ArithError> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err(ArithError::Syntax("empty".into()));
    }
    let mut p = Parser { toks, at: 0 };
    let v = p.expr(0)?;
    if p.at != p.toks.len() {
        return Err(ArithError::Syntax(format!(
            "unexpected {:?} after the expression",
            p.toks[p.at]
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> String {
        evaluate(s)
            .map(|v| v.display())
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    #[test]
    fn expressions_are_exact() {
        for (text, want) in [
            ("17% of 240", "40.8"),
            ("0.1 + 0.2", "0.3"),
            ("2 + 3 * 4", "14"),
            ("(2 + 3) * 4", "20"),
            ("2^10", "1024"),
            ("2^3^2", "512"),
            ("-2^2", "-4"),
            ("10 / 4", "2.5"),
            ("1 / 3", "1/3 ≈ 0.333333333333"),
            ("12 times 12", "144"),
            ("100 divided by 8", "12.5"),
            ("50 percent of 30", "15"),
            ("1,234,567 + 1", "1234568"),
            ("7 − 10", "-3"),
            ("3 × 4 ÷ 6", "2"),
            ("2^-1", "0.5"),
        ] {
            assert_eq!(eval(text), want, "{text}");
        }
        for bad in [
            "", "2 +", "(1 + 2", "1 / 0", "2 ^ 0.5", "10^100", "abc", "1 2", "2 ^ 99",
        ] {
            assert!(eval(bad).starts_with("error"), "{bad}: {}", eval(bad));
        }
        assert!(eval(&"(".repeat(200)).starts_with("error"));
    }
}
