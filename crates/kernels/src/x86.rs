//! AVX2 + FMA dot products for the 32-weight block formats. Each block's integer
//! sum is formed with `maddubs` (u8 × i8 → i16 pairs) and `madd` (→ i32), then
//! scaled in f32 and accumulated with FMA; one horizontal sum per row.
//!
//! Callers must have detected AVX2, FMA and F16C (see `Isa::detect`).

use std::arch::x86_64::*;

use crate::quant::BlockQ8;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 16 bytes of packed nibbles → 32 bytes: low nibbles (weights 0..16) in the low
/// lane, high nibbles (16..32) in the high lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Σ u·s over 32 pairs, as eight i32 lanes converted to f32 (`u` unsigned, `s` signed).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_us8(u: __m256i, s: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// f16 → f32 with the F16C instruction (part of every AVX2 CPU we dispatch to).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    for (b, a) in w.chunks_exact(18).zip(a) {
        let d = f16(b, 0);
        let q = unpack_nibbles(b.as_ptr().add(2));
        let x = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        // Σ (q − 8)·x = Σ q·x − 8·Σ x; the second term comes from the cached sum.
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), mul_sum_us8(q, x), acc);
        offset += 8.0 * d * a.sum;
    }
    hsum(acc) - offset
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offset = 0f32;
    for (b, a) in w.chunks_exact(20).zip(a) {
        let q = unpack_nibbles(b.as_ptr().add(4));
        let x = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * a.d), mul_sum_us8(q, x), acc);
        offset += f16(b, 2) * a.sum;
    }
    hsum(acc) + offset
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, a) in w.chunks_exact(34).zip(a) {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let x = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        // maddubs needs one unsigned operand: move q's sign onto x.
        let qa = _mm256_sign_epi8(q, q);
        let xs = _mm256_sign_epi8(x, q);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(b, 0) * a.d), mul_sum_us8(qa, xs), acc);
    }
    hsum(acc)
}

/// Converts 32 bytes (as u8 when `signed` is false, i8 otherwise) to f32, computes
/// `v·d + m` and stores 32 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_scaled(q: __m256i, signed: bool, d: f32, m: f32, out: *mut f32) {
    let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
    let lanes = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
    for (h, lane) in lanes.into_iter().enumerate() {
        for k in 0..2 {
            let bytes = if k == 0 {
                lane
            } else {
                _mm_unpackhi_epi64(lane, lane)
            };
            let wide = if signed {
                _mm256_cvtepi8_epi32(bytes)
            } else {
                _mm256_cvtepu8_epi32(bytes)
            };
            let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wide), d, m);
            _mm256_storeu_ps(out.add(16 * h + 8 * k), v);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q4_0(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16(b, 0);
        store_scaled(
            unpack_nibbles(b.as_ptr().add(2)),
            false,
            d,
            -8.0 * d,
            y.as_mut_ptr(),
        );
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q4_1(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        store_scaled(
            unpack_nibbles(b.as_ptr().add(4)),
            false,
            f16(b, 0),
            f16(b, 2),
            y.as_mut_ptr(),
        );
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q8_0(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        store_scaled(q, true, f16(b, 0), 0.0, y.as_mut_ptr());
    }
}

/// Σ a·b in f32 with four independent FMA chains.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + 8 * k;
            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *acc);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(sum);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}
