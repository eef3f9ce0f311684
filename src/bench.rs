//! The library side of `glassgrad bench`: time kernels on the current adapter.
//!
//! Method (the same for every kernel): one warm-up call (compiles the pipeline, fills the buffer
//! pool), then several repetitions; each repetition records `calls` dispatches back to back and
//! waits once (`gpu.synchronize()`), so the per-submit cost is spread as it is in training and
//! nothing is read back per op. The median over repetitions is reported, per call.
//!
//! Adding a benchmark: one function returning `Vec<BenchResult>` and one arm in [`run`].

pub mod dequant_matmul;
pub mod dequant_matmul_int8;
pub mod finetune;

use std::rc::Rc;
use std::time::Instant;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::attention::AttentionKernel;
use crate::ops::attention_composed::attention_composed;
use crate::ops::matmul::MatmulKernel;
use crate::tensor::Tensor;

/// The names `run` accepts (besides "all").
pub const BENCHES: &[&str] = &[
    "matmul",
    "softmax",
    "layernorm",
    "attention",
    "dequant-matmul",
    "train-step",
    "finetune-step",
];

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
    /// Training and fine-tuning steps: tokens per second, dispatches per step, the method
    /// ("full", "lora"), and the gradient and optimizer bytes the engine counts (`gpu.memory()`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer_bytes: Option<u64>,
    pub adapter: String,
    pub driver: String,
}

impl BenchResult {
    /// One JSON object on one line (the `--json` output format).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a BenchResult always serialises")
    }

    pub(crate) fn new(gpu: &Gpu, kernel: &str, shape: String, ms: f64) -> BenchResult {
        BenchResult {
            kernel: kernel.to_string(),
            shape,
            ms,
            gflops: None,
            gbps: None,
            tokens_per_s: None,
            dispatches: None,
            method: None,
            gradient_bytes: None,
            optimizer_bytes: None,
            adapter: gpu.info.name.clone(),
            driver: format!("{} {}", gpu.info.driver, gpu.info.driver_info).trim().to_string(),
        }
    }
}

/// Runs the benchmark `which` ("matmul", …, or "all"). `size` replaces the default sizes.
pub fn run(gpu: &Rc<Gpu>, which: &str, size: Option<usize>) -> Result<Vec<BenchResult>> {
    match which {
        "matmul" => matmul(gpu, size),
        "softmax" => rowwise(gpu, "softmax", size),
        "layernorm" => rowwise(gpu, "layernorm", size),
        "attention" => attention(gpu, size),
        "train-step" => train_step(gpu, size),
        "finetune-step" => finetune::finetune_step(gpu, size),
        "dequant-matmul" => dequant_matmul::dequant_matmul(gpu, size),
        "all" => {
            let mut results = vec![];
            for name in BENCHES {
                results.extend(run(gpu, name, size)?);
            }
            Ok(results)
        }
        other => Err(Error::Input(format!(
            "unknown benchmark {other:?}: choose one of {BENCHES:?} or \"all\""
        ))),
    }
}

