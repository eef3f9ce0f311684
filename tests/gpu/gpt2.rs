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

use crate::gpu::harness::{Tol, compare, gpu, grad_options};

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// `harness::compare` on f32 data: max |got − want| / max |want| (the relative error of a whole
/// tensor), or a panic naming the first mismatching index, the count and the max difference.
fn rel_err(what: &str, got: &[f32], want: &[f32], rtol: f64) -> f64 {
    let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-30);
    let d = compare(what, &f64s(got), &f64s(want), Tol { atol: 0.0, rtol })
        .unwrap_or_else(|e| panic!("{e}"));
    d / scale
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
    let targets = Tensor::from_u32(&gpu, &tokens.shifted_targets(), &[b, t]).unwrap();
    let out = model.forward(&ids, &grad_options()).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    loss.backward().unwrap();

    let (_, want_logits) = expected.f32("logits").unwrap();
    // Both f32, through 2 layers in different summation orders: ~1e-6 of the largest logit
    // (measured 6.1e-7 of it on lavapipe); 1e-4 for other drivers.
    let e = rel_err("logits vs transformers", &out.logits.to_vec().unwrap(), &want_logits, 1e-4);
    println!("logits       OK (rel err {e:.2e})");
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
        let got =
            p.grad().unwrap_or_else(|| panic!("{name} received no gradient")).to_vec().unwrap();
        assert!(got.iter().any(|g| *g != 0.0), "{name}: gradient is all zeros");
        // Backward sums over B·T positions and goes back through every layer in f32, against
        // torch's f32: measured ≤ 1.7e-6 of the largest entry on lavapipe; 1e-4 for other drivers.
        let e = rel_err(&format!("gradient of {name} vs transformers"), &got, &want, 1e-4);
        println!("grad {name:<40} OK (rel err {e:.2e})");
    }
}

