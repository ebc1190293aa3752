//! aarch64 NEON path: the packed integer kernel with `sdot` (the ARMv8.2 dot
//! product, detected at run time). A 16-byte register holds four weight rows'
//! four-byte groups of one packed chunk, and `sdot` by element multiplies each of
//! them with the same four activation bytes, so a chunk is four `sdot`s per plane.
//! (`sdot` is written in inline assembly: its intrinsics are not stable in Rust.)
//!
//! The other kernels keep their scalar form.

use std::arch::aarch64::*;
use std::arch::asm;

use half::f16;

use crate::isa::{Kernels, TileCfg, MAX_TILE};
use crate::quant::BlockQ8;

/// The NEON + dot-product path.
pub(super) struct Neon(());

impl Neon {
    /// # Safety
    /// This CPU has NEON and the dot-product extension.
    pub(super) unsafe fn new() -> Neon {
        Neon(())
    }
}

impl Kernels for Neon {
    unsafe fn packed_tile(
        &self,
        cfg: TileCfg,
        codes: *const u8,
        scales: *const u8,
        blocks: usize,
        acts: &[*const BlockQ8],
        out: &mut [[f32; 16]; MAX_TILE],
    ) {
        // A value of `Neon` exists, so this CPU has NEON and the dot product
        // (`Neon::new`, called only by `isa::table`).
        packed_tile(cfg, codes, scales, blocks, acts, out)
    }
}

/// `acc.4s += w.16b · x.4b[lane]`: four signed 4-byte dot products.
macro_rules! sdot {
    ($acc:expr, $w:expr, $x:expr, $lane:literal) => {{
        let mut acc: int32x4_t = $acc;
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            w = in(vreg) $w,
            x = in(vreg) $x,
            lane = const $lane,
            options(pure, nomem, nostack),
        );
        acc
    }};
}

