//! Context budgets: a chat request is fitted to the window of the tier about
//! to answer it, before that tier's backend renders its template.
//!
//! The prompt is read as sections: `system` (the leading system and developer
//! messages), `tools`, `memory` and `documents` (the request's extensions, or
//! none), `history` (the turns before the current one; a turn is a user
//! message and everything up to the next, so a tool call always stays with
//! its result), and `current` (the last user message and what follows it).
//! The answer's reserve is `max_tokens`, or `output_reserve` without it.
//!
//! Tokens are counted by the backend itself when it can (a local model: its
//! template and tokenizer, exact), else estimated at one per 3 bytes plus 8
//! per message. A section's tokens are its marginal cost: the prompt with it
//! less the prompt without it. When the prompt plus the reserve exceed the
//! window, pieces are dropped: first any section over its own budget (tokens,
//! or a share of the window) down to that budget, then sections in `cut_order`
//! (by default documents, memory, tools, history) until the prompt fits.
//! Documents go lowest score first; memory oldest first; tools from the end of
//! the list (never the one `tool_choice` names, and one is kept when it
//! requires a call); history drops its oldest middle turns, keeping the first
//! and the last, and only then those two. The system prompt and the current
//! turn are never cut: when they alone exceed the room, the request is refused
//! with the numbers. The cut is worked out from the pieces' shares of their
//! section, then the prompt is counted again, and cut further until it fits
//! (or given back a piece while it still fits), so the result holds to the
//! token. With `summary`, the dropped turns are summarised by a model into
//! one system message put where they were (room for it is kept when history
//! is cut; a summary that would not fit is left out).

use std::sync::Arc;

use futures_util::StreamExt;
use inferd_backend::{Backend, BackendError, Event, Request};
use inferd_protocol::{
    ChatMessage, ContextReport, ProtocolError, Role, SectionTokens, ToolMode, ValidChatRequest,
};

/// A section's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Tokens(usize),
    /// A share of the window, in (0, 1].
    Share(f64),
}

impl Limit {
    fn of(self, window: usize) -> usize {
        match self {
            Limit::Tokens(n) => n,
            Limit::Share(s) => (window as f64 * s).floor() as usize,
        }
    }
}

/// The sections that can be cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Tools,
    Memory,
    Documents,
    History,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Documents,
        Section::Memory,
        Section::Tools,
        Section::History,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Tools => "tools",
            Section::Memory => "memory",
            Section::Documents => "documents",
            Section::History => "history",
        }
    }

    pub fn parse(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Summaries of dropped history.
pub struct Summary {
    pub backend: Arc<dyn Backend>,
    /// The summary's length bound, in tokens.
    pub max_tokens: usize,
}

pub struct Budgets {
    /// Tokens kept for the answer when the request sets no `max_tokens`.
    pub output_reserve: usize,
    pub limits: Vec<(Section, Limit)>,
    /// Cut first to last.
    pub cut_order: Vec<Section>,
    pub summary: Option<Summary>,
}

/// Prompt tokens estimated from text: one per 3 bytes (BPE vocabularies
/// average about 4 bytes per token on English; the margin covers code and
/// other languages).
pub fn estimate(text_bytes: usize) -> usize {
    text_bytes.div_ceil(3)
}

/// A chat request's prompt tokens estimated: its text, its tools' JSON, and
/// 8 per message for the chat template.
pub fn estimate_chat(r: &ValidChatRequest) -> usize {
    let messages = r.with_sections();
    let bytes: usize = messages.iter().map(message_bytes).sum::<usize>()
        + r.tools.iter().map(tool_bytes).sum::<usize>();
    estimate(bytes) + 8 * messages.len()
}

/// The estimated tokens of what is never cut: the system prompt and the
/// current turn.
pub fn essential(r: &ValidChatRequest) -> usize {
    let p = Parts::of(r);
    let kept = r.messages[..p.system]
        .iter()
        .chain(&r.messages[p.current..]);
    let (bytes, n) = kept.fold((0, 0), |(b, n), m| (b + message_bytes(m), n + 1));
    estimate(bytes) + 8 * n
}

fn message_bytes(m: &ChatMessage) -> usize {
    m.text().len()
        + m.tool_calls
            .as_ref()
            .map_or(0, |c| serde_json::to_string(c).map_or(0, |s| s.len()))
}

fn tool_bytes(t: &inferd_protocol::Tool) -> usize {
    serde_json::to_string(&t.function).map_or(0, |s| s.len())
}

/// The counts of one backend.
struct Counter<'a> {
    backend: &'a dyn Backend,
    exact: bool,
}

