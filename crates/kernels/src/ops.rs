//! Elementwise and per-row operations of a transformer layer. Scalar loops written
//! so the compiler vectorises them; they are a small share of a step next to the
//! matmuls.

/// RMSNorm: `y = x / sqrt(mean(x²) + eps) · w` (Llama), applied to each row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let dim = w.len();
    for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((y, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
            *y = v * scale * g;
        }
    }
}

/// How rotary embedding pairs dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's "normal" mode, used by GGUF llama
    /// files whose Q/K weights were permuted at conversion.
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX style, used by Qwen2 and Gemma.
    Neox,
}

/// Precomputed inverse frequencies `base^(-2i/rot_dim)` for `i < rot_dim/2`.
pub fn rope_inv_freq(base: f32, rot_dim: usize) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / rot_dim as f32))
        .collect()
}

/// Rotates each head of `x` (`[n_heads, head_dim]`) in place for position `pos`.
/// Only the first `2 · inv_freq.len()` dimensions of each head rotate.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], style: RopeStyle) {
    let half = inv_freq.len();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let theta = pos as f32 * f;
            let (sin, cos) = theta.sin_cos();
            let (a, b) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0 * cos - x1 * sin;
            head[b] = x0 * sin + x1 * cos;
        }
    }
}

/// SwiGLU: `gate[i] = silu(gate[i]) · up[i]`, in place.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_zero_is_identity_and_preserves_norm() {
        let inv = rope_inv_freq(10000.0, 8);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
        for style in [RopeStyle::Interleaved, RopeStyle::Neox] {
            let mut x = orig.clone();
            rope(&mut x, 8, 0, &inv, style);
            assert_eq!(x, orig);
            rope(&mut x, 8, 17, &inv, style);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0, 2.0, 3.0, -1e9];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }

    #[test]
    fn rms_norm_unit_weights() {
        let x = [3.0, 4.0];
        let mut y = [0.0; 2];
        rms_norm(&x, &[1.0, 1.0], 0.0, &mut y);
        let rms = (12.5f32).sqrt();
        assert!((y[0] - 3.0 / rms).abs() < 1e-6 && (y[1] - 4.0 / rms).abs() < 1e-6);
    }
}
