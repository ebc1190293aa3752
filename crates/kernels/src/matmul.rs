//! `out = x · Wᵀ` for a quantized weight matrix and a batch of activation rows.
//!
//! The batch is the ragged batch's tokens, so every weight row is loaded once per
//! step and used against all rows of `x` while it is hot in L1: this is what makes
//! batching pay on CPU. Work is split across the worker pool (`pool`) by output rows.
//!
//! Three activation precisions ([`Precision`]):
//! - `Q8x2` (default): activations quantized on the fly to two 8-bit planes
//!   (`quant::BlockQ8`, about 16 bits) and integer dot products against weights
//!   repacked at load ([`PackedMatrix`]), 16 rows per `vpdpbusd`. Within f32
//!   rounding distance of the exact result: the reference test holds it to the
//!   same tolerance as `F32`.
//! - `Q8`: one 8-bit plane, as llama.cpp does: half the integer work, but the
//!   8-bit rounding of activations that carry large outliers (SmolLM2 has residual
//!   values near 25,000 on its attention-sink token) changes greedy outputs
//!   measurably: see the model crate's reference test.
//! - `F32`: each weight row is dequantized once into an L1-resident f32 buffer and
//!   dotted with every activation row in f32: the same arithmetic as the
//!   reference implementation (transformers on the dequantized weights).
//!
//! Float weights (F16, F32, BF16) have no packed layout and always take the f32
//! path.
//! The scalar path computes the integer precisions from the original bytes
//! (`dot::scalar::dot_q8`), which is what the packed kernels are tested against.

use inferd_gguf::GgmlType;

use crate::dot::{self, quantize_row_q8, uses_q8_activations};
use crate::isa::{kernels, Out, QuantRows};
use crate::packed::{PackedMatrix, GROUP};
use crate::quant::{BlockQ8, QK};
use crate::{default_isa, Isa, KernelError, Result};

/// A weight matrix viewed in place: `rows` rows of `cols` weights, each row a whole
/// number of blocks of `ty` (GGUF dims `[cols, rows]`), with its packed copy when
/// one was made.
#[derive(Clone, Copy)]
pub struct WeightMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub packed: Option<&'a PackedMatrix>,
}

