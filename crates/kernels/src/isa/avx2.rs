//! AVX2 + FMA paths: dequantization, f32 dot products, and the packed integer
//! kernel for CPUs without AVX-512 VNNI. There each block's integer sums come from
//! `maddubs` (u8 × i8 → i16 pairs, on 4-bit codes so no pair can saturate) and
//! `madd` (→ i32); 8-bit codes are split into two 4-bit halves.
//!
//! Attention's weighted rows and the 4×4 tile run on this path's `axpy` and dot
//! product (the trait's defaults); the other formats' dequantizers and bf16 keep
//! their scalar form.

use std::arch::x86_64::*;

use inferd_gguf::GgmlType;

use crate::isa::{Kernels, TileCfg, MAX_TILE};
use crate::quant::BlockQ8;

/// The AVX2 + FMA + F16C path.
pub(super) struct Avx2(());

impl Avx2 {
    /// # Safety
    /// This CPU has AVX2, FMA and F16C.
    pub(super) unsafe fn new() -> Avx2 {
        Avx2(())
    }
}

// SAFETY, for every `unsafe` block below: a value of `Avx2` exists, so this CPU
// has AVX2, FMA and F16C (`Avx2::new`, called only by `isa::table`).
impl Kernels for Avx2 {
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot_f32(a, b) }
    }

    fn axpy(&self, a: f32, x: &[f32], y: &mut [f32]) {
        unsafe { axpy(a, x, y) }
    }

    fn dequantize_row(&self, ty: GgmlType, w: &[u8], out: &mut [f32]) {
        match ty {
            GgmlType::Q4_0 => unsafe { dequantize_q4_0(w, out) },
            GgmlType::Q4_1 => unsafe { dequantize_q4_1(w, out) },
            GgmlType::Q8_0 => unsafe { dequantize_q8_0(w, out) },
            _ => crate::quant::dequantize_row(ty, w, out),
        }
    }

    fn quantize_row_q8(&self, x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
        unsafe { quantize_row_q8(x, out, two_planes) }
    }

    unsafe fn packed_tile(
        &self,
        cfg: TileCfg,
        codes: *const u8,
        scales: *const u8,
        blocks: usize,
        acts: &[*const BlockQ8],
        out: &mut [[f32; 16]; MAX_TILE],
    ) {
        packed_tile(cfg, codes, scales, blocks, acts, out)
    }
}

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

/// f16 → f32 with the F16C instruction (part of every AVX2 CPU we dispatch to).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
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
unsafe fn dequantize_q4_0(w: &[u8], out: &mut [f32]) {
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
unsafe fn dequantize_q4_1(w: &[u8], out: &mut [f32]) {
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
unsafe fn dequantize_q8_0(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        store_scaled(q, true, f16(b, 0), 0.0, y.as_mut_ptr());
    }
}

/// Σ a·b in f32 with four independent FMA chains.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
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

/// The packed kernel for one group of 16 weight rows against `acts.len()` (at most
/// [`MAX_TILE`]) activation rows: `out[t][r]` for lane `r` of the group. Each half
/// of the group (8 rows) runs as its own 256-bit pass.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_tile(
    cfg: TileCfg,
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: &[*const BlockQ8],
    out: &mut [[f32; 16]; MAX_TILE],
) {
    for half in 0..2 {
        crate::isa::dispatch_tile!(
            packed_half,
            cfg,
            acts.len(),
            (codes, scales, blocks, acts, half, out)
        );
    }
}

/// Σ over (at most 8) four-byte groups of `w[j] · act[4j..4j+4]` per 32-bit lane,
/// for 4-bit codes: `maddubs` summed in i16 (at most 8 · 2 · 15 · 127 = 30480).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_u4(w: &[__m256i], act: *const i8) -> __m256i {
    let a = act as *const i32;
    let mut s = _mm256_setzero_si256();
    for (j, w) in w.iter().enumerate() {
        let x = _mm256_set1_epi32(a.add(j).read_unaligned());
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*w, x));
    }
    _mm256_madd_epi16(s, _mm256_set1_epi16(1))
}

/// One activation plane against a block's codes: `lo` holds 4-bit codes, or the
/// low nibbles of 8-bit codes whose high nibbles are in `hi`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_plane<const U4: bool>(lo: &[__m256i], hi: &[__m256i], act: *const i8) -> __m256i {
    let s = sum_u4(lo, act);
    if U4 {
        s
    } else {
        _mm256_add_epi32(_mm256_slli_epi32(sum_u4(hi, act), 4), s)
    }
}

/// [`sum_plane`] of 8-bit codes over each half of the block (groups 0..4, 4..8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_halves(lo: &[__m256i; 8], hi: &[__m256i; 8], act: *const i8) -> [__m256i; 2] {
    [
        sum_plane::<false>(&lo[..4], &hi[..4], act),
        sum_plane::<false>(&lo[4..], &hi[4..], act.add(16)),
    ]
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_half<
    const U4: bool,
    const F16: bool,
    const TWO: bool,
    const HALVES: bool,
    const NT: usize,
