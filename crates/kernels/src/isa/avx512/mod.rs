//! AVX-512F paths: 16-lane f32 dequantization and dot products. A 32-weight
//! block of 4-bit weights is two 16-byte halves widened straight to 16 f32 lanes,
//! so dequantizing costs about a quarter of an instruction per weight.
//!
//! The packed integer kernel (`packed_tile`) multiplies 16 weight rows at once with
//! `vpdpbusd` (AVX-512 VNNI): one instruction does 64 multiply-adds of 4-bit or
//! 8-bit codes by 8-bit activations.
//!
//! Two optional parts ride on this path: the bf16 kernels (`bf16`, on CPUs with
//! AVX512-BF16) and AMX int8 tiles for whole 16-row tiles of activations (`amx`,
//! the `Isa::Amx` path, asked for by name).

use std::arch::x86_64::*;

use inferd_gguf::GgmlType;

use crate::isa::{group_tiles, Group, Kernels, Out, QuantRows, TileCfg, MAX_TILE};
use crate::packed::{PackedMatrix, GROUP};
use crate::quant::BlockQ8;

pub(super) mod amx;
mod bf16;

/// The AVX-512 path, with its optional parts.
pub(super) struct Avx512 {
    /// The CPU has AVX512-BF16: the bf16 kernels run in hardware.
    bf16: bool,
    /// AMX tiles take the whole 16-row tiles of the packed kernel.
    amx: bool,
}

impl Avx512 {
    /// # Safety
    /// This CPU has AVX-512F/BW/VNNI, AVX2, FMA and F16C; with `bf16`, also
    /// AVX512-BF16; with `amx`, [`amx::available`] returned true.
    pub(super) unsafe fn new(bf16: bool, amx: bool) -> Avx512 {
        Avx512 { bf16, amx }
    }
}

// SAFETY, for every `unsafe` block below: a value of `Avx512` exists, so this CPU
// has the features its constructor names (`Avx512::new`, called only by
// `isa::table`, with `bf16` and `amx` set only when detected); the bf16 and AMX
// kernels run only when their flag is set. Bounds are as each method's contract
// states.
impl Kernels for Avx512 {
    fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        unsafe { dot_f32(a, b) }
    }

    fn axpy(&self, a: f32, x: &[f32], y: &mut [f32]) {
        unsafe { axpy(a, x, y) }
    }

    unsafe fn weighted_rows(
        &self,
        w: &[&[f32]],
        v: &[f32],
        stride: usize,
        n: usize,
        hd: usize,
        o: &mut [f32],
    ) {
        weighted_rows(w, v, stride, n, hd, o)
    }

    unsafe fn dot_tile_4x4(&self, w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
        dot_tile_4x4(w, x)
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
        out: &mut [[f32; GROUP]; MAX_TILE],
    ) {
        packed_tile(cfg, codes, scales, blocks, acts, out)
    }

    /// With AMX: whole tiles of 16 activation rows on the tiles, the rest (and
    /// Q6_K's per-half scales) on `vpdpbusd`.
    unsafe fn packed_rows(
        &self,
        p: &PackedMatrix,
        groups: std::ops::Range<usize>,
        x: &QuantRows,
        out: &Out,
    ) {
        for g in groups {
            let grp = Group::of(p, g, x);
            let mut done = 0;
            if self.amx && !grp.cfg.halves {
                let blocks = grp.blocks;
                let mut tile = [[0f32; GROUP]; amx::ROWS];
                let tile_bytes = blocks * 2 * amx::PLANE_BYTES;
                while x.n - done >= amx::ROWS
                    && x.planes.len() >= (done / amx::ROWS + 1) * tile_bytes
                {
                    // As for the impl; `Group::of` checked that the pointers
                    // cover `blocks` blocks of group g and of activation rows
                    // done..done + 16, and the loop condition that their tile's
                    // planes exist.
                    amx::packed_tile16(
                        grp.cfg,
                        grp.codes,
                        grp.scales,
                        blocks,
                        x.blocks[done * blocks..].as_ptr(),
                        blocks,
                        x.planes[done / amx::ROWS * tile_bytes..].as_ptr(),
                        &mut tile,
                    );
                    for (t, row) in tile.iter().enumerate() {
                        out.write_run(done + t, grp.r0, &row[..grp.lanes]);
                    }
                    done += amx::ROWS;
                }
            }
            group_tiles(self, &grp, done, out)
        }
    }

    fn tile_layout(&self, q8: &[BlockQ8], rows: usize, blocks_per_row: usize) -> Vec<i8> {
        if self.amx {
            amx::tile_layout(q8, rows, blocks_per_row)
        } else {
            Vec::new()
        }
    }

    fn has_bf16(&self) -> bool {
        self.bf16
    }

    fn bf16_round_row(&self, row: &[f32], out: &mut [u32]) {
        if self.bf16 {
            unsafe { bf16::round_row(row, out) }
        } else {
            crate::bf16::round_row(row, out)
        }
    }

    unsafe fn bf16_tile(&self, t: &crate::bf16::Tile, out: &crate::bf16::OutPtr) {
        if self.bf16 {
            bf16::tile(t, out)
        } else {
            crate::bf16::scalar::tile(t, out)
        }
    }
}

