//! Row · activation dot products and the other vector kernels of a layer, on an
//! explicit instruction-set path. Each function checks its arguments and runs the
//! path's kernel (`isa::Kernels`); [`scalar`] holds the reference twins of the
//! quantized dot products, which the packed kernels must agree with.

use inferd_gguf::GgmlType;

use crate::isa::kernels;
use crate::quant::{BlockQ8, QK};
use crate::Isa;

pub use crate::quant::scalar;

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
    kernels(isa).dot_f32(a, b)
}

/// `y += a·x` over two f32 slices of equal length.
#[inline]
pub fn axpy(isa: Isa, a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy over slices of different lengths");
    kernels(isa).axpy(a, x, y)
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
    // SAFETY: the bounds the kernels rely on were checked above.
    unsafe { kernels(isa).weighted_rows(w, v, stride, n, hd, o) }
}

/// A 4×4 tile of f32 dot products, `out[i][j] = x[i] · w[j]`: the register-tiled
/// inner kernel of batched matmul. All eight slices have the same length.
#[inline]
pub fn dot_tile_4x4(isa: Isa, w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
    let len = w[0].len();
    assert!(
        w.iter().chain(&x).all(|s| s.len() == len),
        "dot_tile_4x4 over slices of different lengths"
    );
    // SAFETY: the lengths were checked above.
    unsafe { kernels(isa).dot_tile_4x4(w, x) }
}

/// Dequantizes one weight row on `isa`; same result as
/// [`crate::quant::dequantize_row`] up to f32 rounding of `q·d + m`.
#[inline]
pub fn dequantize_row(isa: Isa, ty: GgmlType, w: &[u8], out: &mut [f32]) {
    kernels(isa).dequantize_row(ty, w, out)
}

/// [`crate::quant::quantize_row_q8`] on `isa` (bit-identical results).
pub fn quantize_row_q8(isa: Isa, x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
    assert_eq!(
        x.len(),
        out.len() * QK,
        "{} values for {} blocks",
        x.len(),
        out.len()
    );
    kernels(isa).quantize_row_q8(x, out, two_planes)
}
