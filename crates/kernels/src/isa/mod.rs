//! The instruction-set paths: one module per path, each a type implementing
//! [`Kernels`], whose default methods are the scalar reference twins, and
//! [`kernels`], the one place where an [`Isa`] turns into code that runs its
//! instructions.
//!
//! Adding a path is one module: a type with an `unsafe` constructor (its contract:
//! this CPU runs the path's instructions), an `impl Kernels` overriding what the
//! path speeds up (everything else keeps the scalar default), its variant in
//! [`Isa`] with its detection, and its arm in [`table`]. The paths import the
//! block formats (`quant`, `packed`) and this module, and never each other,
//! except that AMX runs on top of the AVX-512 path.

use std::sync::OnceLock;

use crate::bf16;
use crate::packed::{Codes, PackedMatrix, Scales, GROUP};
use crate::quant::{BlockQ8, HALVES_ZERO, QK};
use crate::Isa;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::amx::available as amx_available;

/// The kernels of one instruction-set path. Each default method is the scalar
/// reference twin that the path's own version must agree with (up to f32
/// summation order); the property tests in `tests/kernels_agree.rs` hold every
/// path to them. Callers go through the checked wrappers in `dot`,
/// `matmul` and `bf16`.
pub(crate) trait Kernels: Sync {
    /// Σ a·b over the shorter of the two slices.
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// `y += a·x` over the shorter of the two slices.
    fn axpy(&self, a: f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
    }

    /// See [`crate::dot::weighted_rows`].
    ///
    /// # Safety
    /// The bounds that [`crate::dot::weighted_rows`] checks hold.
    unsafe fn weighted_rows(
        &self,
        w: &[&[f32]],
        v: &[f32],
        stride: usize,
        n: usize,
        hd: usize,
        o: &mut [f32],
    ) {
        for i in 0..n {
            let row = &v[i * stride..i * stride + hd];
            for (h, w) in w.iter().enumerate() {
                self.axpy(w[i], row, &mut o[h * hd..(h + 1) * hd]);
            }
        }
    }

    /// `out[i][j] = x[i] · w[j]`.
    ///
    /// # Safety
    /// All eight slices have the same length.
    unsafe fn dot_tile_4x4(&self, w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
        std::array::from_fn(|i| std::array::from_fn(|j| self.dot_f32(w[j], x[i])))
    }

    /// One weight row dequantized; [`crate::quant::dequantize_row`] up to f32
    /// rounding of `q·d + m`.
    fn dequantize_row(&self, ty: inferd_gguf::GgmlType, w: &[u8], out: &mut [f32]) {
        crate::quant::dequantize_row(ty, w, out)
    }

    /// [`crate::quant::quantize_row_q8`], bit for bit.
    fn quantize_row_q8(&self, x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
        crate::quant::quantize_row_q8(x, out, two_planes)
    }

    /// The packed kernel: one group of [`GROUP`] weight rows against `acts.len()`
    /// (1 to [`MAX_TILE`]) activation rows, `out[t][r]` for lane `r` of the group.
    /// The default reads the packed layout one code at a time.
    ///
    /// # Safety
    /// `codes` and `scales` cover `blocks` blocks of one group in the packed layout
    /// (scales as f16 when `cfg.f16`, else f32); every pointer in `acts` starts
    /// `blocks` activation blocks.
    unsafe fn packed_tile(
        &self,
        cfg: TileCfg,
        codes: *const u8,
        scales: *const u8,
        blocks: usize,
        acts: &[*const BlockQ8],
        out: &mut [[f32; GROUP]; MAX_TILE],
    ) {
        packed_tile_scalar(cfg, codes, scales, blocks, acts, out)
    }

    /// `x · Wᵀ` for the weight rows of `groups` of `p`, every activation row,
    /// into `out`, in tiles of [`MAX_TILE`] rows on [`Self::packed_tile`]. One
    /// call per task of the matmul, so that choosing the path costs nothing per
    /// group.
    ///
    /// # Safety
    /// As for [`Out::write_run`], for the rows of these groups and every
    /// activation row.
    unsafe fn packed_rows(
        &self,
        p: &PackedMatrix,
        groups: std::ops::Range<usize>,
        x: &QuantRows,
        out: &Out,
    ) {
        for g in groups {
            group_tiles(self, &Group::of(p, g, x), 0, out)
        }
    }

