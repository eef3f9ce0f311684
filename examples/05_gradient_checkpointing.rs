//! 05 — Gradient checkpointing: activation memory against time.
//!
//! Backward needs what forward computed. A plain run keeps every block's activations until
//! backward reaches them; checkpointing every k blocks keeps only each segment's input and runs the
//! segment again during backward (Chen et al. 2016): one extra forward buys most of the
//! activation memory. Here one training step (forward + backward) of an 8-layer GPT-2 runs with
//! no checkpointing and with k = 4, 2, 1; the engine's own accounting gives the peak activation
//! bytes, the wall clock the step time (median of 3), and the gradients are compared to the plain
//! run's (they are the same bits: the replay runs the same kernels on the same values).
//! docs/autodiff.md explains how the recompute works.
//!
//! Run: cargo run --release --example 05_gradient_checkpointing
//! Expected output (lavapipe on 2 cores; the bytes are exact, the times vary with the machine):
//!   GPT-2 L8 C128 NH4, B8 T128: 1.6M params
//!   checkpointing     peak activations    step time   max |grad - plain|
//!   none                   88.04 MB              614 ms          0.0e0
//!   every 4 blocks         48.69 MB              650 ms          0.0e0
//!   every 2 blocks         29.28 MB              644 ms          0.0e0
//!   every 1 blocks         20.62 MB              641 ms          0.0e0

use std::time::Instant;

use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::{Category, Gpu, Result, Tensor};

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let (b, t, v) = (8, 128, 65);
    let model = Gpt2::new_random(&gpu, Gpt2Config::new(v, t, 128, 8, 4), 1)?;
    println!("GPT-2 L8 C128 NH4, B{b} T{t}: {:.1}M params", model.num_parameters() as f64 / 1e6);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 7 % v) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(&gpu, &targets, &[b, t])?; // (B, T)
    let params = model.named_parameters();
    // One step: (peak activation bytes, seconds, every gradient).
    let step = |every: Option<usize>| -> Result<(u64, f64, Vec<Vec<f32>>)> {
        params.iter().for_each(|(_, p)| p.zero_grad());
        gpu.synchronize()?;
        gpu.reset_peaks();
        let base = gpu.memory().live(Category::Activations);
        let clock = Instant::now();
        let opts = ForwardOptions { checkpoint_every: every, ..Default::default() };
        let out = model.forward(&ids, &opts)?; // logits (B, T, V)
        Gpt2::loss(&out.logits, &targets)?.backward()?;
        gpu.synchronize()?;
        let seconds = clock.elapsed().as_secs_f64();
        let peak = gpu.memory().peak(Category::Activations) - base;
        let grads =
            params.iter().map(|(_, p)| p.grad().unwrap().to_vec()).collect::<Result<_>>()?;
        Ok((peak, seconds, grads))
    };
    step(None)?; // warm-up: pipelines compiled, buffers pooled
    let mut plain = vec![];
    println!("checkpointing     peak activations    step time   max |grad - plain|");
    for every in [None, Some(4), Some(2), Some(1)] {
        let mut runs = vec![];
        for _ in 0..3 {
            runs.push(step(every)?);
        }
        runs.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (peak, seconds, grads) = runs.swap_remove(1);
        if every.is_none() {
            plain = grads.clone();
        }
        let diff = grads
            .iter()
            .zip(&plain)
            .flat_map(|(g, p)| g.iter().zip(p).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max);
        let label = every.map_or("none".to_string(), |k| format!("every {k} blocks"));
        println!(
            "{label:<17} {:>10.2} MB {:>16.0} ms {diff:>14.1e}",
            peak as f64 / 1e6,
            seconds * 1e3
        );
    }
    Ok(())
}
