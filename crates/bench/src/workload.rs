//! What to send: synthetic prompts of a given length in tokens (counted with the
//! target model's tokenizer), a shared-prefix set, multi-turn conversations, or a
//! JSONL file of request bodies. Everything is derived from a seed, so every
//! target of a side-by-side run gets the same requests.

use std::path::{Path, PathBuf};

use inferd_tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Which OpenAI endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// One request body (without `model` and the streaming fields, which the client sets).
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub endpoint: Endpoint,
    pub body: Map<String, Value>,
}

/// The workload's shape.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Independent prompts of `input` tokens (± `range` as a fraction), `output` tokens each.
    Random {
        input: usize,
        range: f64,
        output: usize,
    },
    /// Every request starts with the same `prefix` tokens, then its own `suffix` tokens.
    SharedPrefix {
        prefix: usize,
        suffix: usize,
        output: usize,
    },
    /// Conversations of `turns` user turns of `input` tokens; each turn resends the
    /// whole conversation so far, including the server's earlier answers.
    MultiTurn {
        turns: usize,
        input: usize,
        output: usize,
    },
    /// One request body per line (chat when it has `messages`, else completions).
    Jsonl(PathBuf),
}

/// Fixed settings every synthetic request carries.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    pub endpoint: Endpoint,
    /// Ask for exactly `output` tokens (`ignore_eos`, understood by inferd, vLLM
    /// and llama-server).
    pub ignore_eos: bool,
    pub temperature: f32,
}

/// Plain words: prompts that tokenize like ordinary English text.
const WORDS: &[&str] = &[
    "the",
    "river",
    "signal",
    "quiet",
    "market",
    "engine",
    "paper",
    "winter",
    "light",
    "garden",
    "number",
    "system",
    "under",
    "across",
    "village",
    "history",
    "simple",
    "machine",
    "morning",
    "silver",
    "network",
    "because",
    "between",
    "thousand",
    "mountain",
    "careful",
    "question",
    "answer",
    "window",
    "station",
    "letter",
    "forest",
    "ocean",
    "memory",
    "little",
    "orange",
    "purple",
    "kitchen",
    "library",
    "student",
    "teacher",
    "several",
    "different",
    "important",
    "together",
    "problem",
    "company",
    "country",
    "program",
    "government",
    "children",
    "without",
    "another",
    "family",
    "moment",
    "during",
    "through",
    "follow",
    "second",
    "measure",
    "travel",
    "weather",
    "bridge",
    "castle",
    "doctor",
    "engineer",
    "furniture",
    "harvest",
    "island",
    "journey",
    "kingdom",
    "lantern",
    "meadow",
    "needle",
    "orchard",
    "pilot",
    "quarter",
    "rocket",
    "saddle",
    "thunder",
    "umbrella",
    "valley",
    "wagon",
    "yellow",
    "zebra",
    "copper",
    "velvet",
    "marble",
    "canvas",
    "pepper",
    "timber",
    "cotton",
    "planet",
    "crystal",
];

/// Makes text of an exact token count under one tokenizer.
pub struct PromptMaker<'a> {
    tokenizer: &'a Tokenizer,
}

impl<'a> PromptMaker<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        PromptMaker { tokenizer }
    }

    /// Random words, cut to `tokens` tokens (without BOS) and decoded back to text.
    pub fn text(&self, rng: &mut StdRng, tokens: usize) -> Result<String, String> {
        let mut text = String::new();
        let mut ids = Vec::new();
        while ids.len() < tokens {
            for _ in 0..(tokens - ids.len()).max(8) {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
            }
            ids = self.count(&text)?;
        }
        ids.truncate(tokens);
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| format!("cannot decode a synthetic prompt: {e}"))
    }

    /// Token ids of `text`, without special tokens.
    pub fn count(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, false)
            .map_err(|e| format!("cannot tokenize a synthetic prompt: {e}"))
    }
}

fn body_for(opts: &RequestOptions, text: String, output: usize) -> RequestSpec {
    let mut body = Map::new();
    match opts.endpoint {
        Endpoint::Completions => body.insert("prompt".into(), json!(text)),
        Endpoint::Chat => body.insert(
            "messages".into(),
            json!([{"role": "user", "content": text}]),
        ),
    };
    body.insert("max_tokens".into(), json!(output));
    body.insert("temperature".into(), json!(opts.temperature));
    if opts.ignore_eos {
        body.insert("ignore_eos".into(), json!(true));
    }
    RequestSpec {
        endpoint: opts.endpoint,
        body,
    }
}

/// A conversation of the multi-turn workload: its user turns; the assistant's
/// answers are filled in by the run.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub user_turns: Vec<String>,
    pub output: usize,
}

