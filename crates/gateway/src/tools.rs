//! Tool narrowing: a chat request that offers many tools gets only the few
//! most relevant to its last user message, before the chat template renders
//! them (a model picks among 5 tools far better than among 200, and reads far
//! fewer prompt tokens).
//!
//! A tool's score for a query q, with MiniLM embeddings (normalised) of the
//! tool's text d (its name split into words, then its description) and of its
//! labelled example queries e_1..e_n, is
//! max(q·d, max_i q·e_i) + q·c, where c = (d + Σ e_i) / |d + Σ e_i| is the
//! tool's centroid: the nearest neighbour plus the centroid (on MetaTool this
//! finds the right tool in the top 5 more often than either alone; see
//! `benchmarks/RESULTS.md`). Without examples it orders tools by q·d. The
//! `top_k` best-scoring tools are
//! kept, in the request's order. A request with `min_tools` tools or fewer is
//! left alone, as is one whose `tool_choice` names a tool (that tool is always
//! kept). Tool embeddings are computed once per distinct tool text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use inferd_backend::{Backend, Request};
use inferd_protocol::{EncodingFormat, PromptInput, Role, Tool, ToolMode, ValidEmbeddingRequest};

/// What narrowing did, for the route report.
pub use inferd_protocol::ToolsNarrowed;

/// A tool's text as embedded: `get_weather` / `GetWeather` → "get weather",
/// then its description.
pub fn tool_text(name: &str, description: &str) -> String {
    let mut words = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c == '_' || c == '-' || c == '.' {
            words.push(' ');
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(' ');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        words.extend(c.to_lowercase());
    }
    format!("{}: {description}", words.trim())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The score of a tool for `query` (module docs); `sum` is the sum of the
/// examples' embeddings (empty without examples). The centroid's cosine is
/// q·(d + Σe) / |d + Σe|, computed without building d + Σe.
pub fn score(query: &[f32], tool: &[f32], examples: &[Vec<f32>], sum: &[f32]) -> f32 {
    let nearest = examples
        .iter()
        .map(|e| dot(query, e))
        .fold(dot(query, tool), f32::max);
    let (mut along, mut norm2) = (0f32, 0f32);
    for (i, (q, d)) in query.iter().zip(tool).enumerate() {
        let c = d + sum.get(i).copied().unwrap_or(0.0);
        along += q * c;
        norm2 += c * c;
    }
    nearest + along / norm2.sqrt().max(1e-12)
}

/// The element-wise sum of `vectors` (empty for none).
pub fn sum(vectors: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vectors
        .first()
        .map_or_else(Vec::new, |v| vec![0.0; v.len()]);
    for v in vectors {
        for (x, y) in out.iter_mut().zip(v) {
            *x += y;
        }
    }
    out
}

/// The indices of the `k` best `scores`, in their original order.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// Tool name → embeddings of its labelled example queries, and their sum.
type Examples = HashMap<String, (Vec<Vec<f32>>, Vec<f32>)>;

pub struct ToolNarrowing {
    embedder: Arc<dyn Backend>,
    top_k: usize,
    min_tools: usize,
    examples: std::sync::RwLock<Examples>,
    /// Where feedback is appended (the examples file), to survive restarts.
    feedback_file: Option<std::path::PathBuf>,
    /// Tool text → its embedding.
    known: Mutex<HashMap<String, Vec<f32>>>,
}

/// `texts` embedded by `embedder`, one vector each (`None` if it cannot).
/// The gateway's stages (tool narrowing, the semantic cache) embed through it.
pub async fn embed_all(embedder: &Arc<dyn Backend>, texts: Vec<String>) -> Option<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Some(Vec::new());
    }
    let request = ValidEmbeddingRequest {
        model: None,
        inputs: texts.into_iter().map(PromptInput::Text).collect(),
        encoding: EncodingFormat::Float,
        dimensions: None,
        truncate: true,
        arrival: std::time::Instant::now(),
    };
    embedder.embed(request).await.ok().map(|e| e.vectors)
}

