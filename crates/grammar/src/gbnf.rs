//! llama.cpp's GBNF grammars, translated to the Lark dialect llguidance compiles.
//!
//! GBNF: `name ::= alternatives`, the start rule is `root`, terminals are
//! `"literals"`, `[character classes]` and `.`, with `( )`, `|`, `* + ?` and
//! `{m}`, `{m,}`, `{m,n}`; `#` starts a comment. Lark writes rules as `name: ...`,
//! character classes as `/regex/`, and starts at `start`. Names are kept (with `-`
//! as `_`) so that the compiler's messages point at the user's rules.

use std::fmt::Write;

/// Translates GBNF to Lark; an error names the line and what was wrong.
pub fn to_lark(src: &str) -> Result<String, String> {
    let tokens = lex(src)?;
    let mut out = String::new();
    let mut has_root = false;
    let mut i = 0;
    while i < tokens.len() {
        let (line, Tok::Name(name)) = &tokens[i] else {
            return Err(format!(
                "line {}: expected a rule (`name ::= ...`), found {}",
                tokens[i].0,
                tokens[i].1.describe()
            ));
        };
        if !matches!(tokens.get(i + 1), Some((_, Tok::Defines))) {
            return Err(format!("line {line}: expected `::=` after `{name}`"));
        }
        has_root |= name == "root";
        let _ = write!(out, "{}:", rule_name(name));
        i += 2;
        let start = i;
        // A rule's body runs up to the next `name ::=`.
        while i < tokens.len()
            && !(matches!(tokens[i].1, Tok::Name(_))
                && matches!(tokens.get(i + 1), Some((_, Tok::Defines))))
        {
            out.push(' ');
            out.push_str(&tokens[i].1.to_lark()?);
            i += 1;
        }
        if i == start {
            return Err(format!("line {line}: the rule `{name}` is empty"));
        }
        out.push('\n');
    }
    if !has_root {
        return Err("the grammar has no `root` rule (GBNF starts at `root`)".into());
    }
    Ok(format!("start: root\n{out}"))
}

fn rule_name(name: &str) -> String {
    let n = name.replace('-', "_").to_lowercase();
    // `start` is Lark's entry point; a GBNF rule of that name is renamed.
    if n == "start" {
        "start_".into()
    } else {
        n
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Name(String),
    Defines,
    /// Decoded text of a `"literal"`.
    Literal(String),
    /// A `[...]` class as written (a valid regex class).
    Class(String),
    Any,
    /// `( ) | * + ?` and `{...}` repetitions, as written.
    Op(String),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Name(n) => format!("`{n}`"),
            Tok::Defines => "`::=`".into(),
            Tok::Literal(l) => format!("the literal {l:?}"),
            Tok::Class(c) => format!("`{c}`"),
            Tok::Any => "`.`".into(),
            Tok::Op(o) => format!("`{o}`"),
        }
    }

    fn to_lark(&self) -> Result<String, String> {
        Ok(match self {
            Tok::Name(n) => rule_name(n),
            Tok::Defines => unreachable!("rule starts are split off before"),
            Tok::Literal(l) => serde_json::to_string(l).expect("a string serializes"),
            Tok::Class(c) => format!("/{}/", c.replace('/', "\\/")),
            Tok::Any => "/(?s:.)/".into(),
            Tok::Op(o) => o.clone(),
        })
    }
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                out.push((line, Tok::Defines));
                i += 3;
            }
            '"' => {
                let (text, next) = literal(&chars, i + 1, line)?;
                out.push((line, Tok::Literal(text)));
                i = next;
            }
            '[' => {
                let start = i;
                i += 1;
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if i < chars.len() && chars[i] == '\n' {
                        return Err(format!("line {line}: unterminated character class"));
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("line {line}: unterminated character class"));
                }
                i += 1;
                out.push((line, Tok::Class(chars[start..i].iter().collect())));
            }
            '.' => {
                out.push((line, Tok::Any));
                i += 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push((line, Tok::Op(c.to_string())));
                i += 1;
            }
            '{' => {
                let start = i;
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("line {line}: unterminated `{{` repetition"));
                }
                i += 1;
                let rep: String = chars[start..i]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let inner = &rep[1..rep.len() - 1];
                let ok = !inner.is_empty()
                    && inner.split(',').count() <= 2
                    && inner
                        .split(',')
                        .all(|p| p.chars().all(|c| c.is_ascii_digit()))
                    && !inner.starts_with(',');
                if !ok {
                    return Err(format!(
                        "line {line}: bad repetition `{rep}` (use {{m}}, {{m,}} or {{m,n}})"
                    ));
                }
                out.push((line, Tok::Op(rep)));
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '-' || chars[i] == '_')
                {
                    i += 1;
                }
                out.push((line, Tok::Name(chars[start..i].iter().collect())));
            }
            other => return Err(format!("line {line}: unexpected character {other:?}")),
        }
    }
    Ok(out)
}