impl<'a> WeightMatrix<'a> {
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        if !dot::is_supported(ty) {
            return Err(KernelError::UnsupportedType(ty));
        }
        if !cols.is_multiple_of(ty.block_elems())
            || (uses_q8_activations(ty) && !cols.is_multiple_of(QK))
        {
            return Err(KernelError::Shape(format!(
                "{cols} columns is not a multiple of the {ty} block"
            )));
        }
        let row_bytes = cols / ty.block_elems() * ty.block_bytes();
        if data.len() != rows * row_bytes {
            return Err(KernelError::Shape(format!(
                "{ty} matrix {rows}x{cols} needs {} bytes, got {}",
                rows * row_bytes,
                data.len()
            )));
        }
        Ok(WeightMatrix {
            ty,
            rows,
            cols,
            data,
            packed: None,
        })
    }

    /// The same matrix with its packed copy, which the integer precisions use on
    /// SIMD paths (without one they fall back to the scalar kernel).
    pub fn with_packed(self, packed: &'a PackedMatrix) -> Result<Self> {
        if (packed.ty, packed.rows, packed.cols) != (self.ty, self.rows, self.cols) {
            return Err(KernelError::Shape(format!(
                "packed {} {}x{} does not match {} {}x{}",
                packed.ty, packed.rows, packed.cols, self.ty, self.rows, self.cols
            )));
        }
        Ok(WeightMatrix {
            packed: Some(packed),
            ..self
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// How activations enter the dot products of quantized weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Two 8-bit planes (about 16 bits), integer dot products: fast and within
    /// f32 rounding distance of exact.
    #[default]
    Q8x2,
    /// One 8-bit plane, integer dot products (llama.cpp's scheme).
    Q8,
    /// f32 activations against dequantized weight rows (the reference arithmetic).
    F32,
}

impl Precision {
    fn is_integer(self) -> bool {
        self != Precision::F32
    }
}

/// A batch of activation rows in f32, with their 8-bit quantization (when the
/// precision asks for it) made once and reused by every matmul that reads the same
/// input (Q, K and V; gate and up).
pub struct Activations<'a> {
    pub x: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub precision: Precision,
    q8: Vec<BlockQ8>,
    /// The path's own copy of `q8`, when it keeps one (AMX's tile planes).
    planes: Vec<i8>,
}

impl<'a> Activations<'a> {
    pub fn new(x: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::with_precision(x, rows, cols, Precision::default())
    }

    pub fn with_precision(x: &'a [f32], rows: usize, cols: usize, precision: Precision) -> Self {
        debug_assert_eq!(x.len(), rows * cols);
        Activations {
            x,
            rows,
            cols,
            precision,
            q8: Vec::new(),
            planes: Vec::new(),
        }
    }

    fn ensure_q8(&mut self, isa: Isa) {
        if self.q8.is_empty() && self.cols.is_multiple_of(QK) {
            let mut q8 = vec![BlockQ8::ZERO; self.x.len() / QK];
            let (bpr, cols, x) = (self.cols / QK, self.cols, self.x);
            let two = self.precision == Precision::Q8x2;
            let rows_per_task = 8;
            if self.rows <= rows_per_task {
                quantize_row_q8(isa, x, &mut q8, two);
            } else {
                crate::pool::global().for_each_chunk_mut(&mut q8, bpr * rows_per_task, |i, q| {
                    let x0 = i * rows_per_task * cols;
                    quantize_row_q8(isa, &x[x0..x0 + q.len() * QK], q, two);
                });
            }
            self.q8 = q8;
        }
        if self.planes.is_empty() && !self.q8.is_empty() {
            self.planes = kernels(isa).tile_layout(&self.q8, self.rows, self.cols / QK);
        }
    }
}

/// Output rows handed to one task: two packed groups.
const ROWS_PER_TASK: usize = 2 * GROUP;
/// Side of the register tile (weight rows × activation rows).
const TILE: usize = 4;
/// Batches smaller than this use one dot product per (row, token) pair.
const MIN_TILED_BATCH: usize = 3;

/// `out[i][r] = Σ_k x[i][k] · W[r][k]` with `out` laid out `[x.rows, w.rows]`.
pub fn matmul(w: &WeightMatrix, x: &mut Activations, out: &mut [f32]) -> Result<()> {
    matmul_on(default_isa(), w, x, out)
}

/// [`matmul`] on an explicit instruction-set path (for tests and benchmarks).
pub fn matmul_on(isa: Isa, w: &WeightMatrix, x: &mut Activations, out: &mut [f32]) -> Result<()> {
    matmul_many_on(isa, &[*w], x, &mut [out])
}

/// Several matrices against the same activations (Q, K and V; gate and up) as one
/// parallel job: one start and one finish for the worker pool instead of one per
/// matrix, and a finer balance of work between the threads.
pub fn matmul_many_on(
    isa: Isa,
    ws: &[WeightMatrix],
    x: &mut Activations,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    if ws.len() != outs.len() {
        return Err(KernelError::Shape(format!(
            "{} matrices for {} outputs",
            ws.len(),
            outs.len()
        )));
    }
    for (w, out) in ws.iter().zip(outs.iter()) {
        if x.cols != w.cols || out.len() != x.rows * w.rows {
            return Err(KernelError::Shape(format!(
                "x is {}x{}, W is {}x{}, out has {} values",
                x.rows,
                x.cols,
                w.rows,
                w.cols,
                out.len()
            )));
        }
    }
    let paths: Vec<Path> = ws.iter().map(|w| Path::of(isa, w, x.precision)).collect();
    if paths.iter().any(|p| *p != Path::F32) {
        x.ensure_q8(isa);
    }
    // Tasks are ROWS_PER_TASK-row ranges of one matrix (whole groups on the
    // packed path); matrix m owns tasks first[m]..first[m + 1].
    let mut first = vec![0];
    for w in ws {
        first.push(first.last().unwrap_or(&0) + w.rows.div_ceil(ROWS_PER_TASK));
    }
    let outs: Vec<Out> = outs
        .iter_mut()
        .zip(ws)
        .map(|(o, w)| Out {
            ptr: o.as_mut_ptr(),
            rows: w.rows,
        })
        .collect();
    let x = &*x;
    crate::pool::global().for_each(first[ws.len()], |t| {
        let m = first.partition_point(|&f| f <= t) - 1;
        let r0 = (t - first[m]) * ROWS_PER_TASK;
        let r1 = (r0 + ROWS_PER_TASK).min(ws[m].rows);
        run_rows(isa, &ws[m], paths[m], x, r0, r1, &outs[m]);
    });
    Ok(())
}

/// Which kernel computes a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Integer kernel on the packed copy.
    Packed,
    /// Integer scalar twin on the original bytes.
    ScalarQ8,
    /// Dequantized rows against f32 activations.
    F32,
}

