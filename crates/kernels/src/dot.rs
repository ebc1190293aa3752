//! Row · activation dot products. [`scalar`] holds the reference twins: integer
//! sums per block exactly as the block formats define them, scaled once per block.
//! The SIMD paths in `x86` must agree with these (up to float summation order).

use inferd_gguf::GgmlType;

use crate::quant::BlockQ8;
use crate::Isa;

/// Whether weights of this type multiply 8-bit quantized activations in integer
/// arithmetic (the packed formats) when the precision asks for it; everything
/// else multiplies f32 activations.
pub fn uses_q8_activations(ty: GgmlType) -> bool {
    crate::packed::is_packable(ty)
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
        // SAFETY: `Isa::Avx512` and `Isa::Amx` are only produced when AVX-512F, FMA and F16C were detected.
        Isa::Avx512 | Isa::Amx => unsafe { crate::x86_512::dot_f32(a, b) },
        _ => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// `y += a·x` over two f32 slices of equal length.
#[inline]
pub fn axpy(isa: Isa, a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy over slices of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these paths are only produced when AVX2, FMA and F16C were
        // detected (the AVX-512 ones include them). AVX-512 attention uses
        // `weighted_rows`' own kernel, so one 8-lane axpy serves all three.
        Isa::Avx2 | Isa::Avx512 | Isa::Amx => unsafe { crate::x86::axpy(a, x, y) },
        _ => y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x),
    }
}

/// `o[h] += Σ_i w[h][i] · V_i` for each of the `w.len()` (at most 4) weight
/// rows: row `i < n` of V is `v[i·stride .. i·stride + hd]` and `o[h]` is
/// `o[h·hd .. (h+1)·hd]`. Attention's weighted sum of values, with the query
/// heads that share a KV head sharing each load of V.
pub fn weighted_rows(
    isa: Isa,
    w: &[&[f32]],
    v: &[f32],
    stride: usize,
    n: usize,
    hd: usize,
    o: &mut [f32],
) {
    if n == 0 {
        return;
    }
    assert!(
        (1..=4).contains(&w.len())
            && w.iter().all(|w| w.len() >= n)
            && (n - 1) * stride + hd <= v.len()
            && o.len() >= w.len() * hd,
        "weighted_rows: {} weight rows of {n} over {}-wide rows of stride {stride} in {} values",
        w.len(),
        hd,
        v.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` and `Isa::Amx` are only produced when their features were detected;
        // the bounds were checked above.
        Isa::Avx512 | Isa::Amx => unsafe { crate::x86_512::weighted_rows(w, v, stride, n, hd, o) },
        _ => {
            for i in 0..n {
                let row = &v[i * stride..i * stride + hd];
                for (h, w) in w.iter().enumerate() {
                    axpy(isa, w[i], row, &mut o[h * hd..(h + 1) * hd]);
                }
            }
        }
    }
}

/// A 4×4 tile of f32 dot products, `out[i][j] = x[i] · w[j]`: the register-tiled
/// inner kernel of batched matmul. Paths without a tiled kernel fall back to 16
/// separate dots.
#[inline]
pub fn dot_tile_4x4(isa: Isa, w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` and `Isa::Amx` are only produced when AVX-512F, FMA and F16C were detected.
        Isa::Avx512 | Isa::Amx => unsafe { crate::x86_512::dot_tile_4x4(w, x) },
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
        // SAFETY (all three): `Isa::Avx512` and `Isa::Amx` imply AVX-512F, FMA and F16C were detected.
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512 | Isa::Amx, GgmlType::Q4_0) => unsafe {
            crate::x86_512::dequantize_q4_0(w, out)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512 | Isa::Amx, GgmlType::Q4_1) => unsafe {
            crate::x86_512::dequantize_q4_1(w, out)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512 | Isa::Amx, GgmlType::Q8_0) => unsafe {
            crate::x86_512::dequantize_q8_0(w, out)
        },
        _ => crate::quant::dequantize_row(ty, w, out),
    }
}

pub mod scalar {
    //! Reference implementations: plain loops, no `unsafe`, no SIMD.
    use super::*;
    use crate::packed::{block_codes, HALVES_ZERO};
    use crate::quant::f16_at;

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