impl Counter<'_> {
    fn count(&self, r: &ValidChatRequest) -> Result<usize, BackendError> {
        if self.exact {
            if let Some(n) = self.backend.count_prompt(r) {
                return n;
            }
        }
        Ok(estimate_chat(r))
    }
}

/// The request read as sections, and which pieces are kept.
struct Parts<'a> {
    r: &'a ValidChatRequest,
    /// Leading system messages: `messages[..system]`.
    system: usize,
    /// The current turn: `messages[current..]`.
    current: usize,
    /// History turns as ranges of `messages`.
    turns: Vec<std::ops::Range<usize>>,
    keep_turn: Vec<bool>,
    keep_doc: Vec<bool>,
    keep_mem: Vec<bool>,
    keep_tool: Vec<bool>,
}

impl<'a> Parts<'a> {
    fn of(r: &'a ValidChatRequest) -> Parts<'a> {
        let m = &r.messages;
        let system = m
            .iter()
            .position(|m| !matches!(m.role, Role::System | Role::Developer))
            .unwrap_or(m.len());
        let current = m
            .iter()
            .rposition(|m| m.role == Role::User)
            .filter(|&u| u >= system)
            .unwrap_or(system);
        let mut turns: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, message) in m.iter().enumerate().take(current).skip(system) {
            match turns.last_mut() {
                Some(t) if message.role != Role::User => t.end = i + 1,
                _ => turns.push(i..i + 1),
            }
        }
        Parts {
            r,
            system,
            current,
            keep_turn: vec![true; turns.len()],
            turns,
            keep_doc: vec![true; r.documents.len()],
            keep_mem: vec![true; r.memory.len()],
            keep_tool: vec![true; r.tools.len()],
        }
    }

    /// The request with only the kept pieces.
    fn build(&self) -> ValidChatRequest {
        let r = self.r;
        let mut messages: Vec<ChatMessage> = r.messages[..self.system].to_vec();
        for (t, keep) in self.turns.iter().zip(&self.keep_turn) {
            if *keep {
                messages.extend_from_slice(&r.messages[t.clone()]);
            }
        }
        messages.extend_from_slice(&r.messages[self.current..]);
        let pick = |keep: &[bool], i: usize| keep[i];
        ValidChatRequest {
            messages,
            tools: (0..r.tools.len())
                .filter(|&i| pick(&self.keep_tool, i))
                .map(|i| r.tools[i].clone())
                .collect(),
            documents: (0..r.documents.len())
                .filter(|&i| pick(&self.keep_doc, i))
                .map(|i| r.documents[i].clone())
                .collect(),
            memory: (0..r.memory.len())
                .filter(|&i| pick(&self.keep_mem, i))
                .map(|i| r.memory[i].clone())
                .collect(),
            ..r.clone()
        }
    }

    /// The request without a whole section (for its marginal tokens).
    fn without(&self, section: &str) -> ValidChatRequest {
        let r = self.r;
        let mut out = r.clone();
        match section {
            "system" => {
                out.messages.drain(..self.system);
            }
            "current" => out.messages.truncate(self.current),
            "history" => {
                out.messages.drain(self.system..self.current);
            }
            "tools" => out.tools.clear(),
            "memory" => out.memory.clear(),
            "documents" => out.documents.clear(),
            _ => {}
        }
        out
    }

