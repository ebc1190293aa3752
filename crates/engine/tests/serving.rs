//! The serving engine on the real default model: batching does not change greedy
//! outputs, a cached prefix gives the same output as a cold cache and reports the
//! cached tokens, cancellation frees blocks, a full queue is refused; a caller's
//! stop finishes with real usage, timings start at the given arrival, prompt
//! log-probabilities agree with teacher forcing (also across a preemption), and
//! shutdown fails what is outstanding.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inferd_engine::{
    start_engine, EngineConfig, EngineError, EngineHandle, EngineRequest, EventStream,
    FinishReason, LoadedModel, Logprobs, SamplingParams, Timings, TokenEvent, Usage,
};
use inferd_scheduler::SchedulerConfig;
use inferd_tokenizer::Tokenizer;

/// The tokenizer, loaded once for the whole file.
fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: std::sync::OnceLock<std::sync::Arc<Tokenizer>> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| {
        LoadedModel::load(inferd_testutil::smollm2_path())
            .unwrap()
            .tokenizer
    })
}

/// An engine of its own (tests differ in configuration and count blocks).
fn engine(config: EngineConfig) -> (EngineHandle, &'static Tokenizer) {
    let handle = start_engine(
        LoadedModel::load(inferd_testutil::smollm2_path()).unwrap(),
        config,
    )
    .unwrap();
    (handle, tokenizer())
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt,
        max_tokens,
        ..Default::default()
    }
}

fn prompts(m: &Tokenizer) -> Vec<Vec<u32>> {
    let texts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea,",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "List three facts about the moon:",
        "1, 2, 3, 5, 8, 13,",
        "The quick brown fox",
        "In 1969, the first humans landed on the moon. The mission was called",
        "Water boils at 100 degrees Celsius at sea level. At higher altitudes, the boiling point is lower because the air pressure is lower. This is why cooking pasta on a mountain takes longer. Explain the physics of this in simple terms:",
    ];
    texts.iter().map(|t| m.encode(t, false).unwrap()).collect()
}

#[test]
fn greedy_output_is_identical_alone_and_in_a_batch_of_eight() {
    let (handle, m) = engine(EngineConfig::default());
    let prompts = prompts(m);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| handle.generate_blocking(greedy(p.clone(), 24)).unwrap().0)
        .collect();
    // All eight at once, so they prefill and decode in shared ragged batches.
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| handle.submit(greedy(p.clone(), 24)))
        .collect();
    for (mut rx, want) in streams.into_iter().zip(&alone) {
        let mut got = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                TokenEvent::Token { id, .. } => got.push(id),
                TokenEvent::Done { reason, .. } => {
                    assert_eq!(reason, FinishReason::Length);
                    break;
                }
                TokenEvent::Error(e) => panic!("{e}"),
                TokenEvent::PromptLogprobs(_) => panic!("not asked for"),
            }
        }
        assert_eq!(&got, want, "batched output differs from running alone");
    }
}

#[test]
fn shared_prefix_hits_the_cache_and_gives_the_same_output() {
    let (handle, m) = engine(EngineConfig::default());
    let system = "You are a careful assistant. Answer briefly and precisely. ".repeat(8);
    let a = m
        .encode(&format!("{system}Question: what is 2+2? Answer:"), false)
        .unwrap();
    let b = m
        .encode(&format!("{system}Question: name a color. Answer:"), false)
        .unwrap();
    // Cold: b alone on a fresh engine.
    let (cold, cold_usage, _) = handle.generate_blocking(greedy(b.clone(), 16)).unwrap();
    assert_eq!(cold_usage.cached_tokens, 0);
    let (handle, _) = engine(EngineConfig::default());
    handle.generate_blocking(greedy(a.clone(), 4)).unwrap();
    let (warm, usage, _) = handle.generate_blocking(greedy(b.clone(), 16)).unwrap();
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    assert!(
        usage.cached_tokens > 0 && usage.cached_tokens <= shared,
        "cached {} of {shared}",
        usage.cached_tokens
    );
    assert_eq!(usage.cached_tokens % 16, 0, "whole blocks only");
    assert_eq!(
        warm, cold,
        "output with a cached prefix differs from a cold cache"
    );
    // A different salt shares nothing.
    let salted = EngineRequest {
        cache_salt: Some("tenant-b".into()),
        ..greedy(b, 4)
    };
    let (_, usage, _) = handle.generate_blocking(salted).unwrap();
    assert_eq!(usage.cached_tokens, 0);
}

