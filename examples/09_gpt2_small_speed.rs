//! 09 — GPT-2 small's shapes at speed: forward tokens/s and KV-cache generation tokens/s.
//!
//! Random weights of GPT-2 small (124M parameters; nothing downloaded), under the 128 MiB binding
//! limit (lavapipe's own; forced on adapters that allow more), so wte (154 MB) runs split.
//! Forward: B1 T128, no graph recorded, median of 3 after a warm-up. Generation: greedy, 32 new
//! tokens after an 8-token prompt, through the KV cache (`model::generate`). LoRA: one step of
//! PEFT's default LoRA (r 8 on c_attn, base frozen) at B4 T128 with AdamW.
//! `python3 scripts/torch_train_step.py --gpt2-small` times the same three with PyTorch on the CPU.
//!
//! Run: cargo run --release --example 09_gpt2_small_speed [-- LAYERS]   (LAYERS: 12 by default)
//! With GLASSGRAD_PROFILE=1 each part also prints its per-kernel times (each dispatch then runs
//! alone, so the totals are slower).
//! Output seen on lavapipe, 2 cores shared with other jobs (2026-12-07 08:24–08:28 UTC, load
//! average 6.5–8.3; the figures depend on the machine and its load, and quiet they are 4–7×
//! faster; README's "Measured" sets them beside PyTorch's):
//!   GPT-2 small shapes (12 layers), 124.4M params, on llvmpipe (LLVM 15.0.6, 256 bits) | Vulkan | Cpu | llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)
//!   forward B1 T128: 9186 ms, 14 tokens/s
//!   generate (KV cache, greedy): 32 tokens in 10.44 s, 3.1 tokens/s
//!   LoRA (r 8, c_attn) step B4 T128: 66.13 s, 8 tokens/s
//! (The code before wte's windows were bound in place and the head's products were laid out for
//! the subgroup kernel, run just before at load 6.4–8.2: 6630 ms, 14.89 s and 94.62 s.)

use std::time::Instant;

use glassgrad::gpu::limit_bindings_to;
use glassgrad::model::Gpt2Config;
use glassgrad::model::generate::{SampleOptions, generate};
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::config::LoraConfig;
use glassgrad::peft::lora::inject;
use glassgrad::{Gpu, Result, Tensor, autograd};

fn main() -> Result<()> {
    let layers = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(12);
    let gpu = Gpu::new()?;
    let _limit = limit_bindings_to(128 << 20);
    let mut model = Gpt2::new_random(&gpu, Gpt2Config::new(50257, 1024, 768, layers, 12), 1)?;
    let profiling = std::env::var("GLASSGRAD_PROFILE").is_ok_and(|v| v == "1");
    let report = |what: &str| {
        if profiling {
            print!("per-kernel times, {what}:\n{}", gpu.profile_report());
            gpu.set_profiling(true); // starts the next part's figures from zero
        }
    };
    println!(
        "GPT-2 small shapes ({layers} layers), {:.1}M params, on {}",
        model.num_parameters() as f64 / 1e6,
        gpu.describe()
    );
    let tape_off = autograd::no_grad();
    let t = 128;
    let ids: Vec<u32> = (0..t).map(|i| (i * 7919 % 50257) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[1, t])?; // (1, T)
    let mut times = vec![];
    for _ in 0..4 {
        gpu.synchronize()?;
        let start = Instant::now();
        let logits = model.forward(&ids, &ForwardOptions::default())?.logits; // (1, T, V)
        logits.to_vec()?; // waits for the GPU
        times.push(start.elapsed().as_secs_f64());
    }
    let mut timed = times[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    let forward = timed[1];
    println!("forward B1 T{t}: {:.0} ms, {:.0} tokens/s", forward * 1e3, t as f64 / forward);
    report("4 forwards");

    let prompt: Vec<u32> = (0..8).map(|i| (i * 131 % 50257) as u32).collect();
    let opts = SampleOptions { max_new_tokens: 32, temperature: 0.0, top_k: 0, seed: 0 };
    generate(&model, &prompt, &SampleOptions { max_new_tokens: 2, ..opts })?; // warm-up
    let start = Instant::now();
    let new = generate(&model, &prompt, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "generate (KV cache, greedy): {} tokens in {:.2} s, {:.1} tokens/s",
        new.len(),
        seconds,
        new.len() as f64 / seconds
    );
    report("generation (warm-up and timed)");
    drop(tape_off);

    // A LoRA step (PEFT's defaults: r 8 on c_attn; the base frozen) at B4 T128: forward with the
    // fused head + loss, backward, AdamW. Mean of 2 after a warm-up.
    let lora = inject(&mut model, &LoraConfig::default(), 0)?;
    let params: Vec<Tensor> = lora.named_parameters(&model).into_iter().map(|(_, p)| p).collect();
    let group = ParamGroup { params, lr: 1e-4, weight_decay: 0.0 };
    let mut adamw = AdamW::new(vec![group], 0.9, 0.999, 1e-8)?;
    let (b, t) = (4, 128);
    let batch: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 50257) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &batch[..], &[b, t])?; // (B, T)
    let mut seconds = vec![];
    for _ in 0..3 {
        gpu.synchronize()?;
        let start = Instant::now();
        let loss = model.forward_loss(&ids, &ids, &ForwardOptions::default())?;
        loss.backward()?;
        adamw.step()?;
        loss.item()?; // waits for the GPU
        seconds.push(start.elapsed().as_secs_f64());
    }
    let step = (seconds[1] + seconds[2]) / 2.0;
    println!(
        "LoRA (r 8, c_attn) step B{b} T{t}: {step:.2} s, {:.0} tokens/s",
        (b * t) as f64 / step
    );
    report("3 LoRA steps");
    Ok(())
}
