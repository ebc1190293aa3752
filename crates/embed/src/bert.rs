//! BERT encoder (`BertModel`, as all-MiniLM-L6-v2 ships it) over f32 safetensors
//! weights used in place from the memory map.
//!
//! Reads top-down: weights → load → forward. Post-LayerNorm residual layers, as in
//! Hugging Face's `modeling_bert.py`:
//!   x = LN(word[tok] + position[i] + token_type[0])
//!   a = LN(x + Wo · attn(Wq·x + bq, Wk·x + bk, Wv·x + bv) + bo)
//!   y = LN(a + W2 · gelu(W1·a + b1) + b2)
//!
//! The batch is ragged, as for the chat models (`inferd-model`'s `llama.rs`): the
//! tokens of every input are concatenated, so each dense layer is one matmul over
//! every token of the batch (each weight row is loaded once per 128 tokens and used
//! against all of them: that is where batching pays on a CPU, and at batch 1 the
//! 42 MB of layer weights streamed from memory are most of the time), while
//! attention runs within each input, bidirectional over that input's own tokens.
//! Nothing is padded, so no attention mask is needed and an input's result does
//! not depend on its batch (up to float summation order in the kernels' tiles).

use std::ops::Range;
use std::path::Path;

use inferd_gguf::GgmlType;
use inferd_kernels::bf16::{self, matmul_bf16_on, Bf16Matrix};
use inferd_kernels::dot::{dot_f32_f32, weighted_rows};
use inferd_kernels::matmul::matmul_many_on;
use inferd_kernels::ops::softmax;
use inferd_kernels::packed::PackedMatrix;
use inferd_kernels::quant::quantize_q8_0;
use inferd_kernels::{Activations, Isa, Precision as KernelPrecision, WeightMatrix};
use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;
use crate::error::{EmbedError, Result};

/// Tokens per matmul: the kernel runs each weight row against every token it is
/// given, so a slice this size keeps those activations in L2 (128 × 1536 f32 for
/// the FFN's second matmul is 768 KiB) while each weight row still serves 128
/// tokens. One matmul over a whole batch of 256 sentences (~4,300 tokens) streams
/// its activations from memory once per 4 weight rows: 200 embeddings/s on one
/// thread against 343 with 128-token slices (64 measured the same; 512, 323).
const TOKENS_PER_MATMUL: usize = 128;

/// Rows handed to one task by the elementwise passes (bias + GELU, residual +
/// LayerNorm): enough work to outweigh a task's hand-out.
const ROWS_PER_TASK: usize = 16;

/// A dense layer `y = x · Wᵀ + b` (torch's `nn.Linear`): W is `[rows, cols]`, row
/// major, read in place from the mapped file; the bias is copied out. With
/// [`Precision::Bf16`], W is also kept rounded to bf16 in the kernel's layout;
/// with [`Precision::Q8`], quantized to Q8_0 blocks and packed.
struct Linear {
    rows: usize,
    cols: usize,
    bytes: Range<usize>,
    bias: Vec<f32>,
    bf16: Option<Bf16Matrix>,
    q8: Option<Q8Weights>,
}

/// A dense layer's weights as Q8_0 bytes and the kernels' packed copy of them.
struct Q8Weights {
    bytes: Vec<u8>,
    packed: PackedMatrix,
}

/// The arithmetic of the dense layers (the matmuls: nearly all of the work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and activations: torch's arithmetic.
    F32,
    /// Weights and activations rounded to bf16, products summed in f32
    /// (`inferd_kernels::bf16`): twice the multiply-adds per instruction on CPUs
    /// with AVX512-BF16, within a cosine of 0.99995 of f32 on all-MiniLM-L6-v2.
    Bf16,
    /// Weights quantized to 8 bits (Q8_0 blocks, a quarter of f32's bytes),
    /// activations to two 8-bit planes, integer dot products on the chat models'
    /// kernels: for CPUs without AVX512-BF16, where single short queries are
    /// bound by streaming the weights from memory.
    Q8,
}