#[test]
fn cancelling_mid_generation_frees_all_blocks() {
    let config = EngineConfig {
        enable_prefix_caching: false,
        ..Default::default()
    };
    let (handle, m) = engine(config);
    let total = handle.gauges.kv_free_blocks.load(Ordering::Relaxed);
    let mut rx = handle.submit(greedy(prompts(m)[7].clone(), 1000));
    let mut n = 0;
    while let Some(TokenEvent::Token { .. }) = rx.blocking_recv() {
        n += 1;
        if n == 5 {
            break;
        }
    }
    assert!(handle.gauges.kv_used_blocks.load(Ordering::Relaxed) > 0);
    drop(rx);
    // The engine notices at its next step; a follow-up request forces steps.
    handle.generate_blocking(greedy(vec![1, 2, 3], 2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.gauges.kv_used_blocks.load(Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "blocks still used after cancel");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(total == 0 || handle.gauges.kv_free_blocks.load(Ordering::Relaxed) >= total);
}

#[test]
fn a_full_queue_refuses_at_once_and_bad_requests_name_the_problem() {
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_running: 1,
            max_waiting: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let (handle, _) = engine(config);
    let streams: Vec<_> = (0..6)
        .map(|_| handle.submit(greedy(vec![1, 2, 3, 4], 64)))
        .collect();
    let mut overloaded = 0;
    let mut completed = 0;
    for mut rx in streams {
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                TokenEvent::Error(EngineError::Overloaded { .. }) => {
                    overloaded += 1;
                    break;
                }
                TokenEvent::Error(e) => panic!("unexpected error {e}"),
                TokenEvent::Done { .. } => {
                    completed += 1;
                    break;
                }
                TokenEvent::Token { .. } | TokenEvent::PromptLogprobs(_) => {}
            }
        }
    }
    assert!(
        overloaded >= 1,
        "a flood beyond max_waiting must be refused"
    );
    assert!(completed >= 1, "admitted requests still complete");
    let err = handle
        .generate_blocking(greedy(vec![1; 10], 9000))
        .unwrap_err()
        .to_string();
    assert!(err.contains("context length 8192"), "{err}");
    let err = handle
        .generate_blocking(greedy(vec![], 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
}

fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads events up to `Done`: (prompt logprobs if any, tokens, reason, usage,
/// timings). Checks that the prompt logprobs come once, before every token.
struct Finished {
    prompt_logprobs: Option<Vec<Logprobs>>,
    tokens: Vec<(u32, Option<Logprobs>)>,
    reason: FinishReason,
    usage: Usage,
    timings: Timings,
}

fn finish(rx: &mut EventStream) -> Finished {
    let (mut prompt_logprobs, mut tokens) = (None, Vec::new());
    loop {
        match rx
            .blocking_recv()
            .expect("a stream ends with Done or Error")
        {
            TokenEvent::PromptLogprobs(lp) => {
                assert!(tokens.is_empty(), "prompt logprobs after a token");
                assert!(
                    prompt_logprobs.replace(lp).is_none(),
                    "prompt logprobs twice"
                );
            }
            TokenEvent::Token { id, logprobs, .. } => tokens.push((id, logprobs)),
            TokenEvent::Done {
                reason,
                usage,
                timings,
            } => {
                return Finished {
                    prompt_logprobs,
                    tokens,
                    reason,
                    usage,
                    timings,
                }
            }
            TokenEvent::Error(e) => panic!("unexpected error: {e}"),
        }
    }
}

#[test]
fn a_stop_request_ends_with_done_and_real_usage() {
    let (handle, m) = engine(EngineConfig::default());
    let prompt = prompts(m)[7].clone();
    // Warm the prefix cache, so the stopped request's usage has cached tokens to report.
    handle.generate_blocking(greedy(prompt.clone(), 1)).unwrap();
    let mut rx = handle.submit(greedy(prompt.clone(), 1000));
    for _ in 0..3 {
        match rx.blocking_recv() {
            Some(TokenEvent::Token { .. }) => {}
            other => panic!("expected a token, got {other:?}"),
        }
    }
    rx.stop();
    let done = finish(&mut rx);
    assert_eq!(done.reason, FinishReason::Stop);
    assert_eq!(done.usage.prompt_tokens, prompt.len());
    assert!(done.usage.prompt_tokens > 0);
    assert!(
        (3..1000).contains(&done.usage.completion_tokens),
        "{:?}",
        done.usage
    );
    assert_eq!(done.usage.completion_tokens, 3 + done.tokens.len());
    assert!(done.usage.cached_tokens > 0, "{:?}", done.usage);
    assert!(done.timings.ttft > Duration::ZERO, "{:?}", done.timings);
    assert!(rx.blocking_recv().is_none(), "nothing follows Done");
    wait_until(Duration::from_secs(10), "blocks freed after stop", || {
        handle.gauges.kv_used_blocks.load(Ordering::Relaxed) == 0
    });
    // Stopping a finished request is harmless.
    rx.stop();
    handle.generate_blocking(greedy(vec![1, 2, 3], 2)).unwrap();
}

#[test]
fn timings_are_measured_from_the_given_arrival() {
    let (handle, _) = engine(EngineConfig::default());
    let lead = Duration::from_millis(200);
    let arrival = Instant::now()
        .checked_sub(lead)
        .expect("the clock is past 200ms");
    let (_, _, t) = handle
        .generate_blocking(EngineRequest {
            arrival: Some(arrival),
            ..greedy(vec![1, 2, 3, 4], 2)
        })
        .unwrap();
    assert!(t.ttft >= lead && t.queue >= lead, "{t:?}");
    assert!(t.e2e >= t.ttft, "{t:?}");
    // Without an arrival, the clock starts at submit.
    let (_, _, t) = handle
        .generate_blocking(greedy(vec![1, 2, 3, 4], 2))
        .unwrap();
    assert!(t.queue < lead, "{t:?}");
}

/// Compares prompt logprobs with reference rows: top alternatives' values in
/// order, and the prompt token's own value wherever the reference lists it.
/// Returns how many prompt-token values were compared.
fn assert_logprobs_close(got: &Logprobs, want: &Logprobs, token: u32, at: usize) -> usize {
    const TOL: f32 = 1e-3;
    assert_eq!(got.top.len(), want.top.len(), "position {at}");
    for (g, w) in got.top.iter().zip(&want.top) {
        assert!((g.1 - w.1).abs() < TOL, "position {at}: top {g:?} vs {w:?}");
    }
    match want.top.iter().find(|t| t.0 == token) {
        Some(&(_, w)) => {
            assert!(
                (got.token_logprob - w).abs() < TOL,
                "position {at}: logprob of {token} {} vs {w}",
                got.token_logprob
            );
            1
        }
        None => 0,
    }
}

fn scoring(prompt: Vec<u32>, n: usize) -> EngineRequest {
    EngineRequest {
        prompt_logprobs: Some(n),
        ..greedy(prompt, 1)
    }
}

#[test]
fn prompt_logprobs_match_teacher_forcing_of_each_prefix() {
    let (handle, m) = engine(EngineConfig::default());
    let prompt = m.encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", false).unwrap();
    let n = 5;
    let scored = finish(&mut handle.submit(scoring(prompt.clone(), n)));
    let entries = scored.prompt_logprobs.expect("prompt logprobs were sent");
    assert_eq!(entries.len(), prompt.len() - 1);
    assert_eq!(scored.tokens.len(), 1);
    for (i, e) in entries.iter().enumerate() {
        assert!(e.token_logprob <= 0.0, "position {i}: {e:?}");
        assert_eq!(e.top.len(), n);
        assert!(e.top.iter().all(|t| t.1 <= 0.0), "position {i}: {e:?}");
        assert!(e.top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {e:?}");
    }
    // The reference for position k-1: a request whose prompt is prompt[..k]
    // reports, with its first generated token, the distribution over prompt[k].
    let mut compared = 0;
    for k in 1..prompt.len() {
        let req = EngineRequest {
            sampling: SamplingParams {
                logprobs: Some(n),
                ..Default::default()
            },
            ..greedy(prompt[..k].to_vec(), 1)
        };
        let first = finish(&mut handle.submit(req));
        let want = first.tokens[0].1.as_ref().expect("logprobs were asked for");
        compared += assert_logprobs_close(&entries[k - 1], want, prompt[k], k - 1);
    }
    eprintln!(
        "prompt logprobs: {} positions, prompt token's value checked at {compared}",
        entries.len()
    );
    assert!(
        compared * 2 >= entries.len(),
        "a counting prompt is predictable"
    );
    // Nothing was served from the cache, though every prefix above was computed.
    let again = finish(&mut handle.submit(scoring(prompt.clone(), n)));
    assert_eq!(again.usage.cached_tokens, 0);
    assert_eq!(again.prompt_logprobs.map(|e| e.len()), Some(entries.len()));
}

#[test]
fn prompt_logprobs_survive_preemption() {
    let all = prompts(tokenizer());
    let scored_prompt = all[7][..40].to_vec();
    let other_prompt = all[6][..12].to_vec();
    let (roomy, _) = engine(EngineConfig::default());
    let reference = finish(&mut roomy.submit(scoring(scored_prompt.clone(), 3)));
    let reference = reference
        .prompt_logprobs
        .expect("prompt logprobs were sent");
    // Four blocks of 16 and 8-token steps: the scored prompt is still in prefill
    // (32 tokens in) when the other request's decode needs a block, so it is
    // preempted, and recomputes (or reuses its own cached blocks) afterwards.
    let config = EngineConfig {
        kv_cache_mib: 3,
        scheduler: SchedulerConfig {
            max_batch_tokens: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let (tight, _) = engine(config);
    let mut other = tight.submit(greedy(other_prompt, 8));
    let mut scored = tight.submit(scoring(scored_prompt.clone(), 3));
    let scored = finish(&mut scored);
    finish(&mut other);
    eprintln!(
        "preemptions {}, prefix hits {} tokens",
        scored.timings.preemptions,
        tight
            .gauges
            .prefix_hits_tokens_total
            .load(Ordering::Relaxed)
    );
    assert!(scored.timings.preemptions >= 1, "the setup must preempt");
    let entries = scored.prompt_logprobs.expect("prompt logprobs were sent");
    assert_eq!(
        entries.len(),
        reference.len(),
        "no entry lost or duplicated"
    );
    for (i, (got, want)) in entries.iter().zip(&reference).enumerate() {
        assert_logprobs_close(got, want, scored_prompt[i + 1], i);
        assert!(
            (got.token_logprob - want.token_logprob).abs() < 1e-3,
            "position {i}"
        );
    }
}

#[test]
fn shutdown_fails_outstanding_requests_with_stopped() {
    let (handle, m) = engine(EngineConfig::default());
    let mut rx = handle.submit(greedy(prompts(m)[0].clone(), 1000));
    assert!(matches!(rx.blocking_recv(), Some(TokenEvent::Token { .. })));
    handle.shutdown();
    loop {
        match rx.blocking_recv() {
            Some(TokenEvent::Token { .. }) => {}
            Some(TokenEvent::Error(EngineError::Stopped)) => break,
            other => panic!("expected Error(Stopped), got {other:?}"),
        }
    }
    wait_until(Duration::from_secs(1), "the engine exits", || {
        !handle.is_alive()
    });
    let err = handle.generate_blocking(greedy(vec![1], 1)).unwrap_err();
    assert!(matches!(err, EngineError::Stopped), "{err}");
}
