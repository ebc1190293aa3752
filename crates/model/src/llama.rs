//! Llama-family decoder (Llama, SmolLM2, Qwen2-style): RMSNorm, rotary embeddings
//! with the GGUF base and dimension count, grouped-query attention over the paged KV
//! cache, SwiGLU MLP, tied or separate output head.
//!
//! Reads top-down: weights → load → forward (embed → layers → head), each layer
//! attention then MLP with pre-norm residuals:
//!   h = x + Wo · attn(rope(Wq·norm(x)), rope(Wk·norm(x)), Wv·norm(x))
//!   y = h + Wdown · (silu(Wgate·norm(h)) ⊙ Wup·norm(h))

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use inferd_gguf::{GgmlType, GgufFile};
use inferd_kernels::dot::{dot_f32_f32, dot_tile_4x4, weighted_rows};
use inferd_kernels::matmul::{matmul_many_on, matmul_on};
use inferd_kernels::ops::{rms_norm, rope, rope_inv_freq, silu_mul, softmax};
use inferd_kernels::quant::dequantize_row;
use inferd_kernels::{Activations, Isa, PackedMatrix, Precision, WeightMatrix};

use crate::batch::{Logits, LogitsRequest, SeqBatch};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvStore;
use crate::model::Model;

/// A weight matrix's location in the mapped file, and its copy repacked for the
/// integer kernels when its type has one.
#[derive(Debug, Clone)]
struct Linear {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: Range<usize>,
    packed: Option<Arc<PackedMatrix>>,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    /// Qwen2 has biases on Q, K and V.
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Numeric choices of the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Activation precision in the matmuls. Default `Q8x2` (integer kernels,
    /// within f32 rounding distance of exact).
    pub precision: Precision,
    /// Kernel instruction set. Default: the best this CPU supports.
    pub isa: Isa,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            precision: Precision::default(),
            isa: inferd_kernels::default_isa(),
        }
    }
}

pub struct Llama {
    file: GgufFile,
    pub config: ModelConfig,
    pub options: ForwardOptions,
    embed: Linear,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Linear,
    inv_freq: Vec<f32>,
}

struct Loader<'a> {
    file: &'a GgufFile,
}

impl Loader<'_> {
    fn err(&self, tensor: &str, what: String) -> ModelError {
        ModelError::Tensor {
            file: self.file.info.file.display().to_string(),
            tensor: tensor.into(),
            what,
        }
    }

    /// A matrix with GGUF dims `[cols, rows]`.
    fn linear(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let (t, _) = self.file.tensor(name)?;
        if t.dims != [cols as u64, rows as u64] {
            return Err(self.err(
                name,
                format!("dims {:?}, expected [{cols}, {rows}]", t.dims),
            ));
        }
        if !inferd_kernels::dot::is_supported(t.ggml_type) {
            return Err(self.err(
                name,
                format!("tensor type {} is not supported", t.ggml_type),
            ));
        }
        let start = (self.file.info.data_offset + t.offset) as usize;
        Ok(Linear {
            ty: t.ggml_type,
            rows,
            cols,
            bytes: start..start + t.size_bytes as usize,
            packed: None,
        })
    }

    /// `lin` with its packed copy made (when its type has a packed layout).
    fn packed(&self, mut lin: Linear) -> Linear {
        let w = WeightMatrix::new(
            lin.ty,
            lin.rows,
            lin.cols,
            &self.file.bytes()[lin.bytes.clone()],
        )
        .expect("weight shapes were checked when located: this is a bug");
        lin.packed = PackedMatrix::pack(&w).map(Arc::new);
        lin
    }

    /// A matrix used in matmuls: located, checked and packed.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        Ok(self.packed(self.linear(name, rows, cols)?))
    }

    /// A vector, dequantized to f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (t, bytes) = self.file.tensor(name)?;
        if t.dims != [len as u64] {
            return Err(self.err(name, format!("dims {:?}, expected [{len}]", t.dims)));
        }
        let mut v = vec![0.0; len];
        match t.ggml_type {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                dequantize_row(t.ggml_type, bytes, &mut v)
            }
            other => {
                return Err(self.err(
                    name,
                    format!("type {other} for a vector (expected F32/F16/BF16)"),
                ))
            }
        }
        Ok(v)
    }

    fn opt_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.file.info.tensor(name) {
            None => Ok(None),
            Some(_) => self.vector(name, len).map(Some),
        }
    }
}

impl Llama {
    pub fn load(path: impl AsRef<Path>) -> Result<Llama> {
        Llama::from_file(GgufFile::open(path)?)
    }