/// Checks one benchmark tensor of `numel` f32 values against the adapter's buffer limit and
/// `copies` of it against this machine's memory, before anything is allocated.
fn check_bench_tensor(
    gpu: &Gpu,
    op: &'static str,
    what: &str,
    numel: Option<u64>,
    copies: u64,
) -> Result<()> {
    use crate::model::size::{available_memory, check_tensor, human};
    check_tensor(gpu, op, what, numel)?;
    let needed = numel.unwrap_or(u64::MAX).saturating_mul(4 * copies);
    match available_memory() {
        Some(available) if needed > available => Err(Error::Limit {
            op,
            message: format!(
                "{copies} copies of {what} need {}; this machine has {} available",
                human(needed),
                human(available)
            ),
        }),
        _ => Ok(()),
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
        let numel = (n as u64).checked_mul(n as u64);
        check_bench_tensor(gpu, "bench matmul", &format!("one {n}×{n} f32 matrix"), numel, 3)?;
        let data: Vec<f32> =
            (0..n * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let a = Tensor::from_f32(gpu, &data, &[n, n])?; // (n, n)
        let b = Tensor::from_f32(gpu, &data, &[n, n])?; // (n, n)
        for &kernel in &kernels {
            let ms =
                time_per_call(gpu, || a.matmul_with_kernel(&b, false, false, kernel).map(drop))?;
            let mut r = BenchResult::new(
                gpu,
                &format!("matmul_{}", kernel.name()),
                format!("{n}x{n}x{n}"),
                ms,
            );
            r.gflops = Some(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9);
            results.push(r);
        }
        // The backward pass's layouts with the fast kernel: dA = dC·Bᵀ and dB = Aᵀ·dC.
        for (ta, tb, tag) in [(false, true, "A·Bt"), (true, false, "At·B")] {
            let ms = time_per_call(gpu, || a.matmul_with_kernel(&b, ta, tb, fast).map(drop))?;
            let mut r = BenchResult::new(
                gpu,
                &format!("matmul_{}", fast.name()),
                format!("{n}x{n}x{n} {tag}"),
                ms,
            );
            r.gflops = Some(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e9);
            results.push(r);
        }
    }
    Ok(results)
}

/// Row kernels over a (rows, 1024) tensor, forward: effective GB/s = (read + write) / time.
/// `size` sets the rows (default 4096).
pub fn rowwise(gpu: &Rc<Gpu>, which: &str, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let (rows, cols) = (size.unwrap_or(4096), 1024);
    let what = format!("a {rows}×{cols} f32 tensor");
    check_bench_tensor(gpu, "bench rowwise", &what, (rows as u64).checked_mul(cols as u64), 3)?;
    let data: Vec<f32> =
        (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0).collect();
    let x = Tensor::from_f32(gpu, &data, &[rows, cols])?; // (rows, cols)
    let weight = Tensor::full(gpu, &[cols], 1.5)?; // (cols)
    let bias = Tensor::full(gpu, &[cols], 0.25)?; // (cols)
    let ms = time_per_call(gpu, || match which {
        "softmax" => x.softmax().map(drop),
        _ => x.layernorm(&weight, &bias, 1e-5).map(drop),
    })?;
    let mut r = BenchResult::new(gpu, which, format!("{rows}x{cols}"), ms);
    r.gbps = Some(8.0 * (rows * cols) as f64 / (ms * 1e-3) / 1e9);
    Ok(vec![r])
}

/// Causal attention, forward and forward + backward: every fused kernel this adapter runs at the
/// two shapes of the kernels issue (B16 NH4 HS32 and B4 NH12 HS64, T = `size`, default 128 and
/// 256), and the composed reference path at the first. FLOPs counted are the useful causal ones:
/// forward 2·B·NH·T²·HS, backward twice that.
pub fn attention(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let mut results = vec![];
    for (b, nh, hs, default_t) in [(16, 4, 32, 128), (4, 12, 64, 256)] {
        let t = size.unwrap_or(default_t);
        let c = nh * hs;
        let scores =
            (b as u64 * nh as u64).checked_mul(t as u64).and_then(|n| n.checked_mul(t as u64));
        let what = format!("the attention scores (B{b}, NH{nh}, T{t}, T{t})");
        check_bench_tensor(gpu, "bench attention", &what, scores, 4)?;
        let data: Vec<f32> =
            (0..b * t * 3 * c).map(|i| ((i * 7919) % 1000) as f32 * 0.002 - 1.0).collect();
        let qkv = Tensor::parameter(gpu, &data, &[b, t, 3 * c], true)?; // (B, T, 3C)
        let dy = Tensor::full(gpu, &[b, t, c], 0.01)?; // (B, T, C)
        let forward_flops = 2.0 * (b * nh * t * t * hs) as f64;
        let mut paths: Vec<Option<AttentionKernel>> =
            AttentionKernel::available(gpu).into_iter().map(Some).collect();
        if b == 16 {
            paths.push(None); // the composed reference
        }
        for path in paths {
            let run = |x: &Tensor| match path {
                Some(kernel) => x.attention_with_kernel(nh, None, None, kernel),
                None => attention_composed(x, nh, None, None),
            };
            let name = path.map_or("attention_composed".to_string(), |k| {
                format!("attention_fused_{}", k.name())
            });
            let ms = time_per_call(gpu, || {
                let _g = no_grad();
                run(&qkv).map(drop)
            })?;
            let mut r =
                BenchResult::new(gpu, &name, format!("B{b} NH{nh} T{t} HS{hs} forward"), ms);
            r.gflops = Some(forward_flops / (ms * 1e-3) / 1e9);
            results.push(r);
            let ms = time_per_call(gpu, || {
                run(&qkv)?.backward_with(&dy)?;
                qkv.zero_grad();
                Ok(())
            })?;
            let mut r =
                BenchResult::new(gpu, &name, format!("B{b} NH{nh} T{t} HS{hs} fwd+bwd"), ms);
            r.gflops = Some(3.0 * forward_flops / (ms * 1e-3) / 1e9);
            results.push(r);
        }
    }
    Ok(results)
}

/// One full training step (forward, backward, clip, AdamW) of a char-level GPT-2 with L=4, C=128,
/// NH=4, T=128, B=16 (the configuration PyTorch's CPU figure in the issue is for); `size` sets B.
/// Tokens/s and dispatches per step go in the shape string; `gflops` counts 6·N per token (no attention).
pub fn train_step(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    use crate::model::Gpt2Config;
    use crate::model::gpt2::{ForwardOptions, Gpt2};
    use crate::optim::AdamW;
    let (b, t) = (size.unwrap_or(16), 128);
    let config = Gpt2Config::new(65, t, 128, 4, 4);
    crate::model::size::check_model(gpu, &config, b, t, 5, "bench train-step")?;
    let model = Gpt2::new_random(gpu, config, 1)?;
    let groups = crate::train::trainer::param_groups(&model, 1e-3, 0.1);
    let mut optimizer = AdamW::new(groups, 0.9, 0.95, 1e-8)?;
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 31 % 65) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 31 % 65) as u32).collect();
    let ids = Tensor::from_u32(gpu, &ids, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(gpu, &targets, &[b, t])?; // (B, T)
    let before = gpu.dispatches.get();
    let mut step = || -> Result<()> {
        let out = model.forward(&ids, &ForwardOptions::default())?;
        Gpt2::loss(&out.logits, &targets)?.backward()?;
        optimizer.step_clipped(1.0)?;
        optimizer.zero_grad();
        Ok(())
    };
    step()?;
    gpu.synchronize()?;
    let dispatches = gpu.dispatches.get() - before;
    let ms = time_per_call(gpu, &mut step)?;
    let tokens_per_s = (b * t) as f64 / (ms * 1e-3);
    let mut r = BenchResult::new(
        gpu,
        "train_step",
        format!("L4 C128 NH4 T{t} B{b}: {tokens_per_s:.0} tokens/s, {dispatches} dispatches"),
        ms,
    );
    r.gflops = Some(6.0 * model.num_parameters() as f64 * (b * t) as f64 / (ms * 1e-3) / 1e9);
    r.tokens_per_s = Some(tokens_per_s);
    r.dispatches = Some(dispatches);
    r.method = Some("full".into());
    Ok(vec![r])
}
