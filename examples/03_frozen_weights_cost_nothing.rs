//! 03 — A frozen weight costs no gradient memory, and no activation memory saved just for it.
//!
//! Parameter-efficient fine-tuning (LoRA, prefix tuning, …) rests on this: the base model's weights
//! are frozen, so backward must not allocate their gradients, and ops must not keep activations
//! that only a frozen weight's gradient would need (x·W keeps x only if W needs a gradient).
//! Here the same forward + backward runs twice on a small GPT-2, with every parameter trainable and
//! then with only the final LayerNorm trainable, and the engine's own byte counts are printed
//! (activations include the backward pass's temporaries).
//!
//! Run: cargo run --release --example 03_frozen_weights_cost_nothing
//! Expected output (any adapter; the byte counts are the engine's accounting, not estimates):
//!   everything trainable:     17592 trainable of 17592 params; gradients 70368 B, activations peak 233012 B
//!   only ln_f trainable:         48 trainable of 17592 params; gradients 192 B, activations peak 57188 B
//!   frozen parameters with a gradient: 0

use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::{Category, Gpu, Result, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model");

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let weights = Gpt2Weights::load(MODEL)?;
    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 7 % 97) as u32).collect();
    let targets: Vec<u32> = (0..2 * 17).map(|i| ((i + 1) * 7 % 97) as u32).collect();
    let mut frozen_with_grad = 0;
    for (label, trainable) in
        [("everything trainable:", None), ("only ln_f trainable:", Some("transformer.ln_f"))]
    {
        let model = Gpt2::from_weights(&gpu, &weights)?;
        if let Some(prefix) = trainable {
            model.set_trainable(|name| name.starts_with(prefix))?;
        }
        let ids = Tensor::from_u32(&gpu, &ids, &[2, 17])?; // (B, T)
        let targets = Tensor::from_u32(&gpu, &targets, &[2, 17])?; // (B, T)
        gpu.reset_peaks();
        let before = gpu.memory();
        let out = model.forward(&ids, &ForwardOptions::default())?; // logits (B, T, V)
        Gpt2::loss(&out.logits, &targets)?.backward()?;
        let after = gpu.memory();
        let params = model.named_parameters();
        let n_trainable: usize =
            params.iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.numel()).sum();
        let n_all: usize = params.iter().map(|(_, p)| p.numel()).sum();
        frozen_with_grad +=
            params.iter().filter(|(_, p)| !p.requires_grad() && p.grad().is_some()).count();
        println!(
            "{label:<24} {n_trainable:>6} trainable of {n_all} params; gradients {} B, activations peak {} B",
            after.live(Category::Gradients) - before.live(Category::Gradients),
            after.peak(Category::Activations) - before.live(Category::Activations),
        );
    }
    println!("frozen parameters with a gradient: {frozen_with_grad}");
    Ok(())
}
