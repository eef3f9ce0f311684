//! 06 — VeRA against LoRA: what each trains as the rank grows.
//!
//! LoRA gives every adapted layer its own A (r, in) and B (out, r): r·(in + out) trained numbers
//! per layer, growing with r. VeRA shares one frozen random pair A (r, in_max), B (out_max, r)
//! across all layers and trains only two vectors per layer, λ_d (r) and λ_b (out): r + out
//! numbers, almost flat in r. So VeRA can afford a large rank (PEFT's default is 256).
//! Below: the counts on GPT-2 small's c_attn (C = 768, 12 layers) from the formulas, the same
//! formulas checked against `inject` on the small test model, and a few AdamW steps of each,
//! where VeRA's λ_b starts at 0 (so training starts at the base, as LoRA's B = 0 does).
//!
//! Run: cargo run --release --example 06_vera_vs_lora [-- OUT_DIR]
//! (with OUT_DIR, the trained VeRA adapter is saved there in PEFT's layout, with its shared
//! projections, and its logits in logits.safetensors: `python3 scripts/check_lora_in_peft.py
//! OUT_DIR` loads it in PEFT and compares)
//! Expected output:
//!   GPT-2 small, c_attn in 12 layers (768 → 2304):
//!      r   LoRA trained   VeRA trained   VeRA frozen (A, B shared)
//!      1         36,864         27,660          3,072
//!      4        147,456         27,696         12,288
//!     16        589,824         27,840         49,152
//!     64      2,359,296         28,416        196,608
//!    256      9,437,184         30,720        786,432
//!   small model (C = 24, 2 layers), counted by inject:
//!     r =  1: LoRA 192 = 2·1·(24 + 72), VeRA 146 = 2·(1 + 72)
//!     r =  4: LoRA 768 = 2·4·(24 + 72), VeRA 152 = 2·(4 + 72)
//!     r = 16: LoRA 3,072 = 2·16·(24 + 72), VeRA 176 = 2·(16 + 72)
//!   LoRA r = 4: trainable params: 768 || all params: 18,360 || trainable%: 4.1830
//!       step  0: loss 5.3786  step 30: loss 2.4897
//!   VeRA r = 16: trainable params: 176 || all params: 17,768 || trainable%: 0.9905
//!       step  0: loss 5.3786  step 30: loss 4.2700
//! (VeRA moves more slowly at the same learning rate: its few numbers each scale a whole
//! random direction, and λ_d gets no gradient until λ_b has left 0; VeRA's paper uses larger
//! learning rates.) With OUT_DIR, PEFT loads the saved adapter and gives its logits to 4.9e-6.

use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::vera::{self, VeraConfig};
use glassgrad::peft::{Adapter, LoraConfig, files, inject};
use glassgrad::{Gpu, Result, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model");

/// LoRA's trained numbers: r·(in + out) per layer.
fn lora_count(layers: usize, fan_in: usize, fan_out: usize, r: usize) -> usize {
    layers * r * (fan_in + fan_out)
}

/// VeRA's trained numbers: λ_d (r) + λ_b (out) per layer.
fn vera_count(layers: usize, fan_out: usize, r: usize) -> usize {
    layers * (r + fan_out)
}

/// 1234567 → "1,234,567".
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A few AdamW steps on fixed tokens; prints the first and last loss.
fn train(model: &Gpt2, ids: &Tensor, targets: &Tensor, lr: f32) -> Result<()> {
    let params = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let mut opt = AdamW::new(vec![ParamGroup { params, lr, weight_decay: 0.0 }], 0.9, 0.999, 1e-8)?;
    let mut line = String::from("  ");
    for step in 0..=30 {
        opt.zero_grad();
        let loss = Gpt2::loss(&model.forward(ids, &ForwardOptions::default())?.logits, targets)?;
        if step % 30 == 0 {
            line += &format!("  step {step:>2}: loss {:.4}", loss.item()?);
        }
        if step < 30 {
            loss.backward()?;
            opt.step()?; // only the adapter has moments: the base is frozen
        }
    }
    println!("{line}");
    Ok(())
}

fn main() -> Result<()> {
    let (c, layers) = (768, 12);
    println!("GPT-2 small, c_attn in {layers} layers ({c} → {}):", 3 * c);
    println!("     r   LoRA trained   VeRA trained   VeRA frozen (A, B shared)");
    for r in [1, 4, 16, 64, 256] {
        println!(
            "  {r:>4}  {:>13}  {:>13}  {:>13}",
            grouped(lora_count(layers, c, 3 * c, r)),
            grouped(vera_count(layers, 3 * c, r)),
            grouped(r * c + 3 * c * r)
        );
    }

    let gpu = Gpu::new()?;
    let weights = Gpt2Weights::load(MODEL)?;
    let targets = vec!["c_attn".to_string()];
    println!("small model (C = 24, 2 layers), counted by inject:");
    for r in [1, 4, 16] {
        let mut model = Gpt2::from_weights(&gpu, &weights)?;
        inject(
            &mut model,
            &LoraConfig { r, target_modules: targets.clone(), ..Default::default() },
            0,
        )?;
        let lora = model.num_trainable_parameters();
        assert_eq!(lora, lora_count(2, 24, 72, r), "LoRA's formula");
        let mut model = Gpt2::from_weights(&gpu, &weights)?;
        vera::inject(
            &mut model,
            &VeraConfig { r, target_modules: targets.clone(), ..Default::default() },
            0,
        )?;
        let vera = model.num_trainable_parameters();
        assert_eq!(vera, vera_count(2, 72, r), "VeRA's formula");
        println!(
            "  r = {r:>2}: LoRA {} = 2·{r}·(24 + 72), VeRA {vera} = 2·({r} + 72)",
            grouped(lora)
        );
    }

    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 7 % 97) as u32).collect();
    let next: Vec<u32> = (0..2 * 17).map(|i| ((i + 1) * 7 % 97) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 17])?; // (B, T)
    let next = Tensor::from_u32(&gpu, &next, &[2, 17])?; // (B, T)

    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    inject(
        &mut model,
        &LoraConfig { r: 4, target_modules: targets.clone(), ..Default::default() },
        0,
    )?;
    println!("LoRA r = 4: {}", model.trainable_summary());
    train(&model, &ids, &next, 2e-2)?;

    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    let config = VeraConfig { r: 16, target_modules: targets, ..Default::default() };
    let vera = vera::inject(&mut model, &config, 0)?;
    println!("VeRA r = 16: {}", model.trainable_summary());
    train(&model, &ids, &next, 2e-2)?;

    if let Some(dir) = std::env::args().nth(1) {
        files::save(&model, &vera, &dir)?; // λ_d, λ_b, and the shared vera_A, vera_B
        let logits = model.forward(&ids, &ForwardOptions::default())?.logits.to_vec()?;
        let logits = glassgrad::io::NamedTensor::from_f32(&[2, 17, 97], &logits);
        glassgrad::io::write_safetensors(
            format!("{dir}/logits.safetensors"),
            [("logits", &logits)],
        )?;
        println!(
            "saved the VeRA adapter ({} tensors) in {dir}",
            vera.tensors_to_save(&model)?.len()
        );
    }
    Ok(())
}
