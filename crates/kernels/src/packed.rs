//! Weights repacked at load time for the integer kernels.
//!
//! Every supported block format is, per 32 weights, unsigned integer codes with a
//! scale and an offset: `w = d·c + m` (Q4_0: 4-bit c, m = −8d; Q4_1: 4-bit c and its
//! min; Q4_K: 4-bit c with d = d·scale and m = −dmin·min of its sub-block; Q5_0:
//! 5-bit c, m = −16d; Q8_0: c = q + 128, m = −128d). Q6_K has a scale per 16
//! weights instead: each half of a block is `d_h·(c − 32)` with 6-bit c, and its
//! kernels keep the two halves' integer sums apart and subtract `32·Σ q` in
//! integers. So one dot product serves them all:
//!
//! ```text
//! Σ w·x = Σ_blocks d·(Σ c·q)·d_x + m·Σ x
//! ```
//!
//! with `q` the 8-bit activations (`quant::BlockQ8`) and the inner sum in integers.
//!
//! The packed layout puts [`GROUP`] = 16 weight rows side by side, one per 32-bit
//! lane of a 512-bit register: for each block, "chunk" `j` holds weights
//! `4j..4j+4` of all 16 rows as 64 bytes (row-major, 4 bytes per row), exactly the
//! operand of one `vpdpbusd`, whose other operand is four activation bytes
//! broadcast to every lane. 4-bit codes share bytes: chunk `j`'s low nibbles are
//! weights `4j..4j+4`, its high nibbles weights `16+4j..16+4j+4`. The 16 scales and
//! 16 offsets of a block follow in their own array, as f16 when every value is an
//! f16 exactly (the legacy formats) and as f32 otherwise (Q4_K).
//!
//! The original bytes stay in the file for the scalar reference path, which reads
//! them through [`block_codes`].

use half::f16;
use inferd_gguf::GgmlType;

use crate::quant::{f16_at, q6k_value, scale_min_k4, BlockQ8, QK};
use crate::Isa;

/// Weight rows packed side by side.
pub const GROUP: usize = 16;

/// Whether weights of this type have a packed layout and an integer kernel.
pub fn is_packable(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q6K
    )
}

/// The zero code of Q6_K, whose halves are `d_h·(c − HALVES_ZERO)`.
pub const HALVES_ZERO: i32 = 32;

/// Width of the codes of a packed type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// 4-bit codes, two per byte.
    U4,
    /// 8-bit codes (Q5_0's 5-bit values and Q8_0's shifted bytes).
    U8,
}

impl Codes {
    pub fn of(ty: GgmlType) -> Codes {
        match ty {
            GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q6K => Codes::U8,
            _ => Codes::U4,
        }
    }

    /// Bytes of one block of a group.
    pub fn block_bytes(self) -> usize {
        match self {
            Codes::U4 => GROUP * QK / 2,
            Codes::U8 => GROUP * QK,
        }
    }
}

/// One 32-weight block as unsigned integer codes. Weight `i` is `d[0]·codes[i] + m`,
/// or with `halves` (Q6_K) `d[i / 16]·(codes[i] − HALVES_ZERO)` — the same value
/// [`crate::quant::dequantize_row`] gives.
#[derive(Debug, Clone, Copy)]
pub struct BlockCodes {
    pub codes: [u8; QK],
    pub d: [f32; 2],
    pub m: f32,
    pub halves: bool,
}