/// Decodes a literal's escapes (`\n \r \t \\ \" \xHH \uHHHH \UHHHHHHHH`) from
/// `chars[i..]` up to its closing quote; returns the text and the index after it.
fn literal(chars: &[char], mut i: usize, line: usize) -> Result<(String, usize), String> {
    let mut text = String::new();
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((text, i + 1)),
            '\n' => break,
            '\\' => {
                let e = *chars
                    .get(i + 1)
                    .ok_or_else(|| format!("line {line}: unterminated literal"))?;
                i += 2;
                let hex = |n: usize, i: usize| -> Result<char, String> {
                    let s: String = chars.get(i..i + n).unwrap_or(&[]).iter().collect();
                    u32::from_str_radix(&s, 16)
                        .ok()
                        .filter(|_| s.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("line {line}: bad escape \\{e}{s}"))
                };
                match e {
                    'n' => text.push('\n'),
                    'r' => text.push('\r'),
                    't' => text.push('\t'),
                    'x' => {
                        text.push(hex(2, i)?);
                        i += 2;
                    }
                    'u' => {
                        text.push(hex(4, i)?);
                        i += 4;
                    }
                    'U' => {
                        text.push(hex(8, i)?);
                        i += 8;
                    }
                    other => text.push(other),
                }
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    Err(format!("line {line}: unterminated literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_rules_classes_literals_and_repetitions() {
        let src = r#"
# a comment
root   ::= answer ("," ws answer){0,2}
answer ::= "yes" | "no" | [0-9]+ "\x41\n"
ws     ::= [ \t]*   # trailing comment
wild-card ::= .
"#;
        let lark = to_lark(src).unwrap();
        assert_eq!(
            lark,
            "start: root\nroot: answer ( \",\" ws answer ) {0,2}\nanswer: \"yes\" | \"no\" | /[0-9]/ + \"A\\n\"\nws: /[ \\t]/ *\nwild_card: /(?s:.)/\n"
        );
    }

    #[test]
    fn rules_may_span_lines() {
        let lark = to_lark("root ::= a\n  | b\na ::= \"a\"\nb ::= \"b\"").unwrap();
        assert_eq!(lark, "start: root\nroot: a | b\na: \"a\"\nb: \"b\"\n");
    }

    #[test]
    fn errors_name_the_line() {
        for (src, want) in [
            ("root ::= \"a", "line 1: unterminated literal"),
            ("a ::= \"x\"", "no `root` rule"),
            ("root ::= [a-z", "line 1: unterminated character class"),
            ("::= \"a\"", "expected a rule"),
            ("root ::= \"a\"{x}", "bad repetition"),
            ("root ::=\nx ::= \"a\"", "the rule `root` is empty"),
        ] {
            let e = to_lark(src).unwrap_err();
            assert!(e.contains(want), "{src:?}: {e}");
        }
    }
}
