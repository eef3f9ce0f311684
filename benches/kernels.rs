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
    let filter_all =
        std::env::args().skip(1).all(|a| a.starts_with('-') || "matmul".contains(a.as_str()));
    if filter_all {
        for r in glassgrad::bench::run(&gpu, "matmul", None).expect("bench::run matmul") {
            println!("{}", r.to_json());
        }
    }
    let kernel = MatmulKernel::for_gpu(&gpu);
    let mut group = c.benchmark_group(format!("matmul_{}", kernel.name()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in [256usize, 512, 1024] {
        let data: Vec<f32> =
            (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let a = Tensor::from_f32(&gpu, &data, &[n, n]).unwrap(); // (n, n)
        let b = Tensor::from_f32(&gpu, &data, &[n, n]).unwrap(); // (n, n)
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3))); // flops per product
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter_custom(|iters| {
                time_batched(&gpu, iters, || {
                    a.matmul_with_kernel(&b, false, false, kernel).unwrap();
                })
            })
        });
    }
    group.finish();
}

/// Criterion timing of `call` with BATCH calls recorded per wait (nothing read back); the time per
/// call, whatever the rounding of iters to batches.
fn time_batched(gpu: &Gpu, iters: u64, mut call: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters.div_ceil(BATCH) {
        for _ in 0..BATCH {
            call();
        }
        gpu.synchronize().unwrap();
    }
    start.elapsed().mul_f64(iters as f64 / (iters.div_ceil(BATCH) * BATCH) as f64)
}

/// Row kernels (softmax, layernorm) forward at rows × 1024; throughput = bytes read + written.
fn rowwise(c: &mut Criterion) {
    let gpu = Gpu::shared().expect("a GPU adapter (on headless Linux: Mesa's lavapipe)");
    for which in ["softmax", "layernorm"] {
        let mut group = c.benchmark_group(which);
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for rows in [1024usize, 4096] {
            let cols = 1024;
            let data: Vec<f32> =
                (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0).collect();
            let x = Tensor::from_f32(&gpu, &data, &[rows, cols]).unwrap(); // (rows, cols)
            let w = Tensor::full(&gpu, &[cols], 1.5).unwrap(); // (cols)
            let b = Tensor::full(&gpu, &[cols], 0.25).unwrap(); // (cols)
            group.throughput(Throughput::Bytes(8 * (rows * cols) as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("{rows}x{cols}")), |bench| {
                bench.iter_custom(|iters| {
                    time_batched(&gpu, iters, || {
                        if which == "softmax" {
                            x.softmax().unwrap();
                        } else {
                            x.layernorm(&w, &b, 1e-5).unwrap();
                        }
                    })
                })
            });
        }
        group.finish();
    }
}

/// Fused causal attention, forward only, at B=16, NH=4, HS=32 and T = 64, 128.
fn attention(c: &mut Criterion) {
    let gpu = Gpu::shared().expect("a GPU adapter (on headless Linux: Mesa's lavapipe)");
    let mut group = c.benchmark_group("attention_forward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let (b, nh, hs) = (16usize, 4usize, 32usize);
    for t in [64usize, 128] {
        let c3 = 3 * nh * hs;
        let data: Vec<f32> =
            (0..b * t * c3).map(|i| ((i * 7919) % 1000) as f32 * 0.002 - 1.0).collect();
        let qkv = Tensor::from_f32(&gpu, &data, &[b, t, c3]).unwrap(); // (B, T, 3C)
        group.throughput(Throughput::Elements(2 * (b * nh * t * t * hs) as u64)); // causal flops
        group.bench_function(BenchmarkId::from_parameter(t), |bench| {
            bench.iter_custom(|iters| {
                time_batched(&gpu, iters, || {
                    qkv.attention(nh, None, None).unwrap();
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matmul, rowwise, attention);
criterion_main!(benches);
