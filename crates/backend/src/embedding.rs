//! [`EmbeddingBackend`]: an embedding model behind the [`Backend`] trait, with
//! concurrent requests computed together. One thread owns the model; requests
//! queue as jobs (their inputs already tokenized, on the blocking pool) and the
//! thread takes every job waiting — up to a token budget — into one batch, so one
//! pass over the weights serves them all, as continuous batching does for chat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use futures_util::future::BoxFuture;
use inferd_protocol::{PromptInput, ProtocolError, ValidEmbeddingRequest};
use tokio::sync::oneshot;

use crate::{Backend, BackendError, Capabilities, Embeddings, EventStream, Health, Request};

/// What an embedding model offers the backend; `inferd_embed::Embedder` is one.
pub trait EmbeddingModel: Send + Sync + 'static {
    /// Length of every vector.
    fn dims(&self) -> usize;
    /// Most tokens of one input, special tokens included.
    fn max_tokens(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// The model's token ids for `text`, special tokens included, not truncated.
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String>;
    /// One normalised vector per input, computed as one batch.
    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String>;
}

impl EmbeddingModel for inferd_embed::Embedder {
    fn dims(&self) -> usize {
        inferd_embed::Embedder::dims(self)
    }

    fn max_tokens(&self) -> usize {
        inferd_embed::Embedder::max_tokens(self)
    }

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        inferd_embed::Embedder::tokenize(self, text).map_err(|e| e.to_string())
    }

    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        inferd_embed::Embedder::embed_tokens(self, batch).map_err(|e| e.to_string())
    }
}

/// Tokens one batch may hold; jobs beyond it wait for the next batch.
const MAX_BATCH_TOKENS: usize = 16384;

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct EmbeddingBackend {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    model: Arc<dyn EmbeddingModel>,
    jobs: mpsc::Sender<Job>,
    alive: Arc<AtomicBool>,
}

impl EmbeddingBackend {
    /// Starts the batching thread for `model`, served as `name`.
    pub fn start(name: impl Into<String>, model: Arc<dyn EmbeddingModel>) -> EmbeddingBackend {
        let (jobs, rx) = mpsc::channel::<Job>();
        let alive = Arc::new(AtomicBool::new(true));
        let worker = Arc::clone(&model);
        let flag = Arc::clone(&alive);
        std::thread::Builder::new()
            .name("inferd-embed".into())
            .spawn(move || {
                run(&*worker, rx);
                flag.store(false, Ordering::Release);
            })
            .expect("spawning the embedding thread: this is a bug");
        EmbeddingBackend {
            inner: Arc::new(Inner {
                name: name.into(),
                model,
                jobs,
                alive,
            }),
        }
    }
}