/// The packed kernel for one group of 16 weight rows against `acts.len()` (at most
/// [`MAX_TILE`]) activation rows: `out[t][r]` for lane `r` of the group.
///
/// 8-bit codes (0..=255) do not fit `sdot`'s signed bytes, so they enter as
/// `c − 128` and the kernel adds back `128 · Σ q` per block (per half for Q6_K,
/// less its zero code).
#[target_feature(enable = "neon,dotprod")]
unsafe fn packed_tile(
    cfg: TileCfg,
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: &[*const BlockQ8],
    out: &mut [[f32; 16]; MAX_TILE],
) {
    thread_local! {
        /// The group's scales and offsets as f32, `[block][d × 16, m × 16]`.
        static SCALES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCALES.with_borrow_mut(|sc| {
        sc.clear();
        for i in 0..blocks * 32 {
            sc.push(if cfg.f16 {
                f16::from_bits((scales as *const u16).add(i).read_unaligned()).to_f32()
            } else {
                (scales as *const f32).add(i).read_unaligned()
            });
        }
        for (t, &a) in acts.iter().enumerate() {
            let acc = row(cfg, codes, sc, blocks, a);
            for (k, acc) in acc.into_iter().enumerate() {
                vst1q_f32(out[t].as_mut_ptr().add(4 * k), acc);
            }
        }
    })
}

/// One activation row against the group: 16 sums in four registers.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn row(
    cfg: TileCfg,
    codes: *const u8,
    sc: &[f32],
    blocks: usize,
    acts: *const BlockQ8,
) -> [float32x4_t; 4] {
    let mask = vdupq_n_u8(0x0F);
    let flip = vdupq_n_u8(0x80);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let cb = if cfg.u4 { 256 } else { 512 };
    for b in 0..blocks {
        let a = &*acts.add(b);
        let p = codes.add(b * cb);
        let (h0, h1) = (vld1q_s8(a.hi.as_ptr()), vld1q_s8(a.hi.as_ptr().add(16)));
        let (l0, l1) = (vld1q_s8(a.lo.as_ptr()), vld1q_s8(a.lo.as_ptr().add(16)));
        let mut s = [vdupq_n_s32(0); 4];
        let mut l = [vdupq_n_s32(0); 4];
        // Chunk `j` of 4-bit codes: low nibbles are group j (first half of the
        // activations), high nibbles group j + 4 (second half), both at lane j.
        macro_rules! chunk_u4 {
            ($j:literal) => {
                for k in 0..4 {
                    let v = vld1q_u8(p.add(64 * $j + 16 * k));
                    let lo = vreinterpretq_s8_u8(vandq_u8(v, mask));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                    s[k] = sdot!(s[k], lo, h0, $j);
                    s[k] = sdot!(s[k], hi, h1, $j);
                    if cfg.two_planes {
                        l[k] = sdot!(l[k], lo, l0, $j);
                        l[k] = sdot!(l[k], hi, l1, $j);
                    }
                }
            };
        }
        // Chunk `j` of 8-bit codes: group j, shifted to signed; each half of the
        // block in its own sums (`s`/`l` for groups 0..4, `s2`/`l2` for 4..8).
        let mut s2 = [vdupq_n_s32(0); 4];
        let mut l2 = [vdupq_n_s32(0); 4];
        macro_rules! chunk_u8 {
            ($j:literal, $s:ident, $l:ident, $h:ident, $lp:ident, $lane:literal) => {
                for k in 0..4 {
                    let w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(p.add(64 * $j + 16 * k)), flip));
                    $s[k] = sdot!($s[k], w, $h, $lane);
                    if cfg.two_planes {
                        $l[k] = sdot!($l[k], w, $lp, $lane);
                    }
                }
            };
        }
        if cfg.u4 {
            chunk_u4!(0);
            chunk_u4!(1);
            chunk_u4!(2);
            chunk_u4!(3);
        } else {
            chunk_u8!(0, s, l, h0, l0, 0);
            chunk_u8!(1, s, l, h0, l0, 1);
            chunk_u8!(2, s, l, h0, l0, 2);
            chunk_u8!(3, s, l, h0, l0, 3);
            chunk_u8!(4, s2, l2, h1, l1, 0);
            chunk_u8!(5, s2, l2, h1, l1, 1);
            chunk_u8!(6, s2, l2, h1, l1, 2);
            chunk_u8!(7, s2, l2, h1, l1, 3);
        }
        let (ad, asum) = (vdupq_n_f32(a.d), vdupq_n_f32(a.sum));
        let scale = &sc[32 * b..32 * b + 32];
        // Codes entered as c − 128: Σ c·q = Σ (c − 128)·q + 128·Σ q; Q6_K's
        // halves want Σ (c − 32)·q, i.e. + 96·Σ q of their half.
        let isum = |s: int32x4_t, l: int32x4_t, corr: i32| {
            vaddq_s32(vaddq_s32(vshlq_n_s32::<8>(s), l), vdupq_n_s32(corr))
        };
        for k in 0..4 {
            let wd = vld1q_f32(scale.as_ptr().add(4 * k));
            let wm = vld1q_f32(scale.as_ptr().add(16 + 4 * k));
            if cfg.halves {
                let zero = crate::quant::HALVES_ZERO;
                let i0 = isum(s[k], l[k], (128 - zero) * a.qsum[0]);
                let i1 = isum(s2[k], l2[k], (128 - zero) * a.qsum[1]);
                acc[k] = vfmaq_f32(acc[k], vmulq_f32(vcvtq_f32_s32(i0), ad), wd);
                acc[k] = vfmaq_f32(acc[k], vmulq_f32(vcvtq_f32_s32(i1), ad), wm);
                continue;
            }
            let i = if cfg.u4 {
                isum(s[k], l[k], 0)
            } else {
                let both = vaddq_s32(isum(s[k], l[k], 0), isum(s2[k], l2[k], 0));
                vaddq_s32(both, vdupq_n_s32(128 * (a.qsum[0] + a.qsum[1])))
            };
            let f = vmulq_f32(vcvtq_f32_s32(i), ad);
            acc[k] = vfmaq_f32(acc[k], f, wd);
            acc[k] = vfmaq_f32(acc[k], wm, asum);
        }
    }
    acc
}