    fn present(&self) -> Vec<&'static str> {
        let r = self.r;
        [
            ("system", self.system > 0),
            ("tools", !r.tools.is_empty()),
            ("memory", !r.memory.is_empty()),
            ("documents", !r.documents.is_empty()),
            ("history", !self.turns.is_empty()),
            ("current", self.current < r.messages.len()),
        ]
        .into_iter()
        .filter_map(|(n, p)| p.then_some(n))
        .collect()
    }

    /// Each piece's bytes, the weights of its section's tokens.
    fn weights(&self, s: Section) -> Vec<usize> {
        let r = self.r;
        match s {
            Section::Tools => r.tools.iter().map(tool_bytes).collect(),
            Section::Memory => r.memory.iter().map(|m| m.len() + 3).collect(),
            Section::Documents => r.documents.iter().map(|d| d.text.len() + 8).collect(),
            Section::History => self
                .turns
                .iter()
                .map(|t| {
                    r.messages[t.clone()]
                        .iter()
                        .map(|m| message_bytes(m) + 24)
                        .sum()
                })
                .collect(),
        }
    }

    fn kept(&self, s: Section) -> &[bool] {
        match s {
            Section::Tools => &self.keep_tool,
            Section::Memory => &self.keep_mem,
            Section::Documents => &self.keep_doc,
            Section::History => &self.keep_turn,
        }
    }

    fn keep(&mut self, s: Section) -> &mut Vec<bool> {
        match s {
            Section::Tools => &mut self.keep_tool,
            Section::Memory => &mut self.keep_mem,
            Section::Documents => &mut self.keep_doc,
            Section::History => &mut self.keep_turn,
        }
    }

    /// The order its pieces are dropped in (module docs).
    fn drop_order(&self, s: Section) -> Vec<usize> {
        let r = self.r;
        match s {
            Section::Documents => {
                let mut order: Vec<usize> = (0..r.documents.len()).collect();
                let score = |i: usize| r.documents[i].score.unwrap_or(0.0);
                // Lowest score first; among equals, the later one.
                order.sort_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)));
                order
            }
            Section::Memory => (0..r.memory.len()).collect(),
            Section::Tools => {
                let named = match &r.tool_choice {
                    ToolMode::Named(n) => Some(n.as_str()),
                    _ => None,
                };
                let mut order: Vec<usize> = (0..r.tools.len())
                    .rev()
                    .filter(|&i| named != Some(r.tools[i].function.name.as_str()))
                    .collect();
                if named.is_none() && r.tool_choice == ToolMode::Required {
                    order.pop();
                }
                order
            }
            Section::History => {
                let n = self.turns.len();
                let mut order: Vec<usize> = (1..n.saturating_sub(1)).collect();
                if n >= 2 {
                    order.push(0);
                }
                if n >= 1 {
                    order.push(n - 1);
                }
                order
            }
        }
    }
}

/// One dropped piece and its estimated tokens.
struct Dropped {
    section: Section,
    index: usize,
    tokens: usize,
}

/// What fitting made of a request: the request to send, the report, and the
/// dropped history turns (to summarise).
pub(crate) struct Fitted {
    pub request: ValidChatRequest,
    pub report: ContextReport,
    pub dropped_turns: Vec<ChatMessage>,
    /// Where in `request.messages` a summary of them goes.
    pub summary_at: usize,
    /// The limit the prompt must stay within.
    pub limit: usize,
    exact: bool,
}

fn too_long(message: String) -> BackendError {
    BackendError::TooLong(ProtocolError::field("messages", message))
}