    /// Builds the model from an opened file (its `general.architecture` must be one
    /// this decoder runs: llama or qwen2).
    pub fn from_file(file: GgufFile) -> Result<Llama> {
        let config = ModelConfig::from_gguf(&file.info)?;
        let c = &config;
        let l = Loader { file: &file };
        let kv_dim = c.kv_dim();
        let embed = l.linear("token_embd.weight", c.vocab_size, c.dim)?;
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(Layer {
                    attn_norm: l.vector(&n("attn_norm.weight"), c.dim)?,
                    wq: l.matrix(&n("attn_q.weight"), c.dim, c.dim)?,
                    wk: l.matrix(&n("attn_k.weight"), kv_dim, c.dim)?,
                    wv: l.matrix(&n("attn_v.weight"), kv_dim, c.dim)?,
                    wo: l.matrix(&n("attn_output.weight"), c.dim, c.dim)?,
                    bq: l.opt_vector(&n("attn_q.bias"), c.dim)?,
                    bk: l.opt_vector(&n("attn_k.bias"), kv_dim)?,
                    bv: l.opt_vector(&n("attn_v.bias"), kv_dim)?,
                    ffn_norm: l.vector(&n("ffn_norm.weight"), c.dim)?,
                    gate: l.matrix(&n("ffn_gate.weight"), c.ffn_dim, c.dim)?,
                    up: l.matrix(&n("ffn_up.weight"), c.ffn_dim, c.dim)?,
                    down: l.matrix(&n("ffn_down.weight"), c.dim, c.ffn_dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let out_norm = l.vector("output_norm.weight", c.dim)?;
        // Tied embeddings: no `output.weight`, the embedding matrix is the head.
        let output = match file.info.tensor("output.weight") {
            Some(_) => l.matrix("output.weight", c.vocab_size, c.dim)?,
            None => l.packed(embed.clone()),
        };
        let inv_freq = rope_inv_freq(c.rope_base, c.rope_dim);
        Ok(Llama {
            file,
            config,
            options: ForwardOptions::default(),
            embed,
            layers,
            out_norm,
            output,
            inv_freq,
        })
    }

    pub fn gguf(&self) -> &inferd_gguf::Gguf {
        &self.file.info
    }

    fn w<'a>(&'a self, l: &'a Linear) -> WeightMatrix<'a> {
        let w = WeightMatrix::new(l.ty, l.rows, l.cols, &self.file.bytes()[l.bytes.clone()])
            .expect("weight shapes were checked at load: this is a bug");
        match &l.packed {
            Some(p) => w
                .with_packed(p)
                .expect("packed from the same matrix: this is a bug"),
            None => w,
        }
    }

    fn mm(&self, l: &Linear, x: &mut Activations, out: &mut [f32]) {
        matmul_on(self.options.isa, &self.w(l), x, out)
            .expect("matmul shapes are fixed by the model: this is a bug");
    }

    /// Several matrices against the same activations, as one parallel job.
    fn mm_many(&self, ls: &[&Linear], x: &mut Activations, outs: &mut [&mut [f32]]) {
        let ws: Vec<WeightMatrix> = ls.iter().map(|l| self.w(l)).collect();
        matmul_many_on(self.options.isa, &ws, x, outs)
            .expect("matmul shapes are fixed by the model: this is a bug");
    }

    fn acts<'a>(&self, x: &'a [f32], rows: usize, cols: usize) -> Activations<'a> {
        Activations::with_precision(x, rows, cols, self.options.precision)
    }

    /// A KV store sized for `num_blocks` blocks of `block_size` tokens: one K and
    /// one V row of `kv_dim` floats per layer and position.
    pub fn new_kv_store(&self, num_blocks: usize, block_size: usize) -> KvStore {
        KvStore::new(
            self.config.n_layers,
            num_blocks,
            block_size,
            self.config.kv_dim(),
        )
    }

    fn check_batch(&self, batch: &[SeqBatch], kv: &KvStore) -> Result<()> {
        for (i, s) in batch.iter().enumerate() {
            let end = s.start_pos + s.tokens.len();
            if s.tokens.is_empty() {
                return Err(ModelError::Batch(format!("sequence {i} has no tokens")));
            }
            if end > self.config.context_length {
                return Err(ModelError::Batch(format!(
                    "sequence {i} reaches position {end}, past the context length {}",
                    self.config.context_length
                )));
            }
            if s.block_table.len() * kv.block_size < end {
                return Err(ModelError::Batch(format!(
                    "sequence {i}: {} blocks cannot hold {end} positions",
                    s.block_table.len()
                )));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= kv.num_blocks) {
                return Err(ModelError::Batch(format!(
                    "sequence {i}: block {b} is outside the pool"
                )));
            }
            if let Some(t) = s
                .tokens
                .iter()
                .find(|&&t| t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::Batch(format!(
                    "sequence {i}: token {t} is outside the vocabulary"
                )));
            }
        }
        Ok(())
    }

