//! [`TestBackend`]: a backend that follows a script instead of running a model, so
//! the HTTP edge (validation, error shapes, SSE order, auth, routing by `model`)
//! is tested in milliseconds. It records every request it receives.

use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use inferd_protocol::{FinishReason, Timings, Usage};

use crate::{Backend, BackendError, Capabilities, Event, EventStream, Health, Request};

/// What a [`TestBackend`] does with a request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Every choice answers with these pieces of text, then finishes with `Stop`.
    Reply(Vec<String>),
    /// Refuses before the first event.
    Refuse(BackendError),
    /// Sends these pieces on choice 0, then fails mid-stream.
    FailAfter(Vec<String>, BackendError),
}

pub struct TestBackend {
    name: String,
    context_window: usize,
    capabilities: Capabilities,
    script: Mutex<Script>,
    health: Mutex<Health>,
    received: Mutex<Vec<Request>>,
}

impl TestBackend {
    /// A backend named `name` that answers "Hello there" in two pieces.
    pub fn new(name: impl Into<String>) -> TestBackend {
        TestBackend {
            name: name.into(),
            context_window: 2048,
            capabilities: Capabilities {
                chat: true,
                completions: true,
                tools: true,
                logprobs: false,
                echo: false,
                embeddings: false,
                constraints: false,
            },
            script: Mutex::new(Script::Reply(vec!["Hello".into(), " there".into()])),
            health: Mutex::new(Health::Ready),
            received: Mutex::new(Vec::new()),
        }
    }

    pub fn with_capabilities(mut self, c: Capabilities) -> TestBackend {
        self.capabilities = c;
        self
    }

    pub fn set_script(&self, s: Script) {
        *self
            .script
            .lock()
            .expect("test backend lock: this is a bug") = s;
    }

    pub fn set_health(&self, h: Health) {
        *self
            .health
            .lock()
            .expect("test backend lock: this is a bug") = h;
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Request> {
        self.received
            .lock()
            .expect("test backend lock: this is a bug")
            .clone()
    }
}

fn done(index: usize, pieces: usize) -> Event {
    Event::Done {
        index,
        finish: FinishReason::Stop,
        usage: Usage::new(3, pieces, 0),
        timings: Timings {
            ttft_ms: 1.0,
            e2e_ms: 2.0,
            prompt_tokens: 3,
            ..Timings::default()
        },
    }
}

fn deltas(index: usize, pieces: &[String]) -> impl Iterator<Item = Event> + '_ {
    pieces.iter().map(move |t| Event::Delta {
        index,
        text: t.clone(),
        tokens: Vec::new(),
    })
}

impl Backend for TestBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn context_window(&self) -> usize {
        self.context_window
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .expect("test backend lock: this is a bug")
            .clone()
    }

    fn generate(&self, request: Request) -> BoxFuture<'static, Result<EventStream, BackendError>> {
        let choices = request.choices();
        self.received
            .lock()
            .expect("test backend lock: this is a bug")
            .push(request);
        let script = self
            .script
            .lock()
            .expect("test backend lock: this is a bug")
            .clone();
        Box::pin(async move {
            let events: Vec<Event> = match script {
                Script::Refuse(e) => return Err(e),
                Script::Reply(pieces) => (0..choices)
                    .flat_map(|i| {
                        deltas(i, &pieces)
                            .chain([done(i, pieces.len())])
                            .collect::<Vec<_>>()
                    })
                    .collect(),
                Script::FailAfter(pieces, e) => {
                    deltas(0, &pieces).chain([Event::Error(e)]).collect()
                }
            };
            Ok(futures_util::stream::iter(events).boxed())
        })
    }
}
