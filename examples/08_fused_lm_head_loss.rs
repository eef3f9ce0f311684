//! 08 — GPT-2 small under a 128 MiB binding limit, and the fused LM head + cross-entropy.
//!
//! WebGPU's default `max_storage_buffer_binding_size`, and lavapipe's, is 128 MiB. GPT-2 small's
//! wte (50257 × 768 f32) is 154 MB and the logits of a B4 T256 batch (1024 × 50257) are 206 MB,
//! so the engine binds those in windows of rows (src/gpu/binding.rs). And when only the loss is
//! needed, `Gpt2::forward_loss` fuses the head with cross-entropy over vocabulary chunks
//! (src/ops/lm_head_loss.rs): the logits, their softmax and dlogits never exist at once.
//! Here one training step (forward + backward, random weights of GPT-2 small's shapes) runs both
//! ways with the binding limit forced to 128 MiB on any adapter; the engine's accounting gives the
//! activation peak. L (layers) is an argument: 12 is GPT-2 small (slow on lavapipe).
//!
//! Run: cargo run --release --example 08_fused_lm_head_loss -- [L] [B] [T]
//! Output seen of `-- 12 4 256` (lavapipe, 2026-12-07 08:43–09:11 UTC, 2 cores shared with other
//! heavy jobs at load average 8–12: the times are not representative (quiet, before wte was bound
//! in place, they were 40–95 s); the bytes are exact). Peaks include wte's (V, C) gradients when
//! it trains.
//!   GPT-2 C768 L12, B4 T256: 124.4M params on llvmpipe (LLVM 15.0.6, 256 bits); binding limit 134217728 bytes
//!   wte        loss path   loss        peak activations   step time
//!   trainable  fused      10.9572       880.55 MB       415.8 s
//!   trainable  unfused    10.9572      1289.11 MB       470.1 s
//!   frozen     fused      10.9572       718.81 MB       436.9 s
//!   frozen     unfused    10.9572      1125.28 MB       311.0 s

use std::time::Instant;

use glassgrad::gpu::limit_bindings_to;
use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::{Category, Gpu, Result, Tensor};

fn main() -> Result<()> {
    let arg = |i: usize, default: usize| {
        std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    let (layers, b, t) = (arg(1, 12), arg(2, 4), arg(3, 256));
    let gpu = Gpu::new()?;
    let _limit = limit_bindings_to(128 << 20); // WebGPU's default, whatever the adapter allows
    let v = 50257;
    let model = Gpt2::new_random(&gpu, Gpt2Config::new(v, 1024, 768, layers, 12), 1)?;
    println!(
        "GPT-2 C768 L{layers}, B{b} T{t}: {:.1}M params on {}; binding limit {} bytes",
        model.num_parameters() as f64 / 1e6,
        gpu.info.name,
        gpu.max_binding()
    );
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7919 % v) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 7919 % v) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(&gpu, &targets, &[b, t])?; // (B, T)
    let params = model.named_parameters();
    println!("wte        loss path   loss        peak activations   step time");
    // Trainable wte (full fine-tuning: its two [V, C] gradients are built in backward), and
    // frozen wte (LoRA: the head only passes dx back).
    for (frozen, fused) in [(false, true), (false, false), (true, true), (true, false)] {
        model.wte.set_requires_grad(!frozen)?;
        params.iter().for_each(|(_, p)| p.zero_grad());
        gpu.synchronize()?;
        gpu.reset_peaks();
        let start = Instant::now();
        let opts = ForwardOptions::default();
        let loss = if fused {
            model.forward_loss(&ids, &targets, &opts)? // (1), no (B·T, V) logits
        } else {
            Gpt2::loss(&model.forward(&ids, &opts)?.logits, &targets)? // (B, T, V) logits first
        };
        loss.backward()?;
        let value = loss.item()?;
        let seconds = start.elapsed().as_secs_f64();
        let peak = gpu.memory().peak(Category::Activations);
        let name = if fused { "fused" } else { "unfused" };
        let wte = if frozen { "frozen" } else { "trainable" };
        println!(
            "{wte:<10} {name:<10} {value:.4}   {:>10.2} MB   {:>9.1} s",
            peak as f64 / 1e6,
            seconds
        );
    }
    Ok(())
}
