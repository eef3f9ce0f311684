//! DoRA beyond the PEFT parity cases (those run in tests/gpu/lora.rs with the `dora` reference:
//! logits, loss, every gradient of A, B and m, the files both ways, the finite difference): the
//! fresh adapter starts at the base with m = ‖W‖ per output feature, every DoRA parameter trains
//! and no base parameter does, merge gives the adapter's logits and unmerge the base back, and
//! training-mode dropout follows src/peft/dora.rs's formula with LoRA's documented mask, a
//! checkpointed block gives the plain gradients, and DoRA mixes per row with a LoRA adapter.

use glassgrad::Tensor;
use glassgrad::model::gpt2::{Dropout, ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::lora::LORA_DROPOUT_SALT;
use glassgrad::peft::{LoraConfig, LoraInit, inject, load_adapter};

use crate::gpu::harness::{gpu, grad_options};
use crate::lora::{adapter_dir, base, logits_and_loss, rel_err, tokens};

fn dora_config(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        use_dora: true,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        ..LoraConfig::default()
    }
}

/// PEFT's init: B = 0 and m = ‖W‖ per output feature (a column of Conv1D's [in, out] storage),
/// so the model is the base. Two AdamW steps later (B moves in the first, so A's gradient is
/// nonzero in the second) every A, B and m has a nonzero gradient and no base parameter has one.
#[test]
fn fresh_dora_starts_at_the_base_and_only_its_parameters_train() {
    let mut model = base();
    let (plain, _) = logits_and_loss(&model);
    let dora = inject(&mut model, &dora_config(&["c_attn", "c_fc"]), 11).unwrap();
    let (wrapped, _) = logits_and_loss(&model);
    // m/n = 1 up to the f32 rounding of the norm (a sum of 24 squares, then √): a few ulps.
    assert!(rel_err(&wrapped, &plain) <= 1e-5, "B = 0 and m = ‖W‖ leave the base model");
    for l in &dora.layers {
        let m = l.dora.as_ref().expect("use_dora wraps every layer").magnitude.to_vec().unwrap();
        let w = l.linear.weight.to_vec().unwrap(); // (in, out)
        let (fan_in, fan_out) = (l.linear.in_features(), l.linear.out_features());
        assert_eq!(m.len(), fan_out);
        for (o, got) in m.iter().enumerate() {
            let want = (0..fan_in).map(|i| (w[i * fan_out + o] as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (*got as f64 - want).abs() <= 1e-5 * want,
                "{}: m[{o}] {got} vs {want}",
                l.name
            );
        }
    }
    let params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
    for _ in 0..2 {
        opt.zero_grad();
        let (ids, targets) = tokens();
        let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        opt.step().unwrap();
    }
    let keys = dora.named_parameters(&model);
    assert_eq!(keys.len(), 3 * dora.layers.len(), "A, B and m per layer");
    assert!(keys.iter().any(|(k, _)| k.ends_with("c_fc.lora_magnitude_vector")));
    for (name, t) in model.named_parameters() {
        let adapter = name.contains(".lora_");
        assert_eq!(t.requires_grad(), adapter, "{name}");
        match t.grad() {
            Some(g) => {
                assert!(adapter, "frozen {name} got a gradient");
                assert!(g.to_vec().unwrap().iter().any(|v| *v != 0.0), "{name}: zero gradient");
            }
            None => assert!(!adapter, "{name} got no gradient"),
        }
    }
}

/// Merge: W ← (m/n)·(W + ΔW) per output feature; the merged model, with no adapter, gives the
/// adapter's logits. Unmerge divides by the stored factor and subtracts ΔW.
#[test]
fn dora_merge_gives_the_adapter_logits_and_unmerge_the_base() {
    let mut model = base();
    let before = model.to_weights().unwrap();
    let dora = load_adapter(&mut model, adapter_dir("dora")).unwrap();
    let (adapter_logits, _) = logits_and_loss(&model);
    assert!(rel_err(&adapter_logits, &logits_and_loss(&base()).0) > 1e-2, "DoRA has an effect");
    dora.merge().unwrap();
    let (merged_logits, _) = logits_and_loss(&model);
    // x·W' vs (m/n)·(x·W + s·x·Aᵀ·Bᵀ): the same products in another order plus one f32
    // rounding of W'; measured ~1e-6 of the logit scale, and a wrong factor is O(1e-1).
    let e = rel_err(&merged_logits, &adapter_logits);
    println!("DoRA merged vs adapter logits: max rel err {e:.2e}");
    assert!(e <= 1e-5, "merged DoRA logits differ from the adapter's: {e:.3e}");
    dora.unmerge().unwrap();
    let after = model.to_weights().unwrap();
    let mut worst = 0f32;
    for (name, p) in &before.params {
        for (a, b) in p.data.iter().zip(&after.params[name].data) {
            worst = worst.max((a - b).abs());
        }
    }
    // One f32 rounding of W' and one of W'/(m/n) − ΔW; |W'| and |ΔW| ≲ 4 here, m/n ≈ 1: ≤ 1e-6.
    println!("DoRA unmerge: base weights back within {worst:.2e}");
    assert!(worst <= 2e-6, "unmerge left the base off by {worst}");
    let (back, _) = logits_and_loss(&model);
    assert!(rel_err(&back, &adapter_logits) <= 1e-5, "after unmerge DoRA is on again");
    dora.merge_and_unload(&mut model).unwrap();
    assert!(model.named_parameters().iter().all(|(n, _)| !n.contains("lora_")));
    assert!(rel_err(&logits_and_loss(&model).0, &adapter_logits) <= 1e-5);
}

/// Training mode: h = (x·W + b) − x_d·W + (m/n)·(x_d·W + s·x_d·Aᵀ·Bᵀ), x_d = mask ⊙ x/(1 − p)
/// with LoRA's mask (layer k = 0: `Dropout::stream(seed ^ LORA_DROPOUT_SALT)`), recomputed in f64.
#[test]
fn dora_dropout_follows_the_documented_formula() {
    let gpu = gpu();
    let mut model = base();
    let config = LoraConfig {
        lora_dropout: 0.25,
        init_lora_weights: LoraInit::Random,
        ..dora_config(&["h.1.mlp.c_fc"])
    };
    let dora = inject(&mut model, &config, 3).unwrap();
    let l = &dora.layers[0];
    let d = l.dora.as_ref().unwrap();
    let m: Vec<f32> = d.magnitude.to_vec().unwrap().iter().map(|v| v * 1.3).collect();
    crate::lora::set(&d.magnitude, &m); // m ≠ n, so the factor shows
    let (rows, fan_in, fan_out, r) = (5, l.linear.in_features(), l.linear.out_features(), 2);
    let x: Vec<f32> = (0..rows * fan_in).map(|i| ((i * 41 % 23) as f32 - 11.0) * 0.1).collect();
    let xt = Tensor::from_f32(&gpu, &x, &[rows, fan_in]).unwrap();
    let seed = 77;
    dora.train(seed);
    let got = l.linear.adapter.as_ref().unwrap().forward(&l.linear, &xt).unwrap().to_vec().unwrap();
    let keep = glassgrad::ops::dropout::cpu::mask(
        rows * fan_in,
        0.25,
        Dropout::stream(seed ^ LORA_DROPOUT_SALT),
    );
    assert!(keep.iter().any(|k| !k) && keep.iter().any(|k| *k));
    let w = l.linear.weight.to_vec().unwrap(); // (in, out)
    let bias = l.linear.bias.as_ref().unwrap().to_vec().unwrap();
    let (a, b) = (l.lora.lora_a.to_vec().unwrap(), l.lora.lora_b.to_vec().unwrap());
    let s = 4.0 / 2.0;
    let ba = |o: usize, i: usize| -> f64 {
        (0..r).map(|k| b[o * r + k] as f64 * a[k * fan_in + i] as f64).sum()
    };
    let norm: Vec<f64> = (0..fan_out)
        .map(|o| {
            (0..fan_in)
                .map(|i| (w[i * fan_out + o] as f64 + s * ba(o, i)).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let mut worst = 0f64;
    for row in 0..rows {
        let xr = &x[row * fan_in..(row + 1) * fan_in];
        let xd: Vec<f64> = (0..fan_in)
            .map(|i| if keep[row * fan_in + i] { xr[i] as f64 / 0.75 } else { 0.0 })
            .collect();
        for o in 0..fan_out {
            let xw: f64 = (0..fan_in).map(|i| xr[i] as f64 * w[i * fan_out + o] as f64).sum();
            let xdw: f64 = (0..fan_in).map(|i| xd[i] * w[i * fan_out + o] as f64).sum();
            let lora: f64 = s * (0..fan_in).map(|i| xd[i] * ba(o, i)).sum::<f64>();
            let want = xw + bias[o] as f64 - xdw + m[o] as f64 / norm[o] * (xdw + lora);
            worst = worst.max((got[row * fan_out + o] as f64 - want).abs());
        }
    }
    // f32 sums of ~24 terms of size ≲ 1 against f64, then a few adds: 1e-5 absolute.
    assert!(worst <= 1e-5, "DoRA dropout path differs from the formula by {worst:.3e}");
    dora.eval();
    let eval =
        l.linear.adapter.as_ref().unwrap().forward(&l.linear, &xt).unwrap().to_vec().unwrap();
    assert!(rel_err(&eval, &got) > 1e-3, "eval mode drops nothing");
}

/// The finite-difference check of A, B and m. DoRA's gradient is that of the loss with the norm
/// n held constant (detached), so a plain central difference — which sees n move with A and B —
/// must *disagree* (the test checks that it does: the norm is detached as in PEFT), and one that
/// holds m/n as the detached function does must agree. To hold n at n₀ while A, B move by t·d,
/// set m' = (m + t·d_m) ⊙ n(A + t·d_A, B + t·d_B) / n₀: then m'/n = (m + t·d_m)/n₀ exactly, and
/// the loss is the detached function at (A + t·d_A, B + t·d_B, m + t·d_m).
#[test]
fn dora_gradients_agree_with_a_finite_difference_of_the_detached_norm() {
    use glassgrad::peft::dora::weight_norm;
    let mut model = base();
    let dora = load_adapter(&mut model, adapter_dir("dora")).unwrap();
    let params: Vec<Tensor> = dora.named_parameters(&model).into_iter().map(|(_, t)| t).collect();
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &grad_options()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    let mut rng = glassgrad::cpu::Rng::new(8);
    let mut analytic = 0f64;
    let mut dirs = vec![];
    for p in &params {
        let g = p.grad().unwrap().to_vec().unwrap();
        let d: Vec<f32> = (0..p.numel()).map(|_| rng.normal() as f32).collect();
        analytic += g.iter().zip(&d).map(|(g, d)| *g as f64 * *d as f64).sum::<f64>();
        dirs.push(d);
    }
    let originals: Vec<Vec<f32>> = params.iter().map(|p| p.to_vec().unwrap()).collect();
    let norms0: Vec<Vec<f32>> = dora
        .layers
        .iter()
        .map(|l| weight_norm(&l.linear, &l.lora).unwrap().to_vec().unwrap())
        .collect();
    let loss_at = |step: f32, hold_norm: bool| {
        for (p, (o, d)) in params.iter().zip(originals.iter().zip(&dirs)) {
            crate::lora::set(p, &o.iter().zip(d).map(|(o, d)| o + step * d).collect::<Vec<_>>());
        }
        if hold_norm {
            for (l, n0) in dora.layers.iter().zip(&norms0) {
                let n = weight_norm(&l.linear, &l.lora).unwrap().to_vec().unwrap();
                let m = &l.dora.as_ref().unwrap().magnitude;
                let held: Vec<f32> = m
                    .to_vec()
                    .unwrap()
                    .iter()
                    .zip(n.iter().zip(n0))
                    .map(|(m, (n, n0))| (*m as f64 * *n as f64 / *n0 as f64) as f32)
                    .collect();
                crate::lora::set(m, &held);
            }
        }
        logits_and_loss(&model).1 as f64
    };
    // Richardson's (4·D(h/2) − D(h))/3 removes the h² term (as in the LoRA test): what is left is
    // the f32 noise of the loss over 2h, ~5e-3 absolute; a wrong term is off by O(1) relative.
    let derivative = |hold: bool| {
        let central = |h: f32| (loss_at(h, hold) - loss_at(-h, hold)) / (2.0 * h as f64);
        let h = 1e-3;
        (4.0 * central(h / 2.0) - central(h)) / 3.0
    };
    let held = derivative(true);
    let moving = derivative(false);
    println!(
        "DoRA: directional derivative {analytic:.6}; FD with n held {held:.6}, with n moving {moving:.6}"
    );
    assert!((held - analytic).abs() <= 5e-3 + 1e-2 * analytic.abs(), "{analytic} vs {held}");
    assert!((moving - analytic).abs() > 0.1 * analytic.abs(), "the norm is not detached?");
}

/// DoRA inside a recomputed (checkpointed) block: its norm runs under `no_grad` inside the
/// recompute's `enable_grad`, and A, B and m must still get exactly the plain gradients.
#[test]
fn dora_in_a_checkpointed_block_gets_the_plain_gradients() {
    let mut model = base();
    let dora = load_adapter(&mut model, adapter_dir("dora")).unwrap();
    let params = dora.named_parameters(&model);
    let (ids, targets) = tokens();
    let run = |checkpoint_every: Option<usize>| -> Vec<Vec<f32>> {
        params.iter().for_each(|(_, p)| p.zero_grad());
        let opts = ForwardOptions { checkpoint_every, ..Default::default() };
        let out = model.forward(&ids, &opts).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        params.iter().map(|(n, p)| p.grad().expect(n).to_vec().unwrap()).collect()
    };
    let plain = run(None);
    let recomputed = run(Some(1));
    for ((name, _), (p, r)) in params.iter().zip(plain.iter().zip(&recomputed)) {
        assert!(p.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        assert_eq!(p, r, "{name}: recomputed gradient differs");
    }
}

/// A DoRA adapter and a LoRA adapter on one base, mixed per row: each row equals the forward
/// with that row's adapter alone.
#[test]
fn dora_mixes_per_row_with_other_adapters() {
    use glassgrad::peft::multi::AdapterSet;
    let lora_a = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/combine_ref/a");
    let alone = |dir: &std::path::Path| {
        let mut model = base();
        load_adapter(&mut model, dir).unwrap();
        logits_and_loss(&model).0
    };
    let (want_dora, want_a) = (alone(&adapter_dir("dora")), alone(&lora_a));
    let mut model = base();
    let list = [("d".to_string(), adapter_dir("dora")), ("a".to_string(), lora_a)];
    let list: Vec<(String, &std::path::Path)> =
        list.iter().map(|(n, d)| (n.clone(), d.as_path())).collect();
    let set = AdapterSet::load(&mut model, &list).unwrap();
    set.set_adapter_per_row(&["a", "d"]).unwrap();
    let mixed = logits_and_loss(&model).0;
    let half = mixed.len() / 2;
    // The same kernels on one-row slices: 1e-6 of the scale allows a row-count-dependent tiling.
    assert!(rel_err(&mixed[..half], &want_a[..half]) <= 1e-6, "row 0 is a's");
    assert!(rel_err(&mixed[half..], &want_dora[half..]) <= 1e-6, "row 1 is DoRA's");
}
