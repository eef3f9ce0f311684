//! The library side of `glassgrad bench`: time kernels on the current adapter.
//!
//! Method (the same for every kernel): one warm-up call (compiles the pipeline, fills the buffer
//! pool), then several repetitions; each repetition records `calls` dispatches back to back and
//! waits once (`gpu.synchronize()`), so the per-submit cost is spread as it is in training and
//! nothing is read back per op. The median over repetitions is reported, per call.
//!
//! Adding a benchmark: one function returning `Vec<BenchResult>` and one arm in [`run`].

use std::rc::Rc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::matmul::MatmulKernel;
use crate::tensor::Tensor;

/// The names `run` accepts (besides "all").
pub const BENCHES: &[&str] = &["matmul"];

/// One timed kernel at one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Kernel name, e.g. "matmul_register_tiled".
    pub kernel: String,
    /// The problem size, e.g. "1024x1024x1024" (M×K×N for a matmul; " A·Bt" / " At·B" when an
    /// operand is read transposed).
    pub shape: String,
    /// Median milliseconds per call.
    pub ms: f64,
    /// For compute-bound kernels: useful floating-point operations per second / 1e9.
    pub gflops: Option<f64>,
    /// For memory-bound kernels: bytes moved per second / 1e9.
    pub gbps: Option<f64>,
    pub adapter: String,
    pub driver: String,
}

impl BenchResult {
    /// One JSON object on one line (the `--json` output format).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a BenchResult always serialises")
    }

    fn new(gpu: &Gpu, kernel: &str, shape: String, ms: f64) -> BenchResult {
        BenchResult {
            kernel: kernel.to_string(),
            shape,
            ms,
            gflops: None,
            gbps: None,
            adapter: gpu.info.name.clone(),
            driver: format!("{} {}", gpu.info.driver, gpu.info.driver_info).trim().to_string(),
        }
    }
}

/// Runs the benchmark `which` ("matmul", …, or "all"). `size` replaces the default sizes.
pub fn run(gpu: &Rc<Gpu>, which: &str, size: Option<usize>) -> Result<Vec<BenchResult>> {
    match which {
        "matmul" => matmul(gpu, size),
        "all" => {
            let mut results = vec![];
            for name in BENCHES {
                results.extend(run(gpu, name, size)?);
            }
            Ok(results)
        }
        other => Err(Error::Input(format!("unknown benchmark {other:?}: choose one of {BENCHES:?} or \"all\""))),
    }
}

/// Median milliseconds per call of `call`. Each repetition records up to 10 calls and waits
/// once; slow kernels get fewer calls and repetitions so a run stays within seconds.
pub fn time_per_call(gpu: &Gpu, mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    call()?; // warm-up: pipeline compilation, buffer pool
    gpu.synchronize()?;
    let first = start.elapsed().as_secs_f64();
    let calls = ((0.05 / first).ceil() as usize).clamp(1, 10);
    let repetitions = if first > 1.0 { 3 } else { 7 };
    let mut ms = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let start = Instant::now();
        for _ in 0..calls {
            call()?;
        }
        gpu.synchronize()?;
        ms.push(start.elapsed().as_secs_f64() * 1e3 / calls as f64);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
}

/// Square products n×n·n×n with every kernel variant this adapter runs: the fast one first, then
/// the others (the naive kernel is the reference; the rest show the regime differences); then
/// the fast kernel on the two transposed layouts the backward pass uses.
pub fn matmul(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let sizes = size.map(|n| vec![n]).unwrap_or_else(|| vec![256, 512, 1024]);
    let fast = MatmulKernel::for_gpu(gpu);
    let mut kernels = vec![fast];
    kernels.extend(MatmulKernel::available(gpu).into_iter().filter(|k| *k != fast));
    let mut results = vec![];
    for n in sizes {
        let data: Vec<f32> = (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let a = Tensor::from_f32(gpu, &data, &[n, n])?; // (n, n)
        let b = Tensor::from_f32(gpu, &data, &[n, n])?; // (n, n)
        for &kernel in &kernels {
            let ms = time_per_call(gpu, || a.matmul_with_kernel(&b, false, false, kernel).map(drop))?;
            let mut r = BenchResult::new(gpu, &format!("matmul_{}", kernel.name()), format!("{n}x{n}x{n}"), ms);
            r.gflops = Some(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9);
            results.push(r);
        }
        // The backward pass's layouts with the fast kernel: dA = dC·Bᵀ and dB = Aᵀ·dC.
        for (ta, tb, tag) in [(false, true, "A·Bt"), (true, false, "At·B")] {
            let ms = time_per_call(gpu, || a.matmul_with_kernel(&b, ta, tb, fast).map(drop))?;
            let mut r = BenchResult::new(gpu, &format!("matmul_{}", fast.name()), format!("{n}x{n}x{n} {tag}"), ms);
            r.gflops = Some(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9);
            results.push(r);
        }
    }
    Ok(results)
}
