//! AMX int8 tiles for the packed kernel. One `tdpbsud` multiplies 16 activation
//! rows (signed bytes, copied per tile into contiguous planes by [`tile_layout`])
//! by one 32-weight block of 16 weight rows (unsigned codes, which is exactly the
//! packed layout's chunks: 8 rows of 64 bytes; 4-bit codes are unpacked first)
//! into a 16×16 tile of i32 sums, laid out [activation row][weight row] like the
//! output. Each block's sums then leave the tile through memory and are scaled in
//! f32 exactly as the `vpdpbusd` kernel scales them, so the two paths give the
//! same numbers. That round trip per block is why this path is slower than VNNI
//! here and not the default (see `Isa::Amx`). The AVX-512 path calls it
//! (`Avx512::packed_rows`) when it was built for `Isa::Amx`.
//!
//! Tiles need the OS to enable their state and to grant the process its use;
//! [`available`] checks both before anything runs a tile instruction.

use std::arch::asm;
use std::arch::x86_64::*;

use super::{load_scales, rescale};
use crate::isa::TileCfg;
use crate::quant::BlockQ8;

/// Activation rows per tile.
pub const ROWS: usize = 16;

/// Whether this CPU, OS and process can run AMX int8 tiles; checked once. Asks the
/// kernel for tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) the first time.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !std::arch::is_x86_feature_detected!("xsave") {
            return false;
        }
        let leaf7 = __cpuid_count(7, 0);
        let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
        if !tile || !int8 {
            return false;
        }
        // SAFETY: XSAVE (and so XGETBV) was detected above.
        let xcr0 = unsafe { xgetbv0() };
        // Bits 17 and 18: XTILECFG and XTILEDATA state enabled by the OS.
        if xcr0 >> 17 & 3 != 3 {
            return false;
        }
        request_tile_permission()
    })
}

#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    _xgetbv(0)
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux hands out tile
/// state per process on request; without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call with two integer arguments; it touches no memory
    // of ours. `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Bytes of one activation plane of one block for a whole tile: 16 rows × 32.
pub const PLANE_BYTES: usize = ROWS * 32;

/// The activation planes of every whole tile of 16 rows, laid out
/// `[tile][block][plane (hi, lo)][row][32 bytes]`, so each tile operand is one
/// contiguous 512-byte load (the blocks themselves are 72 bytes apart per block
/// and a whole row apart per row).
pub fn tile_layout(q8: &[BlockQ8], rows: usize, bpr: usize) -> Vec<i8> {
    let tiles = rows / ROWS;
    let mut out = vec![0i8; tiles * bpr * 2 * PLANE_BYTES];
    for (chunk, i) in out.chunks_exact_mut(2 * PLANE_BYTES).zip(0..) {
        let (tile, b) = (i / bpr, i % bpr);
        let (hi, lo) = chunk.split_at_mut(PLANE_BYTES);
        for t in 0..ROWS {
            let a = &q8[(tile * ROWS + t) * bpr + b];
            hi[32 * t..32 * (t + 1)].copy_from_slice(&a.hi);
            lo[32 * t..32 * (t + 1)].copy_from_slice(&a.lo);
        }
    }
    out
}

/// The 64-byte tile configuration (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// tmm0/tmm1 (even blocks), tmm4/tmm5 (odd): i32 sums of the high and low
/// planes, 16 × 16. tmm2/tmm3: activation planes, 16 rows × 32 bytes.
/// tmm6 (even), tmm7 (odd): one block of weight codes, 8 rows (four-byte groups)
/// × 64 bytes.
const CONFIG: TileConfig = {
    let mut colsb = [64u16; 16];
    let mut rows = [16u8; 16];
    colsb[2] = 32;
    colsb[3] = 32;
    rows[6] = 8;
    rows[7] = 8;
    let mut t = 8;
    while t < 16 {
        colsb[t] = 0;
        rows[t] = 0;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb,
        rows,
    }
};

#[repr(C, align(64))]
struct Aligned<T>(T);

/// `out[t][r]` for 16 activation rows (`acts`, `act_stride` blocks apart, their
/// planes also at `planes` in [`tile_layout`]) against one group of 16 weight
/// rows with `blocks` blocks.
///
/// # Safety
/// [`available`] returned true and AVX-512F/BW/VNNI, FMA and F16C were detected;
/// `codes` and `scales` cover `blocks` blocks of one group in the packed layout;
/// `acts.add(t * act_stride + b)` is a valid block for t < 16 and b < blocks, and
/// `planes` covers `blocks * 2 * PLANE_BYTES` bytes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
pub(super) unsafe fn packed_tile16(
    cfg: TileCfg,
    codes: *const u8,
    scales: *const u8,
    blocks: usize,
    acts: *const BlockQ8,
    act_stride: usize,
    planes: *const i8,
    out: &mut [[f32; 16]; ROWS],
) {
    let args = (codes, scales, blocks, acts, act_stride, planes, out);
    debug_assert!(!cfg.halves, "per-half scales take the vector kernels");
    match (cfg.u4, cfg.f16, cfg.two_planes) {
        (false, false, false) => tile16::<false, false, false>(args),
        (false, false, true) => tile16::<false, false, true>(args),
        (false, true, false) => tile16::<false, true, false>(args),
        (false, true, true) => tile16::<false, true, true>(args),
        (true, false, false) => tile16::<true, false, false>(args),
        (true, false, true) => tile16::<true, false, true>(args),
        (true, true, false) => tile16::<true, true, false>(args),
        (true, true, true) => tile16::<true, true, true>(args),
    }
}