/// `y += a·x` (16 lanes at a time, fused multiply-add; the tail in scalar).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm512_set1_ps(a);
    let mut i = 0;
    while i + 16 <= n {
        let p = y.as_mut_ptr().add(i);
        _mm512_storeu_ps(
            p,
            _mm512_fmadd_ps(av, _mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(p)),
        );
        i += 16;
    }
    for j in i..n {
        y[j] += a * x[j];
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn f16(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 16 unsigned nibbles-or-bytes (already masked) → `q·d + m` stored as 16 floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn store16_u8(q: __m128i, d: __m512, m: __m512, out: *mut f32) {
    let v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
    _mm512_storeu_ps(out, _mm512_fmadd_ps(v, d, m));
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dequantize_nibbles(qs: *const u8, d: f32, m: f32, out: *mut f32) {
    let b = _mm_loadu_si128(qs as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let (dv, mv) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
    store16_u8(_mm_and_si128(b, mask), dv, mv, out);
    store16_u8(
        _mm_and_si128(_mm_srli_epi16(b, 4), mask),
        dv,
        mv,
        out.add(16),
    );
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dequantize_q4_0(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16(b, 0);
        dequantize_nibbles(b.as_ptr().add(2), d, -8.0 * d, y.as_mut_ptr());
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dequantize_q4_1(w: &[u8], out: &mut [f32]) {
    let mask = _mm_set1_epi8(0x0F);
    for (b, y) in w.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        // d and m are adjacent f16s: one conversion gives both.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(
            (b.as_ptr() as *const i32).read_unaligned(),
        ));
        let dv = _mm512_broadcastss_ps(dm);
        let mv = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
        let q = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
        store16_u8(_mm_and_si128(q, mask), dv, mv, y.as_mut_ptr());
        store16_u8(
            _mm_and_si128(_mm_srli_epi16(q, 4), mask),
            dv,
            mv,
            y.as_mut_ptr().add(16),
        );
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dequantize_q8_0(w: &[u8], out: &mut [f32]) {
    for (b, y) in w.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (b.as_ptr() as *const u16).read_unaligned() as i32,
        )));
        for h in 0..2 {
            let q = _mm_loadu_si128(b.as_ptr().add(2 + 16 * h) as *const __m128i);
            let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
            _mm512_storeu_ps(y.as_mut_ptr().add(16 * h), _mm512_mul_ps(v, d));
        }
    }
}

/// Σ a·b in f32 with four independent 16-lane FMA chains.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let o = i + 16 * k;
            *acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *acc);
        }
        i += 64;
    }
    while i + 16 <= n {
        acc[0] = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i)),
            _mm512_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 16;
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    let mut s = _mm512_reduce_add_ps(sum);
    while i < n {
        s += a[i] * b[i];
        i += 1;
    }
    s
}

/// A 4×4 tile of dot products: `out[i][j] = Σ_k x[i][k] · w[j][k]`. Each loaded
/// weight vector is used against four activation rows and each activation vector
/// against four weight rows, so the loop issues 16 FMAs per 8 loads instead of one
/// FMA per two loads. All slices must have the same length.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn dot_tile_4x4(w: [&[f32]; 4], x: [&[f32]; 4]) -> [[f32; 4]; 4] {
    let n = w[0].len();
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut k = 0;
    while k + 16 <= n {
        let wv = [
            _mm512_loadu_ps(w[0].as_ptr().add(k)),
            _mm512_loadu_ps(w[1].as_ptr().add(k)),
            _mm512_loadu_ps(w[2].as_ptr().add(k)),
            _mm512_loadu_ps(w[3].as_ptr().add(k)),
        ];
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_ps(x[i].as_ptr().add(k));
            for (j, a) in acc_i.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wv[j], xv, *a);
            }
        }
        k += 16;
    }
    let mut out = [[0f32; 4]; 4];
    for i in 0..4 {
        for j in 0..4 {
            let mut s = _mm512_reduce_add_ps(acc[i][j]);
            for kk in k..n {
                s += w[j][kk] * x[i][kk];
            }
            out[i][j] = s;
        }
    }
    out
}

