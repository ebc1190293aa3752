//! One request's side of the engine: what a caller submits ([`EngineRequest`]),
//! what comes back ([`TokenEvent`]), and the [`EventStream`] that receives it.
//!
//! A stream is the receiving end of an unbounded channel the engine thread sends
//! into (the engine never blocks on a slow client), plus the command sender that
//! lets the caller finish the request early ([`EventStream::stop`]). Dropping the
//! stream closes the channel, which the engine reads as "the client left" and
//! frees the request's blocks at its next step.

use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use inferd_scheduler::SeqId;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::constraint::BoxedConstraint;
use crate::error::EngineError;
use crate::sampling::{Logprobs, SamplingParams};

/// A validated generation request.
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops after any of these tokens (reported with the stream).
    pub stop_token_ids: Vec<u32>,
    /// Higher is scheduled first. Default 0.
    pub priority: i32,
    /// Isolates prefix-cache sharing to requests with the same salt.
    pub cache_salt: Option<String>,
    /// When the request reached the caller (e.g. the HTTP server); every timing
    /// (queue, TTFT, e2e) is measured from it. Default `None`: the moment of
    /// [`EngineHandle::submit`](crate::EngineHandle::submit).
    pub arrival: Option<Instant>,
    /// Report the log-probability of every prompt token after the first, with this
    /// many most likely alternatives (at most 20), as one
    /// [`TokenEvent::PromptLogprobs`] before the first token. Such a request
    /// computes its whole prompt: it never reuses cached prefix blocks, whose
    /// positions would have no logits. Default `None`.
    pub prompt_logprobs: Option<usize>,
    /// Restricts every generated token to what the constraint allows (JSON
    /// schema, regex, grammar); see [`crate::Constraint`]. Default `None`.
    pub constraint: Option<BoxedConstraint>,
}

/// Why a request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced, or the caller asked to stop
    /// ([`EventStream::stop`]).
    Stop,
    /// `max_tokens` was reached.
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// Where a request's time went (definitions in DESIGN.md). "Arrival" is
/// [`EngineRequest::arrival`] when given, else the submit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Arrival → first scheduled in a step.
    pub queue: Duration,
    /// First scheduled → first token produced.
    pub prefill: Duration,
    /// Arrival → first token.
    pub ttft: Duration,
    /// First token → last token.
    pub decode: Duration,
    /// Arrival → last token.
    pub e2e: Duration,
    pub preemptions: u32,
    /// Time spent computing token masks for a constrained request (on the mask
    /// thread, overlapped with forward passes), and how many were computed.
    pub mask: Duration,
    pub masks: usize,
    /// Speculation: tokens drafted for this request, and how many of them the
    /// model accepted (each one a token without a step of its own).
    pub spec_draft_tokens: usize,
    pub spec_accepted_tokens: usize,
}

#[derive(Debug)]
pub enum TokenEvent {
    /// Only for [`EngineRequest::prompt_logprobs`], once, before the first
    /// `Token`: entry `i` is the log-probability of `prompt[i + 1]` given
    /// `prompt[..=i]` (`prompt.len() - 1` entries).
    PromptLogprobs(Vec<Logprobs>),
    Token {
        id: u32,
        text: String,
        logprobs: Option<Logprobs>,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
        timings: Timings,
    },
    Error(EngineError),
}

impl TokenEvent {
    /// `Done` or `Error`: nothing follows it.
    fn ends_stream(&self) -> bool {
        matches!(self, TokenEvent::Done { .. } | TokenEvent::Error(_))
    }
}

/// What handles and streams ask of the engine thread.
pub(crate) enum Command {
    Submit {
        id: SeqId,
        /// Boxed: it dwarfs the other commands.
        req: Box<EngineRequest>,
        arrival: Instant,
        events: UnboundedSender<TokenEvent>,
    },
    /// The caller is done with the request (it matched a stop string): finish it
    /// with `FinishReason::Stop`.
    Stop { id: SeqId },
    /// Fail every outstanding request with `EngineError::Stopped` and exit.
    Shutdown,
}

/// Receives one request's events. Dropping it cancels the request.
///
/// Ends with exactly one `Done` or `Error`: if the engine thread goes away
/// without sending either (it exited, or a request was queued behind a
/// shutdown), the stream reports `Error(EngineError::Stopped)` itself.
pub struct EventStream {
    id: SeqId,
    events: UnboundedReceiver<TokenEvent>,
    commands: mpsc::Sender<Command>,
    ended: bool,
}

impl EventStream {
    pub(crate) fn new(
        id: SeqId,
        events: UnboundedReceiver<TokenEvent>,
        commands: mpsc::Sender<Command>,
    ) -> EventStream {
        EventStream {
            id,
            events,
            commands,
            ended: false,
        }
    }

    /// The next event; `None` after the final `Done` or `Error`.
    pub async fn recv(&mut self) -> Option<TokenEvent> {
        let ev = self.events.recv().await;
        self.observe(ev)
    }

    /// [`recv`](Self::recv) for synchronous callers; must not be called from
    /// inside an async runtime.
    pub fn blocking_recv(&mut self) -> Option<TokenEvent> {
        let ev = self.events.blocking_recv();
        self.observe(ev)
    }

    /// [`recv`](Self::recv) as a poll, for adapting the stream to a
    /// `futures::Stream` (`futures::stream::poll_fn`).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        self.events.poll_recv(cx).map(|ev| self.observe(ev))
    }

    /// Asks the engine to finish the request now (the caller matched a stop
    /// string). At its next command check the engine frees the request's blocks
    /// and sends `Done` with `FinishReason::Stop`, the real usage and timings;
    /// tokens produced before that may still arrive first. Does nothing if the
    /// request has already finished.
    pub fn stop(&self) {
        // An engine that has gone away has nothing left to stop.
        let _ = self.commands.send(Command::Stop { id: self.id });
    }

    fn observe(&mut self, ev: Option<TokenEvent>) -> Option<TokenEvent> {
        match ev {
            Some(ev) => {
                self.ended |= ev.ends_stream();
                Some(ev)
            }
            None if !self.ended => {
                self.ended = true;
                Some(TokenEvent::Error(EngineError::Stopped))
            }
            None => None,
        }
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("id", &self.id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
