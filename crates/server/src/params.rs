//! Validation at the edge: a raw JSON body becomes typed parameters, or a 400 that
//! names the field, the value and the rule. Unknown fields are ignored, as OpenAI's
//! API does.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object with typed, field-naming accessors.
pub struct Body<'a>(pub &'a Map<String, Value>);

impl<'a> Body<'a> {
    pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(ApiError::bad_request("request body must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(format!(
                "request body is not valid JSON: {e}"
            ))),
        }
    }

    /// A present, non-null value.
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn f32_in(
        &self,
        field: &str,
        lo: f32,
        hi: f32,
        lo_open: bool,
    ) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let x = v.as_f64().ok_or_else(|| {
            ApiError::invalid(field, format!("`{field}` must be a number, got {v}"))
        })?;
        let x = x as f32;
        let ok = if lo_open { x > lo } else { x >= lo } && x <= hi;
        if !ok {
            let open = if lo_open { "(" } else { "[" };
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be in {open}{lo}, {hi}], got {x}"),
            ));
        }
        Ok(Some(x))
    }

    pub fn int_in(&self, field: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let x = v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| {
                ApiError::invalid(field, format!("`{field}` must be an integer, got {v}"))
            })?;
        if x < lo || x > hi {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be in [{lo}, {hi}], got {x}"),
            ));
        }
        Ok(Some(x))
    }

    pub fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        v.as_bool().map(Some).ok_or_else(|| {
            ApiError::invalid(field, format!("`{field}` must be a boolean, got {v}"))
        })
    }

    pub fn str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a string, got {v}")))
    }

    /// `stop`: a string or a list of up to 4 non-empty strings.
    pub fn stop(&self) -> Result<Vec<String>, ApiError> {
        let err = |m: String| ApiError::invalid("stop", m);
        match self.get("stop") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|v| match v.as_str() {
                    Some(s) if !s.is_empty() => Ok(s.to_owned()),
                    _ => Err(err(format!(
                        "`stop` entries must be non-empty strings, got {v}"
                    ))),
                })
                .collect(),
            Some(v) => Err(err(format!(
                "`stop` must be a non-empty string or a list of at most 4 strings, got {v}"
            ))),
        }
    }
}

/// Parameters shared by chat and text completions.
#[derive(Debug, Clone)]
pub struct Common {
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub stop: Vec<String>,
    pub sampling: inferd_engine::SamplingParams,
    pub priority: i32,
    pub cache_salt: Option<String>,
    /// Extension (as vLLM and llama-server): keep generating past the model's stop
    /// tokens, up to `max_tokens` — fixed output lengths for benchmarks.
    pub ignore_eos: bool,
}

pub fn common(b: &Body, max_tokens_fields: &[&str]) -> Result<Common, ApiError> {
    let mut max_tokens = None;
    for f in max_tokens_fields {
        if let Some(v) = b.int_in(f, 1, 1 << 20)? {
            max_tokens = Some(v as usize);
        }
    }
    let stream = b.bool("stream")?.unwrap_or(false);
    let include_usage = match b.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Body(o).bool("include_usage")?.unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("`stream_options` must be an object, got {v}"),
            ))
        }
    };
    let sampling = inferd_engine::SamplingParams {
        temperature: b.f32_in("temperature", 0.0, 2.0, false)?.unwrap_or(1.0),
        top_p: b.f32_in("top_p", 0.0, 1.0, true)?.unwrap_or(1.0),
        top_k: match b.int_in("top_k", -1, 1 << 20)? {
            None | Some(-1) => 0,
            Some(k) => k as usize,
        },
        min_p: b.f32_in("min_p", 0.0, 1.0, false)?.unwrap_or(0.0),
        repetition_penalty: b
            .f32_in("repetition_penalty", 0.0, 10.0, true)?
            .unwrap_or(1.0),
        presence_penalty: b
            .f32_in("presence_penalty", -2.0, 2.0, false)?
            .unwrap_or(0.0),
        frequency_penalty: b
            .f32_in("frequency_penalty", -2.0, 2.0, false)?
            .unwrap_or(0.0),
        seed: b.int_in("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
        logprobs: None,
    };
    Ok(Common {
        max_tokens,
        n: b.int_in("n", 1, 16)?.unwrap_or(1) as usize,
        stream,
        include_usage,
        stop: b.stop()?,
        sampling,
        priority: b.int_in("priority", -1000, 1000)?.unwrap_or(0) as i32,
        cache_salt: b.str("cache_salt")?.map(str::to_owned),
        ignore_eos: b.bool("ignore_eos")?.unwrap_or(false),
    })
}

/// Holds back text that could be the start of a stop string, so a stop string
/// split across tokens is still caught and never emitted.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops,
            pending: String::new(),
        }
    }

    /// Adds text; returns what can be emitted now and whether a stop string ended it.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.pending), false);
        }
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_owned();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|p| self.pending.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Text still held back at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_tokens_is_caught_and_not_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E"), ("hello ".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("D and more"), ("".into(), true));
    }

    #[test]
    fn held_back_text_is_released_when_it_cannot_match() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("E"), ("".into(), false));
        assert_eq!(m.push("x"), ("Ex".into(), false));
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.flush(), "EN");
    }

    #[test]
    fn field_errors_name_the_field() {
        let m = Body::parse(br#"{"top_p": 1.5, "n": "x", "stop": 3}"#).unwrap();
        let b = Body(&m);
        let e = b.f32_in("top_p", 0.0, 1.0, true).unwrap_err();
        assert_eq!(
            (e.param.as_deref(), e.message.as_str()),
            (Some("top_p"), "`top_p` must be in (0, 1], got 1.5")
        );
        assert_eq!(
            b.int_in("n", 1, 16).unwrap_err().param.as_deref(),
            Some("n")
        );
        assert_eq!(b.stop().unwrap_err().param.as_deref(), Some("stop"));
    }
}