type TileArgs<'a> = (
    *const u8,
    *const u8,
    usize,
    *const BlockQ8,
    usize,
    *const i8,
    &'a mut [[f32; 16]; ROWS],
);

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn tile16<const U4: bool, const F16: bool, const TWO: bool>(args: TileArgs) {
    let (codes, scales, blocks, acts, act_stride, planes, out) = args;
    // Loading the configuration costs as much as several blocks of work, so each
    // thread loads it once and keeps it (the OS saves and restores tile state
    // with the thread; nothing else in the process configures tiles).
    thread_local! {
        static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !CONFIGURED.get() {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        CONFIGURED.set(true);
    }
    // Blocks alternate between two sets of tiles, scratch and sums, and block
    // b + 1's tile work is issued before block b's rescale: the rescale has to
    // wait for the tile stores to reach memory, and meanwhile the next block's
    // multiply runs.
    let mut unpacked = Aligned([[0u8; 512]; 2]);
    let mut sums = Aligned([[[[0i32; 16]; ROWS]; 2]; 2]);
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let (cb, sb) = (if U4 { 256 } else { 512 }, if F16 { 64 } else { 128 });
    let tiles =
        |b: usize, unpacked: &mut [[u8; 512]; 2], sums: &mut [[[[i32; 16]; ROWS]; 2]; 2]| {
            let p = codes.add(b * cb);
            let w = if U4 {
                let mask = _mm512_set1_epi8(0x0F);
                let dst = unpacked[b % 2].as_mut_ptr();
                for j in 0..4 {
                    let v = _mm512_loadu_si512(p.add(64 * j) as *const _);
                    _mm512_store_si512(dst.add(64 * j) as *mut _, _mm512_and_si512(v, mask));
                    let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                    _mm512_store_si512(dst.add(64 * (j + 4)) as *mut _, hi);
                }
                dst as *const u8
            } else {
                p
            };
            let hi = planes.add(2 * PLANE_BYTES * b);
            let lo = hi.add(PLANE_BYTES);
            let (s0, s1) = (sums[b % 2][0].as_mut_ptr(), sums[b % 2][1].as_mut_ptr());
            macro_rules! ops {
            ($c0:literal, $c1:literal, $w:literal) => {
                if TWO {
                    asm!(
                        concat!("tilezero ", $c0),
                        concat!("tilezero ", $c1),
                        concat!("tileloadd ", $w, ", [{w} + {s64}*1]"),
                        "tileloadd tmm2, [{hi} + {rs}*1]",
                        "tileloadd tmm3, [{lo} + {rs}*1]",
                        concat!("tdpbsud ", $c0, ", tmm2, ", $w),
                        concat!("tdpbsud ", $c1, ", tmm3, ", $w),
                        concat!("tilestored [{s0} + {s64}*1], ", $c0),
                        concat!("tilestored [{s1} + {s64}*1], ", $c1),
                        w = in(reg) w,
                        hi = in(reg) hi,
                        lo = in(reg) lo,
                        rs = in(reg) 32isize,
                        s0 = in(reg) s0,
                        s1 = in(reg) s1,
                        s64 = in(reg) 64isize,
                        options(nostack),
                    );
                } else {
                    asm!(
                        concat!("tilezero ", $c0),
                        concat!("tileloadd ", $w, ", [{w} + {s64}*1]"),
                        "tileloadd tmm2, [{hi} + {rs}*1]",
                        concat!("tdpbsud ", $c0, ", tmm2, ", $w),
                        concat!("tilestored [{s0} + {s64}*1], ", $c0),
                        w = in(reg) w,
                        hi = in(reg) hi,
                        rs = in(reg) 32isize,
                        s0 = in(reg) s0,
                        s64 = in(reg) 64isize,
                        options(nostack),
                    );
                }
            };
        }
            if b.is_multiple_of(2) {
                ops!("tmm0", "tmm1", "tmm6");
            } else {
                ops!("tmm4", "tmm5", "tmm7");
            }
        };
    if blocks > 0 {
        tiles(0, &mut unpacked.0, &mut sums.0);
    }
    for b in 0..blocks {
        if b + 1 < blocks {
            tiles(b + 1, &mut unpacked.0, &mut sums.0);
        }
        let sums = &sums.0[b % 2];
        let (wd, wm) = load_scales::<F16>(scales.add(b * sb));
        // Unrolled with constant indices so the accumulators stay in registers.
        macro_rules! row {
            ($t:literal) => {
                let a = &*acts.add($t * act_stride + b);
                let hi = _mm512_load_si512(sums[0][$t].as_ptr() as *const _);
                let mut isum = _mm512_slli_epi32(hi, 8);
                if TWO {
                    let lo = _mm512_load_si512(sums[1][$t].as_ptr() as *const _);
                    isum = _mm512_add_epi32(isum, lo);
                }
                acc[$t] = rescale(acc[$t], isum, a, wd, wm);
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
        row!(8);
        row!(9);
        row!(10);
        row!(11);
        row!(12);
        row!(13);
        row!(14);
        row!(15);
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), acc);
    }
}