/// A request's last user message, embedded at most once per embedding model
/// however many stages (intent, tools, semantic cache) ask for it.
pub(crate) struct Query {
    text: Option<String>,
    /// Per embedding model asked: its vector (`None`: it failed).
    memo: Vec<(Arc<dyn Backend>, Embedded)>,
}

type Embedded = Option<Vec<f32>>;

impl Query {
    pub(crate) fn of(request: &Request) -> Query {
        let text = match request {
            Request::Chat(r) => r
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.text()),
            Request::Completion(_) => None,
        };
        Query {
            text,
            memo: Vec::new(),
        }
    }

    /// The last user message of a chat request (perhaps empty).
    pub(crate) fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The text's embedding by `embedder` (`None`: no text, or it failed).
    pub(crate) async fn vector(&mut self, embedder: &Arc<dyn Backend>) -> Option<Vec<f32>> {
        let same = |m: &Arc<dyn Backend>| {
            std::ptr::eq(
                Arc::as_ptr(m) as *const (),
                Arc::as_ptr(embedder) as *const (),
            )
        };
        if let Some((_, v)) = self.memo.iter().find(|(m, _)| same(m)) {
            return v.clone();
        }
        let v = match &self.text {
            Some(t) if !t.trim().is_empty() => embed_all(embedder, vec![t.clone()])
                .await
                .and_then(|mut v| v.pop()),
            _ => None,
        };
        self.memo.push((Arc::clone(embedder), v.clone()));
        v
    }
}

