//! The embedding backend on the real all-MiniLM-L6-v2: concurrent requests,
//! batched together on the model's thread, get exactly the vectors each would get
//! alone from `Embedder`.

use std::sync::Arc;
use std::time::Instant;

use inferd_backend::{Backend, EmbeddingBackend};
use inferd_embed::Embedder;
use inferd_protocol::{EncodingFormat, PromptInput, ValidEmbeddingRequest};

fn request(texts: &[&str]) -> ValidEmbeddingRequest {
    ValidEmbeddingRequest {
        model: None,
        inputs: texts
            .iter()
            .map(|t| PromptInput::Text(t.to_string()))
            .collect(),
        encoding: EncodingFormat::Float,
        dimensions: None,
        truncate: false,
        arrival: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_the_vectors_they_would_get_alone() {
    let embedder = Arc::new(Embedder::load(inferd_testutil::minilm_path()).unwrap());
    let backend = EmbeddingBackend::start("minilm-l6", embedder.clone());
    let texts: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "Sentence number {i} talks about {}.",
                ["cats", "rivers", "markets"][i % 3]
            )
        })
        .collect();
    let calls: Vec<_> = texts
        .iter()
        .map(|t| {
            let (b, t) = (backend.clone(), t.clone());
            tokio::spawn(async move { b.embed(request(&[&t, "and a second input"])).await })
        })
        .collect();
    for (t, call) in texts.iter().zip(calls) {
        let got = call.await.unwrap().unwrap();
        let alone = embedder.embed(&[t, "and a second input"]).unwrap();
        assert_eq!(got.vectors.len(), 2);
        for (a, b) in got.vectors.iter().zip(&alone) {
            let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cos > 0.99999, "{t}: cosine {cos}");
        }
        assert_eq!(
            got.prompt_tokens,
            embedder.tokenize(t).unwrap().len()
                + embedder.tokenize("and a second input").unwrap().len()
        );
    }
}
