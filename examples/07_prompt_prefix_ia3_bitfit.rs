//! 07 — Methods that leave the weights alone: prompt tuning, prefix tuning, IA3, BitFit.
//!
//! Prompt tuning learns Vt input embeddings put in front of the tokens; prefix tuning learns Vt
//! keys and values in front of every layer's attention (the real tokens' positions then start at
//! Vt); IA3 learns one vector per layer that rescales c_attn's output and mlp.c_proj's input;
//! BitFit trains only the biases. Each freezes the whole base. Below, each trains 30 AdamW steps
//! on the same tokens; for prompt and prefix tuning we also measure what the model attends to:
//! the share of each real token's attention (averaged over heads, tokens and batch) that goes to
//! the Vt virtual positions, per layer, before and after training.
//!
//! Run: cargo run --release --example 07_prompt_prefix_ia3_bitfit [-- OUT_DIR]
//! (with OUT_DIR, each adapter is saved in OUT_DIR/<method> with its logits in
//! logits.safetensors; `python3 scripts/check_methods_in_peft.py OUT_DIR/{prompt,prefix,ia3}`
//! loads the PEFT ones in PEFT and compares)
//! Expected output:
//!   prompt (Vt = 4): trainable params: 96 || all params: 17,688 || trainable%: 0.5427
//!       step  0: loss 5.1766  step 30: loss 4.5551
//!     attention on the 4 virtual positions by layer: before [0.380, 0.442], after [0.407, 0.449]
//!   prefix (Vt = 4): trainable params: 384 || all params: 17,976 || trainable%: 2.1362
//!       step  0: loss 5.1490  step 30: loss 3.4795
//!     attention on the 4 virtual positions by layer: before [0.360, 0.345], after [0.465, 0.534]
//!   ia3: trainable params: 336 || all params: 17,928 || trainable%: 1.8742
//!       step  0: loss 5.3786  step 30: loss 3.0449
//!   bitfit: trainable params: 552 || all params: 17,592 || trainable%: 3.1378
//!       step  0: loss 5.3786  step 30: loss 3.7705
//! Prompt and prefix tuning start away from the base (their random virtual tokens already take
//! a third of the attention); IA3 (l = 1) and BitFit start at the base's loss. With OUT_DIR, PEFT
//! loads the three PEFT adapters and gives their logits to 2.9e-6, 3.6e-6 and 6.7e-6.

use std::rc::Rc;

