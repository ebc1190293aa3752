//! Block formats (ggml's, byte for byte), dequantization, the 8-bit activation
//! blocks that every quantized dot product consumes, and the scalar reference dot
//! products ([`scalar`]). A leaf: it depends on nothing else in the crate, and
//! everything else reads the formats through it.
//!
//! Weight layouts (per block, little-endian; see ggml-common.h):
//! - Q4_0: `d: f16, qs: [u8; 16]` — x[j] = (lo(qs[j]) - 8)·d, x[j+16] = (hi(qs[j]) - 8)·d
//! - Q4_1: `d: f16, m: f16, qs: [u8; 16]` — x = q·d + m, same nibble order
//! - Q5_0: `d: f16, qh: u32, qs: [u8; 16]` — fifth bit of x[j] is bit j of qh, minus 16
//! - Q8_0: `d: f16, qs: [i8; 32]`
//! - Q4_K: 256 weights: `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]`, eight
//!   32-weight sub-blocks with 6-bit scale and min
//! - Q6_K: 256 weights: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`,
//!   sixteen 16-weight sub-blocks

use half::f16;
use inferd_gguf::GgmlType;

/// Weights (and activation values) per quantization block.
pub const QK: usize = 32;
/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

/// 32 activations quantized to 8-bit integers in one or two planes:
/// `x ≈ d · (256·hi + lo)`. With one plane `lo` is zero and `hi` alone carries
/// `x` to 1/254 of the block's largest magnitude (llama.cpp's scheme); the second
/// plane quantizes what the first left over, to about 1/65,000 of it, which keeps
/// dot products within f32-rounding distance of exact even for blocks holding
/// SmolLM2's outliers. `sum` is the sum of the values the block stands for, which
/// the formats with an offset (Q4_0's −8, Q4_1's min, Q4_K's min) multiply: with
/// it, a dot product is exactly that of the weights with the quantized values.
/// (The exact sum of `x` would not be: it leaves the offset's share of the error
/// uncancelled, which measurably hurts one-plane accuracy on Q4_1.)
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(8))]
pub struct BlockQ8 {
    pub d: f32,
    pub sum: f32,
    /// `Σ (256·hi + lo)` over each half (values 0..16 and 16..32): the integer
    /// sums that Q6_K's per-half offsets multiply.
    pub qsum: [i32; 2],
    pub hi: [i8; QK],
    pub lo: [i8; QK],
}

impl BlockQ8 {
    pub const ZERO: BlockQ8 = BlockQ8 {
        d: 0.0,
        sum: 0.0,
        qsum: [0; 2],
        hi: [0; QK],
        lo: [0; QK],
    };

    /// The value this block stands for at position `i`.
    pub fn value(&self, i: usize) -> f32 {
        self.d * (256 * self.hi[i] as i32 + self.lo[i] as i32) as f32
    }
}

/// Quantizes `x` (length a multiple of 32) into `out`, one block per 32 values:
/// round-to-nearest with the scale set by the block's largest magnitude, and, with
/// `two_planes`, the remainder quantized again at 1/256 of that scale.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (chunk, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d1 = amax / 127.0;
        let id1 = if d1 > 0.0 { 1.0 / d1 } else { 0.0 };
        let mut qsum = [0i32; 2];
        for (i, ((h, l), &v)) in b.hi.iter_mut().zip(b.lo.iter_mut()).zip(chunk).enumerate() {
            let q = (v * id1).round_ties_even().clamp(-127.0, 127.0);
            *h = q as i8;
            *l = if two_planes {
                ((v - q * d1) * (256.0 * id1))
                    .round_ties_even()
                    .clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            qsum[i / 16] += 256 * *h as i32 + *l as i32;
        }
        b.d = d1 / 256.0;
        b.qsum = qsum;
        b.sum = b.d * (qsum[0] + qsum[1]) as f32;
    }
}

#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K's packed 6-bit (scale, min) for sub-block `j` (0..8).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Quantizes f32 weights (length a multiple of 32) to Q8_0 blocks, ggml's byte
/// layout: per 32 weights the scale `d = max|x| / 127` as f16, then each weight
/// rounded to the nearest multiple of `d` as an i8 (ggml's reference rounding).
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len().is_multiple_of(QK),
        "Q8_0 rows are whole 32-weight blocks"
    );
    let mut out = Vec::with_capacity(x.len() / QK * 34);
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// Dequantizes one row (`out.len()` weights) of type `ty` from its raw bytes.
/// This is the definition every kernel is checked against.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    let be = ty.block_elems();
    debug_assert_eq!(bytes.len(), out.len() / be * bb);
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_at(bytes, 2 * i);
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        _ => {
            for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
                dequantize_block(ty, b, y);
            }
        }
    }
}

fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 => {
            let d = f16_at(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                y[j] = (((b[6 + j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                y[j + 16] = (((b[6 + j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                y[j] = b[2 + j] as i8 as f32 * d;
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for chunk in 0..4 {
                let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                let q = &qs[32 * chunk..32 * chunk + 32];
                for l in 0..32 {
                    y[64 * chunk + l] = d * sc1 as f32 * (q[l] & 0xF) as f32 - dmin * m1 as f32;
                    y[64 * chunk + 32 + l] = d * sc2 as f32 * (q[l] >> 4) as f32 - dmin * m2 as f32;
                }
            }
        }
        GgmlType::Q6K => {
            let d = f16_at(b, 208);
            for (i, v) in y.iter_mut().enumerate() {
                let sc = b[192 + i / 16] as i8 as f32;
                *v = d * sc * q6k_value(b, i) as f32;
            }
        }
        other => unreachable!("dequantize_block called for {other}: this is a bug"),
    }
}

/// The signed 6-bit value of weight `i` (0..256) of a Q6_K block.
#[inline]
pub(crate) fn q6k_value(b: &[u8], i: usize) -> i32 {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    let (half, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let ql_byte = ql[64 * half + l + 32 * (quarter & 1)];
    let lo = if quarter < 2 {
        ql_byte & 0xF
    } else {
        ql_byte >> 4
    };
    let hi = (qh[32 * half + l] >> (2 * quarter)) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// The zero code of Q6_K, whose halves are `d_h·(c − HALVES_ZERO)`.
pub const HALVES_ZERO: i32 = 32;

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

pub mod scalar {
    //! Reference implementations: plain loops, no `unsafe`, no SIMD.
    use super::*;

    /// One weight row of a packed type against 8-bit activation blocks: per block,
    /// the integer sum `Σ c·(256·hi + lo)` scaled by the weight's and the
    /// activations' scales, plus the offset times the activations' sum; for
    /// Q6_K's halves, each half's sum less `32·Σ q` scaled by its own scale. This
    /// is what the packed SIMD kernels compute, read from the original bytes.
    pub fn dot_q8(ty: GgmlType, w: &[u8], a: &[BlockQ8]) -> f32 {
        a.iter()
            .enumerate()
            .map(|(b, a)| {
                let bc = block_codes(ty, w, b);
                let half_sum = |h: usize| {
                    let (mut hi, mut lo) = (0i32, 0i32);
                    for l in 16 * h..16 * h + 16 {
                        hi += bc.codes[l] as i32 * a.hi[l] as i32;
                        lo += bc.codes[l] as i32 * a.lo[l] as i32;
                    }
                    (hi << 8) + lo
                };
                if bc.halves {
                    (0..2)
                        .map(|h| {
                            let isum = half_sum(h) - HALVES_ZERO * a.qsum[h];
                            bc.d[h] * (isum as f32 * a.d)
                        })
                        .sum()
                } else {
                    let isum = half_sum(0) + half_sum(1);
                    bc.d[0] * (isum as f32 * a.d) + bc.m * a.sum
                }
            })
            .sum()
    }

    pub fn dot_f32(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        match ty {
            GgmlType::F32 => w
                .chunks_exact(4)
                .zip(x)
                .map(|(c, &x)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x)
                .sum(),
            GgmlType::F16 => x
                .iter()
                .enumerate()
                .map(|(i, &x)| f16_at(w, 2 * i) * x)
                .sum(),
            GgmlType::BF16 => w
                .chunks_exact(2)
                .zip(x)
                .map(|(c, &x)| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * x)
                .sum(),
            other => panic!("dot_f32 called for {other}: this is a bug"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_roundtrip_is_close() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.37).collect();
        for two_planes in [false, true] {
            let mut b = vec![BlockQ8::ZERO; 2];
            quantize_row_q8(&x, &mut b, two_planes);
            // Within a step of amax/127 with one plane; of 1/256 of that with two.
            let step = |blk: &BlockQ8| if two_planes { blk.d } else { 256.0 * blk.d };
            for (i, &v) in x.iter().enumerate() {
                let blk = &b[i / 32];
                let back = blk.value(i % 32);
                assert!((back - v).abs() <= step(blk) + 1e-6, "{i}: {back} vs {v}");
            }
            let sum: f32 = (0..32).map(|i| b[0].value(i)).sum();
            assert!((b[0].sum - sum).abs() <= 1e-5 * (1.0 + sum.abs()));
        }
    }

    #[test]
    fn q8_0_weights_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let bytes = quantize_q8_0(&x);
        assert_eq!(bytes.len(), 3 * 34);
        let mut back = vec![0f32; x.len()];
        dequantize_row(GgmlType::Q8_0, &bytes, &mut back);
        for (b, blk) in x.chunks(QK).enumerate() {
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Half a step of the f32 scale, plus the f16 rounding of the scale.
            let tol = 0.5 * amax / 127.0 + amax * 1e-3;
            for (i, &v) in blk.iter().enumerate() {
                let got = back[b * QK + i];
                assert!((got - v).abs() <= tol, "{b}/{i}: {got} vs {v}");
            }
        }
        assert!(quantize_q8_0(&[0.0; 32]).iter().all(|&b| b == 0));
    }

    #[test]
    fn q8_zero_block_has_zero_scale() {
        let mut b = vec![BlockQ8::ZERO; 1];
        quantize_row_q8(&[0.0; 32], &mut b, true);
        assert_eq!(b[0], BlockQ8::ZERO);
    }

    #[test]
    fn q4_0_known_block() {
        // d = 0.5 (f16 0x3800); nibbles lo=j%16, hi=15-j%16.
        let mut b = vec![0x00, 0x38];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize_row(GgmlType::Q4_0, &b, &mut y);
        assert_eq!(y[0], -4.0);
        assert_eq!(y[15], 3.5);
        assert_eq!(y[16], 3.5);
        assert_eq!(y[31], -4.0);
    }
}
