//! 11 — Selective masking and the MAM adapter: training 0.5% of the base's own weights, and two
//! methods on one model.
//!
//! Selective masking trains a fixed sparse subset of W itself: each projection computes with
//! W + scatter(indices, values), where the K selected flat indices are fixed and the K values
//! (init 0) train. The gradient of the values is dW read at the indices (a gather), so the
//! gradient and AdamW's two moments are K-sized: at 0.5% the optimizer holds 8 bytes for each
//! selected entry instead of for every weight. The entries are chosen by magnitude (the largest
//! |W|) or by Fisher information (the largest Σ (∂L/∂W)² over a few batches, FISH mask), as one
//! global budget over all targeted layers. Merging adds the values into W: exactly the selected
//! entries of W move.
//! The MAM adapter (He et al. 2021) is prefix tuning plus a parallel bottleneck adapter beside
//! every MLP (fed with the MLP's input, its output scaled by s = 4 and added to the MLP's); its
//! W_up starts at zero, so MAM starts exactly where prefix tuning alone starts. The two methods
//! use different slots of the model (the input; each MLP's parallel slot), so they compose; two
//! methods on one slot (prompt + prefix tuning) are refused with an error naming both.
//!
//! Run: cargo run --release --example 11_sparse_masks_and_mam
//! Expected output (the tests' random GPT-2: C = 24, 2 blocks, 13,824 projection weights):
//!   full: trainable params: 17,592 || all params: 17,592 || trainable%: 100.0000
//!       AdamW state 140,736 bytes (8 per trainable number)
//!       step  0: loss 5.3786  step 30: loss 0.0024
//!   mask (magnitude, 0.5%): trainable params: 69 || all params: 17,661 || trainable%: 0.3907
//!       AdamW state 552 bytes (8 per trainable number)
//!       step  0: loss 5.3786  step 30: loss 4.4203
//!       merged: 69 of 13,824 projection weights moved (0.499%), the rest are the base's bits
//!   mask (fisher, 4 batches): the same 69-entry budget; 0 entries shared with magnitude's
//!       step  0: loss 5.3786  step 30: loss 3.9791
//!   mam (prefix Vt = 4 + parallel adapter R = 4, s = 4): trainable params: 824 || all params: 18,416 || trainable%: 4.4744
//!       starts at prefix tuning alone: max |Δlogits| = 0
//!       step  0: loss 5.1490  step 30: loss 2.0479
//!   prompt + prefix: PROMPT_TUNING + prefix tuning do not compose on this model: prefix tuning:
//!   the model already carries an input adapter (methods compose when they use different slots: …)
//! Full fine-tuning memorises the two fixed rows (it moves all 17,592 numbers, with 255× the
//! optimizer state); the mask moves 69. Fisher picks entirely other entries than magnitude (none
//! shared: the largest weights are not where this loss is steepest) and lowers the loss more.

use glassgrad::autograd::no_grad;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::Adapter;
use glassgrad::peft::bottleneck::{self, BottleneckConfig};
use glassgrad::peft::composite::compose;
use glassgrad::peft::prefix_tuning::{self, PrefixTuningConfig};
use glassgrad::peft::prompt_tuning::{self, PromptTuningConfig};
use glassgrad::peft::sparse_mask::{self, SparseMaskConfig};
use glassgrad::{Category, Gpu, Result, Tensor};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model");