/// Fits `r` into `window` for tier `tier`, counting with `backend` (module docs).
pub(crate) fn fit(
    budgets: &Budgets,
    r: &ValidChatRequest,
    tier: &str,
    window: usize,
    backend: &dyn Backend,
) -> Result<Fitted, BackendError> {
    let (counter, before) = match backend.count_prompt(r) {
        Some(n) => (
            Counter {
                backend,
                exact: true,
            },
            n?,
        ),
        None => (
            Counter {
                backend,
                exact: false,
            },
            estimate_chat(r),
        ),
    };
    let reserve = r.common.max_tokens.unwrap_or(budgets.output_reserve);
    if reserve >= window {
        return Err(too_long(format!(
            "tier `{tier}` holds {window} tokens and {reserve} are kept for the answer (max_tokens or output_reserve): no room is left for the prompt"
        )));
    }
    let limit = window - reserve;
    let mut parts = Parts::of(r);
    let mut sections = std::collections::BTreeMap::new();
    for name in parts.present() {
        let without = counter.count(&parts.without(name))?;
        let t = before.saturating_sub(without);
        sections.insert(
            name.to_owned(),
            SectionTokens {
                before: t,
                after: t,
            },
        );
    }
    let report = |after: usize,
                  dropped: &[Dropped],
                  sections: std::collections::BTreeMap<String, SectionTokens>| {
        let count = |s: Section| dropped.iter().filter(|d| d.section == s).count();
        ContextReport {
            tier: tier.to_owned(),
            window,
            reserve,
            counted: if counter.exact {
                "tokenizer"
            } else {
                "estimate"
            }
            .to_owned(),
            prompt_before: before,
            prompt_after: after,
            sections,
            turns_dropped: count(Section::History),
            documents_dropped: count(Section::Documents),
            memory_dropped: count(Section::Memory),
            tools_dropped: count(Section::Tools),
            summarized: false,
        }
    };
    if before <= limit {
        return Ok(Fitted {
            request: r.clone(),
            report: report(before, &[], sections),
            dropped_turns: Vec::new(),
            summary_at: 0,
            limit,
            exact: counter.exact,
        });
    }
    let marginal: Vec<(String, usize)> = sections
        .iter()
        .map(|(n, t)| (n.clone(), t.before))
        .collect();
    let tokens_of = |name: &str| {
        marginal
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, t)| *t)
    };
    // Each piece's share of its section's tokens.
    let shares = |parts: &Parts, s: Section| -> Vec<usize> {
        let w = parts.weights(s);
        let total: usize = w.iter().sum::<usize>().max(1);
        let t = tokens_of(s.name());
        w.iter().map(|x| (t * x).div_ceil(total)).collect()
    };
    let summary_room = budgets.summary.as_ref().map_or(0, |s| s.max_tokens + 16);
    let mut dropped: Vec<Dropped> = Vec::new();
    let mut estimated = before;
    let drop_until = |parts: &mut Parts,
                      dropped: &mut Vec<Dropped>,
                      estimated: &mut usize,
                      s: Section,
                      done: &dyn Fn(usize, usize) -> bool| {
        let share = shares(parts, s);
        let mut section_left: usize = tokens_of(s.name())
            - dropped
                .iter()
                .filter(|d| d.section == s)
                .map(|d| d.tokens)
                .sum::<usize>()
                .min(tokens_of(s.name()));
        for i in parts.drop_order(s) {
            if done(*estimated, section_left) {
                return;
            }
            if !parts.kept(s)[i] {
                continue;
            }
            parts.keep(s)[i] = false;
            let t = share[i];
            *estimated = estimated.saturating_sub(t);
            section_left = section_left.saturating_sub(t);
            dropped.push(Dropped {
                section: s,
                index: i,
                tokens: t,
            });
        }
    };
    // Sections over their own budgets, down to them.
    for &(s, lim) in &budgets.limits {
        let cap = lim.of(window);
        drop_until(&mut parts, &mut dropped, &mut estimated, s, &|_, left| {
            left <= cap
        });
    }
    // What the budgets dropped stays dropped.
    let by_budget = dropped.len();
    // Then in cut order until it fits (with room for a summary once history
    // is cut).
    let room = |dropped: &[Dropped]| {
        if dropped.iter().any(|d| d.section == Section::History) {
            limit.saturating_sub(summary_room)
        } else {
            limit
        }
    };
    for &s in &budgets.cut_order {
        let target = if s == Section::History {
            limit.saturating_sub(summary_room)
        } else {
            limit
        };
        drop_until(&mut parts, &mut dropped, &mut estimated, s, &|est, _| {
            est <= target
        });
    }
    // Counted again: cut further while over, then give back what still fits.
    let mut after = counter.count(&parts.build())?;
    while after > room(&dropped) {
        let next = budgets.cut_order.iter().find_map(|&s| {
            parts
                .drop_order(s)
                .into_iter()
                .find(|&i| parts.kept(s)[i])
                .map(|i| (s, i))
        });
        let Some((s, i)) = next else {
            if after <= limit {
                break;
            }
            return Err(too_long(format!(
                "with every cut the budget allows, the prompt is still {after} tokens ({}; the system prompt and the current turn are never cut): tier `{tier}` holds {window} tokens with {reserve} kept for the answer, so the prompt may have {limit}",
                if counter.exact { "counted by its tokenizer" } else { "estimated" }
            )));
        };
        parts.keep(s)[i] = false;
        dropped.push(Dropped {
            section: s,
            index: i,
            tokens: 0,
        });
        after = counter.count(&parts.build())?;
    }
    for _ in 0..3 {
        let Some(last) = dropped.last().filter(|_| dropped.len() > by_budget) else {
            break;
        };
        let (s, i) = (last.section, last.index);
        parts.keep(s)[i] = true;
        let tried = counter.count(&parts.build())?;
        let still = {
            let rest = &dropped[..dropped.len() - 1];
            tried <= room(rest)
        };
        if still {
            after = tried;
            dropped.pop();
        } else {
            parts.keep(s)[i] = false;
            break;
        }
    }
    for (name, t) in sections.iter_mut() {
        if let Some(s) = Section::parse(name) {
            let share = shares(&parts, s);
            let cut: usize = dropped
                .iter()
                .filter(|d| d.section == s)
                .map(|d| share[d.index])
                .sum();
            t.after = t.before.saturating_sub(cut);
        }
    }
    let dropped_turns = parts
        .turns
        .iter()
        .zip(&parts.keep_turn)
        .filter(|(_, k)| !**k)
        .flat_map(|(t, _)| r.messages[t.clone()].iter().cloned())
        .collect();
    let summary_at = parts.system
        + parts
            .turns
            .iter()
            .zip(&parts.keep_turn)
            .take_while(|(_, k)| **k)
            .map(|(t, _)| t.len())
            .sum::<usize>();
    let request = parts.build();
    Ok(Fitted {
        report: report(after, &dropped, sections),
        request,
        dropped_turns,
        summary_at,
        limit,
        exact: counter.exact,
    })
}

