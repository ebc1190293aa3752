//! Row · activation dot products. [`scalar`] holds the reference twins: integer
//! sums per block exactly as the block formats define them, scaled once per block.
//! The SIMD paths in `x86` must agree with these (up to float summation order).

use inferd_gguf::GgmlType;

use crate::quant::BlockQ8;
use crate::Isa;

/// Whether weights of this type multiply 8-bit quantized activations (true) or
/// f32 activations (plain float weights).
pub fn uses_q8_activations(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// Types the matmul kernels accept.
pub fn is_supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q6K
    )
}

/// Dot product of one quantized weight row with quantized activations, on `isa`.
#[inline]
pub fn dot_q8(isa: Isa, ty: GgmlType, w: &[u8], a: &[BlockQ8]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            // SAFETY: `Isa::Avx2`/`Avx512` are only produced when AVX2, FMA and F16C
            // were detected.
            unsafe {
                match ty {
                    GgmlType::Q4_0 => crate::x86::dot_q4_0(w, a),
                    GgmlType::Q4_1 => crate::x86::dot_q4_1(w, a),
                    GgmlType::Q8_0 => crate::x86::dot_q8_0(w, a),
                    _ => scalar::dot_q8(ty, w, a),
                }
            }
        }
        _ => scalar::dot_q8(ty, w, a),
    }
}

/// Dot product of one float weight row (F32/F16/BF16) with f32 activations.
#[inline]
pub fn dot_f32(_isa: Isa, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    scalar::dot_f32(ty, w, x)
}

/// Σ a·b over two f32 slices of equal length.
#[inline]
pub fn dot_f32_f32(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only produced when AVX2, FMA and F16C were detected.
        Isa::Avx2 => unsafe { crate::x86::dot_f32(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when AVX-512F, FMA and F16C were detected.
        Isa::Avx512 => unsafe { crate::x86_512::dot_f32(a, b) },
        _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// A 4×4 tile of f32 dot products, `out[i][j] = x[i] · w[j]`: the register-tiled
/// inner kernel of batched matmul. Paths without a tiled kernel fall back to 16
/// separate dots.
#[inline]
pub fn dot_tile_4x4(isa: Isa, w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced when AVX-512F, FMA and F16C were detected.
        Isa::Avx512 => unsafe { crate::x86_512::dot_tile_4x4(w, x) },
        _ => std::array::from_fn(|i| std::array::from_fn(|j| dot_f32_f32(isa, w[j], x[i]))),
    }
}

/// Dequantizes one weight row on `isa`; same result as
/// [`crate::quant::dequantize_row`] up to f32 rounding of `q·d + m`.
#[inline]
pub fn dequantize_row(isa: Isa, ty: GgmlType, w: &[u8], out: &mut [f32]) {
    match (isa, ty) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY (all three): `Isa::Avx2` implies AVX2, FMA and F16C were detected.
        (Isa::Avx2, GgmlType::Q4_0) => unsafe { crate::x86::dequantize_q4_0(w, out) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q4_1) => unsafe { crate::x86::dequantize_q4_1(w, out) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q8_0) => unsafe { crate::x86::dequantize_q8_0(w, out) },
        // SAFETY (all three): `Isa::Avx512` implies AVX-512F, FMA and F16C were detected.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, GgmlType::Q4_0) => unsafe { crate::x86_512::dequantize_q4_0(w, out) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, GgmlType::Q4_1) => unsafe { crate::x86_512::dequantize_q4_1(w, out) },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, GgmlType::Q8_0) => unsafe { crate::x86_512::dequantize_q8_0(w, out) },
        _ => crate::quant::dequantize_row(ty, w, out),
    }
}

pub mod scalar {
    //! Reference implementations: plain loops, no `unsafe`, no SIMD.
    use super::*;
    use crate::quant::{f16_at, q6k_value, scale_min_k4, QK};

    pub fn dot_q8(ty: GgmlType, w: &[u8], a: &[BlockQ8]) -> f32 {
        match ty {
            GgmlType::Q4_0 => w
                .chunks_exact(18)
                .zip(a)
                .map(|(b, a)| {
                    let mut isum = 0i32;
                    for j in 0..16 {
                        isum += ((b[2 + j] & 0xF) as i32 - 8) * a.qs[j] as i32;
                        isum += ((b[2 + j] >> 4) as i32 - 8) * a.qs[j + 16] as i32;
                    }
                    f16_at(b, 0) * a.d * isum as f32
                })
                .sum(),
            GgmlType::Q4_1 => w
                .chunks_exact(20)
                .zip(a)
                .map(|(b, a)| {
                    let mut isum = 0i32;
                    for j in 0..16 {
                        isum += (b[4 + j] & 0xF) as i32 * a.qs[j] as i32;
                        isum += (b[4 + j] >> 4) as i32 * a.qs[j + 16] as i32;
                    }
                    f16_at(b, 0) * a.d * isum as f32 + f16_at(b, 2) * a.sum
                })
                .sum(),
            GgmlType::Q5_0 => w
                .chunks_exact(22)
                .zip(a)
                .map(|(b, a)| {
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let mut isum = 0i32;
                    for j in 0..16 {
                        let lo = ((b[6 + j] & 0xF) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - 16;
                        let hi = ((b[6 + j] >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - 16;
                        isum += lo * a.qs[j] as i32 + hi * a.qs[j + 16] as i32;
                    }
                    f16_at(b, 0) * a.d * isum as f32
                })
                .sum(),
            GgmlType::Q8_0 => w
                .chunks_exact(34)
                .zip(a)
                .map(|(b, a)| {
                    let isum: i32 = (0..QK)
                        .map(|j| b[2 + j] as i8 as i32 * a.qs[j] as i32)
                        .sum();
                    f16_at(b, 0) * a.d * isum as f32
                })
                .sum(),
            GgmlType::Q4K => w
                .chunks_exact(144)
                .zip(a.chunks_exact(8))
                .map(|(b, a)| {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let (scales, qs) = (&b[4..16], &b[16..144]);
                    let mut acc = 0f32;
                    for (j, a) in a.iter().enumerate() {
                        let (sc, m) = scale_min_k4(j, scales);
                        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                        let shift = 4 * (j % 2);
                        let isum: i32 = (0..QK)
                            .map(|l| ((q[l] >> shift) & 0xF) as i32 * a.qs[l] as i32)
                            .sum();
                        acc += d * sc as f32 * a.d * isum as f32 - dmin * m as f32 * a.sum;
                    }
                    acc
                })
                .sum(),
            GgmlType::Q6K => w
                .chunks_exact(210)
                .zip(a.chunks_exact(8))
                .map(|(b, a)| {
                    let d = f16_at(b, 208);
                    let mut acc = 0f32;
                    for (j, a) in a.iter().enumerate() {
                        // Two 16-weight sub-blocks, each with its own scale.
                        for h in 0..2 {
                            let sc = b[192 + 2 * j + h] as i8 as i32;
                            let isum: i32 = (0..16)
                                .map(|l| {
                                    q6k_value(b, 32 * j + 16 * h + l) * a.qs[16 * h + l] as i32
                                })
                                .sum();
                            acc += d * a.d * (sc * isum) as f32;
                        }
                    }
                    acc
                })
                .sum(),
            other => panic!("dot_q8 called for {other}: this is a bug"),
        }
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
