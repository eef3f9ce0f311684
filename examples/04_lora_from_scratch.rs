//! 04 — LoRA from scratch on one layer: a rank-r update that trains, and folds into the weight.
//!
//! LoRA freezes a layer's weight W and learns ΔW = s·(B·A)ᵀ with A (r, in), B (out, r): here the
//! first block's c_attn of a small GPT-2 (W is 24×72, Conv1D [in, out]), r = 2, so 2·(24 + 72) =
//! 192 numbers train instead of 1728. B starts at zero, so the wrapped model starts as the base;
//! a few AdamW steps move it. Then: ΔW has rank r (Gaussian elimination in f64 counts the
//! pivots), and merging W ← W + ΔW gives the adapter's logits with no adapter left, at the
//! base's cost; unmerging gives W back within f32 rounding.
//!
//! Run: cargo run --release --example 04_lora_from_scratch [-- OUT_DIR]
//! (with OUT_DIR, the adapter is saved there in PEFT's layout, with the adapter's logits beside it
//! in logits.safetensors; `PeftModel.from_pretrained` loads it and gives these logits to 4e-6)
//! Expected output:
//!   trainable params: 192 || all params: 17,784 || trainable%: 1.0796
//!   step  0: loss 5.3786
//!   step 20: loss 3.6118
//!   rank of ΔW: 2 (r = 2; ΔW is 24×72, so a full update could have rank 24)
//!   merged vs adapter logits: max |diff| 3.46e-6 (logits up to 4.08)
//!   unmerge: W back within 2.98e-8 of the base

use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::{LoraConfig, LoraModel, inject, save_adapter};
use glassgrad::{Gpu, Result, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model");

/// The rank of a rows×cols matrix: Gaussian elimination with partial pivoting, counting pivots
/// larger than 1e-9 of the largest entry (ΔW's other singular values are f32 noise, ~1e-8).
fn rank(mut m: Vec<f64>, rows: usize, cols: usize) -> usize {
    let tol = 1e-9 * m.iter().fold(0f64, |a, x| a.max(x.abs()));
    let mut rank = 0;
    for col in 0..cols {
        let Some(p) = (rank..rows)
            .max_by(|&i, &j| m[i * cols + col].abs().total_cmp(&m[j * cols + col].abs()))
        else {
            break;
        };
        if m[p * cols + col].abs() <= tol {
            continue;
        }
        for k in 0..cols {
            m.swap(rank * cols + k, p * cols + k);
        }
        for i in rank + 1..rows {
            let f = m[i * cols + col] / m[rank * cols + col];
            for k in col..cols {
                m[i * cols + k] -= f * m[rank * cols + k];
            }
        }
        rank += 1;
    }
    rank
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let mut model = Gpt2::from_weights(&gpu, &Gpt2Weights::load(MODEL)?)?;
    let base_weight = model.blocks[0].c_attn.weight.to_vec()?; // (24, 72)
    let config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: vec!["h.0.attn.c_attn".into()], // suffix match: transformer.h.0.attn.c_attn
        ..LoraConfig::default()
    };
    let lora: LoraModel = inject(&mut model, &config, 0)?; // freezes the base, wraps one layer
    println!("{}", model.trainable_summary());

    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 7 % 97) as u32).collect();
    let targets: Vec<u32> = (0..2 * 17).map(|i| ((i + 1) * 7 % 97) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 17])?; // (B, T)
    let targets = Tensor::from_u32(&gpu, &targets, &[2, 17])?; // (B, T)
    let params = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let mut opt =
        AdamW::new(vec![ParamGroup { params, lr: 2e-2, weight_decay: 0.0 }], 0.9, 0.999, 1e-8)?;
    for step in 0..=20 {
        opt.zero_grad();
        let out = model.forward(&ids, &ForwardOptions::default())?; // logits (B, T, V)
        let loss = Gpt2::loss(&out.logits, &targets)?;
        if step % 20 == 0 {
            println!("step {step:>2}: loss {:.4}", loss.item()?);
        }
        if step < 20 {
            loss.backward()?;
            opt.step()?; // only A and B have moments: the base is frozen
        }
    }

    let layer = &lora.layers[0];
    let (fan_in, fan_out) = (layer.linear.in_features(), layer.linear.out_features());
    let delta = LoraModel::delta_weight(layer)?; // (in, out) = s·(B·A)ᵀ
    println!(
        "rank of ΔW: {} (r = {}; ΔW is {fan_in}×{fan_out}, so a full update could have rank {})",
        rank(delta, fan_in, fan_out),
        config.r,
        fan_in.min(fan_out)
    );

    let adapter = model.forward(&ids, &ForwardOptions::default())?.logits.to_vec()?;
    if let Some(dir) = std::env::args().nth(1) {
        save_adapter(&model, &lora, &dir)?;
        let logits = glassgrad::io::NamedTensor::from_f32(&[2, 17, 97], &adapter);
        glassgrad::io::write_safetensors(
            format!("{dir}/logits.safetensors"),
            [("logits", &logits)],
        )?;
    }
    lora.merge()?; // W ← W + ΔW; the layer now runs x·W + b only
    let merged = model.forward(&ids, &ForwardOptions::default())?.logits.to_vec()?;
    let scale = adapter.iter().fold(0f32, |m, x| m.max(x.abs()));
    println!(
        "merged vs adapter logits: max |diff| {:.2e} (logits up to {scale:.2})",
        max_abs_diff(&merged, &adapter)
    );
    lora.unmerge()?;
    let back = model.blocks[0].c_attn.weight.to_vec()?;
    println!("unmerge: W back within {:.2e} of the base", max_abs_diff(&back, &base_weight));
    Ok(())
}
