//! Criterion benches of the hot kernels on every path this CPU can run: a
//! SmolLM2-shaped Q4_1 matmul (1536 × 576, the FFN up projection) at batch 1 and 16
//! with each activation precision (the integer ones on the packed weights), and
//! dequantizing one row.
//!
//!     cargo bench -p inferd-kernels --bench matmul

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use inferd_gguf::GgmlType;
use inferd_kernels::dot;
use inferd_kernels::matmul::matmul_on;
use inferd_kernels::{Activations, Isa, PackedMatrix, Precision, WeightMatrix};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 1536;
const COLS: usize = 576;

/// Q4_1 blocks with sensible scales and random nibbles.
fn q4_1_weights(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rows * cols / 32 {
        out.extend(f16::from_f32(rng.gen_range(0.001..0.05)).to_le_bytes());
        out.extend(f16::from_f32(rng.gen_range(-0.2..0.0)).to_le_bytes());
        out.extend((0..16).map(|_| rng.gen::<u8>()));
    }
    out
}

fn matmul(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(0);
    let w_bytes = q4_1_weights(&mut rng, ROWS, COLS);
    let w = WeightMatrix::new(GgmlType::Q4_1, ROWS, COLS, &w_bytes).expect("valid shape");
    let packed = PackedMatrix::pack(&w).expect("Q4_1 packs");
    let w = w.with_packed(&packed).expect("same matrix");
    let mut group = c.benchmark_group("matmul_q4_1_1536x576");
    for isa in Isa::available() {
        for batch in [1usize, 16] {
            let x: Vec<f32> = (0..batch * COLS)
                .map(|_| rng.gen_range(-2.0..2.0))
                .collect();
            let mut out = vec![0f32; batch * ROWS];
            group.throughput(Throughput::Elements((batch * ROWS * COLS) as u64));
            for precision in [Precision::F32, Precision::Q8, Precision::Q8x2] {
                let id = BenchmarkId::new(format!("{}/{precision:?}", isa.name()), batch);
                group.bench_function(id, |b| {
                    b.iter(|| {
                        let mut a = Activations::with_precision(&x, batch, COLS, precision);
                        matmul_on(isa, &w, &mut a, &mut out).expect("shapes match");
                    })
                });
            }
        }
    }
    group.finish();

    let mut group = c.benchmark_group("dequantize_row_q4_1_576");
    let row = &w_bytes[..COLS / 32 * 20];
    let mut out = vec![0f32; COLS];
    group.throughput(Throughput::Elements(COLS as u64));
    for isa in Isa::available() {
        group.bench_function(isa.name(), |b| {
            b.iter(|| dot::dequantize_row(isa, GgmlType::Q4_1, row, &mut out))
        });
    }
    group.finish();
}

/// What one parallel operation costs beyond its work: a job of 18 empty tasks (a
/// 576-row matmul's task count) on the global pool, against the same loop inline.
fn pool_overhead(c: &mut Criterion) {
    let pool = inferd_kernels::pool::global();
    let sink = std::sync::atomic::AtomicUsize::new(0);
    let mut group = c.benchmark_group("pool_for_each_18_empty_tasks");
    group.bench_function(format!("{}_threads", pool.threads()), |b| {
        b.iter(|| {
            pool.for_each(18, |t| {
                sink.fetch_add(t, std::sync::atomic::Ordering::Relaxed);
            })
        })
    });
    group.bench_function("inline", |b| {
        b.iter(|| {
            (0..18).for_each(|t| {
                sink.fetch_add(t, std::sync::atomic::Ordering::Relaxed);
            })
        })
    });
    group.finish();
}

criterion_group!(benches, matmul, pool_overhead);
criterion_main!(benches);