/// Fits `r` (see `fit`) on the blocking pool (counting is CPU work), then
/// summarises the dropped turns when configured.
pub(crate) async fn apply(
    budgets: Arc<Budgets>,
    r: ValidChatRequest,
    tier: String,
    window: usize,
    backend: Arc<dyn Backend>,
) -> Result<(ValidChatRequest, ContextReport), BackendError> {
    let blocking = |f: Box<dyn FnOnce() -> Result<Fitted, BackendError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| BackendError::Internal(format!("fitting the context failed: {e}")))?
    };
    let fitted = {
        let (budgets, backend) = (Arc::clone(&budgets), Arc::clone(&backend));
        blocking(Box::new(move || {
            fit(&budgets, &r, &tier, window, &*backend)
        }))
        .await?
    };
    let Fitted {
        request,
        mut report,
        dropped_turns,
        summary_at,
        limit,
        exact,
    } = fitted;
    let Some(summary) = budgets
        .summary
        .as_ref()
        .filter(|_| !dropped_turns.is_empty())
    else {
        return Ok((request, report));
    };
    let Some(text) = summarize(summary, &dropped_turns).await else {
        return Ok((request, report));
    };
    let mut with = request.clone();
    with.messages.insert(
        summary_at,
        ChatMessage::new(Role::System, format!("Summary of earlier turns: {text}")),
    );
    let counted = tokio::task::spawn_blocking(move || {
        let n = Counter {
            backend: &*backend,
            exact,
        }
        .count(&with);
        n.map(|n| (n, with))
    })
    .await
    .map_err(|e| BackendError::Internal(format!("fitting the context failed: {e}")))??;
    if counted.0 <= limit {
        report.prompt_after = counted.0;
        report.summarized = true;
        return Ok((counted.1, report));
    }
    Ok((request, report))
}