/// 30 AdamW steps on fixed tokens; prints the optimizer's bytes (from the engine's accounting)
/// when asked, then the first and last loss.
fn train(gpu: &Gpu, model: &Gpt2, ids: &Tensor, targets: &Tensor, bytes: bool) -> Result<()> {
    let params = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let before = gpu.memory().live(Category::Optimizer);
    let group = ParamGroup { params, lr: 5e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8)?;
    if bytes {
        let state = gpu.memory().live(Category::Optimizer) - before;
        println!("    AdamW state {} bytes (8 per trainable number)", grouped(state as usize));
    }
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

fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Each targeted layer's weights, read back.
fn projections(model: &Gpt2, config: &SparseMaskConfig) -> Result<Vec<Vec<f32>>> {
    let layers = sparse_mask::plan(model, config)?;
    layers
        .iter()
        .map(|(name, _)| model.parameter(&format!("{name}.weight")).unwrap().to_vec())
        .collect()
}

fn logits(model: &Gpt2, ids: &Tensor) -> Result<Vec<f32>> {
    let _g = no_grad();
    model.forward(ids, &ForwardOptions::default())?.logits.to_vec()
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let weights = Gpt2Weights::load(MODEL)?;
    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 7 % 97) as u32).collect();
    let next: Vec<u32> = (0..2 * 17).map(|i| ((i + 1) * 7 % 97) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 17])?; // (B, T)
    let next = Tensor::from_u32(&gpu, &next, &[2, 17])?; // (B, T)

    // Full fine-tuning: the baseline's optimizer state.
    let model = Gpt2::from_weights(&gpu, &weights)?;
    println!("full: {}", model.trainable_summary());
    train(&gpu, &model, &ids, &next, true)?;

    // Selective masking by magnitude: 0.5% of the projections' weights.
    let config = SparseMaskConfig::default();
    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    let base = projections(&model, &config)?;
    let scores = sparse_mask::magnitude_scores(&model, &config)?;
    let total: usize = scores.iter().map(Vec::len).sum();
    let by_magnitude = sparse_mask::select(&scores, config.budget(total));
    let mask = sparse_mask::inject(&mut model, &config, &by_magnitude)?;
    println!("mask (magnitude, 0.5%): {}", model.trainable_summary());
    train(&gpu, &model, &ids, &next, true)?;
    Box::new(mask).merge_and_unload(&mut model)?;
    let merged = projections(&model, &config)?;
    let moved: usize = base
        .iter()
        .zip(&merged)
        .map(|(b, m)| b.iter().zip(m).filter(|(b, m)| b.to_bits() != m.to_bits()).count())
        .sum();
    println!(
        "    merged: {moved} of {} projection weights moved ({:.3}%), the rest are the base's bits",
        grouped(total),
        100.0 * moved as f64 / total as f64
    );

    // Selective masking by Fisher information: Σ (∂L/∂W)² over 4 batches (rows of the tokens).
    let config = SparseMaskConfig { mask_by: "fisher".into(), fisher_batches: 4, ..config };
    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    let rows = [(0usize, 9usize), (8, 17), (17, 26), (25, 34)];
    let (all_ids, all_next) = (ids.to_vec_u32()?, next.to_vec_u32()?);
    let scores = sparse_mask::fisher_scores(&model, &config, |b| {
        let (lo, hi) = rows[b];
        let x = Tensor::from_u32(&gpu, &all_ids[lo..hi], &[1, hi - lo])?;
        let y = Tensor::from_u32(&gpu, &all_next[lo..hi], &[1, hi - lo])?;
        Gpt2::loss(&model.forward(&x, &ForwardOptions::default())?.logits, &y)
    })?;
    let by_fisher = sparse_mask::select(&scores, config.budget(total));
    let shared: usize = by_fisher
        .iter()
        .zip(&by_magnitude)
        .map(|(f, m)| f.iter().filter(|i| m.contains(i)).count())
        .sum();
    sparse_mask::inject(&mut model, &config, &by_fisher)?;
    println!(
        "mask (fisher, 4 batches): the same {}-entry budget; {shared} entries shared with \
         magnitude's",
        model.num_trainable_parameters()
    );
    train(&gpu, &model, &ids, &next, false)?;

    // MAM: prefix tuning + a parallel adapter beside every MLP, scaled by 4.
    let prefix = PrefixTuningConfig { num_virtual_tokens: 4, ..Default::default() };
    let mut alone = Gpt2::from_weights(&gpu, &weights)?;
    prefix_tuning::inject(&mut alone, &prefix, 0)?;
    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    let first = Box::new(prefix_tuning::inject(&mut model, &prefix, 0)?);
    let mam = compose(&mut model, first, "parallel adapter", |m| {
        Ok(Box::new(bottleneck::inject(m, &BottleneckConfig::parallel(4, 4.0), 1)?))
    })?;
    println!("mam (prefix Vt = 4 + parallel adapter R = 4, s = 4): {}", model.trainable_summary());
    let diff = logits(&model, &ids)?
        .iter()
        .zip(logits(&alone, &ids)?)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("    starts at prefix tuning alone: max |Δlogits| = {diff}");
    train(&gpu, &model, &ids, &next, false)?;
    assert_eq!(mam.parts.len(), 2);

    // Two methods on one slot: refused, naming both.
    let mut model = Gpt2::from_weights(&gpu, &weights)?;
    let prompt = PromptTuningConfig { num_virtual_tokens: 4, ..Default::default() };
    let first = Box::new(prompt_tuning::inject(&mut model, &prompt, 0)?);
    match compose(&mut model, first, "prefix tuning", |m| {
        Ok(Box::new(prefix_tuning::inject(m, &prefix, 0)?))
    }) {
        Ok(_) => println!("prompt + prefix: composed (unexpected)"),
        Err(e) => println!("prompt + prefix: {e}"),
    }
    Ok(())
}