/// The requests of one level: independent ones, or conversations.
#[derive(Debug, Clone)]
pub enum Requests {
    Independent(Vec<RequestSpec>),
    Conversations(Vec<Conversation>),
}

impl Requests {
    pub fn total(&self) -> usize {
        match self {
            Requests::Independent(r) => r.len(),
            Requests::Conversations(c) => c.iter().map(|c| c.user_turns.len()).sum(),
        }
    }
}

/// Builds `count` requests (conversations for multi-turn) from `seed`.
pub fn build(
    workload: &Workload,
    opts: &RequestOptions,
    tokenizer: &Tokenizer,
    count: usize,
    seed: u64,
) -> Result<Requests, String> {
    let maker = PromptMaker::new(tokenizer);
    let mut rng = StdRng::seed_from_u64(seed);
    Ok(match workload {
        Workload::Random {
            input,
            range,
            output,
        } => {
            let lo = ((*input as f64) * (1.0 - range)).round().max(1.0) as usize;
            let hi = ((*input as f64) * (1.0 + range)).round().max(lo as f64) as usize;
            let specs = (0..count)
                .map(|_| {
                    let n = rng.gen_range(lo..=hi);
                    maker.text(&mut rng, n).map(|t| body_for(opts, t, *output))
                })
                .collect::<Result<_, _>>()?;
            Requests::Independent(specs)
        }
        Workload::SharedPrefix {
            prefix,
            suffix,
            output,
        } => {
            let shared = maker.text(&mut rng, *prefix)?;
            let specs = (0..count)
                .map(|i| {
                    let own = maker.text(&mut rng, *suffix)?;
                    let text = match opts.endpoint {
                        // The shared part as the system prompt, the own part as the user's.
                        Endpoint::Chat => {
                            let mut spec = body_for(opts, own, *output);
                            spec.body.insert(
                                "messages".into(),
                                json!([{"role": "system", "content": shared},
                                       {"role": "user", "content": spec.body["messages"][0]["content"]}]),
                            );
                            return Ok(spec);
                        }
                        Endpoint::Completions => format!("{shared}\n\nRequest {i}: {own}"),
                    };
                    Ok(body_for(opts, text, *output))
                })
                .collect::<Result<_, String>>()?;
            Requests::Independent(specs)
        }
        Workload::MultiTurn {
            turns,
            input,
            output,
        } => {
            let convs = (0..count)
                .map(|_| {
                    let user_turns = (0..*turns)
                        .map(|_| maker.text(&mut rng, *input))
                        .collect::<Result<_, _>>()?;
                    Ok(Conversation {
                        user_turns,
                        output: *output,
                    })
                })
                .collect::<Result<_, String>>()?;
            Requests::Conversations(convs)
        }
        Workload::Jsonl(path) => Requests::Independent(read_jsonl(path, count)?),
    })
}

/// Request bodies from a JSONL file, cycled to `count` (all of them when 0).
pub fn read_jsonl(path: &Path, count: usize) -> Result<Vec<RequestSpec>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read workload file {}: {e}", path.display()))?;
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: not a JSON object: {e}", path.display(), i + 1))?;
        let Value::Object(body) = v else {
            return Err(format!(
                "{}:{}: each line must be a JSON object (a request body)",
                path.display(),
                i + 1
            ));
        };
        let endpoint = if body.contains_key("messages") {
            Endpoint::Chat
        } else if body.contains_key("prompt") {
            Endpoint::Completions
        } else {
            return Err(format!(
                "{}:{}: a request body needs `messages` or `prompt`",
                path.display(),
                i + 1
            ));
        };
        specs.push(RequestSpec { endpoint, body });
    }
    if specs.is_empty() {
        return Err(format!("workload file {} has no requests", path.display()));
    }
    let n = if count == 0 { specs.len() } else { count };
    Ok((0..n).map(|i| specs[i % specs.len()].clone()).collect())
}

/// The body of turn `turn` of a conversation, given the answers so far.
pub fn conversation_turn(
    opts: &RequestOptions,
    c: &Conversation,
    answers: &[String],
    turn: usize,
) -> RequestSpec {
    let mut messages = Vec::new();
    for (i, user) in c.user_turns[..=turn].iter().enumerate() {
        messages.push(json!({"role": "user", "content": user}));
        if i < turn {
            messages.push(json!({"role": "assistant", "content": answers.get(i).cloned().unwrap_or_default()}));
        }
    }
    let mut spec = body_for(
        &RequestOptions {
            endpoint: Endpoint::Chat,
            ..opts.clone()
        },
        String::new(),
        c.output,
    );
    spec.body.insert("messages".into(), Value::Array(messages));
    spec
}
