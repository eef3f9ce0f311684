//! GPT-2 against transformers (llm.c's test_gpt2.c): the reference files in tests/data/gpt2_ref
//! were written by scripts/make_gpt2_reference.py with torch + transformers on the CPU. We load the
//! same checkpoint and tokens, run forward and backward, and compare logits, loss and every
//! parameter's gradient. Also: the KV cache gives the same logits as a full forward, and the
//! command line rejects bad input with a clear message.

use std::path::Path;

use glassgrad::io::{IGNORE_INDEX, TensorFile, TokenFile};
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2, LayerPrefix};
use glassgrad::{Tensor, autograd};

use crate::gpu::harness::gpu;

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// max |got − want| / max |want|: the relative error of a whole tensor.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

/// Targets as transformers shifts them: position t predicts labels[t + 1].
fn shifted_targets(tokens: &TokenFile) -> Vec<u32> {
    let (b, t) = (tokens.batch, tokens.seq_len);
    let mut targets = vec![IGNORE_INDEX; b * t];
    for row in 0..b {
        for col in 0..t - 1 {
            targets[row * t + col] = tokens.labels[row * t + col + 1];
        }
    }
    targets
}

#[test]
fn matches_transformers_logits_loss_and_every_gradient() {
    let gpu = gpu();
    let dir = Path::new(REF);
    let weights = Gpt2Weights::load(dir.join("model")).unwrap();
    let tokens = TokenFile::read(dir.join("tokens.safetensors")).unwrap();
    let expected = TensorFile::read(dir.join("expected.safetensors")).unwrap();
    assert!(tokens.labels.contains(&IGNORE_INDEX), "the reference exercises ignored labels");
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    let (b, t) = (tokens.batch, tokens.seq_len);
    let ids = Tensor::from_u32(&gpu, &tokens.input_ids, &[b, t]).unwrap();
    let targets = Tensor::from_u32(&gpu, &shifted_targets(&tokens), &[b, t]).unwrap();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    loss.backward().unwrap();

    let (_, want_logits) = expected.f32("logits").unwrap();
    let e = rel_err(&out.logits.to_vec().unwrap(), &want_logits);
    println!("logits       OK (rel err {e:.2e})");
    assert!(e <= 1e-4, "logits differ from transformers: rel err {e:.3e}");
    let (_, want_loss) = expected.f32("loss").unwrap();
    let got_loss = loss.item().unwrap();
    let e = ((got_loss - want_loss[0]) / want_loss[0]).abs() as f64;
    println!("loss         OK ({got_loss} vs {}, rel err {e:.2e})", want_loss[0]);
    assert!(e <= 1e-4, "loss {got_loss} vs transformers {}", want_loss[0]);

    let params = model.named_parameters();
    assert_eq!(params.len(), weights.params.len());
    for (name, p) in &params {
        let (shape, want) = expected.f32(&format!("grad.{name}")).unwrap();
        assert_eq!(p.shape(), shape.as_slice(), "{name}");
        let got = p.grad().unwrap_or_else(|| panic!("{name} received no gradient")).to_vec().unwrap();
        assert!(got.iter().any(|g| *g != 0.0), "{name}: gradient is all zeros");
        let e = rel_err(&got, &want);
        println!("grad {name:<40} OK (rel err {e:.2e})");
        assert!(e <= 1e-3, "gradient of {name} differs from transformers: rel err {e:.3e}");
    }
}

#[test]
fn frozen_model_parameters_get_no_gradient() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let mut model = Gpt2::from_weights(&gpu, &weights).unwrap();
    // Freeze everything but the final LayerNorm: only it may receive gradients.
    model.map_parameters(|name, t| t.with_requires_grad(name.starts_with("transformer.ln_f")));
    let ids = Tensor::from_u32(&gpu, &[1, 2, 3, 4], &[1, 4]).unwrap();
    let targets = Tensor::from_u32(&gpu, &[2, 3, 4, 5], &[1, 4]).unwrap();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    for (name, p) in model.named_parameters() {
        match (p.requires_grad(), p.grad()) {
            (true, Some(g)) => assert!(g.to_vec().unwrap().iter().any(|v| *v != 0.0), "{name}: zero gradient"),
            (true, None) => panic!("{name} is trainable but got no gradient"),
            (false, Some(_)) => panic!("{name} is frozen but got a gradient"),
            (false, None) => {}
        }
    }
}

#[test]
fn kv_cache_gives_the_same_logits_as_a_full_forward() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    let _g = autograd::no_grad();
    let seq: Vec<u32> = vec![5, 17, 42, 96, 0, 33, 7];
    let c = model.config.n_embd;
    let full = model.forward(&Tensor::from_u32(&gpu, &seq, &[1, 7]).unwrap(), &ForwardOptions::default()).unwrap();
    let full = full.logits.to_vec().unwrap(); // (1, 7, V)
    // First 4 tokens in one pass, keeping k and v; then the remaining 3 one at a time.
    let first = model.forward(&Tensor::from_u32(&gpu, &seq[..4], &[1, 4]).unwrap(), &ForwardOptions { keep_qkv: true, ..Default::default() }).unwrap();
    let mut cache: Vec<LayerPrefix> = first
        .qkv
        .iter()
        .map(|qkv| LayerPrefix { keys: qkv.slice(2, c, 2 * c).unwrap().reshape(&[4, c]).unwrap(), values: qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[4, c]).unwrap() })
        .collect();
    let v = model.config.vocab_size;
    for pos in 4..7 {
        let step = model
            .forward(&Tensor::from_u32(&gpu, &seq[pos..pos + 1], &[1, 1]).unwrap(), &ForwardOptions { prefix: Some(&cache), position_offset: pos, keep_qkv: true, ..Default::default() })
            .unwrap();
        let got = step.logits.to_vec().unwrap();
        let e = rel_err(&got, &full[pos * v..(pos + 1) * v]);
        assert!(e <= 1e-5, "position {pos}: cached logits differ, rel err {e:.3e}");
        for (layer, qkv) in cache.iter_mut().zip(&step.qkv) {
            layer.keys = Tensor::concat(&[&layer.keys, &qkv.slice(2, c, 2 * c).unwrap().reshape(&[1, c]).unwrap()], 0).unwrap();
            layer.values = Tensor::concat(&[&layer.values, &qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[1, c]).unwrap()], 0).unwrap();
        }
    }
}

#[test]
fn dropout_is_off_by_default_and_reproducible_by_seed() {
    let gpu = gpu();
    let mut weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    (weights.config.embd_pdrop, weights.config.resid_pdrop) = (0.1, 0.1);
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    let _g = autograd::no_grad();
    let ids = Tensor::from_u32(&gpu, &[3, 1, 4, 1, 5, 9, 2, 6], &[2, 4]).unwrap();
    let run = |seed: Option<u64>| model.forward(&ids, &ForwardOptions { dropout_seed: seed, ..Default::default() }).unwrap().logits.to_vec().unwrap();
    let (eval, a, b, other) = (run(None), run(Some(1)), run(Some(1)), run(Some(2)));
    assert_eq!(a, b, "the same seed gives the same masks (what gradient checkpointing relies on)");
    assert_ne!(a, eval, "training mode drops something");
    assert_ne!(a, other, "another seed, other masks");
    let plain = Gpt2::from_weights(&gpu, &Gpt2Weights::load(Path::new(REF).join("model")).unwrap()).unwrap();
    assert_eq!(eval, plain.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap(), "eval mode ignores p");
}
