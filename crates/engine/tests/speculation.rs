//! Speculative decoding on the real default model: drafts by prompt lookup are
//! verified in the batch, so greedy and seeded outputs are the same tokens with
//! speculation on as off — alone, batched, across preemptions, with `max_tokens`
//! or a stop token inside a burst — while a prompt the output copies gets most
//! of its tokens accepted; every block comes back and the counters add up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inferd_engine::{
    start_engine, DraftSource, EngineConfig, EngineHandle, EngineRequest, FinishReason,
    LoadedModel, SamplingParams, SpecConfig, Timings, TokenEvent,
};
use inferd_scheduler::SchedulerConfig;
use inferd_tokenizer::Tokenizer;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: std::sync::OnceLock<std::sync::Arc<Tokenizer>> = std::sync::OnceLock::new();
    TOKENIZER.get_or_init(|| {
        LoadedModel::load(inferd_testutil::smollm2_path())
            .unwrap()
            .tokenizer
    })
}

fn engine(config: EngineConfig) -> EngineHandle {
    start_engine(
        LoadedModel::load(inferd_testutil::smollm2_path()).unwrap(),
        config,
    )
    .unwrap()
}

/// Drafts whatever the proposer finds (the cost model could turn them off on a
/// fast machine, and these tests are about what verification does with them).
fn always() -> Option<SpecConfig> {
    Some(SpecConfig {
        adaptive: false,
        ..SpecConfig::default()
    })
}

/// A prompt the model continues by copying: a list it is asked to repeat.
fn copying_prompt() -> Vec<u32> {
    let text = "Repeat the list exactly.\nList: apples, pears, plums, cherries, grapes, \
                lemons, limes, oranges, peaches, apricots, melons, figs.\n\
                Repeated: apples, pears, plums,";
    tokenizer().encode(text, false).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    let m = tokenizer();
    let mut p: Vec<Vec<u32>> = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "1, 2, 3, 5, 8, 13,",
        "Water boils at 100 degrees Celsius at sea level. At higher altitudes, the boiling point is lower because",
    ]
    .iter()
    .map(|t| m.encode(t, false).unwrap())
    .collect();
    p.push(copying_prompt());
    p
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> EngineRequest {
    EngineRequest {
        prompt,
        max_tokens,
        ..Default::default()
    }
}

/// The tokens, finish reason and timings of one request.
fn run(handle: &EngineHandle, req: EngineRequest) -> (Vec<u32>, FinishReason, Timings) {
    collect(handle.submit(req))
}

fn collect(mut rx: inferd_engine::EventStream) -> (Vec<u32>, FinishReason, Timings) {
    let mut ids = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Token { id, .. } => ids.push(id),
            TokenEvent::Done {
                reason, timings, ..
            } => return (ids, reason, timings),
            TokenEvent::Error(e) => panic!("{e}"),
            TokenEvent::PromptLogprobs(_) => {}
        }
    }
    panic!("the stream ended without Done");
}

