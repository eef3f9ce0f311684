//! LoRA's training-time variants (src/peft/variants.rs) through the trainer's hooks: LoRA+'s
//! learning-rate ratio, LoRA-FA's frozen A and the activation memory it saves, Delta-LoRA's move
//! of W, DyLoRA's truncated ranks. Each on the small random GPT-2 of tests/data/gpt2_ref.

use std::path::Path;

use glassgrad::Tensor;
use glassgrad::cpu::Rng;
use glassgrad::data::{Batch, Batches, Split};
use glassgrad::gpu::Category;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::variants::{self, Variant};
use glassgrad::peft::{Adapter, LoraConfig, LoraModel, files, inject};
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::trainer::{TrainOptions, train_adapter};

use crate::gpu::harness::{gpu, temp_dir};

const GPT2_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

fn base() -> Gpt2 {
    let weights = Gpt2Weights::load(Path::new(GPT2_REF).join("model")).unwrap();
    Gpt2::from_weights(&gpu(), &weights).unwrap()
}

/// Seeded random next-token batches over the base's vocabulary.
struct Random {
    vocab: usize,
}

impl Batches for Random {
    fn sample(&self, _: Split, b: usize, t: usize, rng: &mut Rng) -> glassgrad::Result<Batch> {
        let ids: Vec<u32> = (0..b * (t + 1)).map(|_| rng.below(self.vocab) as u32).collect();
        let (mut inputs, mut targets) = (vec![], vec![]);
        for row in ids.chunks(t + 1) {
            inputs.extend_from_slice(&row[..t]);
            targets.extend_from_slice(&row[1..]);
        }
        Ok(Batch { batch: b, seq_len: t, inputs, targets })
    }
}

fn lora(model: &mut Gpt2, variant: Variant) -> LoraModel {
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: vec!["c_attn".into(), "c_fc".into()],
        ..LoraConfig::default()
    };
    let mut lora = inject(model, &config, 7).unwrap();
    variants::apply(&mut lora, variant).unwrap();
    lora
}

/// `steps` AdamW steps (lr 1e-2, no warmup, decay or clipping) through the trainer.
fn fit(model: &mut Gpt2, adapter: &dyn Adapter, steps: usize, out: &Path) {
    let options = TrainOptions {
        steps,
        batch_size: 2,
        seq_len: 8,
        grad_accum: 1,
        lr: 1e-2,
        min_lr: 1e-2,
        warmup: 0,
        weight_decay: 0.0,
        grad_clip: 0.0,
        eval_every: 0,
        eval_batches: 1,
        seed: 3,
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        checkpoint_every: None,
    };
    let data = Random { vocab: model.config.vocab_size };
    let tokenizer = Tokenizer::Char(CharTokenizer::from_chars(vec!['a']).unwrap());
    train_adapter(model, Some(adapter), &data, &tokenizer, &options, |_| {}).unwrap();
}

