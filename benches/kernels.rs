//! Kernel benchmarks for development: `cargo bench --bench kernels [-- FILTER]`.
//!
//! First prints `glassgrad::bench::run` (what `glassgrad bench matmul --json` reports: every
//! kernel variant, median of several repetitions), then runs criterion on the adapter's fast
//! matmul kernel at 256, 512 and 1024. Each criterion iteration records 10 products and waits
//! once, so the per-submit wait is spread as it is in training; nothing is read back.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glassgrad::ops::matmul::MatmulKernel;
use glassgrad::{Gpu, Tensor};

/// Products recorded per wait.
const BATCH: u64 = 10;

fn matmul(c: &mut Criterion) {
    let gpu = Gpu::shared().expect("a GPU adapter (on headless Linux: Mesa's lavapipe)");
    eprintln!("adapter: {}", gpu.describe());
    let filter_all = std::env::args().skip(1).all(|a| a.starts_with('-') || "matmul".contains(a.as_str()));
    if filter_all {
        for r in glassgrad::bench::run(&gpu, "matmul", None).expect("bench::run matmul") {
            println!("{}", r.to_json());
        }
    }
    let kernel = MatmulKernel::for_gpu(&gpu);
    let mut group = c.benchmark_group(format!("matmul_{}", kernel.name()));
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [256usize, 512, 1024] {
        let data: Vec<f32> = (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let a = Tensor::from_f32(&gpu, &data, &[n, n]).unwrap(); // (n, n)
        let b = Tensor::from_f32(&gpu, &data, &[n, n]).unwrap(); // (n, n)
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3))); // flops per product
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters.div_ceil(BATCH) {
                    for _ in 0..BATCH {
                        a.matmul_with_kernel(&b, false, false, kernel).unwrap();
                    }
                    gpu.synchronize().unwrap();
                }
                // Time per product, whatever the rounding of iters to batches.
                start.elapsed().mul_f64(iters as f64 / (iters.div_ceil(BATCH) * BATCH) as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