fn wait_for_free_blocks(handle: &EngineHandle) {
    let started = Instant::now();
    while handle.gauges.kv_used_blocks.load(Ordering::Relaxed) != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "blocks still in use"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn greedy_output_is_the_same_with_speculation_alone_and_batched() {
    let plain = engine(EngineConfig::default());
    let want: Vec<Vec<u32>> = prompts()
        .into_iter()
        .map(|p| run(&plain, request(p, 24)).0)
        .collect();
    let spec = engine(EngineConfig {
        speculation: always(),
        ..EngineConfig::default()
    });
    let mut accepted = 0;
    for (p, want) in prompts().into_iter().zip(&want) {
        let (got, _, t) = run(&spec, request(p, 24));
        assert_eq!(&got, want, "speculation changed a greedy output");
        assert!(t.spec_accepted_tokens <= t.spec_draft_tokens);
        accepted += t.spec_accepted_tokens;
    }
    // The copying prompt alone: most of its tokens come from accepted drafts.
    let (_, _, t) = run(&spec, request(copying_prompt(), 24));
    assert!(
        t.spec_accepted_tokens >= 12,
        "accepted {} of {} drafted",
        t.spec_accepted_tokens,
        t.spec_draft_tokens
    );
    println!(
        "speculation on the copying prompt: {} drafted, {} accepted of 24 tokens",
        t.spec_draft_tokens, t.spec_accepted_tokens
    );
    // All at once: drafts of some sequences verified beside others' decodes.
    let streams: Vec<_> = prompts()
        .into_iter()
        .map(|p| spec.submit(request(p, 24)))
        .collect();
    for (rx, want) in streams.into_iter().zip(&want) {
        assert_eq!(
            &collect(rx).0,
            want,
            "batched speculation changed an output"
        );
    }
    wait_for_free_blocks(&spec);
    let g = &spec.gauges;
    let drafted = g.spec_draft_tokens_total.load(Ordering::Relaxed);
    let total_accepted = g.spec_accepted_tokens_total.load(Ordering::Relaxed);
    let by_position: u64 = g
        .spec_accepted_at_total
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum();
    assert!(total_accepted as usize >= accepted + t.spec_accepted_tokens);
    assert!(total_accepted <= drafted);
    assert_eq!(by_position, total_accepted);
    // Acceptance never rises with the position in the draft.
    let at = |i: usize| g.spec_accepted_at_total[i].load(Ordering::Relaxed);
    assert!((1..6).all(|i| at(i) <= at(i - 1)));
    assert_eq!(
        plain.gauges.spec_draft_tokens_total.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn seeded_sampling_is_the_same_with_speculation() {
    let plain = engine(EngineConfig::default());
    let spec = engine(EngineConfig {
        speculation: always(),
        ..EngineConfig::default()
    });
    for seed in [1, 7, 42] {
        let req = || EngineRequest {
            sampling: SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                seed: Some(seed),
                ..Default::default()
            },
            ..request(copying_prompt(), 20)
        };
        let (want, _, _) = run(&plain, req());
        let (got, _, t) = run(&spec, req());
        assert_eq!(
            got, want,
            "seed {seed}: speculation changed a sampled output"
        );
        assert!(t.spec_draft_tokens > 0, "seed {seed}: nothing was drafted");
    }
}

#[test]
fn max_tokens_and_stop_tokens_end_a_burst_where_plain_decoding_ends() {
    let plain = engine(EngineConfig::default());
    let spec = engine(EngineConfig {
        speculation: always(),
        ..EngineConfig::default()
    });
    let (full, _, _) = run(&plain, request(copying_prompt(), 24));
    for max_tokens in [1, 2, 5, 9] {
        let (got, reason, _) = run(&spec, request(copying_prompt(), max_tokens));
        assert_eq!(got, full[..max_tokens], "max_tokens {max_tokens}");
        assert_eq!(reason, FinishReason::Length);
    }
    // A stop token that the drafts run past: output ends on it.
    let stop = full[7];
    let first = full.iter().position(|&t| t == stop).unwrap();
    let req = EngineRequest {
        stop_token_ids: vec![stop],
        ..request(copying_prompt(), 24)
    };
    let (got, reason, _) = run(&spec, req);
    assert_eq!(got, full[..=first]);
    assert_eq!(reason, FinishReason::Stop);
    wait_for_free_blocks(&spec);
}

#[test]
fn preempted_speculating_sequences_give_the_plain_outputs() {
    // About 12 blocks of 16 tokens (SmolLM2-135M's K/V is ~49 KB a token):
    // room for two or three of the eight sequences at once, so the rest wait
    // or are preempted mid-generation, drafts in flight.
    let small = |speculation| EngineConfig {
        kv_cache_mib: 9,
        scheduler: SchedulerConfig {
            max_running: 8,
            ..SchedulerConfig::default()
        },
        speculation,
        ..EngineConfig::default()
    };
    let plain = engine(small(None));
    let spec = engine(small(always()));
    let mut ps = prompts();
    ps.extend(prompts().into_iter().take(3));
    let go = |h: &EngineHandle| -> Vec<Vec<u32>> {
        let streams: Vec<_> = ps
            .iter()
            .map(|p| h.submit(request(p.clone(), 40)))
            .collect();
        streams.into_iter().map(|rx| collect(rx).0).collect()
    };
    let want = go(&plain);
    let got = go(&spec);
    assert_eq!(got, want, "speculation with preemption changed an output");
    assert!(
        spec.gauges.preemptions_total.load(Ordering::Relaxed) > 0,
        "the test must preempt"
    );
    assert!(
        spec.gauges
            .spec_accepted_tokens_total
            .load(Ordering::Relaxed)
            > 0
    );
    wait_for_free_blocks(&spec);
}

#[test]
fn a_tenants_earlier_output_drafts_its_repeat_and_no_other_tenants() {
    let spec = engine(EngineConfig {
        speculation: always(),
        ..EngineConfig::default()
    });
    let prompt = tokenizer()
        .encode("Write a short poem about the sea at night.", false)
        .unwrap();
    let as_tenant = |salt: &str| EngineRequest {
        cache_salt: Some(salt.into()),
        ..request(prompt.clone(), 32)
    };
    let (first, _, t1) = run(&spec, as_tenant("a"));
    // The same request again, same tenant: the first answer drafts it.
    let (again, _, t2) = run(&spec, as_tenant("a"));
    // Another tenant sees none of tenant a's outputs: it drafts exactly as
    // the first request did, from its own tokens alone.
    let (other, _, t3) = run(&spec, as_tenant("b"));
    assert_eq!(again, first);
    assert_eq!(other, first);
    println!(
        "accepted drafts of 32 tokens: first {}, repeat {}, other tenant {}",
        t1.spec_accepted_tokens, t2.spec_accepted_tokens, t3.spec_accepted_tokens
    );
    assert!(
        t2.spec_accepted_tokens >= t1.spec_accepted_tokens + 16,
        "the repeat drew on the earlier output: {} vs {}",
        t2.spec_accepted_tokens,
        t1.spec_accepted_tokens
    );
    assert_eq!(t3.spec_accepted_tokens, t1.spec_accepted_tokens);
    assert_eq!(t3.spec_draft_tokens, t1.spec_draft_tokens);
}

/// A draft model and no lookup: every draft comes from the draft model.
fn drafting_with(source: DraftSource) -> Option<SpecConfig> {
    Some(SpecConfig {
        lookup: false,
        draft: Some(source),
        ..always().unwrap()
    })
}

#[test]
fn a_draft_model_that_is_the_target_has_every_greedy_draft_accepted() {
    let plain = engine(EngineConfig::default());
    let want: Vec<Vec<u32>> = prompts()
        .into_iter()
        .map(|p| run(&plain, request(p, 16)).0)
        .collect();
    let spec = engine(EngineConfig {
        speculation: drafting_with(DraftSource::File(inferd_testutil::smollm2_path())),
        ..EngineConfig::default()
    });
    for (p, want) in prompts().into_iter().zip(&want) {
        let (got, _, t) = run(&spec, request(p, 16));
        assert_eq!(&got, want, "a draft model changed a greedy output");
        assert!(t.spec_draft_tokens > 0, "nothing was drafted");
        assert_eq!(
            t.spec_accepted_tokens, t.spec_draft_tokens,
            "the target drafting for itself had a draft rejected"
        );
    }
    // Batched: the draft model drafts for all of them in the same passes.
    let streams: Vec<_> = prompts()
        .into_iter()
        .map(|p| spec.submit(request(p, 16)))
        .collect();
    for (rx, want) in streams.into_iter().zip(&want) {
        let (got, _, t) = collect(rx);
        assert_eq!(&got, want, "batched drafting changed an output");
        assert_eq!(t.spec_accepted_tokens, t.spec_draft_tokens);
    }
    wait_for_free_blocks(&spec);
}

#[test]
fn self_speculation_from_the_first_layers_keeps_outputs_and_refuses_bad_depths() {
    let plain = engine(EngineConfig::default());
    let spec = engine(EngineConfig {
        speculation: drafting_with(DraftSource::TargetLayers(20)),
        ..EngineConfig::default()
    });
    let (mut drafted, mut accepted) = (0, 0);
    for p in prompts() {
        let want = run(&plain, request(p.clone(), 16)).0;
        let (got, _, t) = run(&spec, request(p, 16));
        assert_eq!(got, want, "self-speculation changed a greedy output");
        drafted += t.spec_draft_tokens;
        accepted += t.spec_accepted_tokens;
    }
    assert!(drafted > 0 && accepted <= drafted);
    println!("first 20 of 30 layers as the draft: {accepted} of {drafted} drafts accepted");
    // The engine's start error for a draft source.
    let refused = |source: DraftSource| {
        start_engine(
            LoadedModel::load(inferd_testutil::smollm2_path()).unwrap(),
            EngineConfig {
                speculation: drafting_with(source),
                ..EngineConfig::default()
            },
        )
        .err()
        .expect("the draft source is refused")
        .to_string()
    };
    let layers = 30;
    for bad in [0, layers] {
        let err = refused(DraftSource::TargetLayers(bad));
        assert!(
            err.contains("`spec_draft_layers` must be in 1..30"),
            "{err}"
        );
    }
    let missing = std::env::temp_dir().join("inferd-no-such-draft.gguf");
    let err = refused(DraftSource::File(missing));
    assert!(err.contains("inferd-no-such-draft.gguf"), "{err}");
    // Without lookup there must be a draft model.
    let err = EngineConfig {
        speculation: Some(SpecConfig {
            lookup: false,
            ..SpecConfig::default()
        }),
        ..EngineConfig::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs a draft model"), "{err}");
}
