//! 05 — Gradient checkpointing: activation memory against time.
//!
//! Backward needs what forward computed. A plain run keeps every block's activations until
//! backward reaches them; checkpointing every k blocks keeps only each segment's input and runs the
//! segment again during backward (Chen et al. 2016): one extra forward buys most of the
//! activation memory. Here one training step (forward + backward) of an 8-layer GPT-2 runs with
//! no checkpointing and with k = 4, 2, 1; the engine's own accounting gives the peak activation
//! bytes (exact, the same every run), and the gradients are compared to the plain run's (the same
//! bits: the replay runs the same kernels on the same values). Time: after a warm-up, 7 rounds
//! run every setting once in turn, so that load from other processes falls on all of them alike;
//! the fastest wall clock of each, and (on Linux) the fastest CPU time of this process — lavapipe
//! runs the kernels on this process's threads, so that is the work a step took. docs/autodiff.md
//! explains the recompute.
//!
//! Run: cargo run --release --example 05_gradient_checkpointing
//! Expected output (lavapipe on 2 cores shared with other jobs at load average 15, 2026-12-07; the
//! bytes are exact, the times vary with the machine and its load):
//!   GPT-2 L8 C128 NH4, B8 T128: 1.6M params
//!   checkpointing    peak activations     step time (wall)   CPU time    max |grad - plain|
//!   none              81.14 MB (100%)    3167 ms ( +0%)   1070 ms ( +0%)    0.0e0
//!   every 4 blocks    47.48 MB ( 59%)    3887 ms (+23%)   1260 ms (+18%)    0.0e0
//!   every 2 blocks    28.01 MB ( 35%)    4279 ms (+35%)   1350 ms (+26%)    0.0e0
//!   every 1 blocks    19.84 MB ( 24%)    3824 ms (+21%)   1380 ms (+29%)    0.0e0
//! The last segment runs plainly (backward starts there), so every 4 blocks recomputes blocks
//! 0–3 only; about a third of a step is the most one extra forward can cost.

use std::time::Instant;

use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::{Category, Gpu, Result, Tensor};

/// One setting's peak activation bytes, wall times, CPU times, gradients (of the warm-up run).
type Setting = (u64, Vec<f64>, Vec<f64>, Vec<Vec<f32>>);

/// Timed rounds over all settings.
const ROUNDS: usize = 7;

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
    // One step: (peak activation bytes, wall seconds, CPU seconds, every gradient).
    let step = |every: Option<usize>| -> Result<(u64, f64, f64, Vec<Vec<f32>>)> {
        params.iter().for_each(|(_, p)| p.zero_grad());
        gpu.synchronize()?;
        gpu.reset_peaks();
        let base = gpu.memory().live(Category::Activations);
        let (clock, cpu) = (Instant::now(), cpu_seconds());
        let opts = ForwardOptions { checkpoint_every: every, ..Default::default() };
        let out = model.forward(&ids, &opts)?; // logits (B, T, V)
        Gpt2::loss(&out.logits, &targets)?.backward()?;
        gpu.synchronize()?;
        let (seconds, cpu) = (clock.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        let peak = gpu.memory().peak(Category::Activations) - base;
        let grads =
            params.iter().map(|(_, p)| p.grad().unwrap().to_vec()).collect::<Result<_>>()?;
        Ok((peak, seconds, cpu, grads))
    };
    let settings = [None, Some(4), Some(2), Some(1)];
    let mut results: Vec<Setting> = vec![];
    for &every in &settings {
        let (peak, _, _, grads) = step(every)?; // warm-up: pipelines compiled, buffers pooled
        results.push((peak, vec![], vec![], grads));
    }
    for _ in 0..ROUNDS {
        for (&every, r) in settings.iter().zip(&mut results) {
            let (peak, seconds, cpu, _) = step(every)?;
            assert_eq!(peak, r.0, "the byte counts are exact: the same every run");
            r.1.push(seconds);
            r.2.push(cpu);
        }
    }
    // The fastest round: other processes only ever add time, so the least-disturbed run is the
    // best estimate of the step's own cost.
    let best = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
    let (plain_peak, plain_wall, plain_cpu, plain) = &results[0];
    let (plain_wall, plain_cpu) = (best(plain_wall), best(plain_cpu));
    println!(
        "checkpointing    peak activations     step time (wall)   CPU time    max |grad - plain|"
    );
    for (every, (peak, wall, cpu, grads)) in settings.iter().zip(&results) {
        let diff = grads
            .iter()
            .zip(plain)
            .flat_map(|(g, p)| g.iter().zip(p).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max);
        let label = every.map_or("none".to_string(), |k| format!("every {k} blocks"));
        let (wall, cpu) = (best(wall), best(cpu));
        println!(
            "{label:<16} {:>6.2} MB ({:>3.0}%) {:>7.0} ms ({:>+3.0}%) {:>6.0} ms ({:>+3.0}%) {diff:>8.1e}",
            *peak as f64 / 1e6,
            100.0 * *peak as f64 / *plain_peak as f64,
            wall * 1e3,
            100.0 * (wall / plain_wall - 1.0),
            cpu * 1e3,
            100.0 * (cpu / plain_cpu - 1.0),
        );
    }
    Ok(())
}

/// CPU seconds this process has used, all threads (user + system; /proc/self/stat counts in
/// USER_HZ = 100 ticks a second); NaN where there is no /proc.
fn cpu_seconds() -> f64 {
    let read = || -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name "(…)": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
        Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / 100.0)
    };
    read().unwrap_or(f64::NAN)
}