/// A block's 16 weight scales and 16 offsets (or, for Q6_K, the two halves'
/// scales) from the packed scale array, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn load_scales<const F16: bool>(s: *const u8) -> (__m512, __m512) {
    if F16 {
        (
            _mm512_cvtph_ps(_mm256_loadu_si256(s as *const __m256i)),
            _mm512_cvtph_ps(_mm256_loadu_si256(s.add(32) as *const __m256i)),
        )
    } else {
        (
            _mm512_loadu_ps(s as *const f32),
            _mm512_loadu_ps(s.add(64) as *const f32),
        )
    }
}

/// `acc + wd·(isum·d_x) + wm·Σx`: one block's integer sums for 16 weight rows,
/// scaled by the weights' and the activations' scales, plus the offsets' share.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn rescale(acc: __m512, isum: __m512i, a: &BlockQ8, wd: __m512, wm: __m512) -> __m512 {
    let f = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(a.d));
    let acc = _mm512_fmadd_ps(f, wd, acc);
    _mm512_fmadd_ps(wm, _mm512_set1_ps(a.sum), acc)
}

/// The packed kernel for one group of 16 weight rows against `acts.len()` (at most
/// [`MAX_TILE`]) activation rows: `out[t][r]` for lane `r` of the group.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn packed_tile(
    cfg: TileCfg,
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: &[*const BlockQ8],
    out: &mut [[f32; 16]; MAX_TILE],
) {
    crate::isa::dispatch_tile!(
        packed_group,
        cfg,
        acts.len(),
        (codes, scales, blocks, acts, out)
    );
}

/// Σ over 8 four-byte groups of `w[j] · act[4j..4j+4]` per 32-bit lane, as the
/// sums over groups 0..4 (values 0..16) and 4..8 (16..32).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn sum_halves(w: &[__m512i; 8], act: *const i8) -> (__m512i, __m512i) {
    let a = act as *const i32;
    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for j in 0..4 {
        s0 = _mm512_dpbusd_epi32(s0, w[j], _mm512_set1_epi32(a.add(j).read_unaligned()));
        s1 = _mm512_dpbusd_epi32(
            s1,
            w[j + 4],
            _mm512_set1_epi32(a.add(j + 4).read_unaligned()),
        );
    }
    (s0, s1)
}

/// Σ over 8 four-byte groups of `w[j] · act[4j..4j+4]` per 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn sum_plane(w: &[__m512i; 8], act: *const i8) -> __m512i {
    let a = act as *const i32;
    // Two chains so the adds of one block overlap.
    let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    for j in (0..8).step_by(2) {
        s0 = _mm512_dpbusd_epi32(s0, w[j], _mm512_set1_epi32(a.add(j).read_unaligned()));
        s1 = _mm512_dpbusd_epi32(
            s1,
            w[j + 1],
            _mm512_set1_epi32(a.add(j + 1).read_unaligned()),
        );
    }
    _mm512_add_epi32(s0, s1)
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn packed_group<
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
    out: &mut [[f32; 16]; MAX_TILE],
) {
    let mask = _mm512_set1_epi8(0x0F);
    const { assert!(NT <= MAX_TILE) };
    let mut acc = [_mm512_setzero_ps(); MAX_TILE];
    let (cb, sb) = (if U4 { 256 } else { 512 }, if F16 { 64 } else { 128 });
    for b in 0..blocks {
        let p = codes.add(b * cb);
        let mut w = [_mm512_setzero_si512(); 8];
        if U4 {
            for j in 0..4 {
                let v = _mm512_loadu_si512(p.add(64 * j) as *const _);
                w[j] = _mm512_and_si512(v, mask);
                w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
            }
        } else {
            for (j, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(p.add(64 * j) as *const _);
            }
        }
        let (wd, wm) = load_scales::<F16>(scales.add(b * sb));
        // Unrolled by hand with constant indices so the accumulators stay in
        // registers (a loop over `t` was left rolled, with `acc` on the stack).
        macro_rules! row {
            ($t:literal) => {
                if $t < NT && HALVES {
                    // Q6_K: each half its own scale (`wd`, then `wm`), and
                    // 32·Σq subtracted in integers.
                    let a = &*acts[$t].add(b);
                    let (h0, h1) = sum_halves(&w, a.hi.as_ptr());
                    let (mut i0, mut i1) = (_mm512_slli_epi32(h0, 8), _mm512_slli_epi32(h1, 8));
                    if TWO {
                        let (l0, l1) = sum_halves(&w, a.lo.as_ptr());
                        i0 = _mm512_add_epi32(i0, l0);
                        i1 = _mm512_add_epi32(i1, l1);
                    }
                    let zero = crate::quant::HALVES_ZERO;
                    i0 = _mm512_sub_epi32(i0, _mm512_set1_epi32(zero * a.qsum[0]));
                    i1 = _mm512_sub_epi32(i1, _mm512_set1_epi32(zero * a.qsum[1]));
                    let ad = _mm512_set1_ps(a.d);
                    let f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(i0), ad);
                    acc[$t] = _mm512_fmadd_ps(f0, wd, acc[$t]);
                    let f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(i1), ad);
                    acc[$t] = _mm512_fmadd_ps(f1, wm, acc[$t]);
                } else if $t < NT {
                    let a = &*acts[$t].add(b);
                    let mut isum = _mm512_slli_epi32(sum_plane(&w, a.hi.as_ptr()), 8);
                    if TWO {
                        isum = _mm512_add_epi32(isum, sum_plane(&w, a.lo.as_ptr()));
                    }
                    acc[$t] = rescale(acc[$t], isum, a, wd, wm);
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
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}

/// [`crate::quant::quantize_row_q8`] in 16-lane steps, with the same float
/// operations in the same order, so the blocks are bit-identical.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8], two_planes: bool) {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let (lo_lim, hi_lim) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    for (chunk, b) in x.chunks_exact(32).zip(out.iter_mut()) {
        let v = [
            _mm512_loadu_ps(chunk.as_ptr()),
            _mm512_loadu_ps(chunk.as_ptr().add(16)),
        ];
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        let d1 = amax / 127.0;
        let id1 = if d1 > 0.0 { 1.0 / d1 } else { 0.0 };
        let (dv, idv, id256) = (
            _mm512_set1_ps(d1),
            _mm512_set1_ps(id1),
            _mm512_set1_ps(256.0 * id1),
        );
        let mut qsum = [0i32; 2];
        for (h, v) in v.into_iter().enumerate() {
            let q = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(v, idv));
            let q = _mm512_min_ps(_mm512_max_ps(q, lo_lim), hi_lim);
            let qi = _mm512_cvtps_epi32(q);
            _mm_storeu_si128(
                b.hi.as_mut_ptr().add(16 * h) as *mut __m128i,
                _mm512_cvtsepi32_epi8(qi),
            );
            let li = if two_planes {
                let r = _mm512_sub_ps(v, _mm512_mul_ps(q, dv));
                let l = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(r, id256));
                _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(l, lo_lim), hi_lim))
            } else {
                _mm512_setzero_si512()
            };
            _mm_storeu_si128(
                b.lo.as_mut_ptr().add(16 * h) as *mut __m128i,
                _mm512_cvtsepi32_epi8(li),
            );
            qsum[h] = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(qi, 8), li));
        }
        b.d = d1 / 256.0;
        b.qsum = qsum;
        b.sum = b.d * (qsum[0] + qsum[1]) as f32;
    }
}