    /// The copy of the activations a path reads besides the blocks (AMX's tile
    /// planes); none by default.
    fn tile_layout(&self, _q8: &[BlockQ8], _rows: usize, _blocks_per_row: usize) -> Vec<i8> {
        Vec::new()
    }

    /// Whether the bf16 kernels below run in hardware (AVX512-BF16) rather than
    /// as the scalar twin.
    fn has_bf16(&self) -> bool {
        false
    }

    /// One row rounded to bf16 pairs ([`bf16::round_row`]).
    fn bf16_round_row(&self, row: &[f32], out: &mut [u32]) {
        bf16::round_row(row, out)
    }

    /// One tile of the bf16 matmul.
    ///
    /// # Safety
    /// As for `bf16::blocks_on`: `out` points at `x.rows · w.rows` f32 that no
    /// other thread writes in the tile's rows.
    unsafe fn bf16_tile(&self, t: &bf16::Tile, out: &bf16::OutPtr) {
        bf16::scalar::tile(t, out)
    }
}

/// The scalar path: every kernel in its reference form.
struct Scalar;

impl Kernels for Scalar {}

/// The kernels of `isa`.
///
/// # Panics
/// When this CPU cannot run `isa`: a caller that names a path itself checks it
/// first, as [`Isa::named`] does.
#[inline]
pub(crate) fn kernels(isa: Isa) -> &'static dyn Kernels {
    match try_kernels(isa) {
        Some(k) => k,
        None => refuse(isa),
    }
}

#[cold]
#[inline(never)]
fn refuse(isa: Isa) -> ! {
    let runs: Vec<&str> = Isa::available().iter().map(|i| i.name()).collect();
    panic!(
        "the {} kernels were asked for on a CPU that cannot run them (it runs: {})",
        isa.name(),
        runs.join(", ")
    )
}

/// One slot per [`Isa`] variant, by discriminant (`Neon` is the last).
type Table = [Option<&'static dyn Kernels>; Isa::Neon as usize + 1];

/// The kernels of `isa` when this CPU runs it. Called for every kernel call, so
/// it is one load past the first.
#[inline]
pub(crate) fn try_kernels(isa: Isa) -> Option<&'static dyn Kernels> {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(table)[isa as usize]
}

/// Every path this CPU runs, with its kernels.
fn table() -> Table {
    let mut table: Table = Default::default();
    for isa in Isa::available() {
        // SAFETY: this is the whole argument for every SIMD kernel in the
        // crate. Each path's type can only be made by its `unsafe`
        // constructor, whose contract is that this CPU (and for AMX, the OS
        // and this process) runs the path's instructions; the only calls are
        // here, for the paths `Isa::available` lists, which are exactly those
        // whose features were detected at run time. Every `unsafe` call of a
        // `#[target_feature]` function inside a path relies on holding a
        // value of that path's type, and on nothing else about the CPU.
        let k: &'static dyn Kernels = unsafe {
            match isa {
                Isa::Scalar => &Scalar,
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => Box::leak(Box::new(avx2::Avx2::new())),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => Box::leak(Box::new(avx512::Avx512::new(bf16(), false))),
                #[cfg(target_arch = "x86_64")]
                Isa::Amx => Box::leak(Box::new(avx512::Avx512::new(bf16(), true))),
                #[cfg(target_arch = "aarch64")]
                Isa::Neon => Box::leak(Box::new(neon::Neon::new())),
                #[allow(unreachable_patterns)]
                other => unreachable!("{} is not a path of this architecture", other.name()),
            }
        };
        table[isa as usize] = Some(k);
    }
    table
}

/// Whether the AVX-512 paths can run the bf16 kernels in hardware.
#[cfg(target_arch = "x86_64")]
fn bf16() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Activation rows one packed-kernel call takes against a group.
pub const MAX_TILE: usize = 8;