    /// Runs one step over a ragged batch, writing the new tokens' K/V into their
    /// blocks and returning logits for the requested positions.
    pub fn forward(&self, batch: &[SeqBatch], kv: &mut KvStore) -> Result<Logits> {
        self.forward_layers(batch, kv, self.config.n_layers)
    }

    /// [`Llama::forward`] through the first `layers` layers only, then the final
    /// norm and the output head: the model as its own cheaper draft. `kv` needs
    /// those layers only.
    pub fn forward_layers(
        &self,
        batch: &[SeqBatch],
        kv: &mut KvStore,
        layers: usize,
    ) -> Result<Logits> {
        if layers == 0 || layers > self.config.n_layers || kv.n_layers < layers {
            return Err(ModelError::Batch(format!(
                "{layers} layers asked of a model of {} with a KV store of {}",
                self.config.n_layers, kv.n_layers
            )));
        }
        self.check_batch(batch, kv)?;
        let c = &self.config;
        let (dim, kv_dim, hd) = (c.dim, c.kv_dim(), c.head_dim);
        // token t belongs to sequence seq_of[t] at position pos_of[t]
        let mut seq_of = Vec::new();
        let mut pos_of = Vec::new();
        for (i, s) in batch.iter().enumerate() {
            for j in 0..s.tokens.len() {
                seq_of.push(i);
                pos_of.push(s.start_pos + j);
            }
        }
        let n = seq_of.len();

        // x: [n, dim]
        let mut x = vec![0f32; n * dim];
        let emb = self.w(&self.embed);
        let tokens = batch.iter().flat_map(|s| s.tokens.iter());
        for (row, &tok) in x.chunks_exact_mut(dim).zip(tokens) {
            dequantize_row(emb.ty, emb.row(tok as usize), row);
        }

        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attn = vec![0f32; n * dim];
        let mut proj = vec![0f32; n * dim];
        let mut gate = vec![0f32; n * c.ffn_dim];
        let mut up = vec![0f32; n * c.ffn_dim];

        for (li, layer) in self.layers.iter().take(layers).enumerate() {
            rms_norm(&x, &layer.attn_norm, c.rms_eps, &mut h);
            self.mm_many(
                &[&layer.wq, &layer.wk, &layer.wv],
                &mut self.acts(&h, n, dim),
                &mut [&mut q, &mut k, &mut v],
            );
            add_bias(&mut q, layer.bq.as_deref());
            add_bias(&mut k, layer.bk.as_deref());
            add_bias(&mut v, layer.bv.as_deref());
            for t in 0..n {
                rope(
                    &mut q[t * dim..(t + 1) * dim],
                    hd,
                    pos_of[t],
                    &self.inv_freq,
                    c.rope_style,
                );
                rope(
                    &mut k[t * kv_dim..(t + 1) * kv_dim],
                    hd,
                    pos_of[t],
                    &self.inv_freq,
                    c.rope_style,
                );
                let table = batch[seq_of[t]].block_table;
                kv.write(
                    li,
                    table,
                    pos_of[t],
                    &k[t * kv_dim..(t + 1) * kv_dim],
                    &v[t * kv_dim..(t + 1) * kv_dim],
                );
            }
            self.attention(li, batch, &seq_of, &pos_of, &q, kv, &mut attn);
            self.mm(&layer.wo, &mut self.acts(&attn, n, dim), &mut proj);
            add_into(&mut x, &proj);

            rms_norm(&x, &layer.ffn_norm, c.rms_eps, &mut h);
            self.mm_many(
                &[&layer.gate, &layer.up],
                &mut self.acts(&h, n, dim),
                &mut [&mut gate, &mut up],
            );
            silu_mul(&mut gate, &up);
            self.mm(&layer.down, &mut self.acts(&gate, n, c.ffn_dim), &mut proj);
            add_into(&mut x, &proj);
        }

        // Only the rows that were asked for go through the (large) output head.
        let mut rows = Vec::new();
        let mut t0 = 0;
        for (i, s) in batch.iter().enumerate() {
            let len = s.tokens.len();
            match s.logits {
                LogitsRequest::None => {}
                LogitsRequest::Last => rows.push((i, len - 1, t0 + len - 1)),
                LogitsRequest::All => rows.extend((0..len).map(|j| (i, j, t0 + j))),
            }
            t0 += len;
        }
        let mut hn = vec![0f32; rows.len() * dim];
        for (r, &(_, _, t)) in rows.iter().enumerate() {
            rms_norm(
                &x[t * dim..(t + 1) * dim],
                &self.out_norm,
                c.rms_eps,
                &mut hn[r * dim..(r + 1) * dim],
            );
        }
        let mut data = vec![0f32; rows.len() * c.vocab_size];
        if !rows.is_empty() {
            self.mm(
                &self.output,
                &mut self.acts(&hn, rows.len(), dim),
                &mut data,
            );
        }
        Ok(Logits {
            vocab: c.vocab_size,
            rows: rows.into_iter().map(|(s, j, _)| (s, j)).collect(),
            data,
        })
    }