/// See [`crate::dot::weighted_rows`] (bounds checked there).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn weighted_rows(
    w: &[&[f32]],
    v: &[f32],
    stride: usize,
    n: usize,
    hd: usize,
    o: &mut [f32],
) {
    match w.len() {
        1 => weighted_rows_g::<1>(w, v, stride, n, hd, o),
        2 => weighted_rows_g::<2>(w, v, stride, n, hd, o),
        3 => weighted_rows_g::<3>(w, v, stride, n, hd, o),
        _ => weighted_rows_g::<4>(w, v, stride, n, hd, o),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn weighted_rows_g<const G: usize>(
    w: &[&[f32]],
    v: &[f32],
    stride: usize,
    n: usize,
    hd: usize,
    o: &mut [f32],
) {
    let mut c = 0;
    while c + 64 <= hd {
        weighted_cols::<G, 4>(w, v, stride, n, hd, o, c);
        c += 64;
    }
    while c + 16 <= hd {
        weighted_cols::<G, 1>(w, v, stride, n, hd, o, c);
        c += 16;
    }
    for i in 0..n {
        for (h, w) in w.iter().enumerate() {
            for j in c..hd {
                o[h * hd + j] += w[i] * v[i * stride + j];
            }
        }
    }
}

/// Columns `c .. c + 16K` of every output row, accumulated in registers over all
/// `n` rows of V.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn weighted_cols<const G: usize, const K: usize>(
    w: &[&[f32]],
    v: &[f32],
    stride: usize,
    n: usize,
    hd: usize,
    o: &mut [f32],
    c: usize,
) {
    let op = o.as_mut_ptr();
    let mut acc: [[__m512; K]; G] = std::array::from_fn(|h| {
        std::array::from_fn(|k| _mm512_loadu_ps(op.add(h * hd + c + 16 * k)))
    });
    for i in 0..n {
        let vp = v.as_ptr().add(i * stride + c);
        let vv: [__m512; K] = std::array::from_fn(|k| _mm512_loadu_ps(vp.add(16 * k)));
        for (h, acc) in acc.iter_mut().enumerate() {
            let s = _mm512_set1_ps(*w.get_unchecked(h).get_unchecked(i));
            for (a, &vk) in acc.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(s, vk, *a);
            }
        }
    }
    for (h, acc) in acc.iter().enumerate() {
        for (k, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.add(h * hd + c + 16 * k), a);
        }
    }
}