/// Which variant of the packed kernel a matrix and precision need.
#[derive(Debug, Clone, Copy)]
pub struct TileCfg {
    pub u4: bool,
    pub f16: bool,
    pub two_planes: bool,
    /// Q6_K's per-half scales (8-bit codes only).
    pub halves: bool,
}

/// Calls `$f::<U4, F16, TWO, HALVES, NT>(args…)` with the constants picked from
/// a [`TileCfg`] and a tile height in `1..=MAX_TILE`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! dispatch_tile {
    ($f:ident, $cfg:expr, $nt:expr, $args:tt) => {
        match ($cfg.u4, $cfg.f16, $cfg.two_planes, $cfg.halves) {
            (false, false, false, false) => {
                $crate::isa::dispatch_nt!($f, false, false, false, false, $nt, $args)
            }
            (false, false, true, false) => {
                $crate::isa::dispatch_nt!($f, false, false, true, false, $nt, $args)
            }
            (false, true, false, false) => {
                $crate::isa::dispatch_nt!($f, false, true, false, false, $nt, $args)
            }
            (false, true, true, false) => {
                $crate::isa::dispatch_nt!($f, false, true, true, false, $nt, $args)
            }
            (true, false, false, false) => {
                $crate::isa::dispatch_nt!($f, true, false, false, false, $nt, $args)
            }
            (true, false, true, false) => {
                $crate::isa::dispatch_nt!($f, true, false, true, false, $nt, $args)
            }
            (true, true, false, false) => {
                $crate::isa::dispatch_nt!($f, true, true, false, false, $nt, $args)
            }
            (true, true, true, false) => {
                $crate::isa::dispatch_nt!($f, true, true, true, false, $nt, $args)
            }
            (false, false, false, true) => {
                $crate::isa::dispatch_nt!($f, false, false, false, true, $nt, $args)
            }
            (false, false, true, true) => {
                $crate::isa::dispatch_nt!($f, false, false, true, true, $nt, $args)
            }
            (false, true, false, true) => {
                $crate::isa::dispatch_nt!($f, false, true, false, true, $nt, $args)
            }
            (false, true, true, true) => {
                $crate::isa::dispatch_nt!($f, false, true, true, true, $nt, $args)
            }
            (true, _, _, true) => {
                unreachable!("per-half scales come with 8-bit codes only: this is a bug")
            }
        }
    };
}

#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! dispatch_nt {
    ($f:ident, $u4:literal, $f16:literal, $two:literal, $halves:literal, $nt:expr, ($($arg:expr),*)) => {
        match $nt {
            1 => $f::<$u4, $f16, $two, $halves, 1>($($arg),*),
            2 => $f::<$u4, $f16, $two, $halves, 2>($($arg),*),
            3 => $f::<$u4, $f16, $two, $halves, 3>($($arg),*),
            4 => $f::<$u4, $f16, $two, $halves, 4>($($arg),*),
            5 => $f::<$u4, $f16, $two, $halves, 5>($($arg),*),
            6 => $f::<$u4, $f16, $two, $halves, 6>($($arg),*),
            7 => $f::<$u4, $f16, $two, $halves, 7>($($arg),*),
            8 => $f::<$u4, $f16, $two, $halves, 8>($($arg),*),
            n => unreachable!("a tile of {n} activation rows: this is a bug"),
        }
    };
}
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
pub(crate) use {dispatch_nt, dispatch_tile};

/// Quantized activation rows as the packed kernels read them.
#[derive(Clone, Copy)]
pub(crate) struct QuantRows<'a> {
    /// `n` rows of `cols / 32` blocks.
    pub blocks: &'a [BlockQ8],
    /// The path's own copy of them ([`Kernels::tile_layout`]), if it keeps one.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub planes: &'a [i8],
    pub n: usize,
    pub two_planes: bool,
}

/// One group of a packed matrix against a batch of activation rows, as the
/// kernels take it.
pub(crate) struct Group<'a> {
    pub cfg: TileCfg,
    pub codes: *const u8,
    pub scales: *const u8,
    pub blocks: usize,
    /// Weight rows of the group that exist (the last group may be partial).
    pub lanes: usize,
    /// The group's first weight row.
    pub r0: usize,
    pub x: &'a QuantRows<'a>,
}