/// The dropped turns summarised by `summary.backend`, greedily, in at most
/// `max_tokens` (`None`: it failed; the turns are dropped unsummarised).
async fn summarize(summary: &Summary, turns: &[ChatMessage]) -> Option<String> {
    let mut transcript = String::new();
    for m in turns {
        let text = m.text();
        if !text.is_empty() {
            transcript.push_str(&format!("{}: {text}\n", m.role.as_str()));
        }
    }
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": "Summarise the conversation below in two or three short sentences. Keep names, numbers and decisions."},
            {"role": "user", "content": transcript},
        ],
        "max_tokens": summary.max_tokens,
        "temperature": 0,
    });
    let request =
        inferd_protocol::parse_chat(body.to_string().as_bytes(), std::time::Instant::now()).ok()?;
    let mut events = summary
        .backend
        .generate(Request::Chat(request))
        .await
        .ok()?;
    let mut text = String::new();
    while let Some(ev) = events.next().await {
        match ev {
            Event::Delta {
                index: 0, text: t, ..
            } => text.push_str(&t),
            Event::Error(_) => return None,
            _ => {}
        }
    }
    let text = text.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use inferd_backend::TestBackend;

    fn chat(body: serde_json::Value) -> ValidChatRequest {
        inferd_protocol::parse_chat(body.to_string().as_bytes(), std::time::Instant::now()).unwrap()
    }

    fn budgets() -> Budgets {
        Budgets {
            output_reserve: 10,
            limits: Vec::new(),
            cut_order: Section::ALL.to_vec(),
            summary: None,
        }
    }

    /// A conversation of `turns` earlier turns, the odd ones a tool call
    /// with its result, then the current question.
    fn conversation(turns: usize) -> serde_json::Value {
        let mut m = vec![serde_json::json!({"role": "system", "content": "Be brief."})];
        for i in 0..turns {
            m.push(serde_json::json!({"role": "user", "content": format!("question number {i} about the weather")}));
            if i % 2 == 1 {
                m.push(serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": format!("c{i}"), "type": "function", "function": {"name": "f", "arguments": "{}"}}]}));
                m.push(serde_json::json!({"role": "tool", "tool_call_id": format!("c{i}"), "content": "sunny"}));
            }
            m.push(
                serde_json::json!({"role": "assistant", "content": format!("answer number {i}")}),
            );
        }
        m.push(serde_json::json!({"role": "user", "content": "and now?"}));
        serde_json::json!({"messages": m})
    }

    #[test]
    fn history_keeps_its_first_and_last_turns_and_whole_tool_calls() {
        let r = chat(conversation(40));
        let b = TestBackend::new("t");
        let full = estimate_chat(&r);
        let window = full / 3;
        let f = fit(&budgets(), &r, "small", window, &b).unwrap();
        assert_eq!(f.report.counted, "estimate");
        assert!(f.report.prompt_after <= window - 10, "{:?}", f.report);
        assert_eq!(f.report.prompt_after, estimate_chat(&f.request));
        assert!(f.report.turns_dropped > 0 && f.report.turns_dropped < 40);
        let m = &f.request.messages;
        assert_eq!(m[1].text(), "question number 0 about the weather");
        assert_eq!(m.last().unwrap().text(), "and now?");
        let last_turn = m[..m.len() - 1]
            .iter()
            .rposition(|x| x.role == Role::User)
            .unwrap();
        assert_eq!(m[last_turn].text(), "question number 39 about the weather");
        // Every tool result follows its call.
        for (i, x) in m.iter().enumerate() {
            if x.role == Role::Tool {
                assert!(m[i - 1].tool_calls.is_some(), "{i}");
            }
        }
        // Dropping one turn fewer would not have fit.
        let kept_turns = m.iter().filter(|x| x.role == Role::User).count() - 1;
        assert_eq!(kept_turns, 40 - f.report.turns_dropped);
        // A window that holds it all cuts nothing.
        let f = fit(&budgets(), &r, "big", full + 10, &b).unwrap();
        assert_eq!((f.report.prompt_after, f.report.turns_dropped), (full, 0));
        let f = fit(&budgets(), &r, "big", full + 9, &b).unwrap();
        assert_eq!(f.report.turns_dropped, 1);
        assert_eq!(
            f.request.messages[3].text(),
            "question number 2 about the weather"
        );
    }

    #[test]
    fn documents_go_lowest_score_first_and_the_essentials_are_never_cut() {
        let scores = [0.9, 0.1, 0.5, 0.3, 0.7];
        let docs: Vec<serde_json::Value> = (0..5)
            .map(|i| serde_json::json!({"id": format!("d{i}"), "text": "x".repeat(300), "score": scores[i]}))
            .collect();
        let mut body = conversation(2);
        body["documents"] = serde_json::json!(docs);
        let r = chat(body);
        let b = TestBackend::new("t");
        let full = estimate_chat(&r);
        let f = fit(&budgets(), &r, "t", full + 10 - 150, &b).unwrap();
        let ids: Vec<&str> = f
            .request
            .documents
            .iter()
            .map(|d| d.id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["d0", "d2", "d4"], "{:?}", f.report);
        assert_eq!(f.report.turns_dropped, 0);
        // A budget of 40% of the window for documents keeps the best of them.
        let mut b2 = budgets();
        b2.limits = vec![(Section::Documents, Limit::Share(0.4))];
        let f = fit(&b2, &r, "t", full + 9, &b).unwrap();
        assert!(f.report.sections["documents"].after <= (full + 9) * 4 / 10);
        assert_eq!(f.request.documents[0].id.as_deref(), Some("d0"));
        // The system prompt and the current turn alone do not fit: refused.
        let err = fit(&budgets(), &r, "t", 20, &b).err().unwrap();
        let BackendError::TooLong(p) = err else {
            panic!("{err:?}")
        };
        assert!(p.message.contains("never cut"), "{}", p.message);
        assert!(
            p.message.contains("holds 20 tokens with 10 kept"),
            "{}",
            p.message
        );
    }
}