/// The batching loop: wait for a job, take every other waiting one that fits, run.
fn run(model: &dyn EmbeddingModel, rx: mpsc::Receiver<Job>) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut tokens: usize = first.inputs.iter().map(Vec::len).sum();
        let mut batch = vec![first];
        while let Ok(j) = rx.try_recv() {
            let t: usize = j.inputs.iter().map(Vec::len).sum();
            if tokens + t > MAX_BATCH_TOKENS {
                carried = Some(j);
                break;
            }
            tokens += t;
            batch.push(j);
        }
        let inputs: Vec<&[u32]> = batch
            .iter()
            .flat_map(|j| j.inputs.iter().map(Vec::as_slice))
            .collect();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed_tokens(&inputs)))
                .unwrap_or_else(|_| Err("the embedding model panicked on this batch".into()));
        drop(inputs);
        match result {
            Ok(mut vectors) => {
                for j in batch {
                    let rest = vectors.split_off(j.inputs.len().min(vectors.len()));
                    let mine = std::mem::replace(&mut vectors, rest);
                    let _ = j.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for j in batch {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> BackendError {
    BackendError::Invalid(ProtocolError::field(param, message))
}

impl Inner {
    /// Token ids of every input, checked against the model's limits.
    fn tokenize(&self, r: &ValidEmbeddingRequest) -> Result<Vec<Vec<u32>>, BackendError> {
        let max = self.model.max_tokens();
        let vocab = self.model.vocab_size();
        let batch = r.inputs.len() > 1;
        r.inputs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let param = if batch { format!("input[{i}]") } else { "input".into() };
                let mut ids = match x {
                    PromptInput::Text(t) => self
                        .model
                        .tokenize(t)
                        .map_err(|e| invalid(&param, e))?,
                    PromptInput::Tokens(t) => {
                        if let Some(bad) = t.iter().find(|&&id| id as usize >= vocab) {
                            return Err(invalid(
                                &param,
                                format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                            ));
                        }
                        t.clone()
                    }
                };
                if ids.len() > max {
                    if !r.truncate {
                        return Err(invalid(
                            &param,
                            format!(
                                "`{param}` is {} tokens, but `{}` takes at most {max}; shorten it or send `\"truncate\": true`",
                                ids.len(),
                                self.name
                            ),
                        ));
                    }
                    // Keep the closing special token (BERT's [SEP]) at the end.
                    let last = *ids.last().expect("a non-empty input: this is a bug");
                    ids.truncate(max - 1);
                    ids.push(last);
                }
                Ok(ids)
            })
            .collect()
    }
}

impl Backend for EmbeddingBackend {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn context_window(&self) -> usize {
        self.inner.model.max_tokens()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            chat: false,
            completions: false,
            tools: false,
            logprobs: false,
            echo: false,
            embeddings: true,
            constraints: false,
        }
    }

    fn health(&self) -> Health {
        if self.inner.alive.load(Ordering::Acquire) {
            Health::Ready
        } else {
            Health::Unavailable(format!(
                "the embedding thread of `{}` has stopped",
                self.inner.name
            ))
        }
    }

    fn generate(&self, _: Request) -> BoxFuture<'static, Result<EventStream, BackendError>> {
        let name = self.inner.name.clone();
        Box::pin(async move {
            Err(invalid(
                "model",
                format!("`{name}` is an embedding model; use /v1/embeddings"),
            ))
        })
    }

    fn embed(
        &self,
        request: ValidEmbeddingRequest,
    ) -> BoxFuture<'static, Result<Embeddings, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let dims = inner.model.dims();
            if let Some(d) = request.dimensions.filter(|&d| d != dims) {
                return Err(invalid(
                    "dimensions",
                    format!("`{}` makes {dims}-dimensional vectors and cannot shorten them; got `dimensions` {d}", inner.name),
                ));
            }
            let inputs = {
                let inner = Arc::clone(&inner);
                tokio::task::spawn_blocking(move || inner.tokenize(&request))
                    .await
                    .map_err(|e| BackendError::Internal(format!("tokenizing failed: {e}")))??
            };
            let prompt_tokens = inputs.iter().map(Vec::len).sum();
            let (reply, answer) = oneshot::channel();
            inner.jobs.send(Job { inputs, reply }).map_err(|_| {
                BackendError::Unavailable(format!(
                    "the embedding thread of `{}` has stopped",
                    inner.name
                ))
            })?;
            let vectors = answer
                .await
                .map_err(|_| {
                    BackendError::Unavailable(format!(
                        "the embedding thread of `{}` has stopped",
                        inner.name
                    ))
                })?
                .map_err(|e| {
                    tracing::error!(model = %inner.name, error = %e, "embedding batch failed");
                    BackendError::Internal(format!("computing the embeddings failed: {e}"))
                })?;
            Ok(Embeddings {
                vectors,
                prompt_tokens,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    /// A stand-in model: each token id becomes one coordinate; records batch sizes.
    struct Counting {
        batches: Mutex<Vec<usize>>,
    }

    impl EmbeddingModel for Counting {
        fn dims(&self) -> usize {
            2
        }
        fn max_tokens(&self) -> usize {
            4
        }
        fn vocab_size(&self) -> usize {
            100
        }
        fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.bytes().map(|b| (b % 100) as u32).collect())
        }
        fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.batches.lock().unwrap().push(batch.len());
            Ok(batch
                .iter()
                .map(|t| vec![t.len() as f32, t[0] as f32])
                .collect())
        }
    }

    fn request(inputs: Vec<PromptInput>, truncate: bool) -> ValidEmbeddingRequest {
        ValidEmbeddingRequest {
            model: None,
            inputs,
            encoding: inferd_protocol::EncodingFormat::Float,
            dimensions: None,
            truncate,
            arrival: Instant::now(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_batches_and_each_gets_its_own_vectors() {
        let model = Arc::new(Counting {
            batches: Mutex::new(Vec::new()),
        });
        let b = EmbeddingBackend::start("m", model.clone());
        let calls: Vec<_> = (0..6u32)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let r = request(
                        vec![PromptInput::Tokens(vec![i + 1; (i % 3 + 1) as usize])],
                        false,
                    );
                    (i, b.embed(r).await.unwrap())
                })
            })
            .collect();
        for c in calls {
            let (i, e) = c.await.unwrap();
            assert_eq!(e.vectors, vec![vec![(i % 3 + 1) as f32, (i + 1) as f32]]);
        }
        let batches = model.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 6);
        assert!(
            batches.len() < 6,
            "requests waiting together are batched: {batches:?}"
        );
    }

    #[tokio::test]
    async fn limits_name_the_input() {
        let b = EmbeddingBackend::start(
            "m",
            Arc::new(Counting {
                batches: Mutex::new(Vec::new()),
            }),
        );
        let long = vec![
            PromptInput::Text("ok".into()),
            PromptInput::Text("toolong".into()),
        ];
        let Err(BackendError::Invalid(e)) = b.embed(request(long.clone(), false)).await else {
            panic!("too long is refused");
        };
        assert_eq!(e.param.as_deref(), Some("input[1]"));
        assert!(e.message.contains("truncate"), "{e}");
        let ok = b.embed(request(long, true)).await.unwrap();
        assert_eq!(ok.vectors[1][0], 4.0, "cut to the model's limit");
        let mut r = request(vec![PromptInput::Tokens(vec![500])], false);
        assert!(matches!(
            b.embed(r.clone()).await,
            Err(BackendError::Invalid(_))
        ));
        r.inputs = vec![PromptInput::Tokens(vec![1])];
        r.dimensions = Some(3);
        let Err(BackendError::Invalid(e)) = b.embed(r).await else {
            panic!("dimensions")
        };
        assert_eq!(e.param.as_deref(), Some("dimensions"));
    }
}