impl<'a> Group<'a> {
    pub fn of(p: &'a PackedMatrix, g: usize, x: &'a QuantRows<'a>) -> Group<'a> {
        let blocks = p.blocks();
        assert!(g < p.groups() && x.blocks.len() >= x.n * blocks);
        let scale_at = g * blocks * 2 * GROUP;
        let (scales, f16) = match p.scales() {
            Scales::F16(v) => (v[scale_at..].as_ptr() as *const u8, true),
            Scales::F32(v) => (v[scale_at..].as_ptr() as *const u8, false),
        };
        Group {
            cfg: TileCfg {
                u4: p.codes_kind == Codes::U4,
                f16,
                two_planes: x.two_planes,
                halves: p.halves,
            },
            codes: p.group_codes(g).as_ptr(),
            scales,
            blocks,
            lanes: (p.rows - g * GROUP).min(GROUP),
            r0: g * GROUP,
            x,
        }
    }
}

/// Where the packed kernels write: `[n, rows]` f32, row `i` of the activations
/// at `i · rows`.
pub(crate) struct Out {
    pub ptr: *mut f32,
    pub rows: usize,
}

// SAFETY: tasks share an `Out` only to write disjoint rows of it (`write_run`'s
// contract), as the matmul splits its output rows between them.
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// Writes `v` at weight rows `r..r + v.len()` of activation row `i`.
    ///
    /// # Safety
    /// Those positions lie inside the output, and no other thread writes them.
    #[inline]
    pub unsafe fn write_run(&self, i: usize, r: usize, v: &[f32]) {
        debug_assert!(r + v.len() <= self.rows);
        std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(i * self.rows + r), v.len());
    }
}

/// Activation rows `from..` of a group in tiles of [`MAX_TILE`] on `k`'s packed
/// kernel.
///
/// # Safety
/// As for [`Kernels::packed_rows`].
#[inline]
pub(crate) unsafe fn group_tiles<K: Kernels + ?Sized>(k: &K, grp: &Group, from: usize, out: &Out) {
    let (n, blocks, acts) = (grp.x.n, grp.blocks, grp.x.blocks);
    let mut tile = [[0f32; GROUP]; MAX_TILE];
    for t0 in (from..n).step_by(MAX_TILE) {
        let nt = (n - t0).min(MAX_TILE);
        let ptrs: [*const BlockQ8; MAX_TILE] =
            std::array::from_fn(|t| acts[(t0 + t.min(nt - 1)) * blocks..].as_ptr());
        // `Group::of` took `codes` and `scales` from `blocks` blocks of one
        // group of the packed matrix and checked that the activations hold `n`
        // rows of `blocks` blocks, so every pointer in `ptrs` starts `blocks` of
        // them.
        k.packed_tile(
            grp.cfg,
            grp.codes,
            grp.scales,
            blocks,
            &ptrs[..nt],
            &mut tile,
        );
        for (t, row) in tile.iter().enumerate().take(nt) {
            out.write_run(t0 + t, grp.r0, &row[..grp.lanes]);
        }
    }
}

