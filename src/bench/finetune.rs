//! `glassgrad bench finetune-step`: a LoRA step beside a full fine-tuning step, same model, same
//! run, so the two times compare. The target: LoRA ≤ 0.8× the full step.
//!
//! Each step: forward, loss, backward, clipped AdamW (max_norm 1), zero_grad — what the trainer
//! does per micro-batch. Full: every parameter trains (the trainer's two groups). LoRA: r = 8,
//! lora_alpha 16, on c_attn (`peft::lora::inject`, which freezes the base); AdamW gets the
//! adapter only. Random weights and fixed tokens: the time does not depend on the values.
//! Gradient and optimizer bytes are the engine's own counts (`gpu.memory()`) after a backward.

use std::rc::Rc;

use std::time::Instant;

use super::BenchResult;
use crate::error::Result;
use crate::gpu::{Category, Gpu};
use crate::model::Gpt2Config;
use crate::model::gpt2::{ForwardOptions, Gpt2};
use crate::optim::AdamW;
use crate::peft::config::LoraConfig;
use crate::tensor::Tensor;

/// The two models: the tour's (L2 C64 NH4, batch 16 × 64 characters) and L4 C128 NH4 T128
/// B16; `size` sets B of both. The full and the LoRA step are timed alternately (one
/// call of each per repetition, 7 repetitions, medians), so load on the machine hits both alike.
pub fn finetune_step(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let mut results = vec![];
    for (config, b, t) in [
        (Gpt2Config::new(65, 64, 64, 2, 4), size.unwrap_or(16), 64),
        (Gpt2Config::new(65, 128, 128, 4, 4), size.unwrap_or(16), 128),
    ] {
        crate::model::size::check_model(gpu, &config, b, t, 5, "bench finetune-step")?;
        let mut steps =
            vec![Step::new(gpu, &config, b, t, "full")?, Step::new(gpu, &config, b, t, "lora")?];
        let mut ms = vec![vec![]; steps.len()];
        for _ in 0..7 {
            for (step, times) in steps.iter_mut().zip(&mut ms) {
                let start = Instant::now();
                step.run()?;
                gpu.synchronize()?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (step, mut times) in steps.into_iter().zip(ms) {
            times.sort_by(f64::total_cmp);
            results.push(step.result(gpu, &config, b, t, times[times.len() / 2]));
        }
    }
    Ok(results)
}

/// One method's model, optimizer and batch, and what its first step counted.
struct Step {
    model: Gpt2,
    optimizer: AdamW,
    ids: Tensor,     // (B, T)
    targets: Tensor, // (B, T)
    method: &'static str,
    dispatches: u64,
    gradient_bytes: u64,
    optimizer_bytes: u64,
}

impl Step {
    fn new(
        gpu: &Rc<Gpu>,
        config: &Gpt2Config,
        b: usize,
        t: usize,
        method: &'static str,
    ) -> Result<Step> {
        let mut model = Gpt2::new_random(gpu, config.clone(), 1)?;
        if method == "lora" {
            let lora = LoraConfig {
                r: 8,
                lora_alpha: 16.0,
                target_modules: vec!["c_attn".into()],
                ..LoraConfig::default()
            };
            crate::peft::lora::inject(&mut model, &lora, 1)?;
        }
        // Optimizer bytes: what AdamW::new allocated (the moments), counted by the engine.
        let optimizer_before = gpu.memory().live(Category::Optimizer);
        let groups = crate::train::trainer::param_groups(&model, 1e-3, 0.1);
        let optimizer = AdamW::new(groups, 0.9, 0.95, 1e-8)?;
        let optimizer_bytes = gpu.memory().live(Category::Optimizer) - optimizer_before;
        let vocab = config.vocab_size;
        let ids: Vec<u32> = (0..b * t).map(|i| (i * 31 % vocab) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 31 % vocab) as u32).collect();
        let ids = Tensor::from_u32(gpu, &ids, &[b, t])?; // (B, T)
        let targets = Tensor::from_u32(gpu, &targets, &[b, t])?; // (B, T)
        let mut step = Step {
            model,
            optimizer,
            ids,
            targets,
            method,
            dispatches: 0,
            gradient_bytes: 0,
            optimizer_bytes,
        };
        // The first step (the warm-up) counts the dispatches, and the gradient bytes held after
        // its backward.
        let (dispatches, gradients) =
            (gpu.dispatches.get(), gpu.memory().live(Category::Gradients));
        step.backward()?;
        step.gradient_bytes = gpu.memory().live(Category::Gradients) - gradients;
        step.optimizer.step_clipped(1.0)?;
        step.optimizer.zero_grad();
        gpu.synchronize()?;
        step.dispatches = gpu.dispatches.get() - dispatches;
        Ok(step)
    }

    fn backward(&self) -> Result<()> {
        let out = self.model.forward(&self.ids, &ForwardOptions::default())?;
        Gpt2::loss(&out.logits, &self.targets)?.backward()
    }

    fn run(&mut self) -> Result<()> {
        self.backward()?;
        self.optimizer.step_clipped(1.0)?;
        self.optimizer.zero_grad();
        Ok(())
    }

    fn result(&self, gpu: &Gpu, config: &Gpt2Config, b: usize, t: usize, ms: f64) -> BenchResult {
        let tokens_per_s = (b * t) as f64 / (ms * 1e-3);
        let shape = format!(
            "L{} C{} NH{} T{t} B{b} {}: {tokens_per_s:.0} tokens/s, {} dispatches, \
             gradients {} B, optimizer {} B",
            config.n_layer,
            config.n_embd,
            config.n_head,
            self.method,
            self.dispatches,
            self.gradient_bytes,
            self.optimizer_bytes
        );
        let mut r = BenchResult::new(gpu, "finetune_step", shape, ms);
        r.tokens_per_s = Some(tokens_per_s);
        r.dispatches = Some(self.dispatches);
        r.method = Some(self.method.into());
        r.gradient_bytes = Some(self.gradient_bytes);
        r.optimizer_bytes = Some(self.optimizer_bytes);
        r
    }
}