impl Precision {
    /// Bf16 where this CPU has a fast bf16 kernel for `isa`, else F32.
    pub fn best_for(isa: Isa) -> Precision {
        if isa != Isa::Scalar && bf16::supported(isa) {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Q8 => "q8",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// `f32`, `bf16` or `q8`.
    fn from_str(s: &str) -> std::result::Result<Precision, String> {
        [Precision::F32, Precision::Bf16, Precision::Q8]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("{s:?} is not one of f32, bf16, q8"))
    }
}

/// `y = (x - mean(x)) / sqrt(var(x) + eps) · weight + bias` over each row.
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    /// `attention.output.dense`.
    attn_out: Linear,
    /// `attention.output.LayerNorm`.
    attn_norm: LayerNorm,
    /// `intermediate.dense`: dim → ffn_dim, then GELU.
    ffn_in: Linear,
    /// `output.dense`: ffn_dim → dim.
    ffn_out: Linear,
    /// `output.LayerNorm`.
    ffn_norm: LayerNorm,
}

impl Bert {
    fn residual_norm(&self, x: &mut [f32], y: &[f32], norm: &LayerNorm) {
        residual_norm_on(self.isa, x, y, norm, self.config.layer_norm_eps);
    }
}

impl Layer {
    fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attn_out,
            &mut self.ffn_in,
            &mut self.ffn_out,
        ]
    }
}

pub struct Bert {
    pub config: BertConfig,
    /// Kernel instruction set. Default: the best this CPU supports.
    isa: Isa,
    precision: Precision,
    mmap: memmap2::Mmap,
    /// `[vocab_size, dim]` in the mapped file.
    word: Range<usize>,
    /// `[max_positions, dim]` in the mapped file.
    position: Range<usize>,
    /// Row 0 of the token-type embedding: sentence-transformers passes type 0 for
    /// every token of a single text.
    token_type0: Vec<f32>,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

/// Locates tensors by name in a parsed safetensors header and checks their dtype
/// and shape; every error names the file and the tensor.
struct Loader<'a> {
    file: String,
    bytes: &'a [u8],
    /// Where the data section starts (after the 8-byte length and the header).
    data_start: usize,
    meta: safetensors::tensor::Metadata,
    /// `"bert."` for checkpoints saved from `BertFor*` heads, else empty.
    prefix: &'static str,
}

impl Loader<'_> {
    fn err(&self, tensor: &str, what: String) -> EmbedError {
        EmbedError::Tensor {
            file: self.file.clone(),
            tensor: tensor.into(),
            what,
        }
    }

    /// The byte range of an f32 tensor of exactly `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Range<usize>> {
        let full = format!("{}{name}", self.prefix);
        let info = self
            .meta
            .info(&full)
            .ok_or_else(|| self.err(&full, "missing".into()))?;
        if info.dtype != Dtype::F32 {
            return Err(self.err(&full, format!("dtype {:?}, expected F32", info.dtype)));
        }
        if info.shape != shape {
            return Err(self.err(&full, format!("shape {:?}, expected {shape:?}", info.shape)));
        }
        // `read_metadata` checked that the offsets fit dtype × shape and the file.
        let (start, end) = info.data_offsets;
        Ok(self.data_start + start..self.data_start + end)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let range = self.tensor(name, &[len])?;
        Ok(f32s(&self.bytes[range]).collect())
    }

    /// `<name>.weight` `[rows, cols]` and `<name>.bias` `[rows]`.
    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        Ok(Linear {
            rows,
            cols,
            bytes: self.tensor(&format!("{name}.weight"), &[rows, cols])?,
            bias: self.vector(&format!("{name}.bias"), rows)?,
            bf16: None,
            q8: None,
        })
    }

    fn layer_norm(&self, name: &str, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.vector(&format!("{name}.weight"), dim)?,
            bias: self.vector(&format!("{name}.bias"), dim)?,
        })
    }
}