/// The packed kernel's reference twin: the same integer sums and scaling as
/// `quant::scalar::dot_q8`, read from the packed layout one code at a time.
///
/// # Safety
/// As for [`Kernels::packed_tile`].
unsafe fn packed_tile_scalar(
    cfg: TileCfg,
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: &[*const BlockQ8],
    out: &mut [[f32; GROUP]; MAX_TILE],
) {
    let kind = if cfg.u4 { Codes::U4 } else { Codes::U8 };
    let scale = |i: usize| {
        if cfg.f16 {
            half::f16::from_bits((scales as *const u16).add(i).read_unaligned()).to_f32()
        } else {
            (scales as *const f32).add(i).read_unaligned()
        }
    };
    for (t, &a) in acts.iter().enumerate() {
        for (lane, o) in out[t].iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..blocks {
                let a = &*a.add(b);
                let p = codes.add(b * kind.block_bytes());
                // Code i of this lane: chunk i / 4 holds codes 4j..4j + 4 of every
                // lane; 4-bit codes 16.. are the high nibbles of chunks 0..4.
                let code = |i: usize| -> i32 {
                    if cfg.u4 {
                        let byte = *p.add(64 * ((i % 16) / 4) + 4 * lane + i % 4);
                        ((byte >> (4 * (i / 16))) & 0xF) as i32
                    } else {
                        *p.add(64 * (i / 4) + 4 * lane + i % 4) as i32
                    }
                };
                let half_sum = |h: usize| -> i32 {
                    (QK / 2 * h..QK / 2 * (h + 1))
                        .map(|i| {
                            let lo = if cfg.two_planes { a.lo[i] as i32 } else { 0 };
                            code(i) * (256 * a.hi[i] as i32 + lo)
                        })
                        .sum()
                };
                let (d, second) = (
                    scale(b * 2 * GROUP + lane),
                    scale(b * 2 * GROUP + GROUP + lane),
                );
                if cfg.halves {
                    for (h, d) in [d, second].into_iter().enumerate() {
                        let isum = half_sum(h) - HALVES_ZERO * a.qsum[h];
                        acc += d * (isum as f32 * a.d);
                    }
                } else {
                    let isum = half_sum(0) + half_sum(1);
                    acc += d * (isum as f32 * a.d) + second * a.sum;
                }
            }
            *o = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use inferd_gguf::GgmlType;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::quant::{quantize_row_q8, scalar::dot_q8};
    use crate::WeightMatrix;

    /// Random blocks with sensible f16 scales where the format keeps them.
    fn random_rows(rng: &mut StdRng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
        let blocks = rows * cols / ty.block_elems();
        let mut out = Vec::new();
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.gen()).collect();
            let scale_at: &[usize] = match ty {
                GgmlType::Q4_1 | GgmlType::Q4K => &[0, 2],
                GgmlType::Q6K => &[208],
                _ => &[0],
            };
            for &at in scale_at {
                let v = half::f16::from_f32(rng.gen_range(-0.05..0.05));
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
            out.extend(b);
        }
        out
    }

    #[test]
    fn the_scalar_packed_kernel_matches_the_reference_dot() {
        let mut rng = StdRng::seed_from_u64(7);
        let (rows, cols, n) = (21, 256, 11);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
        ] {
            let bytes = random_rows(&mut rng, ty, rows, cols);
            let w = WeightMatrix::new(ty, rows, cols, &bytes).unwrap();
            let p = PackedMatrix::pack(&w).unwrap();
            for two_planes in [false, true] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut q8 = vec![BlockQ8::ZERO; n * cols / QK];
                quantize_row_q8(&x, &mut q8, two_planes);
                let xq = QuantRows {
                    blocks: &q8,
                    planes: &[],
                    n,
                    two_planes,
                };
                let mut got = vec![f32::NAN; n * rows];
                let out = Out {
                    ptr: got.as_mut_ptr(),
                    rows,
                };
                // SAFETY: `got` holds n × rows values and nothing else writes it.
                unsafe { Scalar.packed_rows(&p, 0..p.groups(), &xq, &out) };
                let bpr = cols / QK;
                for i in 0..n {
                    for r in 0..rows {
                        let want = dot_q8(ty, w.row(r), &q8[i * bpr..(i + 1) * bpr]);
                        let g = got[i * rows + r];
                        assert!(
                            (g - want).abs() <= 1e-5 * want.abs() + 1e-4,
                            "{ty} two_planes={two_planes} row {r} x {i}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_path_this_cpu_lacks_is_refused_by_name() {
        let missing = if cfg!(target_arch = "x86_64") {
            Isa::Neon
        } else {
            Isa::Avx2
        };
        assert!(try_kernels(missing).is_none());
        assert!(try_kernels(Isa::Scalar).is_some());
        let err = std::panic::catch_unwind(|| {
            kernels(missing);
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().expect("a formatted message");
        assert!(
            msg.contains(missing.name()) && msg.contains("scalar"),
            "{msg}"
        );
    }
}
