//! `POST /v1/embeddings`: validation, the backend's vectors, OpenAI's response —
//! floats, or base64 of the little-endian f32 bytes (the official SDKs ask for
//! base64 unless told otherwise, and decode it themselves).

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use inferd_protocol::{
    Embedding, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, EncodingFormat,
};

use crate::error::ApiError;
use crate::metrics::NO_MODEL;
use crate::ServerState;

pub async fn route(
    s: Arc<ServerState>,
    headers: HeaderMap,
    body: &[u8],
    arrival: Instant,
) -> Response {
    let mut model = NO_MODEL.to_owned();
    let result = answer(&s, &headers, body, arrival, &mut model).await;
    result.unwrap_or_else(|e| crate::respond::refused(&s, &model, e))
}

async fn answer(
    s: &Arc<ServerState>,
    headers: &HeaderMap,
    body: &[u8],
    arrival: Instant,
    model_label: &mut String,
) -> Result<Response, ApiError> {
    let caller = s.caller(headers).await?;
    let request = inferd_protocol::parse_embeddings(body, arrival)?;
    let backend = Arc::clone(s.backend(request.model.as_deref())?);
    *model_label = backend.name().to_owned();
    if !backend.capabilities().embeddings {
        return Err(ApiError::invalid(
            "model",
            format!("`{}` does not serve embeddings", backend.name()),
        ));
    }
    // No input has more tokens than the body has bytes.
    let mut ticket = s.admit(&caller, backend.name(), body.len(), 0).await?;
    let encoding = request.encoding;
    let inputs = request.inputs.len();
    let fut = backend.embed(request);
    let out = match s.request_timeout {
        None => fut.await?,
        Some(limit) => {
            tokio::time::timeout_at(tokio::time::Instant::from_std(arrival) + limit, fut)
                .await
                .map_err(|_| ApiError::timeout(limit))??
        }
    };
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding {
            object: "embedding".into(),
            index,
            embedding: match encoding {
                EncodingFormat::Float => EmbeddingVector::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
        })
        .collect();
    let e2e = arrival.elapsed();
    let m = backend.name();
    s.metrics
        .e2e
        .with_label_values(&[m])
        .observe(e2e.as_secs_f64());
    s.metrics
        .lengths
        .with_label_values(&[m, "prompt"])
        .observe(out.prompt_tokens as f64);
    s.metrics
        .prompt_tokens
        .with_label_values(&[m])
        .inc_by(out.prompt_tokens as u64);
    s.metrics
        .requests
        .with_label_values(&[m, "embedding"])
        .inc();
    if let Some(t) = &mut ticket {
        let usage = inferd_protocol::Usage::new(out.prompt_tokens, 0, 0);
        s.charge(t, m, None, &usage, 200);
    }
    tracing::info!(model = %m, status = 200, inputs, prompt_tokens = out.prompt_tokens, e2e_ms = e2e.as_secs_f64() * 1e3, "embeddings");
    let body = EmbeddingResponse {
        object: "list".into(),
        data,
        model: m.to_owned(),
        usage: EmbeddingUsage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    };
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}
