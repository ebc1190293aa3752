//! `out = x · Wᵀ` in bf16 with f32 accumulation, for float weights (the embedding
//! encoder's f32 safetensors).
//!
//! bf16 keeps f32's exponent and 8 bits of its mantissa. Both operands are rounded
//! to it (round to nearest even), every product is exact in f32, and the sums are
//! f32: on AVX512-BF16 (`vdpbf16ps`) one instruction does 32 multiply-adds where an
//! f32 FMA does 16, over operands half the size. On all-MiniLM-L6-v2 this keeps
//! embeddings within a cosine of 0.99995 of sentence-transformers' f32 (the embed
//! crate's reference test), where 8-bit weights fall to 0.9994.
//!
//! Layout ([`Bf16Matrix`]): rows in blocks of 16; within a block, for each pair of
//! columns `(2p, 2p + 1)`, one 64-byte line holds those two values of each of the
//! 16 rows, as the 32-bit lanes `vdpbf16ps` multiplies pairwise. The kernel then
//! works as an outer product: per column pair it loads one line per row block and
//! broadcasts the pair of each activation row, so each accumulator lane is one
//! output (activation row × weight row) and nothing is summed across lanes. A tile
//! is 2 row blocks × 8 activation rows: 16 accumulators fed by 2 loads and 8
//! broadcasts per column pair.
//!
//! Each output accumulates its column pairs in order, odd column first, as
//! `vdpbf16ps` does, so the scalar twin ([`scalar`]) computes the same sums in the
//! same order: the two agree exactly except where a value is subnormal (the
//! instruction flushes those to zero, the twin keeps them).

use crate::isa::{kernels, try_kernels};
use crate::{Isa, KernelError, Result};

/// Rows per block: one 512-bit register of f32 outputs.
pub const BLOCK: usize = 16;
/// Row blocks per tile.
const TILE_BLOCKS: usize = 2;
/// Activation rows per tile.
pub(crate) const TILE_ROWS: usize = 8;
/// Row blocks handed to one task.
const BLOCKS_PER_TASK: usize = 4;

/// One column pair of a row block: lane j is row j's two bf16 values, the even
/// column in the low half.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
pub struct Line(pub [u32; BLOCK]);

/// A float weight matrix `[rows, cols]` rounded to bf16 and laid out for the
/// kernel (see the module docs). Columns are padded with zeros to an even count and
/// rows to a whole block.
pub struct Bf16Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Column pairs per row: `cols.div_ceil(2)`.
    pairs: usize,
    /// `blocks × pairs` lines, block-major.
    lines: Vec<Line>,
    /// Added to every output (`nn.Linear`'s bias), padded to whole blocks:
    /// where the sums start.
    bias: Vec<f32>,
}

impl Bf16Matrix {
    /// From f32 rows, row major (`w.len() == rows * cols`).
    pub fn from_f32(rows: usize, cols: usize, w: &[f32]) -> Result<Bf16Matrix> {
        if w.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(KernelError::Shape(format!(
                "bf16 matrix {rows}x{cols} from {} values",
                w.len()
            )));
        }
        let pairs = cols.div_ceil(2);
        let blocks = rows.div_ceil(BLOCK);
        let mut lines = vec![Line::default(); blocks * pairs];
        let at = |r: usize, c: usize| {
            if r < rows && c < cols {
                to_bf16(w[r * cols + c])
            } else {
                0
            }
        };
        for b in 0..blocks {
            for p in 0..pairs {
                let line = &mut lines[b * pairs + p].0;
                for (j, lane) in line.iter_mut().enumerate() {
                    let r = b * BLOCK + j;
                    *lane = at(r, 2 * p) as u32 | (at(r, 2 * p + 1) as u32) << 16;
                }
            }
        }
        Ok(Bf16Matrix {
            rows,
            cols,
            pairs,
            lines,
            bias: vec![0.0; blocks * BLOCK],
        })
    }

    /// The same matrix adding `bias[r]` to output row `r`, in f32.
    pub fn with_bias(mut self, bias: &[f32]) -> Result<Bf16Matrix> {
        if bias.len() != self.rows {
            return Err(KernelError::Shape(format!(
                "bias of {} for {} rows",
                bias.len(),
                self.rows
            )));
        }
        self.bias[..self.rows].copy_from_slice(bias);
        Ok(self)
    }

    fn blocks(&self) -> usize {
        self.rows.div_ceil(BLOCK)
    }

    pub(crate) fn block(&self, b: usize) -> &[Line] {
        &self.lines[b * self.pairs..(b + 1) * self.pairs]
    }

    pub(crate) fn block_bias(&self, b: usize) -> &[f32] {
        &self.bias[b * BLOCK..(b + 1) * BLOCK]
    }

    /// Weight `(r, c)` as the kernel sees it (bf16 widened to f32).
    pub fn get(&self, r: usize, c: usize) -> f32 {
        let lane = self.block(r / BLOCK)[c / 2].0[r % BLOCK];
        from_bf16((lane >> (16 * (c % 2))) as u16)
    }
}