use glassgrad::autograd::no_grad;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::bitfit::{self, BitFitConfig};
use glassgrad::peft::ia3::{self, Ia3Config};
use glassgrad::peft::prefix_tuning::{self, PrefixTuningConfig};
use glassgrad::peft::prompt_tuning::{self, PromptTuningConfig};
use glassgrad::peft::{Adapter, files};
use glassgrad::{Gpu, Result, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model");
const VT: usize = 4;

/// 30 AdamW steps on fixed tokens; prints the first and last loss.
fn train(model: &Gpt2, ids: &Tensor, targets: &Tensor) -> Result<()> {
    let params = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let group = ParamGroup { params, lr: 5e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8)?;
    let mut line = String::from("  ");
    for step in 0..=30 {
        opt.zero_grad();
        let loss = Gpt2::loss(&model.forward(ids, &ForwardOptions::default())?.logits, targets)?;
        if step % 30 == 0 {
            line += &format!("  step {step:>2}: loss {:.4}", loss.item()?);
        }
        if step < 30 {
            loss.backward()?;
            opt.step()?;
        }
    }
    println!("{line}");
    Ok(())
}

/// Per layer: the mean share of a real token's attention that lands on the Vt virtual
/// positions, computed in f64 from each layer's q and k (softmax(q·kᵀ/√HS) over the virtual
/// keys and the causal real ones).
fn attention_on_virtual(model: &Gpt2, ids: &Tensor) -> Result<Vec<f64>> {
    let _g = no_grad();
    let opts = ForwardOptions { keep_qkv: true, ..Default::default() };
    let qkv = model.forward(ids, &opts)?.qkv; // per layer (B, T', 3C)
    let virtual_keys = match &model.input_adapter {
        Some(a) => a.prefix()?, // prefix tuning: (Vt, C) keys per layer
        None => None,
    };
    let (c, nh) = (model.config.n_embd, model.config.n_head);
    let hs = c / nh;
    let mut shares = vec![];
    for (l, qkv) in qkv.iter().enumerate() {
        let (b, t) = (qkv.shape()[0], qkv.shape()[1]);
        let x = qkv.to_vec()?;
        let at = |bb: usize, i: usize, part: usize, h: usize, d: usize| {
            x[(bb * t + i) * 3 * c + part * c + h * hs + d] as f64
        };
        let front: Vec<f32> = match &virtual_keys {
            Some(p) => p[l].keys.to_vec()?, // (Vt, C)
            None => vec![],
        };
        // Prompt tuning: the virtual positions are the first Vt of the sequence itself.
        let (first_real, n_front) = if front.is_empty() { (VT, 0) } else { (0, VT) };
        let (mut total, mut count) = (0.0, 0);
        for bb in 0..b {
            for h in 0..nh {
                for i in first_real..t {
                    let dot = |k: &dyn Fn(usize) -> f64| {
                        (0..hs).map(|d| at(bb, i, 0, h, d) * k(d)).sum::<f64>() / (hs as f64).sqrt()
                    };
                    let mut scores: Vec<(bool, f64)> = (0..n_front)
                        .map(|j| (true, dot(&|d| front[j * c + h * hs + d] as f64)))
                        .collect();
                    for j in 0..=i {
                        scores.push((j < first_real, dot(&|d| at(bb, j, 1, h, d))));
                    }
                    let max = scores.iter().fold(f64::MIN, |m, s| m.max(s.1));
                    let sum: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                    let on: f64 = scores.iter().filter(|s| s.0).map(|s| (s.1 - max).exp()).sum();
                    total += on / sum;
                    count += 1;
                }
            }
        }
        shares.push(total / count as f64);
    }
    Ok(shares)
}

fn show(v: &[f64]) -> String {
    format!("[{}]", v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", "))
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let weights = Gpt2Weights::load(MODEL)?;
    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 7 % 97) as u32).collect();
    let next: Vec<u32> = (0..2 * 17).map(|i| ((i + 1) * 7 % 97) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 17])?; // (B, T)
    let next = Tensor::from_u32(&gpu, &next, &[2, 17])?; // (B, T)
    let out = std::env::args().nth(1);

    for method in ["prompt", "prefix", "ia3", "bitfit"] {
        let mut model = Gpt2::from_weights(&gpu, &weights)?;
        let adapter: Rc<dyn Adapter> = match method {
            "prompt" => {
                let config = PromptTuningConfig { num_virtual_tokens: VT, ..Default::default() };
                Rc::new(prompt_tuning::inject(&mut model, &config, 0)?)
            }
            "prefix" => {
                let config = PrefixTuningConfig { num_virtual_tokens: VT, ..Default::default() };
                Rc::new(prefix_tuning::inject(&mut model, &config, 0)?)
            }
            "ia3" => Rc::new(ia3::inject(&mut model, &Ia3Config::default(), 0)?),
            _ => Rc::new(bitfit::inject(&mut model, &BitFitConfig::default())?),
        };
        let virtual_tokens = model.input_adapter.is_some();
        let label = if virtual_tokens { format!("{method} (Vt = {VT})") } else { method.into() };
        println!("{label}: {}", model.trainable_summary());
        let before = if virtual_tokens { attention_on_virtual(&model, &ids)? } else { vec![] };
        train(&model, &ids, &next)?;
        if virtual_tokens {
            let after = attention_on_virtual(&model, &ids)?;
            println!(
                "    attention on the {VT} virtual positions by layer: before {}, after {}",
                show(&before),
                show(&after)
            );
        }
        if let Some(dir) = &out {
            let dir = format!("{dir}/{method}");
            files::save(&model, adapter.as_ref(), &dir)?;
            let logits = model.forward(&ids, &ForwardOptions::default())?.logits.to_vec()?;
            let logits = glassgrad::io::NamedTensor::from_f32(&[2, 17, 97], &logits);
            glassgrad::io::write_safetensors(
                format!("{dir}/logits.safetensors"),
                [("logits", &logits)],
            )?;
        }
    }
    Ok(())
}