impl Path {
    fn of(isa: Isa, w: &WeightMatrix, precision: Precision) -> Path {
        if !precision.is_integer() || !uses_q8_activations(w.ty) {
            Path::F32
        } else if w.packed.is_some() && isa != Isa::Scalar {
            Path::Packed
        } else {
            Path::ScalarQ8
        }
    }
}

/// Rows `[r0, r1)` of `x · Wᵀ` into `out`, laid out `[x.rows, w.rows]`.
fn run_rows(
    isa: Isa,
    w: &WeightMatrix,
    path: Path,
    x: &Activations,
    r0: usize,
    r1: usize,
    out: &Out,
) {
    let (n, cols) = (x.rows, w.cols);
    let bpr = cols / QK;
    // SAFETY: the task running this alone writes rows [r0, r1) of this output,
    // and every write is at `i * rows + r` with i < n and r < rows, inside the
    // output whose length (n * rows) the caller checked.
    let write = |i: usize, r: usize, v: f32| unsafe { out.write_run(i, r, &[v]) };
    match (path, w.packed) {
        (Path::Packed, Some(p)) => {
            let rows_q = QuantRows {
                blocks: &x.q8,
                planes: &x.planes,
                n,
                two_planes: x.precision == Precision::Q8x2,
            };
            // SAFETY: as for `write`: this task alone writes the rows of these
            // groups ([r0, r1), whole groups), for the n activation rows.
            unsafe { kernels(isa).packed_rows(p, r0 / GROUP..r1.div_ceil(GROUP), &rows_q, out) };
        }
        (Path::ScalarQ8, _) | (Path::Packed, None) => {
            for r in r0..r1 {
                for i in 0..n {
                    let a = &x.q8[i * bpr..(i + 1) * bpr];
                    write(i, r, dot::scalar::dot_q8(w.ty, w.row(r), a));
                }
            }
        }
        (Path::F32, _) => f32_rows(isa, w, x, r0, r1, write),
    }
}

/// The f32 path: dequantize TILE weight rows once, then use them against every
/// activation row, in 4×4 register tiles when the batch is big enough.
fn f32_rows(
    isa: Isa,
    w: &WeightMatrix,
    x: &Activations,
    r0: usize,
    r1: usize,
    write: impl Fn(usize, usize, f32),
) {
    thread_local! {
        /// Dequantized weight rows of the task at hand.
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (n, cols, xf) = (x.rows, w.cols, x.x);
    SCRATCH.with_borrow_mut(|wf| {
        let x_row = |i: usize| &xf[i * cols..(i + 1) * cols];
        wf.resize(TILE * cols, 0.0);
        for rt in (r0..r1).step_by(TILE) {
            let nr = (r1 - rt).min(TILE);
            for j in 0..nr {
                dot::dequantize_row(isa, w.ty, w.row(rt + j), &mut wf[j * cols..(j + 1) * cols]);
            }
            let w_row = |j: usize| &wf[j * cols..(j + 1) * cols];
            if n < MIN_TILED_BATCH {
                for i in 0..n {
                    for j in 0..nr {
                        write(i, rt + j, dot::dot_f32_f32(isa, w_row(j), x_row(i)));
                    }
                }
                continue;
            }
            for it in (0..n).step_by(TILE) {
                let ni = (n - it).min(TILE);
                // Short edges repeat their last row; the extra results are dropped.
                let tile = dot::dot_tile_4x4(
                    isa,
                    std::array::from_fn(|j| w_row(j.min(nr - 1))),
                    std::array::from_fn(|i| x_row(it + i.min(ni - 1))),
                );
                for (i, row) in tile.iter().enumerate().take(ni) {
                    for (j, &v) in row.iter().enumerate().take(nr) {
                        write(it + i, rt + j, v);
                    }
                }
            }
        }
    })
}