fn max_abs(t: &Tensor) -> f32 {
    t.to_vec().unwrap().iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Adam's first step moves every entry with a nonzero gradient by lr·g/(|g| + eps) ≈ ±lr. B
/// starts at 0, so after one step |B| = the learning rate B was given: lr for LoRA, ratio·lr
/// for LoRA+ (A's gradient is s·Bᵀ·… = 0 at B = 0, so A does not move on step one).
#[test]
fn lora_plus_gives_b_ratio_times_the_learning_rate() {
    for (variant, want) in [(Variant::Lora, 1e-2), (Variant::Plus { ratio: 16.0 }, 16e-2)] {
        let mut model = base();
        let lora = lora(&mut model, variant);
        let dir = temp_dir("lora-plus");
        fit(&mut model, &lora, 1, &dir);
        for l in &lora.layers {
            let b = max_abs(&l.lora.lora_b);
            assert!((b - want).abs() <= 1e-3 * want, "{}: max |B| {b}, want {want}", l.name);
        }
    }
}

/// LoRA-FA: A keeps its initial values and gets no gradient; B trains; and the graph holds less
/// for backward: no wrapped layer's input is kept for A's gradient.
#[test]
fn lora_fa_freezes_a_and_saves_activation_memory() {
    let gpu = gpu();
    let mut peaks = vec![];
    for variant in [Variant::Lora, Variant::Fa] {
        let fa = matches!(variant, Variant::Fa);
        let mut model = base();
        let lora = lora(&mut model, variant);
        let a0: Vec<Vec<f32>> =
            lora.layers.iter().map(|l| l.lora.lora_a.to_vec().unwrap()).collect();
        let dir = temp_dir("lora-fa");
        fit(&mut model, &lora, 2, &dir);
        for (l, a0) in lora.layers.iter().zip(&a0) {
            assert_eq!(l.lora.lora_a.requires_grad(), !fa, "{}", l.name);
            let moved = l.lora.lora_a.to_vec().unwrap() != *a0;
            assert_eq!(moved, !fa, "{}: A moved = {moved}", l.name);
            assert!(max_abs(&l.lora.lora_b) > 0.0, "{}: B did not train", l.name);
        }
        // One forward + backward on a larger batch, activations measured by the engine.
        let ids: Vec<u32> = (0..8 * 16).map(|i| (i * 7 % model.config.vocab_size) as u32).collect();
        let ids = Tensor::from_u32(&gpu, &ids, &[8, 16]).unwrap();
        let targets = ids.clone();
        gpu.synchronize().unwrap();
        let before = gpu.memory().live(Category::Activations);
        let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
        let loss = Gpt2::loss(&out.logits, &targets).unwrap();
        gpu.synchronize().unwrap();
        // What the graph holds for backward, between the forward and the backward.
        peaks.push(gpu.memory().live(Category::Activations) - before);
        loss.backward().unwrap();
    }
    println!("activations held for backward: LoRA {} B, LoRA-FA {} B", peaks[0], peaks[1]);
    // LoRA keeps each wrapped layer's input alive for A's gradient; LoRA-FA does not. What it
    // saves is whole inputs (B·T·C f32 = 12,288 B) that nothing else keeps: measured here, one —
    // layer 0's; layer 1's inputs stay alive anyway as graph edges to layer 0's adapters.
    assert!(peaks[1] < peaks[0], "LoRA-FA saved nothing: {peaks:?}");
    assert_eq!((peaks[0] - peaks[1]) % (8 * 16 * 24 * 4), 0, "whole inputs: {peaks:?}");
}

/// Delta-LoRA: after each step W has moved by λ·(s·B·A now − s·B·A before), so after training
/// from B = 0, W − W₀ = λ·s·B·A exactly (up to f32 rounding of the sums of the steps' moves).
/// Saved with its moved weights, the adapter loads back onto a fresh base with the same logits.
#[test]
fn delta_lora_moves_w_by_the_change_of_the_update_and_reloads() {
    let lambda = 2.0;
    let mut model = base();
    let lora = lora(&mut model, Variant::Delta { lambda, previous: Default::default() });
    let w0: Vec<Vec<f32>> = lora.layers.iter().map(|l| l.linear.weight.to_vec().unwrap()).collect();
    let dir = temp_dir("delta-lora");
    fit(&mut model, &lora, 3, &dir);
    for (l, w0) in lora.layers.iter().zip(&w0) {
        let delta = LoraModel::delta_weight(l).unwrap();
        let w = l.linear.weight.to_vec().unwrap();
        let scale = delta.iter().fold(0f64, |m, d| m.max(d.abs()));
        assert!(scale > 1e-4, "{}: the adapter did not train", l.name);
        for ((w, w0), d) in w.iter().zip(w0).zip(&delta) {
            let moved = (*w - *w0) as f64;
            assert!(
                (moved - lambda * d).abs() <= 1e-6 + 1e-4 * scale,
                "{}: {moved} vs {}",
                l.name,
                lambda * d
            );
        }
    }
    let logits = |m: &Gpt2| {
        let ids = Tensor::from_u32(&gpu(), &[1, 2, 3, 4, 5], &[1, 5]).unwrap();
        m.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap()
    };
    let want = logits(&model);
    let mut fresh = base();
    let loaded = files::load(&mut fresh, &dir).unwrap();
    assert_eq!(loaded.peft_type(), "LORA");
    let got = logits(&fresh);
    let e = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(e <= 1e-6, "reloaded Delta-LoRA differs by {e}");
}

/// DyLoRA at rank b computes what a rank-b LoRA with the first b rows of A and columns of B at
/// scaling lora_alpha/b computes; training samples ranks and leaves every truncation usable.
#[test]
fn dylora_at_rank_b_is_the_truncated_lora() {
    let mut model = base();
    let lora = lora(&mut model, Variant::Dy { eval_rank: 4 });
    let dir = temp_dir("dylora");
    fit(&mut model, &lora, 3, &dir);
    let ids = Tensor::from_u32(&gpu(), &[3, 1, 4, 1, 5, 9, 2, 6], &[2, 4]).unwrap();
    for b in 1..=4 {
        variants::apply(&mut lora_ref(&lora), Variant::Dy { eval_rank: b }).unwrap();
        let got = model.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
        // The same model with every adapter cut to rank b by hand.
        let mut cut = base();
        let cut_lora =
            inject(&mut cut, &LoraConfig { r: b, lora_alpha: 8.0, ..lora.config.clone() }, 0)
                .unwrap();
        for (l, c) in lora.layers.iter().zip(&cut_lora.layers) {
            let (r, fan_in) = (4, l.linear.in_features());
            let a = l.lora.lora_a.to_vec().unwrap();
            let bm = l.lora.lora_b.to_vec().unwrap();
            let a_cut: Vec<f32> = a[..b * fan_in].to_vec();
            let b_cut: Vec<f32> = bm.chunks(r).flat_map(|row| row[..b].to_vec()).collect();
            c.lora
                .lora_a
                .gpu()
                .upload(c.lora.lora_a.storage(), bytemuck::cast_slice(&a_cut))
                .unwrap();
            c.lora
                .lora_b
                .gpu()
                .upload(c.lora.lora_b.storage(), bytemuck::cast_slice(&b_cut))
                .unwrap();
        }
        let want = cut.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = want.iter().zip(&got).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(e <= 1e-5 * scale, "rank {b}: differs by {e}");
    }
}

/// A handle onto the same layers (`apply` takes the model by value of its variant).
fn lora_ref(lora: &LoraModel) -> LoraModel {
    LoraModel {
        config: lora.config.clone(),
        layers: lora
            .layers
            .iter()
            .map(|l| glassgrad::peft::LoraLayer {
                name: l.name.clone(),
                linear: l.linear.clone(),
                lora: l.lora.clone(),
                dora: l.dora.clone(),
            })
            .collect(),
        variant: Variant::Lora,
    }
}