/// f32 → bf16, rounding to nearest even; NaN stays a (quiet) NaN.
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Whether [`matmul_bf16_on`] can run on `isa`: the scalar twin always; the SIMD
/// kernel on the AVX-512 paths of a CPU with AVX512-BF16 (AMD Zen 4 and later,
/// Intel Cooper Lake and Sapphire Rapids and later). Elsewhere callers keep f32.
pub fn supported(isa: Isa) -> bool {
    isa == Isa::Scalar || try_kernels(isa).is_some_and(|k| k.has_bf16())
}

/// Activation rows rounded to bf16, as column pairs: `[rows, pairs]` lanes.
pub struct Bf16Rows {
    rows: usize,
    pub(crate) pairs: usize,
    pub(crate) lanes: Vec<u32>,
}

impl Bf16Rows {
    /// `x`: `[rows, cols]` f32, row major, rounded as [`to_bf16`] rounds (the
    /// AVX-512 path, `vcvtne2ps2bf16`, also flushes subnormals to zero).
    pub fn new_on(isa: Isa, x: &[f32], rows: usize, cols: usize) -> Bf16Rows {
        debug_assert_eq!(x.len(), rows * cols);
        let pairs = cols.div_ceil(2);
        let mut lanes = vec![0u32; rows * pairs];
        let k = kernels(isa);
        for (row, out) in x.chunks_exact(cols).zip(lanes.chunks_exact_mut(pairs)) {
            k.bf16_round_row(row, out);
        }
        Bf16Rows { rows, pairs, lanes }
    }
}

/// One row to bf16 pairs (the last pair zero-padded when `row` is odd).
pub(crate) fn round_row(row: &[f32], out: &mut [u32]) {
    for (lane, pair) in out.iter_mut().zip(row.chunks(2)) {
        let lo = to_bf16(pair[0]);
        let hi = pair.get(1).map_or(0, |&v| to_bf16(v));
        *lane = lo as u32 | (hi as u32) << 16;
    }
}

/// `outs[m][i * ws[m].rows + r] = Σ_k x[i][k] · Wm[r][k]` for matrices sharing their
/// input (Q, K and V), as one parallel job on the worker pool. `isa` must be
/// [`supported`].
pub fn matmul_bf16_on(
    isa: Isa,
    ws: &[&Bf16Matrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
) -> Result<()> {
    if !supported(isa) {
        return Err(KernelError::Shape(format!(
            "the bf16 kernel does not run on the {} path of this CPU",
            isa.name()
        )));
    }
    if ws.len() != outs.len() {
        return Err(KernelError::Shape(format!(
            "{} matrices for {} outputs",
            ws.len(),
            outs.len()
        )));
    }
    let cols = ws.first().map_or(0, |w| w.cols);
    for (w, out) in ws.iter().zip(outs.iter()) {
        if w.cols != cols || x.len() != n * cols || out.len() != n * w.rows {
            return Err(KernelError::Shape(format!(
                "x has {} values for {n} rows, W is {}x{}, out has {} values",
                x.len(),
                w.rows,
                w.cols,
                out.len()
            )));
        }
    }
    if n == 0 || ws.is_empty() {
        return Ok(());
    }
    let xb = Bf16Rows::new_on(isa, x, n, cols);
    let mut first = vec![0];
    for w in ws {
        first.push(first.last().unwrap_or(&0) + w.blocks().div_ceil(BLOCKS_PER_TASK));
    }
    let outs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    crate::pool::global().for_each(first[ws.len()], |t| {
        let m = first.partition_point(|&f| f <= t) - 1;
        let b0 = (t - first[m]) * BLOCKS_PER_TASK;
        let b1 = (b0 + BLOCKS_PER_TASK).min(ws[m].blocks());
        // SAFETY: task t alone writes rows [b0 · 16, b1 · 16) of output m, for
        // every activation row, inside the length checked above.
        unsafe { blocks_on(isa, ws[m], &xb, b0..b1, &outs[m]) };
    });
    Ok(())
}

/// Row blocks `blocks` of `x · Wᵀ`, every activation row, in tiles.
///
/// # Safety
/// `out` points at `x.rows * w.rows` f32 that no other thread writes in these rows.
unsafe fn blocks_on(
    isa: Isa,
    w: &Bf16Matrix,
    x: &Bf16Rows,
    blocks: std::ops::Range<usize>,
    out: &OutPtr,
) {
    let k = kernels(isa);
    let mut b = blocks.start;
    while b < blocks.end {
        let nb = (blocks.end - b).min(TILE_BLOCKS);
        for i in (0..x.rows).step_by(TILE_ROWS) {
            let ni = (x.rows - i).min(TILE_ROWS);
            k.bf16_tile(&Tile { w, b, nb, x, i, ni }, out);
        }
        b += nb;
    }
}

/// `nb` row blocks from block `b` against `ni` activation rows from row `i`.
pub(crate) struct Tile<'a> {
    pub w: &'a Bf16Matrix,
    pub b: usize,
    pub nb: usize,
    pub x: &'a Bf16Rows,
    pub i: usize,
    pub ni: usize,
}