/// Block `b` (32 weights) of one row of type `ty` as codes, scales and offset.
pub fn block_codes(ty: GgmlType, row: &[u8], b: usize) -> BlockCodes {
    let affine = |codes, d: f32, m| BlockCodes {
        codes,
        d: [d, d],
        m,
        halves: false,
    };
    let mut c = [0u8; QK];
    let nibbles = |c: &mut [u8; QK], qs: &[u8]| {
        for j in 0..16 {
            c[j] = qs[j] & 0xF;
            c[j + 16] = qs[j] >> 4;
        }
    };
    match ty {
        GgmlType::Q4_0 => {
            let blk = &row[18 * b..18 * (b + 1)];
            nibbles(&mut c, &blk[2..]);
            let d = f16_at(blk, 0);
            affine(c, d, -8.0 * d)
        }
        GgmlType::Q4_1 => {
            let blk = &row[20 * b..20 * (b + 1)];
            nibbles(&mut c, &blk[4..]);
            affine(c, f16_at(blk, 0), f16_at(blk, 2))
        }
        GgmlType::Q5_0 => {
            let blk = &row[22 * b..22 * (b + 1)];
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            for j in 0..16 {
                c[j] = ((blk[6 + j] & 0xF) as u32 | (((qh >> j) << 4) & 0x10)) as u8;
                c[j + 16] = ((blk[6 + j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as u8;
            }
            let d = f16_at(blk, 0);
            affine(c, d, -16.0 * d)
        }
        GgmlType::Q8_0 => {
            let blk = &row[34 * b..34 * (b + 1)];
            for (c, &q) in c.iter_mut().zip(&blk[2..]) {
                *c = (q as i8 as i32 + 128) as u8;
            }
            let d = f16_at(blk, 0);
            affine(c, d, -128.0 * d)
        }
        GgmlType::Q4K => {
            let blk = &row[144 * (b / 8)..144 * (b / 8 + 1)];
            let j = b % 8;
            let (sc, mn) = scale_min_k4(j, &blk[4..16]);
            let q = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
            for (c, &q) in c.iter_mut().zip(q) {
                *c = (q >> (4 * (j % 2))) & 0xF;
            }
            affine(c, f16_at(blk, 0) * sc as f32, -(f16_at(blk, 2) * mn as f32))
        }
        GgmlType::Q6K => {
            let blk = &row[210 * (b / 8)..210 * (b / 8 + 1)];
            let j = b % 8;
            for (l, c) in c.iter_mut().enumerate() {
                *c = (q6k_value(blk, 32 * j + l) + HALVES_ZERO) as u8;
            }
            let d = f16_at(blk, 208);
            let sc = |h: usize| blk[192 + 2 * j + h] as i8 as f32;
            BlockCodes {
                codes: c,
                d: [d * sc(0), d * sc(1)],
                m: 0.0,
                halves: true,
            }
        }
        other => panic!("block_codes called for {other}: this is a bug"),
    }
}

/// Per-block scales and offsets of a packed matrix.
#[derive(Debug)]
pub enum Scales {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// A weight matrix in the packed layout (see the module docs). Rows are padded to
/// a multiple of [`GROUP`] with zero codes and zero scales.
#[derive(Debug)]
pub struct PackedMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub codes_kind: Codes,
    /// Q6_K: per-half scales instead of a scale and an offset.
    pub halves: bool,
    codes: Vec<u8>,
    scales: Scales,
}

impl PackedMatrix {
    /// Repacks `w`; `None` when its type has no packed layout.
    pub fn pack(w: &crate::WeightMatrix) -> Option<PackedMatrix> {
        if !is_packable(w.ty) || !w.cols.is_multiple_of(QK) {
            return None;
        }
        let kind = Codes::of(w.ty);
        let (groups, blocks) = (w.rows.div_ceil(GROUP), w.cols / QK);
        let mut codes = vec![0u8; groups * blocks * kind.block_bytes()];
        // Per (group, block): GROUP scales then GROUP offsets (with halves: the
        // first half's scales, then the second's).
        let mut dm = vec![0f32; groups * blocks * 2 * GROUP];
        let mut halves = false;
        for r in 0..w.rows {
            let (g, lane) = (r / GROUP, r % GROUP);
            let row = w.row(r);
            for b in 0..blocks {
                let bc = block_codes(w.ty, row, b);
                halves = bc.halves;
                let (c, gb) = (bc.codes, g * blocks + b);
                let out = &mut codes[gb * kind.block_bytes()..(gb + 1) * kind.block_bytes()];
                for (i, &c) in c.iter().enumerate() {
                    match kind {
                        Codes::U8 => out[64 * (i / 4) + 4 * lane + i % 4] = c,
                        Codes::U4 => {
                            let (j, shift) = ((i % 16) / 4, 4 * (i / 16));
                            out[64 * j + 4 * lane + i % 4] |= c << shift;
                        }
                    }
                }
                dm[gb * 2 * GROUP + lane] = bc.d[0];
                dm[gb * 2 * GROUP + GROUP + lane] = if halves { bc.d[1] } else { bc.m };
            }
        }
        let exact_f16 = dm.iter().all(|&v| f16::from_f32(v).to_f32() == v);
        let scales = if exact_f16 {
            Scales::F16(dm.iter().map(|&v| f16::from_f32(v).to_bits()).collect())
        } else {
            Scales::F32(dm)
        };
        Some(PackedMatrix {
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            codes_kind: kind,
            halves,
            codes,
            scales,
        })
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    pub fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Codes of group `g`: `blocks()` blocks of `codes_kind.block_bytes()`.
    pub fn group_codes(&self, g: usize) -> &[u8] {
        let n = self.blocks() * self.codes_kind.block_bytes();
        &self.codes[g * n..(g + 1) * n]
    }

    pub fn scales(&self) -> &Scales {
        &self.scales
    }

    /// Bytes held (codes and scales).
    pub fn size_bytes(&self) -> usize {
        self.codes.len()
            + match &self.scales {
                Scales::F16(v) => 2 * v.len(),
                Scales::F32(v) => 4 * v.len(),
            }
    }
}

/// Activation rows one kernel call takes against a group.
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
                $crate::packed::dispatch_nt!($f, false, false, false, false, $nt, $args)
            }
            (false, false, true, false) => {
                $crate::packed::dispatch_nt!($f, false, false, true, false, $nt, $args)
            }
            (false, true, false, false) => {
                $crate::packed::dispatch_nt!($f, false, true, false, false, $nt, $args)
            }
            (false, true, true, false) => {
                $crate::packed::dispatch_nt!($f, false, true, true, false, $nt, $args)
            }
            (true, false, false, false) => {
                $crate::packed::dispatch_nt!($f, true, false, false, false, $nt, $args)
            }
            (true, false, true, false) => {
                $crate::packed::dispatch_nt!($f, true, false, true, false, $nt, $args)
            }
            (true, true, false, false) => {
                $crate::packed::dispatch_nt!($f, true, true, false, false, $nt, $args)
            }
            (true, true, true, false) => {
                $crate::packed::dispatch_nt!($f, true, true, true, false, $nt, $args)
            }
            (false, false, false, true) => {
                $crate::packed::dispatch_nt!($f, false, false, false, true, $nt, $args)
            }
            (false, false, true, true) => {
                $crate::packed::dispatch_nt!($f, false, false, true, true, $nt, $args)
            }
            (false, true, false, true) => {
                $crate::packed::dispatch_nt!($f, false, true, false, true, $nt, $args)
            }
            (false, true, true, true) => {
                $crate::packed::dispatch_nt!($f, false, true, true, true, $nt, $args)
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
    /// On the AMX path, the planes of their whole 16-row tiles (`amx::tile_layout`).
    pub planes: &'a [i8],
    pub n: usize,
    pub two_planes: bool,
}

/// `write(i, r0, [x_i · W_r for r in r0..])` for every activation row `i < n`
/// over the rows of group `g` (`r0` its first row), on a SIMD path. On the AMX
/// path, rows past the last whole tile of `x.planes` take the vector kernel.
#[cfg_attr(
    not(target_arch = "x86_64"),
    allow(unused_variables, unused_mut, unreachable_code)
)]
pub(crate) fn group_dots(
    isa: Isa,
    p: &PackedMatrix,
    g: usize,
    x: &QuantRows,
    mut write: impl FnMut(usize, usize, &[f32]),
) {
    let QuantRows {
        blocks: acts,
        planes,
        n,
        two_planes,
    } = *x;
    let blocks = p.blocks();
    assert!(g < p.groups() && acts.len() >= n * blocks);
    let scale_at = g * blocks * 2 * GROUP;
    let (scales, f16) = match &p.scales {
        Scales::F16(v) => (v[scale_at..].as_ptr() as *const u8, true),
        Scales::F32(v) => (v[scale_at..].as_ptr() as *const u8, false),
    };
    let cfg = TileCfg {
        u4: p.codes_kind == Codes::U4,
        f16,
        two_planes,
        halves: p.halves,
    };
    let codes = p.group_codes(g).as_ptr();
    let lanes = (p.rows - g * GROUP).min(GROUP);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx && !cfg.halves {
        // Whole tiles of 16 activation rows on the AMX tiles; the rest below.
        let mut out = [[0f32; GROUP]; crate::amx::ROWS];
        let tile_bytes = blocks * 2 * crate::amx::PLANE_BYTES;
        while n - done >= crate::amx::ROWS
            && planes.len() >= (done / crate::amx::ROWS + 1) * tile_bytes
        {
            // SAFETY: `Isa::Amx` is only produced when `amx::available()` and the
            // AVX-512 features hold; the pointers cover `blocks` blocks of group g,
            // of activation rows done..done + 16 and of their tile's planes
            // (checked above and in the loop condition).
            unsafe {
                crate::amx::packed_tile16(
                    cfg,
                    codes,
                    scales,
                    blocks,
                    acts[done * blocks..].as_ptr(),
                    blocks,
                    planes[done / crate::amx::ROWS * tile_bytes..].as_ptr(),
                    &mut out,
                )
            };
            for (t, row) in out.iter().enumerate() {
                write(done + t, g * GROUP, &row[..lanes]);
            }
            done += crate::amx::ROWS;
        }
    }
    let mut out = [[0f32; GROUP]; MAX_TILE];
    for t0 in (done..n).step_by(MAX_TILE) {
        let nt = (n - t0).min(MAX_TILE);
        let ptrs: [*const BlockQ8; MAX_TILE] =
            std::array::from_fn(|t| acts[(t0 + t.min(nt - 1)) * blocks..].as_ptr());
        match isa {
            // SAFETY: the Isa values are only produced when their features were
            // detected; `codes` and `scales` cover `blocks` blocks of group g and
            // every pointer in `ptrs` starts `blocks` activation blocks (checked
            // above).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx => unsafe {
                crate::x86_512::packed_tile(cfg, codes, scales, blocks, &ptrs[..nt], &mut out)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe {
                crate::x86::packed_tile(cfg, codes, scales, blocks, &ptrs[..nt], &mut out)
            },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above; `Isa::Neon` implies NEON and the dot product.
            Isa::Neon => unsafe {
                crate::neon::packed_tile(cfg, codes, scales, blocks, &ptrs[..nt], &mut out)
            },
            _ => unreachable!("packed kernels run on SIMD paths only: this is a bug"),
        }
        for (t, row) in out.iter().enumerate().take(nt) {
            write(t0 + t, g * GROUP, &row[..lanes]);
        }
    }
}