impl Bert {
    /// Maps `model.safetensors` and locates every tensor `config` calls for.
    pub fn load(config: BertConfig, weights: &Path) -> Result<Bert> {
        let file = weights.display().to_string();
        let io_err = |source| EmbedError::Io {
            file: file.clone(),
            source,
        };
        let f = std::fs::File::open(weights).map_err(io_err)?;
        // SAFETY: the mapping is read-only; a model file changed underneath a running
        // process is outside what any mmap-based loader can guard against.
        let mmap = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err)?;
        let (header_bytes, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|source| EmbedError::Safetensors {
                file: file.clone(),
                source,
            })?;
        let prefix = match meta.info("bert.embeddings.word_embeddings.weight") {
            Some(_) => "bert.",
            None => "",
        };
        let l = Loader {
            file,
            bytes: &mmap,
            data_start: 8 + header_bytes,
            meta,
            prefix,
        };
        let c = &config;
        let (dim, ffn) = (c.dim, c.ffn_dim);
        let word = l.tensor("embeddings.word_embeddings.weight", &[c.vocab_size, dim])?;
        let position = l.tensor(
            "embeddings.position_embeddings.weight",
            &[c.max_positions, dim],
        )?;
        let types = l.tensor(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, dim],
        )?;
        let token_type0 = f32s(&mmap[types.start..types.start + 4 * dim]).collect();
        let emb_norm = l.layer_norm("embeddings.LayerNorm", dim)?;
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("encoder.layer.{i}.{s}");
                Ok(Layer {
                    query: l.linear(&n("attention.self.query"), dim, dim)?,
                    key: l.linear(&n("attention.self.key"), dim, dim)?,
                    value: l.linear(&n("attention.self.value"), dim, dim)?,
                    attn_out: l.linear(&n("attention.output.dense"), dim, dim)?,
                    attn_norm: l.layer_norm(&n("attention.output.LayerNorm"), dim)?,
                    ffn_in: l.linear(&n("intermediate.dense"), ffn, dim)?,
                    ffn_out: l.linear(&n("output.dense"), dim, ffn)?,
                    ffn_norm: l.layer_norm(&n("output.LayerNorm"), dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The loader borrows the map, which moves into the model.
        drop(l);
        let isa = inferd_kernels::default_isa();
        let mut bert = Bert {
            config,
            isa,
            precision: Precision::F32,
            mmap,
            word,
            position,
            token_type0,
            emb_norm,
            layers,
        };
        bert.set_precision(Precision::best_for(isa))
            .expect("the best precision for this CPU runs on it");
        Ok(bert)
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Switches the kernel path; bf16 falls back to f32 where `isa` has no bf16
    /// kernel (AVX2).
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa;
        if self.precision == Precision::Bf16 && !bf16::supported(isa) {
            self.precision = Precision::F32;
        }
    }

    /// Switches the dense layers' arithmetic, rounding the weights to bf16 (about
    /// 45 MB for all-MiniLM-L6-v2) or quantizing them to Q8_0 (about 2 × 23 MB
    /// with the packed copy) the first time. Fails, changing nothing, where the
    /// kernel path has no bf16 kernel.
    pub fn set_precision(&mut self, precision: Precision) -> std::result::Result<(), String> {
        if precision == Precision::Q8 {
            let mmap = &self.mmap;
            for layer in &mut self.layers {
                for l in layer.linears_mut() {
                    if l.q8.is_none() {
                        let w: Vec<f32> = f32s(&mmap[l.bytes.clone()]).collect();
                        let bytes = quantize_q8_0(&w);
                        let packed = WeightMatrix::new(GgmlType::Q8_0, l.rows, l.cols, &bytes)
                            .ok()
                            .and_then(|m| PackedMatrix::pack(&m))
                            .expect("weight shapes were checked at load: this is a bug");
                        l.q8 = Some(Q8Weights { bytes, packed });
                    }
                }
            }
        }
        if precision == Precision::Bf16 {
            if !bf16::supported(self.isa) {
                return Err(format!(
                    "bf16 needs AVX512-BF16 (or the scalar path); the {} path has none",
                    self.isa.name()
                ));
            }
            let mmap = &self.mmap;
            for layer in &mut self.layers {
                for l in layer.linears_mut() {
                    if l.bf16.is_none() {
                        let w: Vec<f32> = f32s(&mmap[l.bytes.clone()]).collect();
                        l.bf16 = Some(
                            Bf16Matrix::from_f32(l.rows, l.cols, &w)
                                .and_then(|m| m.with_bias(&l.bias))
                                .expect("weight shapes were checked at load: this is a bug"),
                        );
                    }
                }
            }
        }
        self.precision = precision;
        Ok(())
    }

    /// The kernels' view of a layer's weights in this model's precision (f32 or Q8).
    fn w<'a>(&'a self, l: &'a Linear) -> WeightMatrix<'a> {
        let shape = "weight shapes were checked at load: this is a bug";
        match (&l.q8, self.precision) {
            (Some(q), Precision::Q8) => WeightMatrix::new(GgmlType::Q8_0, l.rows, l.cols, &q.bytes)
                .and_then(|m| m.with_packed(&q.packed))
                .expect(shape),
            _ => WeightMatrix::new(GgmlType::F32, l.rows, l.cols, &self.mmap[l.bytes.clone()])
                .expect(shape),
        }
    }

    /// `outs[m] = x · Wmᵀ + bm` for layers sharing their input (Q, K and V), in
    /// this model's precision. x: `[tokens, cols]`, outs[m]: `[tokens, rows_m]`.
    fn linear(&self, ls: &[&Linear], x: &[f32], outs: &mut [&mut [f32]]) {
        let cols = ls[0].cols;
        let n = x.len() / cols;
        if self.precision == Precision::Bf16 {
            let ws: Vec<&Bf16Matrix> = ls
                .iter()
                .map(|l| {
                    l.bf16
                        .as_ref()
                        .expect("set_precision made the bf16 weights")
                })
                .collect();
            // The bf16 matrices carry their bias.
            matmul_bf16_on(self.isa, &ws, x, n, outs)
                .expect("matmul shapes are fixed by the model: this is a bug");
            return;
        }
        self.linear_dense(ls, x, n, outs);
        for (l, out) in ls.iter().zip(outs.iter_mut()) {
            for row in out.chunks_exact_mut(l.rows) {
                add_into(row, &l.bias);
            }
        }
    }

    /// The f32 or Q8 matmuls of [`Bert::linear`], each slice of
    /// [`TOKENS_PER_MATMUL`] tokens as one parallel job.
    fn linear_dense(&self, ls: &[&Linear], x: &[f32], n: usize, outs: &mut [&mut [f32]]) {
        let cols = ls[0].cols;
        let ws: Vec<WeightMatrix> = ls.iter().map(|l| self.w(l)).collect();
        let activations = match self.precision {
            Precision::Q8 => KernelPrecision::Q8x2,
            _ => KernelPrecision::F32,
        };
        let mut t0 = 0;
        while t0 < n {
            let t1 = (t0 + TOKENS_PER_MATMUL).min(n);
            let mut acts =
                Activations::with_precision(&x[t0 * cols..t1 * cols], t1 - t0, cols, activations);
            let mut part: Vec<&mut [f32]> = outs
                .iter_mut()
                .zip(ls)
                .map(|(o, l)| &mut o[t0 * l.rows..t1 * l.rows])
                .collect();
            matmul_many_on(self.isa, &ws, &mut acts, &mut part)
                .expect("matmul shapes are fixed by the model: this is a bug");
            t0 = t1;
        }
    }

    /// Final hidden states `[tokens, dim]` of the concatenated inputs: input `i` is
    /// `tokens[spans[i]]`. The caller has checked every input: non-empty, at most
    /// `max_positions` long, every id inside the vocabulary.
    pub fn forward(&self, tokens: &[u32], spans: &[Range<usize>]) -> Vec<f32> {
        let c = &self.config;
        let (dim, eps) = (c.dim, c.layer_norm_eps);
        let n = tokens.len();
        // The input (span) each token attends within.
        let mut span_of = vec![0..0; n];
        for s in spans {
            span_of[s.clone()].fill(s.clone());
        }

        // x: [tokens, dim] = LN(word[tok] + position[j] + token_type[0])
        let mut x = vec![0f32; n * dim];
        for s in spans {
            for (j, t) in s.clone().enumerate() {
                let row = &mut x[t * dim..(t + 1) * dim];
                let word = self.word.start + tokens[t] as usize * dim * 4;
                let pos = self.position.start + j * dim * 4;
                let word = f32s(&self.mmap[word..word + dim * 4]);
                let pos = f32s(&self.mmap[pos..pos + dim * 4]);
                for (((o, w), p), ty) in row.iter_mut().zip(word).zip(pos).zip(&self.token_type0) {
                    *o = w + p + ty;
                }
            }
        }
        par_rows(&mut x, dim, |rows| {
            layer_norm_on(self.isa, rows, &self.emb_norm, eps)
        });

        // q, k, v, ctx, proj: [tokens, dim] (q/k/v as [tokens, heads, head_dim]);
        // h: [tokens, ffn_dim]
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * dim];
        let mut v = vec![0f32; n * dim];
        let mut ctx = vec![0f32; n * dim];
        let mut proj = vec![0f32; n * dim];
        let mut h = vec![0f32; n * c.ffn_dim];
        for layer in &self.layers {
            self.linear(
                &[&layer.query, &layer.key, &layer.value],
                &x,
                &mut [&mut q, &mut k, &mut v],
            );
            self.attention(&q, &k, &v, &span_of, &mut ctx);
            // a = LN(x + Wo·ctx + bo)
            self.linear(&[&layer.attn_out], &ctx, &mut [&mut proj]);
            self.residual_norm(&mut x, &proj, &layer.attn_norm);
            // y = LN(a + W2·gelu(W1·a + b1) + b2)
            self.linear(&[&layer.ffn_in], &x, &mut [&mut h]);
            par_rows(&mut h, c.ffn_dim, |rows| gelu_on(self.isa, rows));
            self.linear(&[&layer.ffn_out], &h, &mut [&mut proj]);
            self.residual_norm(&mut x, &proj, &layer.ffn_norm);
        }
        x
    }

    /// `softmax(q·kᵀ / √head_dim) · v` per head, each token over the tokens of its
    /// own input (`span_of[t]`), no mask. One task per token (all its heads).
    fn attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        span_of: &[Range<usize>],
        out: &mut [f32],
    ) {
        let c = &self.config;
        let (dim, hd) = (c.dim, c.head_dim());
        let scale = 1.0 / (hd as f32).sqrt();
        let isa = self.isa;
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        inferd_kernels::pool::global().for_each_chunk_mut(out, dim, |t, o| {
            SCORES.with_borrow_mut(|scores| {
                let span = span_of[t].clone();
                let len = span.len();
                scores.resize(len, 0.0);
                for head in 0..c.n_heads {
                    let col = head * hd;
                    let qh = &q[t * dim + col..t * dim + col + hd];
                    // scores: [len] = q_t,h · k_j,h / √hd over the input's tokens j
                    for (s, j) in scores.iter_mut().zip(span.clone()) {
                        *s = dot_f32_f32(isa, qh, &k[j * dim + col..j * dim + col + hd]) * scale;
                    }
                    softmax(scores);
                    // o_h = Σ_j p_j · v_j,h (rows of v are `dim` apart)
                    let oh = &mut o[col..col + hd];
                    oh.fill(0.0);
                    weighted_rows(
                        isa,
                        &[&scores[..]],
                        &v[span.start * dim + col..],
                        dim,
                        len,
                        hd,
                        oh,
                    );
                }
            })
        });
    }
}

