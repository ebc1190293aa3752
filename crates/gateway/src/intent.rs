//! The intent layer: an embedding classifier over intents declared in config,
//! each with a description, example utterances, and the tools and/or tier it
//! maps to.
//!
//! An intent's score for a query q is half the tool score of the `tools`
//! module (the nearest of its description and examples, plus its centroid),
//! so it lies in [-1, 1] like a cosine. The best intent labels the request
//! when its score reaches the threshold: its tools (when it lists any) become
//! the request's tool list, its tier (when it names one) answers, and rules
//! with `intent = "<name>"` match. Below the threshold the request keeps its
//! full tool list, or is answered with the configured clarification.
//! Labelled examples added by feedback count from the next request on and are
//! appended to the examples file, so they survive a restart.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use inferd_backend::{Backend, BackendError};
use inferd_protocol::ProtocolError;

use crate::tools::{embed_all, score, sum, Query};

/// One intent as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentSpec {
    pub name: String,
    pub description: String,
    pub examples: Vec<String>,
    /// The tools a request of this intent needs (names); empty: narrowing
    /// by similarity decides, when configured.
    pub tools: Vec<String>,
    /// The tier that answers it.
    pub tier: Option<String>,
}

struct Intent {
    spec: IntentSpec,
    description: Vec<f32>,
    /// Its examples' embeddings and their sum.
    examples: RwLock<(Vec<Vec<f32>>, Vec<f32>)>,
}

pub struct Intents {
    embedder: Arc<dyn Backend>,
    intents: Vec<Intent>,
    pub threshold: f32,
    /// Below the threshold: answer this instead of routing.
    pub clarification: Option<String>,
    feedback_file: Option<PathBuf>,
}

/// The best intent for a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub index: usize,
    pub name: String,
    pub score: f32,
    /// At or above the threshold.
    pub sure: bool,
}

impl Intents {
    /// `learned`: (query, intent name) pairs from the examples file, added to
    /// the configured examples; feedback is appended to `feedback_file`.
    pub async fn new(
        embedder: Arc<dyn Backend>,
        specs: Vec<IntentSpec>,
        threshold: f32,
        clarification: Option<String>,
        learned: Vec<(String, String)>,
        feedback_file: Option<PathBuf>,
    ) -> Result<Intents, String> {
        if specs.is_empty() {
            return Err("declare at least one intent".into());
        }
        for (query, name) in &learned {
            if !specs.iter().any(|s| &s.name == name) {
                return Err(format!(
                    "the example {query:?} names intent {name:?}, which is not declared"
                ));
            }
        }
        let mut intents = Vec::with_capacity(specs.len());
        for spec in specs {
            let mut texts = vec![format!(
                "{}: {}",
                spec.name.replace('_', " "),
                spec.description
            )];
            texts.extend(spec.examples.iter().cloned());
            texts.extend(
                learned
                    .iter()
                    .filter(|(_, n)| n == &spec.name)
                    .map(|(q, _)| q.clone()),
            );
            let mut vectors = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(256) {
                vectors.extend(
                    embed_all(&embedder, chunk.to_vec())
                        .await
                        .ok_or_else(|| format!("cannot embed the examples of `{}`", spec.name))?,
                );
            }
            let description = vectors.remove(0);
            let total = sum(&vectors);
            intents.push(Intent {
                spec,
                description,
                examples: RwLock::new((vectors, total)),
            });
        }
        Ok(Intents {
            embedder,
            intents,
            threshold,
            clarification,
            feedback_file,
        })
    }

    pub fn embedder(&self) -> &Arc<dyn Backend> {
        &self.embedder
    }

    pub fn spec(&self, index: usize) -> &IntentSpec {
        &self.intents[index].spec
    }

    /// The best intent for the embedded query `q`.
    pub fn classify(&self, q: &[f32]) -> Label {
        best(&self.intents, q, self.threshold)
    }

    /// The label of a request's last user message (`None`: it has none, or
    /// it cannot be embedded).
    pub(crate) async fn label(&self, query: &mut Query) -> Option<Label> {
        let q = query.vector(&self.embedder).await?;
        Some(self.classify(&q))
    }

    /// Adds `query` as an example of `intent` (and to the examples file): the
    /// intent's example count now, and whether it was written to the file.
    pub async fn feedback(
        &self,
        query: String,
        intent: String,
    ) -> Result<(usize, bool), BackendError> {
        let Some(target) = self.intents.iter().find(|i| i.spec.name == intent) else {
            let names: Vec<&str> = self.intents.iter().map(|i| i.spec.name.as_str()).collect();
            return Err(BackendError::Invalid(ProtocolError::field(
                "intent",
                format!(
                    "no intent is named {intent:?}; the intents are {}",
                    names.join(", ")
                ),
            )));
        };
        let v = embed_all(&self.embedder, vec![query.clone()])
            .await
            .and_then(|mut v| v.pop())
            .ok_or_else(|| BackendError::Internal("cannot embed the query".into()))?;
        let persisted = match &self.feedback_file {
            None => false,
            Some(path) => {
                let line = serde_json::json!({"query": query, "intent": intent}).to_string();
                crate::tools::append_line(path, &line).map_err(BackendError::Internal)?;
                true
            }
        };
        let mut ex = target.examples.write().unwrap_or_else(|p| p.into_inner());
        if ex.1.is_empty() {
            ex.1 = vec![0.0; v.len()];
        }
        for (t, x) in ex.1.iter_mut().zip(&v) {
            *t += x;
        }
        ex.0.push(v);
        // Configured examples count too: the description is not one.
        Ok((ex.0.len(), persisted))
    }
}

fn best(intents: &[Intent], q: &[f32], threshold: f32) -> Label {
    let (index, top) = intents
        .iter()
        .map(|i| {
            let ex = i.examples.read().unwrap_or_else(|p| p.into_inner());
            score(q, &i.description, &ex.0, &ex.1) / 2.0
        })
        .enumerate()
        .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
    Label {
        index,
        name: intents[index].spec.name.clone(),
        score: top,
        sure: top >= threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(name: &str, d: Vec<f32>, examples: Vec<Vec<f32>>) -> Intent {
        let total = sum(&examples);
        Intent {
            spec: IntentSpec {
                name: name.into(),
                description: String::new(),
                examples: Vec::new(),
                tools: Vec::new(),
                tier: None,
            },
            description: d,
            examples: RwLock::new((examples, total)),
        }
    }

    #[test]
    fn the_nearest_intent_labels_and_the_threshold_decides_sureness() {
        let list = [
            intent("a", vec![1.0, 0.0], Vec::new()),
            intent("b", vec![0.0, 1.0], Vec::new()),
        ];
        let l = best(&list, &[0.6, 0.8], 0.7);
        assert_eq!((l.index, l.name.as_str(), l.sure), (1, "b", true));
        // Without examples: the description's cosine.
        assert!((l.score - 0.8).abs() < 1e-6, "{}", l.score);
        assert!(!best(&list, &[0.6, 0.8], 0.81).sure);
        // An example near the query lifts its intent past the other.
        let list = [
            intent("a", vec![1.0, 0.0], vec![vec![0.6, 0.8]]),
            intent("b", vec![0.0, 1.0], Vec::new()),
        ];
        assert_eq!(best(&list, &[0.6, 0.8], 0.7).name, "a");
    }
}