impl Tile<'_> {
    /// Output rows of block `b + k` that exist (the last block may be partial).
    pub(crate) fn live_rows(&self, k: usize) -> usize {
        (self.w.rows - (self.b + k) * BLOCK).min(BLOCK)
    }
}

pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: tasks write disjoint rows of the output (`matmul_bf16_on`).
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// The reference: the kernel's arithmetic one output at a time.
pub mod scalar {
    use super::*;

    /// One output as `vdpbf16ps` accumulates it from `start` (the bias): per
    /// column pair, the odd product then the even one, each rounded into the sum.
    pub fn dot(start: f32, w: &[Line], lane: usize, x: &[u32]) -> f32 {
        let mut acc = start;
        for (line, &xp) in w.iter().zip(x) {
            let wp = line.0[lane];
            let hi = |v: u32| from_bf16((v >> 16) as u16);
            let lo = |v: u32| from_bf16(v as u16);
            acc += hi(wp) * hi(xp);
            acc += lo(wp) * lo(xp);
        }
        acc
    }

    /// # Safety
    /// As for [`blocks_on`].
    pub(crate) unsafe fn tile(t: &Tile, out: &OutPtr) {
        let (pairs, rows) = (t.x.pairs, t.w.rows);
        for k in 0..t.nb {
            let (block, bias) = (t.w.block(t.b + k), t.w.block_bias(t.b + k));
            for i in t.i..t.i + t.ni {
                let x = &t.x.lanes[i * pairs..(i + 1) * pairs];
                for (lane, &start) in bias.iter().enumerate().take(t.live_rows(k)) {
                    let r = (t.b + k) * BLOCK + lane;
                    *out.0.add(i * rows + r) = dot(start, block, lane, x);
                }
            }
        }
    }

    /// `out[i * rows + r]` of [`matmul_bf16_on`] computed one output at a time,
    /// single-threaded: what the tests compare every path with.
    pub fn matmul(w: &Bf16Matrix, x: &[f32], n: usize) -> Vec<f32> {
        let xb = Bf16Rows::new_on(Isa::Scalar, x, n, w.cols);
        (0..n)
            .flat_map(|i| {
                let xi = &xb.lanes[i * xb.pairs..(i + 1) * xb.pairs];
                (0..w.rows).map(move |r| dot(w.bias[r], w.block(r / BLOCK), r % BLOCK, xi))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values spread over a few orders of magnitude, both signs.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                (u - 0.5)
                    * if (s >> 20).is_multiple_of(7) {
                        40.0
                    } else {
                        2.0
                    }
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1e-6), 0x3f81);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        for v in values(1000, 3) {
            let r = from_bf16(to_bf16(v));
            assert!((r - v).abs() <= v.abs() / 256.0, "{v} -> {r}");
        }
    }