/// Little-endian f32 values of a byte slice (safetensors stores little-endian).
fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Runs `f` over whole rows of `data` (`row_len` wide), on the worker pool in
/// pieces of [`ROWS_PER_TASK`] rows.
fn par_rows(data: &mut [f32], row_len: usize, f: impl Fn(&mut [f32]) + Sync) {
    inferd_kernels::pool::global()
        .for_each_chunk_mut(data, row_len * ROWS_PER_TASK, |_, rows| f(rows));
}

/// `x = LN(x + y)` row by row (the post-LN residual of a BERT layer).
fn residual_norm_on(isa: Isa, x: &mut [f32], y: &[f32], norm: &LayerNorm, eps: f32) {
    let chunk = norm.weight.len() * ROWS_PER_TASK;
    inferd_kernels::pool::global().for_each_chunk_mut(x, chunk, |i, rows| {
        add_into(rows, &y[i * chunk..i * chunk + rows.len()]);
        layer_norm_on(isa, rows, norm, eps);
    });
}

/// The elementwise passes compiled for the kernel path's vector width. They are
/// plain Rust (no fused multiply-adds, the same operations in the same order), so
/// every path computes the same bits as the portable one, which is their twin.
macro_rules! vector_versions {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) => $plain:ident;)*) => {$(
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn wide($($arg: $ty),*) {
                    $plain($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn narrow($($arg: $ty),*) {
                    $plain($($arg),*)
                }
                match isa {
                    // SAFETY: the path was detected on this CPU (`Isa::available`).
                    Isa::Avx512 | Isa::Amx => return unsafe { wide($($arg),*) },
                    Isa::Avx2 => return unsafe { narrow($($arg),*) },
                    _ => {}
                }
            }
            let _ = isa;
            $plain($($arg),*)
        }
    )*};
}

