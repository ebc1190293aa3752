//! The engine's hot loops: quantized matrix multiplication against activations
//! quantized on the fly to 8-bit blocks, plus the elementwise ops of a transformer
//! layer.
//!
//! Every kernel has a scalar reference twin that defines what the fast paths must
//! compute; property tests compare each SIMD path against it. The instruction set
//! is chosen at run time ([`Isa::detect`]), never by compile-time `target-cpu`
//! flags, so one binary runs on any x86-64 (AVX-512 VNNI, else AVX2, else scalar)
//! and on aarch64 (NEON with the dot-product extension, else scalar).
//!
//! How it is laid out:
//! - `quant`, the leaf: ggml's block formats read exactly, in place from the
//!   memory map, the 8-bit activation blocks, and the scalar reference dot
//!   products (`quant::scalar`).
//! - `packed`: the copy of the weights repacked at load for the integer kernels,
//!   16 rows side by side.
//! - `isa`: one module per instruction-set path (`avx2`, `avx512` with its AMX
//!   and bf16 parts, `neon`), each implementing one `Kernels` trait whose default
//!   methods are the scalar twins, and the one dispatch point that turns an
//!   [`Isa`] into a path's kernels, where the safety argument for all of them is
//!   made. A path reads nothing from the environment; AMX is used only when asked
//!   for by name.
//! - `dot`, `matmul`, `bf16`, `ops`: what the model calls, on an explicit path.

pub mod bf16;
pub mod dot;
mod isa;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quant;

pub use matmul::{matmul, Activations, Precision, WeightMatrix};
pub use packed::PackedMatrix;
pub use quant::BlockQ8;

/// Instruction-set paths a kernel can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512F/BW/VNNI (+ AVX2, FMA, F16C): 16-lane f32 paths and
    /// `vpdpbusd` integer kernels. CPUs with AVX-512 but no VNNI take `Avx2`.
    Avx512,
    /// `Avx512` plus AMX int8 tiles, which the packed kernel uses for each full
    /// 16-row tile of activations (batched decode, prefill). Runnable only when
    /// the CPU has AMX-TILE and AMX-INT8, the OS enables tile state (XCR0) and
    /// grants this process its use (`arch_prctl`). Never detected: with the
    /// formats' 32-weight blocks each tile multiply is followed by a store and a
    /// per-block rescale, and it measures slower than `Avx512` (RESULTS.md); a
    /// caller asks for it by name ([`Isa::named`], the binary's `--isa amx`).
    Amx,
    /// aarch64 NEON with the dot-product extension (`sdot`): the packed integer
    /// kernel; the other kernels take their scalar form.
    Neon,
}

impl Isa {
    /// The fastest path this CPU supports, detected at run time.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    return Isa::Avx512;
                }
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            return Isa::Neon;
        }
        Isa::Scalar
    }

    /// Every path this CPU can run, for tests that compare each with the reference.
    pub fn available() -> Vec<Isa> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut paths = match Isa::detect() {
            Isa::Scalar => vec![Isa::Scalar],
            Isa::Avx2 => vec![Isa::Scalar, Isa::Avx2],
            Isa::Avx512 | Isa::Amx => vec![Isa::Scalar, Isa::Avx2, Isa::Avx512],
            Isa::Neon => vec![Isa::Scalar, Isa::Neon],
        };
        #[cfg(target_arch = "x86_64")]
        if paths.contains(&Isa::Avx512) && isa::amx_available() {
            paths.push(Isa::Amx);
        }
        paths
    }

    /// The path called `name` (`auto`: [`Isa::detect`]'s), when this CPU runs
    /// it; otherwise the names it does run, to report.
    pub fn named(name: &str) -> std::result::Result<Isa, Vec<&'static str>> {
        if name == "auto" {
            return Ok(default_isa());
        }
        let available = Isa::available();
        available
            .iter()
            .copied()
            .find(|i| i.name() == name)
            .ok_or_else(|| available.iter().map(|i| i.name()).collect())
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
            Isa::Neon => "neon",
        }
    }
}

/// The path used by [`matmul`] when no explicit one is given; detected once.
pub fn default_isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor type {0} is not supported by the matmul kernels")]
    UnsupportedType(inferd_gguf::GgmlType),
    #[error("shape mismatch: {0}")]
    Shape(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;