    /// Causal grouped-query attention of every new token over its sequence's cached
    /// positions `0..=pos`, one task per (token, head). Softmax in f32.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        batch: &[SeqBatch],
        seq_of: &[usize],
        pos_of: &[usize],
        q: &[f32],
        kv: &KvStore,
        out: &mut [f32],
    ) {
        let c = &self.config;
        let hd = c.head_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (ks, vs) = (kv.k(), kv.v());
        let isa = self.options.isa;
        let bs = kv.block_size;
        // One task per (token, KV head): the `group` query heads that share a KV
        // head are scored together, so each K/V row is read once for all of them.
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        inferd_kernels::pool::global().for_each_chunk_mut(out, group * hd, |idx, o| {
            SCORES.with_borrow_mut(|scores| {
                let (t, g) = (idx / c.n_kv_heads, idx % c.n_kv_heads);
                let qg = &q[idx * group * hd..(idx + 1) * group * hd];
                let kv_off = g * hd;
                let table = batch[seq_of[t]].block_table;
                let len = pos_of[t] + 1;
                // scores: [group, len]
                scores.clear();
                scores.resize(group * len, 0.0);
                let rows = |p0: usize| {
                    // Positions p0.. within one block are consecutive rows.
                    let base = kv.row_offset(layer, table, p0) + kv_off;
                    (base, (bs - p0 % bs).min(len - p0))
                };
                let mut p = 0;
                while p < len {
                    let (base, n) = rows(p);
                    let k_row = |i: usize| &ks[base + i * kv.kv_dim..base + i * kv.kv_dim + hd];
                    let mut i = 0;
                    if group <= 4 {
                        // 4 positions × up to 4 query heads per register tile.
                        while i + 4 <= n {
                            let tile = dot_tile_4x4(
                                isa,
                                std::array::from_fn(|j| k_row(i + j)),
                                std::array::from_fn(|h| {
                                    &qg[h.min(group - 1) * hd..(h.min(group - 1) + 1) * hd]
                                }),
                            );
                            for (h, row) in tile.iter().enumerate().take(group) {
                                for (j, &v) in row.iter().enumerate() {
                                    scores[h * len + p + i + j] = v * scale;
                                }
                            }
                            i += 4;
                        }
                    }
                    for i in i..n {
                        for h in 0..group {
                            scores[h * len + p + i] =
                                dot_f32_f32(isa, &qg[h * hd..(h + 1) * hd], k_row(i)) * scale;
                        }
                    }
                    p += n;
                }
                for h in 0..group {
                    softmax(&mut scores[h * len..(h + 1) * len]);
                }
                o.fill(0.0);
                let mut p = 0;
                while p < len {
                    let (base, n) = rows(p);
                    for h0 in (0..group).step_by(4) {
                        let hs = (group - h0).min(4);
                        let w: [&[f32]; 4] = std::array::from_fn(|j| {
                            let h = h0 + j.min(hs - 1);
                            &scores[h * len + p..h * len + p + n]
                        });
                        let o = &mut o[h0 * hd..(h0 + hs) * hd];
                        weighted_rows(isa, &w[..hs], &vs[base..], kv.kv_dim, n, hd, o);
                    }
                    p += n;
                }
            })
        });
    }
}

impl Model for Llama {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn options(&self) -> ForwardOptions {
        self.options
    }

    fn set_options(&mut self, options: ForwardOptions) {
        self.options = options;
    }

    fn gguf(&self) -> &inferd_gguf::Gguf {
        Llama::gguf(self)
    }

    fn new_kv_store(&self, num_blocks: usize, block_size: usize) -> KvStore {
        Llama::new_kv_store(self, num_blocks, block_size)
    }

    fn forward(&self, batch: &[SeqBatch], kv: &mut KvStore) -> Result<Logits> {
        Llama::forward(self, batch, kv)
    }

    fn forward_layers(
        &self,
        batch: &[SeqBatch],
        kv: &mut KvStore,
        layers: usize,
    ) -> Result<Logits> {
        Llama::forward_layers(self, batch, kv, layers)
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            add_into(row, b);
        }
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