vector_versions! {
    fn gelu_on(x: &mut [f32]) => gelu_rows;
    fn layer_norm_on(x: &mut [f32], norm: &LayerNorm, eps: f32) => layer_norm;
}

#[inline(always)]
fn gelu_rows(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu(*v));
}

/// LayerNorm in place over each row: biased variance, as torch's `nn.LayerNorm`.
#[inline(always)]
fn layer_norm(x: &mut [f32], norm: &LayerNorm, eps: f32) {
    let dim = norm.weight.len();
    for row in x.chunks_exact_mut(dim) {
        let mean = lane_sum(row, |v| v) / dim as f32;
        let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &g), &b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// `Σ f(v)` over `row` in 16 interleaved partial sums, an order a vector unit
/// can follow exactly (a single running sum cannot be vectorised).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(v);
    }
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum()
}

/// HF's `"gelu"` (torch's default `F.gelu`): the erf form `x/2 · (1 + erf(x/√2))`,
/// not the tanh approximation (`"gelu_new"`).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf for f32 as Eigen evaluates it (`generic_fast_erf_float`, also XLA's): an odd
/// degree-13 over even degree-8 rational function on [-4, 4], where erf reaches ±1
/// in f32. Within 4.5e-7 of the true value everywhere (the test below; torch's own
/// CPU erf, Abramowitz-Stegun 7.1.26, is within 1.5e-7), and branch-free, so the
/// GELU loop vectorises (plain `*` and `+`: without a compile-time FMA target,
/// `mul_add` becomes a call per operation): libm's `erff` took a fifth of a forward pass.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    let p = x2 * p + -2.101_024e-6;
    let p = x2 * p + -5.692_506_4e-5;
    let p = x2 * p + -7.349_906_3e-4;
    let p = x2 * p + -2.954_6e-3;
    let p = x2 * p + -1.609_603_3e-2;
    let q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    let q = x2 * q + -1.682_827e-3;
    let q = x2 * q + -7.373_329e-3;
    let q = x2 * q + -1.426_474e-2;
    x * p / q
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn tiny_config() -> BertConfig {
        BertConfig {
            dim: 8,
            n_layers: 1,
            n_heads: 2,
            ffn_dim: 16,
            vocab_size: 20,
            max_positions: 12,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// Every tensor a one-layer tiny BERT needs, as (name, shape), filled with a
    /// deterministic pattern.
    fn tiny_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let c = tiny_config();
        let (d, f) = (c.dim, c.ffn_dim);
        let mut t: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![c.vocab_size, d],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![c.max_positions, d],
            ),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, d]),
            ("embeddings.LayerNorm.weight".into(), vec![d]),
            ("embeddings.LayerNorm.bias".into(), vec![d]),
        ];
        let l = "encoder.layer.0";
        for m in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            t.push((format!("{l}.{m}.weight"), vec![d, d]));
            t.push((format!("{l}.{m}.bias"), vec![d]));
        }
        t.push((format!("{l}.intermediate.dense.weight"), vec![f, d]));
        t.push((format!("{l}.intermediate.dense.bias"), vec![f]));
        t.push((format!("{l}.output.dense.weight"), vec![d, f]));
        t.push((format!("{l}.output.dense.bias"), vec![d]));
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{l}.{n}.weight"), vec![d]));
            t.push((format!("{l}.{n}.bias"), vec![d]));
        }
        t.into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let len = shape.iter().product();
                let data = (0..len)
                    .map(|i| ((i * 7 + k * 13) % 17) as f32 / 17.0 - 0.45)
                    .collect();
                (name, shape, data)
            })
            .collect()
    }

    fn write_safetensors(
        name: &str,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        dtype: Dtype,
    ) -> std::path::PathBuf {
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, d)| match dtype {
                Dtype::F32 => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                // Any 2-byte dtype: only its name matters to the loader.
                _ => d.iter().flat_map(|_| [0u8, 0]).collect(),
            })
            .collect();
        let views = tensors.iter().zip(&bytes).map(|((n, shape, _), b)| {
            (
                n.clone(),
                TensorView::new(dtype, shape.clone(), b).expect("valid view"),
            )
        });
        let data = safetensors::serialize(views, None).expect("serializes");
        let dir = std::env::temp_dir().join(format!("inferd-embed-bert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join(name);
        std::fs::write(&p, data).expect("temp file");
        p
    }

    #[test]
    fn a_tiny_model_loads_and_batching_does_not_change_it() {
        let p = write_safetensors("tiny.safetensors", &tiny_tensors(), Dtype::F32);
        let bert = Bert::load(tiny_config(), &p).expect("loads");
        let a = [1u32, 5, 7, 19, 2];
        let b = [3u32, 4];
        // One input is one span.
        let one = |len: usize| std::iter::once(0..len).collect::<Vec<_>>();
        let alone_a = bert.forward(&a, &one(5));
        let alone_b = bert.forward(&b, &one(2));
        let both: Vec<u32> = a.iter().chain(&b).copied().collect();
        let together = bert.forward(&both, &[0..5, 5..7]);
        let close = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-5);
        assert!(close(&together[..40], &alone_a));
        assert!(close(&together[40..], &alone_b));
        // Each input attends only within itself: b alone differs from b after a.
        let ab_as_one = bert.forward(&both, &one(7));
        assert!(!close(&ab_as_one[40..], &alone_b));
    }

    #[test]
    fn tensor_errors_name_the_file_and_the_tensor() {
        let q = "encoder.layer.0.attention.self.query.weight";
        let mut missing = tiny_tensors();
        missing.retain(|(n, _, _)| n != q);
        let p = write_safetensors("missing.safetensors", &missing, Dtype::F32);
        let err = Bert::load(tiny_config(), &p)
            .err()
            .expect("missing")
            .to_string();
        assert!(
            err.contains("missing.safetensors") && err.contains(q) && err.contains("missing"),
            "{err}"
        );

        let mut reshaped = tiny_tensors();
        for t in reshaped.iter_mut().filter(|t| t.0 == q) {
            t.1 = vec![4, 16];
        }
        let p = write_safetensors("shape.safetensors", &reshaped, Dtype::F32);
        let err = Bert::load(tiny_config(), &p)
            .err()
            .expect("shape")
            .to_string();
        assert!(
            err.contains(q) && err.contains("[4, 16]") && err.contains("[8, 8]"),
            "{err}"
        );

        let p = write_safetensors("f16.safetensors", &tiny_tensors(), Dtype::F16);
        let err = Bert::load(tiny_config(), &p)
            .err()
            .expect("dtype")
            .to_string();
        assert!(err.contains("F16") && err.contains("expected F32"), "{err}");

        let p = std::env::temp_dir().join(format!("inferd-embed-bert-{}/junk", std::process::id()));
        std::fs::write(&p, b"not a safetensors file").expect("temp file");
        let err = Bert::load(tiny_config(), &p)
            .err()
            .expect("junk")
            .to_string();
        assert!(
            err.contains("junk") && err.contains("not a valid safetensors file"),
            "{err}"
        );
    }

    #[test]
    fn erf_is_within_5e_7_everywhere() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -800_000..=800_000 {
            let x = i as f32 * 1e-5;
            let err = (erf(x) as f64 - libm::erf(x as f64)).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 < 5e-7, "erf({}) is off by {}", worst.1, worst.0);
        let ends = (erf(100.0), erf(-100.0), erf(0.0));
        assert!(
            (ends.0 - 1.0).abs() < 1e-6 && (ends.1 + 1.0).abs() < 1e-6 && ends.2 == 0.0,
            "{ends:?}"
        );
    }

    #[test]
    fn gelu_matches_the_erf_form() {
        // torch.nn.functional.gelu(torch.tensor([...], dtype=torch.float64))
        for (x, y) in [
            (-3.0f32, -0.004049694625566_f64),
            (-1.0, -0.15865525393145707),
            (0.0, 0.0),
            (0.5, 0.34573123063700656),
            (2.0, 1.9544997361036416),
        ] {
            assert!((gelu(x) as f64 - y).abs() < 1e-6, "gelu({x}) = {}", gelu(x));
        }
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let norm = LayerNorm {
            weight: vec![2.0; 4],
            bias: vec![1.0; 4],
        };
        let mut x = [1.0, 2.0, 3.0, 4.0];
        layer_norm(&mut x, &norm, 0.0);
        // (x - 2.5) / sqrt(1.25) · 2 + 1
        let s = 1.25f32.sqrt();
        for (v, e) in x.iter().zip([-1.5, -0.5, 0.5, 1.5]) {
            assert!((v - (e / s * 2.0 + 1.0)).abs() < 1e-6);
        }
    }
}
