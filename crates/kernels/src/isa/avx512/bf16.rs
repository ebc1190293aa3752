//! The bf16 matmul's tile kernel on AVX512-BF16 (`vdpbf16ps`); see `crate::bf16`
//! for the layout and the order of the sums, which the scalar twin shares.

use std::arch::x86_64::*;

use crate::bf16::{Line, OutPtr, Tile, BLOCK, TILE_ROWS};

/// # Safety
/// As for `bf16::blocks_on`; the CPU has AVX512-BF16.
pub(super) unsafe fn tile(t: &Tile, out: &OutPtr) {
    macro_rules! dispatch {
        ($nb:literal; $($ni:literal)*) => {
            match t.ni {
                $($ni => tile_n::<$nb, $ni>(t, out),)*
                _ => unreachable!("a tile has 1 to {TILE_ROWS} rows"),
            }
        };
    }
    if t.nb == 2 {
        dispatch!(2; 1 2 3 4 5 6 7 8)
    } else {
        dispatch!(1; 1 2 3 4 5 6 7 8)
    }
}

// Plain indexed loops over the const sizes, no closures: closures do not
// inherit the target features, and one that is not inlined keeps the
// accumulators in memory.
/// [`crate::bf16::round_row`], 32 values per instruction.
///
/// # Safety
/// The CPU has AVX512-BF16; `out.len() == row.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn round_row(row: &[f32], out: &mut [u32]) {
    let n = row.len();
    let (src, dst) = (row.as_ptr(), out.as_mut_ptr().cast::<i16>());
    let mut c = 0;
    while c < n {
        let left = n - c;
        let lo_mask: __mmask16 = if left >= 16 { !0 } else { (1 << left) - 1 };
        let hi_left = left.saturating_sub(16);
        let hi_mask: __mmask16 = if hi_left >= 16 {
            !0
        } else {
            (1 << hi_left) - 1
        };
        let lo = _mm512_maskz_loadu_ps(lo_mask, src.add(c));
        let hi = _mm512_maskz_loadu_ps(hi_mask, src.wrapping_add(c + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        // Whole pairs: an odd tail's pair keeps its zero high half.
        let pairs = left.min(32).div_ceil(2);
        let store: __mmask32 = if pairs >= 16 {
            !0
        } else {
            (1u32 << (2 * pairs)) - 1
        };
        _mm512_mask_storeu_epi16(dst.add(c), store, v);
        c += 32;
    }
}

#[inline(always)]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512 bits of plain data.
    unsafe { std::mem::transmute(v) }
}

#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_n<const NB: usize, const NI: usize>(t: &Tile, out: &OutPtr) {
    let pairs = t.x.pairs;
    let mut w = [std::ptr::null::<Line>(); NB];
    for (k, w) in w.iter_mut().enumerate() {
        *w = t.w.block(t.b + k).as_ptr();
    }
    let x = t.x.lanes.as_ptr().add(t.i * pairs);
    let mut acc = [[_mm512_setzero_ps(); NI]; NB];
    for (k, acc) in acc.iter_mut().enumerate() {
        let bias = _mm512_loadu_ps(t.w.block_bias(t.b + k).as_ptr());
        *acc = [bias; NI];
    }
    for p in 0..pairs {
        let mut wv = [_mm512_setzero_si512(); NB];
        for k in 0..NB {
            wv[k] = _mm512_load_si512(w[k].add(p).cast());
        }
        for i in 0..NI {
            let xv = _mm512_set1_epi32(*x.add(i * pairs + p) as i32);
            for k in 0..NB {
                acc[k][i] = _mm512_dpbf16_ps(acc[k][i], bh(wv[k]), bh(xv));
            }
        }
    }
    let rows = t.w.rows;
    for (k, acc) in acc.iter().enumerate() {
        let r = (t.b + k) * BLOCK;
        let live = t.live_rows(k);
        let mask: __mmask16 = if live == BLOCK { !0 } else { (1 << live) - 1 };
        for (i, &v) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.0.add((t.i + i) * rows + r), mask, v);
        }
    }
}