>(
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: &[*const BlockQ8],
    half: usize,
    out: &mut [[f32; 16]; MAX_TILE],
) {
    const { assert!(NT <= MAX_TILE) };
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); MAX_TILE];
    let (cb, sb) = (if U4 { 256 } else { 512 }, if F16 { 64 } else { 128 });
    for b in 0..blocks {
        let p = codes.add(b * cb + 32 * half);
        let mut lo = [_mm256_setzero_si256(); 8];
        let mut hi = [_mm256_setzero_si256(); 8];
        if U4 {
            for j in 0..4 {
                let v = _mm256_loadu_si256(p.add(64 * j) as *const __m256i);
                lo[j] = _mm256_and_si256(v, mask);
                lo[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            }
        } else {
            for j in 0..8 {
                let v = _mm256_loadu_si256(p.add(64 * j) as *const __m256i);
                lo[j] = _mm256_and_si256(v, mask);
                hi[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            }
        }
        let s = scales.add(b * sb);
        let (wd, wm) = if F16 {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(s.add(16 * half) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(s.add(32 + 16 * half) as *const __m128i)),
            )
        } else {
            (
                _mm256_loadu_ps(s.add(32 * half) as *const f32),
                _mm256_loadu_ps(s.add(64 + 32 * half) as *const f32),
            )
        };
        // Unrolled with constant indices so the accumulators stay in registers.
        macro_rules! row {
            ($t:literal) => {
                if $t < NT && HALVES {
                    // Q6_K: each half its own scale (`wd`, then `wm`), and
                    // 32·Σq subtracted in integers.
                    let a = &*acts[$t].add(b);
                    let [h0, h1] = sum_halves(&lo, &hi, a.hi.as_ptr());
                    let (mut i0, mut i1) = (_mm256_slli_epi32(h0, 8), _mm256_slli_epi32(h1, 8));
                    if TWO {
                        let [l0, l1] = sum_halves(&lo, &hi, a.lo.as_ptr());
                        i0 = _mm256_add_epi32(i0, l0);
                        i1 = _mm256_add_epi32(i1, l1);
                    }
                    let zero = crate::quant::HALVES_ZERO;
                    i0 = _mm256_sub_epi32(i0, _mm256_set1_epi32(zero * a.qsum[0]));
                    i1 = _mm256_sub_epi32(i1, _mm256_set1_epi32(zero * a.qsum[1]));
                    let ad = _mm256_set1_ps(a.d);
                    let f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(i0), ad);
                    acc[$t] = _mm256_fmadd_ps(f0, wd, acc[$t]);
                    let f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(i1), ad);
                    acc[$t] = _mm256_fmadd_ps(f1, wm, acc[$t]);
                } else if $t < NT {
                    let a = &*acts[$t].add(b);
                    let mut isum = _mm256_slli_epi32(sum_plane::<U4>(&lo, &hi, a.hi.as_ptr()), 8);
                    if TWO {
                        isum = _mm256_add_epi32(isum, sum_plane::<U4>(&lo, &hi, a.lo.as_ptr()));
                    }
                    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(a.d));
                    acc[$t] = _mm256_fmadd_ps(f, wd, acc[$t]);
                    acc[$t] = _mm256_fmadd_ps(wm, _mm256_set1_ps(a.sum), acc[$t]);
                }
            };
        }
        row!(0);
        row!(1);
        row!(2);
        row!(3);
        row!(4);
        row!(5);
        row!(6);
        row!(7);
    }
    for (o, acc) in out.iter_mut().zip(acc).take(NT) {
        _mm256_storeu_ps(o.as_mut_ptr().add(8 * half), acc);
    }
}

/// `y += a·x` (8 lanes at a time, fused multiply-add; the tail in scalar).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        let p = y.as_mut_ptr().add(i);
        _mm256_storeu_ps(
            p,
            _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
        );
        i += 8;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

/// [`crate::quant::quantize_row_q8`] in 8-lane steps, with the same float
/// operations in the same order, so the blocks are bit-identical.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let (lo_lim, hi_lim) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    // packs interleave the 128-bit lanes; this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let to_bytes = |v: [__m256i; 4]| {
        let w01 = _mm256_packs_epi32(v[0], v[1]);
        let w23 = _mm256_packs_epi32(v[2], v[3]);
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order)
    };
    for (chunk, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(chunk.as_ptr().add(8 * k)));
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
            _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d1 = amax / 127.0;
        let id1 = if d1 > 0.0 { 1.0 / d1 } else { 0.0 };
        let (dv, idv, id256) = (
            _mm256_set1_ps(d1),
            _mm256_set1_ps(id1),
            _mm256_set1_ps(256.0 * id1),
        );
        let mut qs = [_mm256_setzero_si256(); 4];
        let mut ls = [_mm256_setzero_si256(); 4];
        // Lanes of values 0..16 and 16..32.
        let mut isum = [_mm256_setzero_si256(); 2];
        for k in 0..4 {
            let q = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[k], idv));
            let q = _mm256_min_ps(_mm256_max_ps(q, lo_lim), hi_lim);
            qs[k] = _mm256_cvtps_epi32(q);
            if two_planes {
                let r = _mm256_sub_ps(v[k], _mm256_mul_ps(q, dv));
                let l = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(r, id256));
                ls[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(l, lo_lim), hi_lim));
            }
            let q = _mm256_add_epi32(_mm256_slli_epi32(qs[k], 8), ls[k]);
            isum[k / 2] = _mm256_add_epi32(isum[k / 2], q);
        }
        _mm256_storeu_si256(b.hi.as_mut_ptr() as *mut __m256i, to_bytes(qs));
        _mm256_storeu_si256(b.lo.as_mut_ptr() as *mut __m256i, to_bytes(ls));
        b.d = d1 / 256.0;
        b.qsum = [hsum_i32(isum[0]), hsum_i32(isum[1])];
        b.sum = b.d * (b.qsum[0] + b.qsum[1]) as f32;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}