#[test]
fn frozen_model_parameters_get_no_gradient() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    // Freeze everything but the final LayerNorm: only it may receive gradients.
    model.set_trainable(|name| name.starts_with("transformer.ln_f")).unwrap();
    let ids = Tensor::from_u32(&gpu, &[1, 2, 3, 4], &[1, 4]).unwrap();
    let targets = Tensor::from_u32(&gpu, &[2, 3, 4, 5], &[1, 4]).unwrap();
    let out = model.forward(&ids, &grad_options()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    for (name, p) in model.named_parameters() {
        match (p.requires_grad(), p.grad()) {
            (true, Some(g)) => {
                assert!(g.to_vec().unwrap().iter().any(|v| *v != 0.0), "{name}: zero gradient")
            }
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
    let full = model
        .forward(&Tensor::from_u32(&gpu, &seq, &[1, 7]).unwrap(), &ForwardOptions::default())
        .unwrap();
    let full = full.logits.to_vec().unwrap(); // (1, 7, V)
    // First 4 tokens in one pass, keeping k and v; then the remaining 3 one at a time.
    let first = model
        .forward(
            &Tensor::from_u32(&gpu, &seq[..4], &[1, 4]).unwrap(),
            &ForwardOptions { keep_qkv: true, ..Default::default() },
        )
        .unwrap();
    let mut cache: Vec<LayerPrefix> = first
        .qkv
        .iter()
        .map(|qkv| LayerPrefix {
            keys: qkv.slice(2, c, 2 * c).unwrap().reshape(&[4, c]).unwrap(),
            values: qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[4, c]).unwrap(),
        })
        .collect();
    let v = model.config.vocab_size;
    for pos in 4..7 {
        let step = model
            .forward(
                &Tensor::from_u32(&gpu, &seq[pos..pos + 1], &[1, 1]).unwrap(),
                &ForwardOptions {
                    prefix: Some(&cache),
                    position_offset: pos,
                    keep_qkv: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let got = step.logits.to_vec().unwrap();
        // The same kernels on the same values, only the attention's key count differs: a few
        // ulps of the largest logit at most (measured: bit-identical on lavapipe).
        let what = format!("position {pos}: cached logits vs the full forward");
        let e = rel_err(&what, &got, &full[pos * v..(pos + 1) * v], 1e-5);
        println!("{what} OK (rel err {e:.2e})");
        for (layer, qkv) in cache.iter_mut().zip(&step.qkv) {
            layer.keys = Tensor::concat(
                &[&layer.keys, &qkv.slice(2, c, 2 * c).unwrap().reshape(&[1, c]).unwrap()],
                0,
            )
            .unwrap();
            layer.values = Tensor::concat(
                &[&layer.values, &qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[1, c]).unwrap()],
                0,
            )
            .unwrap();
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
    let run = |seed: Option<u64>| {
        model
            .forward(&ids, &ForwardOptions { dropout_seed: seed, ..Default::default() })
            .unwrap()
            .logits
            .to_vec()
            .unwrap()
    };
    let (eval, a, b, other) = (run(None), run(Some(1)), run(Some(1)), run(Some(2)));
    assert_eq!(a, b, "the same seed gives the same masks (what gradient checkpointing relies on)");
    assert_ne!(a, eval, "training mode drops something");
    assert_ne!(a, other, "another seed, other masks");
    let plain = Gpt2::from_weights(&gpu, &Gpt2Weights::load(Path::new(REF).join("model")).unwrap())
        .unwrap();
    assert_eq!(
        eval,
        plain.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap(),
        "eval mode ignores p"
    );
}

/// The whole model as one composite function of its parameters and a learned prefix (the
/// prefix-tuning path): L(θ) on the GPU, its gradient ⟨∇L, v⟩ along a random unit direction v
/// from backward, against the central difference (L(θ + εv) − L(θ − εv)) / 2ε also on the GPU.
#[test]
fn directional_derivative_of_the_loss_matches_backward() {
    use glassgrad::cpu::Rng;
    let gpu = gpu();
    let base = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let (p, c, n_layer) = (3, base.config.n_embd, base.config.n_layer);
    let mut rng = Rng::new(99);
    let prefix: Vec<Vec<f32>> =
        (0..2 * n_layer).map(|_| rng.array(&[p, c], -1.0, 1.0).to_f32()).collect();
    let names: Vec<String> = base.params.keys().cloned().collect();
    let total: usize = base.params.values().map(|x| x.data.len()).sum::<usize>()
        + prefix.iter().map(Vec::len).sum::<usize>();
    // A random direction of unit length over every scalar (weights, then prefix tables).
    let mut v: Vec<f64> = (0..total).map(|_| rng.range(-1.0, 1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    let ids = Tensor::from_u32(&gpu, &[5, 17, 42, 96, 0, 33, 7, 8, 1, 64, 2, 3], &[2, 6]).unwrap();
    let targets =
        Tensor::from_u32(&gpu, &[17, 42, 96, 0, 33, u32::MAX, 8, 1, 64, 2, 3, 4], &[2, 6]).unwrap();
    // L at θ + t·v, and (when `grad`) ⟨∇L, v⟩ from backward.
    let loss_at = |t: f64, grad: bool| -> (f64, f64) {
        let mut weights = base.clone();
        let mut k = 0;
        for name in &names {
            for x in weights.params.get_mut(name).unwrap().data.iter_mut() {
                *x = (*x as f64 + t * v[k]) as f32;
                k += 1;
            }
        }
        let tables: Vec<Tensor> = prefix
            .iter()
            .map(|table| {
                let moved: Vec<f32> = table
                    .iter()
                    .enumerate()
                    .map(|(j, x)| (*x as f64 + t * v[k + j]) as f32)
                    .collect();
                k += table.len();
                Tensor::parameter(&gpu, &moved, &[p, c], true).unwrap()
            })
            .collect();
        let model = Gpt2::from_weights(&gpu, &weights).unwrap();
        let layers: Vec<LayerPrefix> = tables
            .chunks(2)
            .map(|kv| LayerPrefix { keys: kv[0].clone(), values: kv[1].clone() })
            .collect();
        let _g = (!grad).then(autograd::no_grad);
        let out = model
            .forward(
                &ids,
                &ForwardOptions { prefix: Some(&layers), position_offset: p, ..grad_options() },
            )
            .unwrap();
        let loss = Gpt2::loss(&out.logits, &targets).unwrap();
        let value = loss.item().unwrap() as f64;
        if !grad {
            return (value, 0.0);
        }
        loss.backward().unwrap();
        let mut grads: Vec<f32> = vec![];
        let params = model.named_parameters();
        for name in &names {
            let (_, t) = params.iter().find(|(n, _)| n == name).unwrap();
            grads.extend(t.grad().unwrap().to_vec().unwrap());
        }
        for t in &tables {
            grads.extend(t.grad().expect("the prefix is trainable").to_vec().unwrap());
        }
        (value, grads.iter().zip(&v).map(|(g, d)| *g as f64 * d).sum())
    };
    let (_, analytic) = loss_at(0.0, true);
    let eps = 1e-2; // f32 losses (~5, precise to ~5e-7) over 2ε = 0.02: ~3e-5 of noise; curvature ~ε²
    let numeric = (loss_at(eps, false).0 - loss_at(-eps, false).0) / (2.0 * eps);
    let rel = (analytic - numeric).abs() / analytic.abs().max(1e-3);
    println!(
        "directional derivative: backward {analytic:.6}, central difference {numeric:.6}, rel. diff {rel:.1e}"
    );
    assert!(analytic.abs() > 1e-3, "a direction with a measurable slope");
    // f32 noise of the difference ≈ 3e-5 / |slope| (4e-4 here); a wrong gradient is off by O(1).
    assert!(rel < 3e-3, "backward {analytic} vs central difference {numeric}");
}