/// Appends one line to a feedback file.
pub(crate) fn append_line(path: &std::path::Path, line: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// Keeps only the request's tools named in `names` (and a tool `tool_choice`
/// names); `None` when that would keep none or all of them.
pub fn keep_named(request: &mut Request, names: &[String]) -> Option<ToolsNarrowed> {
    let Request::Chat(r) = request else {
        return None;
    };
    let named = match &r.tool_choice {
        ToolMode::Named(n) => Some(n.as_str()),
        _ => None,
    };
    let keep = |t: &Tool| names.contains(&t.function.name) || named == Some(&t.function.name);
    let kept = r.tools.iter().filter(|t| keep(t)).count();
    if kept == 0 || kept == r.tools.len() {
        return None;
    }
    let before = r.tools.len();
    r.tools.retain(keep);
    Some(ToolsNarrowed {
        before,
        after: r.tools.len(),
        kept: r.tools.iter().map(|t| t.function.name.clone()).collect(),
    })
}

impl ToolNarrowing {
    /// `examples`: (query, tool name) pairs to learn from, embedded here;
    /// feedback is appended to `feedback_file` as JSONL lines of the same form.
    pub async fn new(
        embedder: Arc<dyn Backend>,
        top_k: usize,
        min_tools: usize,
        examples: Vec<(String, String)>,
        feedback_file: Option<std::path::PathBuf>,
    ) -> Result<ToolNarrowing, String> {
        let mut by_tool: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
        for chunk in examples.chunks(256) {
            let vectors = embed_all(&embedder, chunk.iter().map(|e| e.0.clone()).collect())
                .await
                .ok_or("cannot embed the tool examples")?;
            for ((_, tool), v) in chunk.iter().zip(vectors) {
                by_tool.entry(tool.clone()).or_default().push(v);
            }
        }
        let examples = by_tool
            .into_iter()
            .map(|(tool, vs)| {
                let s = sum(&vs);
                (tool, (vs, s))
            })
            .collect();
        Ok(ToolNarrowing {
            embedder,
            top_k: top_k.max(1),
            min_tools,
            examples: std::sync::RwLock::new(examples),
            feedback_file,
            known: Mutex::default(),
        })
    }

    /// Adds a labelled example online (and to the feedback file): the tool's
    /// example count now, and whether it was written to the file.
    pub async fn feedback(&self, query: String, tool: String) -> Result<(usize, bool), String> {
        let v = embed_all(&self.embedder, vec![query.clone()])
            .await
            .and_then(|mut v| v.pop())
            .ok_or("cannot embed the query")?;
        let persisted = match &self.feedback_file {
            None => false,
            Some(path) => {
                let line = serde_json::json!({"query": query, "tool": tool}).to_string();
                append_line(path, &line)?;
                true
            }
        };
        let mut examples = self.examples.write().unwrap_or_else(|p| p.into_inner());
        let (vs, total) = examples.entry(tool).or_default();
        if total.is_empty() {
            *total = vec![0.0; v.len()];
        }
        for (t, x) in total.iter_mut().zip(&v) {
            *t += x;
        }
        vs.push(v);
        Ok((vs.len(), persisted))
    }

    /// Keeps the request's `top_k` most relevant tools; what it did, or
    /// `None` when it left the request alone (few tools, a named tool choice,
    /// no user message, an embedding failure).
    pub(crate) async fn narrow(
        &self,
        request: &mut Request,
        query: &mut Query,
    ) -> Option<ToolsNarrowed> {
        let Request::Chat(r) = request else {
            return None;
        };
        if r.tools.len() <= self.min_tools.max(self.top_k)
            || matches!(r.tool_choice, ToolMode::Named(_))
        {
            return None;
        }
        let q = query.vector(&self.embedder).await?;
        let texts: Vec<String> = r
            .tools
            .iter()
            .map(|t| {
                tool_text(
                    &t.function.name,
                    t.function.description.as_deref().unwrap_or(""),
                )
            })
            .collect();
        let missing: Vec<String> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let mut m: Vec<String> = texts
                .iter()
                .filter(|t| !known.contains_key(*t))
                .cloned()
                .collect();
            m.dedup();
            m
        };
        let vectors = embed_all(&self.embedder, missing.clone()).await?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for (t, v) in missing.into_iter().zip(vectors) {
            known.insert(t, v);
        }
        let none = (Vec::new(), Vec::new());
        let examples = self.examples.read().unwrap_or_else(|p| p.into_inner());
        let scores: Vec<f32> = r
            .tools
            .iter()
            .zip(&texts)
            .map(|(tool, text)| {
                let (examples, total) = examples.get(&tool.function.name).unwrap_or(&none);
                known
                    .get(text)
                    .map_or(f32::MIN, |v| score(&q, v, examples, total))
            })
            .collect();
        drop((known, examples));
        let keep = top_k(&scores, self.top_k);
        let before = r.tools.len();
        let tools: Vec<Tool> = keep.iter().map(|&i| r.tools[i].clone()).collect();
        let kept = tools.iter().map(|t| t.function.name.clone()).collect();
        r.tools = tools;
        Some(ToolsNarrowed {
            before,
            after: r.tools.len(),
            kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_words_and_the_best_scores_keep_their_order() {
        assert_eq!(tool_text("GetWeather", "d"), "get weather: d");
        assert_eq!(tool_text("get_stock_price", "d"), "get stock price: d");
        assert_eq!(tool_text("PDFReader2", "d"), "pdfreader2: d");
        assert_eq!(top_k(&[0.1, 0.9, 0.5, 0.7], 2), [1, 3]);
        // Nearest 0.8 (the example), centroid (0.6 + 0.8, 0.8 + 0.6)/|..| → 0.7071.
        let s = score(&[1.0, 0.0], &[0.6, 0.8], &[vec![0.8, 0.6]], &[0.8, 0.6]);
        assert!((s - (0.8 + 0.70710677)).abs() < 1e-5, "{s}");
        // Without examples: twice the description's cosine.
        assert!((score(&[1.0, 0.0], &[0.6, 0.8], &[], &[]) - 1.2).abs() < 1e-6);
        assert_eq!(sum(&[vec![1.0, 2.0], vec![3.0, 4.0]]), [4.0, 6.0]);
    }
}