    #[test]
    fn the_layout_keeps_every_weight() {
        let (rows, cols) = (37, 11);
        let w = values(rows * cols, 1);
        let m = Bf16Matrix::from_f32(rows, cols, &w).expect("shape");
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(
                    m.get(r, c),
                    from_bf16(to_bf16(w[r * cols + c])),
                    "({r}, {c})"
                );
            }
        }
        assert!(Bf16Matrix::from_f32(2, 3, &w[..5]).is_err());
    }

    /// The scalar twin against f64 sums of the bf16-rounded operands.
    #[test]
    fn the_twin_sums_the_rounded_products() {
        let (rows, cols, n) = (20, 33, 3);
        let w = values(rows * cols, 5);
        let x = values(n * cols, 6);
        let m = Bf16Matrix::from_f32(rows, cols, &w).expect("shape");
        let got = scalar::matmul(&m, &x, n);
        let round = |v: f32| from_bf16(to_bf16(v)) as f64;
        for i in 0..n {
            for r in 0..rows {
                let (mut exact, mut mag) = (0f64, 0f64);
                for c in 0..cols {
                    let p = round(w[r * cols + c]) * round(x[i * cols + c]);
                    exact += p;
                    mag += p.abs();
                }
                let g = got[i * rows + r] as f64;
                assert!(
                    (g - exact).abs() <= mag * 1e-6,
                    "({i}, {r}): {g} vs {exact}"
                );
            }
        }
    }

    /// Every path this CPU runs, through the pool, against the twin: exact, since
    /// no value here is subnormal. Shapes cover partial blocks, odd columns, a
    /// partial tile of rows and several matrices in one job.
    #[test]
    fn every_path_matches_the_twin() {
        for isa in Isa::available().into_iter().filter(|&i| supported(i)) {
            for (n, cols, rows) in [
                (1, 2, 16),
                (3, 33, 20),
                (8, 64, 32),
                (19, 384, 1536),
                (9, 7, 5),
            ] {
                let x = values(n * cols, (n * 31 + cols) as u64);
                let wa = values(rows * cols, 11);
                let wb = values(48 * cols, 12);
                let bias = values(rows, 13);
                let ma = Bf16Matrix::from_f32(rows, cols, &wa)
                    .and_then(|m| m.with_bias(&bias))
                    .expect("shape");
                let mb = Bf16Matrix::from_f32(48, cols, &wb).expect("shape");
                let mut oa = vec![f32::NAN; n * rows];
                let mut ob = vec![f32::NAN; n * 48];
                matmul_bf16_on(isa, &[&ma, &mb], &x, n, &mut [&mut oa, &mut ob]).expect("runs");
                assert_eq!(
                    oa,
                    scalar::matmul(&ma, &x, n),
                    "{} n={n} {rows}x{cols}",
                    isa.name()
                );
                assert_eq!(
                    ob,
                    scalar::matmul(&mb, &x, n),
                    "{} n={n} 48x{cols}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn every_path_rounds_activations_as_the_twin() {
        for isa in Isa::available().into_iter().filter(|&i| supported(i)) {
            for cols in [1, 2, 15, 16, 17, 31, 32, 33, 64, 384, 385] {
                let x = values(3 * cols, cols as u64);
                let got = Bf16Rows::new_on(isa, &x, 3, cols);
                let want = Bf16Rows::new_on(Isa::Scalar, &x, 3, cols);
                assert_eq!(got.lanes, want.lanes, "{} cols={cols}", isa.name());
            }
        }
    }

    #[test]
    fn the_bias_starts_every_sum() {
        let w = Bf16Matrix::from_f32(3, 2, &[0.0; 6])
            .and_then(|m| m.with_bias(&[1.0, -2.0, 0.5]))
            .expect("shape");
        assert_eq!(
            scalar::matmul(&w, &[7.0, 8.0, 9.0, 1.0], 2),
            [1.0, -2.0, 0.5, 1.0, -2.0, 0.5]
        );
        assert!(Bf16Matrix::from_f32(3, 2, &[0.0; 6])
            .expect("shape")
            .with_bias(&[1.0])
            .is_err());
    }

    #[test]
    fn shape_errors_are_named() {
        let m = Bf16Matrix::from_f32(16, 4, &[0.0; 64]).expect("shape");
        let mut out = vec![0f32; 16];
        let err = matmul_bf16_on(Isa::Scalar, &[&m], &[0.0; 3], 1, &mut [&mut out])
            .expect_err("short x")
            .to_string();
        assert!(err.contains("3 values for 1 rows"), "{err}");
    }
}
