//! Streaming the tool calls a [`ConstraintKind::ToolCalls`](inferd_protocol::ConstraintKind)
//! grammar forces, as OpenAI streams them: a call's name as soon as it is
//! complete, then its arguments in fragments as they are generated.
//!
//! The grammar fixes the layout byte for byte
//! (`<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>`, calls
//! separated by a newline), so the scanner needs no lookahead beyond that.

use crate::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

const NAME_KEY: &str = "{\"name\": \"";
const ARGS_KEY: &str = "\", \"arguments\": ";

/// A piece of call number `call`: its name first, then argument fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPiece {
    pub call: usize,
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a call's name is complete.
    Head,
    /// Inside the arguments object.
    Args {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After the arguments: `}` and the closing tag.
    Tail,
}

/// Scans forced tool-call output as it arrives.
#[derive(Debug)]
pub struct ToolCallStream {
    buf: String,
    pos: usize,
    state: State,
    call: usize,
}

impl Default for ToolCallStream {
    fn default() -> Self {
        ToolCallStream {
            buf: String::new(),
            pos: 0,
            state: State::Head,
            call: 0,
        }
    }
}

impl ToolCallStream {
    /// Adds output text; returns the pieces it completes. Text outside the
    /// layout (which the grammar does not allow) is an error naming it.
    pub fn push(&mut self, text: &str) -> Result<Vec<CallPiece>, String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let rest = &self.buf[self.pos..];
            match self.state {
                State::Head => {
                    let rest = rest
                        .strip_prefix('\n')
                        .filter(|_| self.call > 0)
                        .unwrap_or(rest);
                    let skipped = self.buf.len() - self.pos - rest.len();
                    let head = format!("{TOOL_CALL_OPEN}\n{NAME_KEY}");
                    if rest.len() < head.len() {
                        return check_prefix(&head, rest).map(|_| out);
                    }
                    check_prefix(&head, rest)?;
                    let after = &rest[head.len()..];
                    let Some(end) = after.find('"') else {
                        return Ok(out);
                    };
                    let tail = &after[end..];
                    if tail.len() < ARGS_KEY.len() {
                        return check_prefix(ARGS_KEY, tail).map(|_| out);
                    }
                    check_prefix(ARGS_KEY, tail)?;
                    out.push(CallPiece {
                        call: self.call,
                        name: Some(after[..end].to_owned()),
                        arguments: String::new(),
                    });
                    self.pos += skipped + head.len() + end + ARGS_KEY.len();
                    self.state = State::Args {
                        depth: 0,
                        in_string: false,
                        escaped: false,
                    };
                }
                State::Args {
                    mut depth,
                    mut in_string,
                    mut escaped,
                } => {
                    let mut done = None;
                    for (i, c) in rest.char_indices() {
                        if in_string {
                            match (escaped, c) {
                                (true, _) => escaped = false,
                                (false, '\\') => escaped = true,
                                (false, '"') => in_string = false,
                                _ => {}
                            }
                        } else {
                            match c {
                                '"' => in_string = true,
                                '{' | '[' => depth += 1,
                                '}' | ']' => depth = depth.saturating_sub(1),
                                _ => {}
                            }
                            if depth == 0 {
                                done = Some(i + c.len_utf8());
                                break;
                            }
                        }
                    }
                    let taken = done.unwrap_or(rest.len());
                    if taken > 0 {
                        out.push(CallPiece {
                            call: self.call,
                            name: None,
                            arguments: rest[..taken].to_owned(),
                        });
                    }
                    self.pos += taken;
                    match done {
                        Some(_) => self.state = State::Tail,
                        None => {
                            self.state = State::Args {
                                depth,
                                in_string,
                                escaped,
                            };
                            return Ok(out);
                        }
                    }
                }
                State::Tail => {
                    let tail = format!("}}\n{TOOL_CALL_CLOSE}");
                    if rest.len() < tail.len() {
                        return check_prefix(&tail, rest).map(|_| out);
                    }
                    check_prefix(&tail, rest)?;
                    self.pos += tail.len();
                    self.call += 1;
                    self.state = State::Head;
                }
            }
        }
    }

    /// Everything pushed so far.
    pub fn text(&self) -> &str {
        &self.buf
    }

    /// Calls completed so far.
    pub fn calls(&self) -> usize {
        self.call
    }
}

/// Ok when `text` and `expected` agree on their common length.
fn check_prefix(expected: &str, text: &str) -> Result<(), String> {
    let n = expected.len().min(text.len());
    if expected.as_bytes()[..n] == text.as_bytes()[..n] {
        Ok(())
    } else {
        Err(format!(
            "tool-call output left the forced layout: expected {expected:?}, got {:?}",
            String::from_utf8_lossy(&text.as_bytes()[..n])
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pieces: &[&str]) -> Vec<CallPiece> {
        let mut s = ToolCallStream::default();
        pieces.iter().flat_map(|p| s.push(p).unwrap()).collect()
    }

    #[test]
    fn name_first_then_argument_fragments() {
        let out = feed(&[
            "<tool_call>\n{\"na",
            "me\": \"get_weather\", \"argu",
            "ments\": {\"city\": \"Pa",
            "ris {x}\"}",
            "}\n</tool_call>",
        ]);
        assert_eq!(out[0].name.as_deref(), Some("get_weather"));
        let args: String = out[1..].iter().map(|p| p.arguments.as_str()).collect();
        assert_eq!(args, "{\"city\": \"Paris {x}\"}");
        assert!(out.iter().all(|p| p.call == 0));
        assert!(out[1..].iter().all(|p| p.name.is_none()));
    }

    #[test]
    fn several_calls_are_numbered() {
        let text = "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {\"x\": [1, {\"y\": 2}]}}\n</tool_call>";
        // Fed one character at a time, as the worst tokenization would.
        let mut s = ToolCallStream::default();
        let mut out = Vec::new();
        for c in text.chars() {
            out.extend(s.push(&c.to_string()).unwrap());
        }
        assert_eq!(s.calls(), 2);
        let names: Vec<_> = out.iter().filter_map(|p| p.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
        let args_b: String = out
            .iter()
            .filter(|p| p.call == 1)
            .map(|p| p.arguments.as_str())
            .collect();
        assert_eq!(args_b, "{\"x\": [1, {\"y\": 2}]}");
    }

    #[test]
    fn text_outside_the_layout_is_an_error() {
        let mut s = ToolCallStream::default();
        assert!(s.push("Sure! ").is_err());
    }
}
