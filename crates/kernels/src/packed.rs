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
//! them through [`crate::quant::block_codes`].

use half::f16;
use inferd_gguf::GgmlType;

use crate::quant::{block_codes, QK};

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
