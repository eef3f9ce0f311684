//! LoRA against PEFT. tests/data/lora_ref was written by scripts/make_lora_reference.py with
//! torch + peft on the CPU, on the small random GPT-2 of tests/data/gpt2_ref: for each case we
//! load PEFT's adapter directory, run forward and backward, and compare logits, loss and every
//! adapter gradient (llm.c's test_gpt2.c, for the adapter). Also: PEFT's files round-trip
//! bit-identically, merge gives the adapter's logits and unmerge gives the base back, a central
//! finite difference agrees with the LoRA gradients, freezing leaves no gradient and no optimizer
//! state on the base, dropout is seeded as documented, and bad configs fail with a named reason.

use std::path::{Path, PathBuf};

use glassgrad::io::{TensorFile, TokenFile};
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{Dropout, ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::lora::LORA_DROPOUT_SALT;
use glassgrad::peft::{Bias, LoraConfig, LoraModel, inject, load_adapter, save_adapter};
use glassgrad::{Category, Tensor};

use crate::gpu::harness::{gpu, grad_options, temp_dir};

const GPT2_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");
const LORA_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lora_ref");
const CASES: [&str; 5] = ["lora", "rslora", "bias_lora_only", "bias_all", "dora"];

/// max |got − want| / max |want|: the relative error of a whole tensor.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

pub fn base() -> Gpt2 {
    let weights = Gpt2Weights::load(Path::new(GPT2_REF).join("model")).unwrap();
    Gpt2::from_weights(&gpu(), &weights).unwrap()
}

pub fn adapter_dir(case: &str) -> PathBuf {
    Path::new(LORA_REF).join(case).join("adapter")
}

/// The reference tokens: ids (B, T) and next-token targets (B, T), -100 ignored.
pub fn tokens() -> (Tensor, Tensor) {
    let t = TokenFile::read(Path::new(GPT2_REF).join("tokens.safetensors")).unwrap();
    let ids = Tensor::from_u32(&gpu(), &t.input_ids, &[t.batch, t.seq_len]).unwrap();
    let targets = Tensor::from_u32(&gpu(), &t.shifted_targets(), &[t.batch, t.seq_len]).unwrap();
    (ids, targets)
}

pub fn logits_and_loss(model: &Gpt2) -> (Vec<f32>, f32) {
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    (out.logits.to_vec().unwrap(), loss.item().unwrap())
}

#[test]
fn matches_peft_logits_loss_and_every_adapter_gradient() {
    for case in CASES {
        let mut model = base();
        let lora = load_adapter(&mut model, adapter_dir(case)).unwrap();
        let expected =
            TensorFile::read(Path::new(LORA_REF).join(case).join("expected.safetensors")).unwrap();
        let (ids, targets) = tokens();
        let out = model.forward(&ids, &grad_options()).unwrap();
        let loss = Gpt2::loss(&out.logits, &targets).unwrap();
        loss.backward().unwrap();

        // f32 forward through 2 blocks on both sides, summed in different orders: a few ulps of
        // the largest logit; 1e-4 of max |want| leaves room for that and catches any wrong term.
        let (_, want) = expected.f32("logits").unwrap();
        let e = rel_err(&out.logits.to_vec().unwrap(), &want);
        println!("{case}: logits OK (max rel err {e:.2e})");
        assert!(e <= 1e-4, "{case}: logits differ from PEFT: rel err {e:.3e}");
        let (_, want) = expected.f32("loss").unwrap();
        let got = loss.item().unwrap();
        let e = ((got - want[0]) / want[0]).abs() as f64;
        println!("{case}: loss {got} vs PEFT {} OK (rel err {e:.2e})", want[0]);
        assert!(e <= 1e-4, "{case}: loss {got} vs PEFT {}", want[0]);

        let counts = expected.get("trainable_params").unwrap().to_i64("trainable_params").unwrap();
        let line = model.trainable_summary();
        // PEFT groups digits with commas (f"{n:,}"); compare the counts as numbers.
        let numbers: Vec<i64> = line
            .split("||")
            .take(2)
            .map(|part| part.rsplit(':').next().unwrap().trim().replace(',', "").parse().unwrap())
            .collect();
        assert_eq!(numbers, counts[..2], "{case}: {line} vs PEFT's counts {counts:?}");

        let params = lora.named_parameters(&model);
        let mut worst = 0f64;
        for (key, p) in &params {
            let (shape, want) = expected.f32(&format!("grad.{key}")).unwrap();
            assert_eq!(p.shape(), shape.as_slice(), "{key}");
            let got = p.grad().unwrap_or_else(|| panic!("{key} got no gradient")).to_vec().unwrap();
            assert!(got.iter().any(|g| *g != 0.0), "{key}: gradient is all zeros");
            // Same as the logits, through one more backward: 1e-4 of the tensor's max |want|.
            let e = rel_err(&got, &want);
            worst = worst.max(e);
            assert!(e <= 1e-4, "{case}: gradient of {key} differs from PEFT: rel err {e:.3e}");
        }
        println!("{case}: {} adapter gradients OK (max rel err {worst:.2e})", params.len());
        let n_grads = expected.tensors.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(params.len(), n_grads, "{case}: PEFT trains exactly these tensors");
        let trainable: Vec<&Tensor> = params.iter().map(|(_, t)| t).collect();
        for (name, t) in model.named_parameters() {
            let ours = trainable.iter().any(|p| p.id() == t.id());
            assert_eq!(t.requires_grad(), ours, "{case}: {name} trainable = {}", t.requires_grad());
            if !ours {
                assert!(t.grad().is_none(), "{case}: frozen {name} got a gradient");
            }
        }
    }
}

#[test]
fn peft_files_round_trip_bit_identically() {
    for case in CASES {
        let mut model = base();
        let lora = load_adapter(&mut model, adapter_dir(case)).unwrap();
        let dir = temp_dir(&format!("lora-roundtrip-{case}"));
        save_adapter(&model, &lora, &dir).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            let ours = std::fs::read(dir.join(file)).unwrap();
            let peft = std::fs::read(adapter_dir(case).join(file)).unwrap();
            assert!(
                ours == peft,
                "{case}: our {file} differs from PEFT's ({} vs {} bytes)",
                ours.len(),
                peft.len()
            );
        }
        // And our own file, loaded and saved again.
        let mut again = base();
        let lora2 = load_adapter(&mut again, &dir).unwrap();
        let dir2 = temp_dir(&format!("lora-roundtrip2-{case}"));
        save_adapter(&again, &lora2, &dir2).unwrap();
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            assert_eq!(
                std::fs::read(dir.join(file)).unwrap(),
                std::fs::read(dir2.join(file)).unwrap()
            );
        }
    }
}

#[test]
fn merged_logits_equal_adapter_logits_and_unmerge_restores_the_base() {
    let mut model = base();
    let before = model.to_weights().unwrap();
    let lora = load_adapter(&mut model, adapter_dir("lora")).unwrap();
    let (adapter_logits, _) = logits_and_loss(&model);
    let (plain_logits, _) = logits_and_loss(&base());
    let scale = adapter_logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(rel_err(&adapter_logits, &plain_logits) > 1e-2, "the adapter has an effect");

    lora.merge().unwrap();
    assert!(lora.merge().is_err(), "merging twice is refused");
    let (merged_logits, _) = logits_and_loss(&model);
    // x·(W + ΔW) vs x·W + (x·Aᵀ)·Bᵀ·s: the same sum in another order, plus one f32 rounding of
    // W + ΔW; 1e-5 of the logit scale covers both, and is far below the adapter's own effect.
    let e = rel_err(&merged_logits, &adapter_logits);
    println!("merged vs adapter logits: max rel err {e:.2e} (logit scale {scale})");
    assert!(e <= 1e-5, "merged logits differ from the adapter's: rel err {e:.3e}");
    // The merged weights, saved as a plain model, give the same logits without any adapter.
    let merged = Gpt2::from_weights(&gpu(), &model.to_weights().unwrap()).unwrap();
    let (plain_merged, _) = logits_and_loss(&merged);
    assert!(rel_err(&plain_merged, &adapter_logits) <= 1e-5);

    lora.unmerge().unwrap();
    let after = model.to_weights().unwrap();
    let mut worst = 0f32;
    for (name, p) in &before.params {
        let q = &after.params[name];
        for (a, b) in p.data.iter().zip(&q.data) {
            // One f32 rounding of W + ΔW and one of (W + ΔW) − ΔW: ≤ 2 ulp of |W| + |ΔW|, and
            // |ΔW| ≤ 2 here (A, B ~ N(0, 0.3²), r = 4, s = 2): 2·2⁻²³·4 ≈ 1e-6.
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6 + 2.0 * f32::EPSILON * a.abs(), "{name}: {a} came back as {b}");
        }
    }
    println!("unmerge: base weights back within {worst:.2e}");
    let (back, _) = logits_and_loss(&model);
    assert!(rel_err(&back, &adapter_logits) <= 1e-5, "after unmerge the adapter is on again");

    lora.merge_and_unload(&mut model).unwrap();
    assert!(model.named_parameters().iter().all(|(n, _)| !n.contains("lora_")), "no adapter left");
    let (unloaded, _) = logits_and_loss(&model);
    assert!(rel_err(&unloaded, &adapter_logits) <= 1e-5, "merge_and_unload keeps the logits");
}

/// Sets a tensor's values (a parameter's storage, in place).
pub fn set(t: &Tensor, values: &[f32]) {
    t.gpu().upload(t.storage(), bytemuck::cast_slice(values)).unwrap();
}

/// Central finite difference along one random direction d over all LoRA parameters θ:
/// (L(θ + hd) − L(θ − hd)) / 2h = ⟨∇L, d⟩ + O(h²), on the GPU in f32, with the h² term
/// removed by Richardson extrapolation.
#[test]
fn lora_gradients_agree_with_a_central_finite_difference() {
    for case in ["lora", "rslora"] {
        // DoRA (a detached norm): tests/gpu/dora.rs
        let mut model = base();
        let lora = load_adapter(&mut model, adapter_dir(case)).unwrap();
        let params = lora.named_parameters(&model);
        let (ids, targets) = tokens();
        let out = model.forward(&ids, &grad_options()).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        let mut rng = glassgrad::cpu::Rng::new(7);
        let mut analytic = 0f64;
        let mut dirs = vec![];
        for (_, p) in &params {
            let g = p.grad().unwrap().to_vec().unwrap();
            let d: Vec<f32> = (0..p.numel()).map(|_| rng.normal() as f32).collect();
            analytic += g.iter().zip(&d).map(|(g, d)| *g as f64 * *d as f64).sum::<f64>();
            dirs.push(d);
        }
        let originals: Vec<Vec<f32>> = params.iter().map(|(_, p)| p.to_vec().unwrap()).collect();
        let loss_at = |step: f32| {
            for ((_, p), (o, d)) in params.iter().zip(originals.iter().zip(&dirs)) {
                set(p, &o.iter().zip(d).map(|(o, d)| o + step * d).collect::<Vec<_>>());
            }
            logits_and_loss(&model).1 as f64
        };
        // d has thousands of N(0, 1) entries (‖d‖ ≈ 55), so the loss curves visibly along it:
        // the plain central difference D(h) is off by O(h²) (≈4% at h = 1e-3, measured).
        // Richardson's (4·D(h/2) − D(h))/3 cancels the h² term; what is left is the f32 noise
        // of the loss over 2h: measured 1e-3 to 5e-3 absolute for h from 1e-3 down to 2.5e-4, on
        // derivatives of ≈0.4–0.5. A wrong gradient term is off by O(1) relative.
        let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
        let h = 1e-3;
        let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
        let e = (numeric - analytic).abs();
        println!("{case}: directional derivative {analytic:.6} vs finite difference {numeric:.6}");
        assert!(e <= 5e-3 + 1e-2 * analytic.abs(), "{case}: {analytic} vs {numeric}");
    }
}

fn fresh_lora(model: &mut Gpt2, targets: &[&str]) -> LoraModel {
    let config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        ..LoraConfig::default()
    };
    inject(model, &config, 42).unwrap()
}

/// PEFT's init: B = 0, so the wrapped model is the base; A ~ U(±1/√in). After one AdamW step B
/// moves, so a second backward reaches A: every trainable parameter then has a nonzero
/// gradient, every frozen one none, and the optimizer holds moments for the adapter alone.
#[test]
fn inject_freezes_the_base_and_only_the_adapter_trains() {
    let gpu = gpu();
    let mut model = base();
    let (plain, _) = logits_and_loss(&model);
    let lora = fresh_lora(&mut model, &["c_attn", "c_proj"]);
    assert_eq!(lora.layers.len(), 3 * model.config.n_layer, "c_proj matches both projections");
    assert!(lora.config.fan_in_fan_out, "Conv1D layers: fan_in_fan_out, as PEFT sets it");
    let (wrapped, _) = logits_and_loss(&model);
    assert!(rel_err(&wrapped, &plain) <= 1e-6, "B = 0 leaves the base model");
    for l in &lora.layers {
        let a = l.lora.lora_a.to_vec().unwrap();
        let bound = 1.0 / (l.linear.in_features() as f32).sqrt();
        assert!(a.iter().all(|x| x.abs() <= bound), "{}: A outside ±1/√in", l.name);
        assert!(a.iter().any(|x| x.abs() > 0.5 * bound), "{}: A looks degenerate", l.name);
        assert!(l.lora.lora_b.to_vec().unwrap().iter().all(|x| *x == 0.0));
    }
    let params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let optimizer_before = gpu.memory().live(Category::Optimizer);
    let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
    let trainable = model.num_trainable_parameters();
    assert_eq!(
        trainable,
        lora.named_parameters(&model).iter().map(|(_, t)| t.numel()).sum::<usize>()
    );
    let bytes = gpu.memory().live(Category::Optimizer) - optimizer_before;
    assert_eq!(bytes, (2 * 4 * trainable) as u64, "moments for the adapter only");
    let step = |opt: &mut AdamW| {
        opt.zero_grad();
        let (ids, targets) = tokens();
        let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        opt.step().unwrap();
    };
    step(&mut opt);
    step(&mut opt);
    let state = opt.state().unwrap();
    assert_eq!(state.len(), 1 + 2 * lora.named_parameters(&model).len(), "state: step + m, v each");
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
    println!("{}", model.trainable_summary());
}

/// Training-mode dropout on the adapter input, seeded as src/peft/lora.rs documents: layer k
/// uses `Dropout::stream(seed ^ LORA_DROPOUT_SALT) + k`. The wrapped layer's output minus the
/// base term equals s·(mask ⊙ x / (1 − p))·Aᵀ·Bᵀ with that mask computed on the host.
#[test]
fn lora_dropout_is_seeded_as_documented() {
    let gpu = gpu();
    let mut model = base();
    let config = LoraConfig {
        r: 2,
        lora_alpha: 3.0,
        lora_dropout: 0.25,
        target_modules: vec!["h.1.mlp.c_fc".into()],
        init_lora_weights: glassgrad::peft::LoraInit::Random,
        ..LoraConfig::default()
    };
    let lora = inject(&mut model, &config, 3).unwrap();
    let layer = &lora.layers[0];
    let (rows, fan_in, fan_out, r) =
        (6, layer.linear.in_features(), layer.linear.out_features(), 2);
    let x: Vec<f32> = (0..rows * fan_in).map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.1).collect();
    let xt = Tensor::from_f32(&gpu, &x, &[rows, fan_in]).unwrap();
    let seed = 1234;
    lora.train(seed);
    let adapter = layer.linear.adapter.as_ref().unwrap();
    let got = adapter.forward(&layer.linear, &xt).unwrap().to_vec().unwrap();
    let again = adapter.forward(&layer.linear, &xt).unwrap().to_vec().unwrap();
    assert_eq!(got, again, "the same seed gives the same mask (a recompute sees the same)");
    let base = layer.linear.project(&xt).unwrap().to_vec().unwrap();
    let (a, b) = (layer.lora.lora_a.to_vec().unwrap(), layer.lora.lora_b.to_vec().unwrap());
    let mask_seed = Dropout::stream(seed ^ LORA_DROPOUT_SALT); // k = 0: the only wrapped layer
    let keep = glassgrad::ops::dropout::cpu::mask(rows * fan_in, 0.25, mask_seed);
    assert!(keep.iter().any(|k| !k) && keep.iter().any(|k| *k));
    let s = 3.0 / 2.0;
    let mut worst = 0f64;
    for i in 0..rows {
        let xd: Vec<f64> = (0..fan_in)
            .map(|j| if keep[i * fan_in + j] { x[i * fan_in + j] as f64 / 0.75 } else { 0.0 })
            .collect();
        let down: Vec<f64> =
            (0..r).map(|k| (0..fan_in).map(|j| xd[j] * a[k * fan_in + j] as f64).sum()).collect();
        for o in 0..fan_out {
            let want = s * (0..r).map(|k| down[k] * b[o * r + k] as f64).sum::<f64>();
            let d = (got[i * fan_out + o] as f64 - base[i * fan_out + o] as f64 - want).abs();
            worst = worst.max(d);
        }
    }
    // f32 sums of ~100 terms of size ~0.3 against f64: 1e-5 absolute.
    assert!(worst <= 1e-5, "dropout term differs from the documented mask by {worst:.3e}");
    lora.eval();
    let eval = adapter.forward(&layer.linear, &xt).unwrap().to_vec().unwrap();
    assert!(rel_err(&eval, &got) > 1e-3, "eval mode drops nothing");
}

#[test]
fn bad_configs_and_files_are_refused_by_name_and_change_nothing() {
    let mut model = base();
    let err =
        |config: LoraConfig, model: &mut Gpt2| inject(model, &config, 0).err().unwrap().to_string();
    let e = err(
        LoraConfig { target_modules: vec!["q_proj".into()], ..LoraConfig::default() },
        &mut model,
    );
    assert!(
        e.contains("q_proj")
            && e.contains("transformer.h.0.attn.c_attn")
            && e.contains("mlp.c_proj"),
        "{e}"
    );
    let e = err(LoraConfig { r: 0, ..LoraConfig::default() }, &mut model);
    assert!(e.contains("r must be at least 1"), "{e}");
    let e = err(LoraConfig { r: 25, ..LoraConfig::default() }, &mut model);
    assert!(e.contains("r = 25") && e.contains("c_attn"), "{e}");
    assert!(model.named_parameters().iter().all(|(_, t)| t.requires_grad()), "nothing frozen");
    assert!(model.blocks.iter().all(|b| b.c_attn.adapter.is_none()), "nothing wrapped");

    // adapter_config.json fields we do not honour, refused by name.
    let peft_json =
        std::fs::read_to_string(adapter_dir("lora").join("adapter_config.json")).unwrap();
    let weights = std::fs::read(adapter_dir("lora").join("adapter_model.safetensors")).unwrap();
    for (field, value, says) in [
        ("layers_to_transform", "[0]", "layers_to_transform"),
        ("rank_pattern", "{\"c_attn\": 2}", "rank_pattern"),
        ("alpha_pattern", "{\"c_attn\": 2}", "alpha_pattern"),
        ("use_dora", "true", "lora_magnitude_vector"),
        ("peft_type", "\"VERA\"", "VERA"),
        ("target_modules", "\".*c_attn\"", "regular expression"),
        ("init_lora_weights", "\"pissa\"", "init_lora_weights"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&peft_json).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        let dir = temp_dir(&format!("lora-bad-{field}"));
        std::fs::write(dir.join("adapter_config.json"), v.to_string()).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), &weights).unwrap();
        let e = load_adapter(&mut model, &dir).err().unwrap().to_string();
        assert!(e.contains(says), "{field}: {e}");
    }
    // A config that is not JSON, a corrupt weights file, an adapter with another base's shapes.
    let dir = temp_dir("lora-bad-json");
    std::fs::write(dir.join("adapter_config.json"), &peft_json[..peft_json.len() / 2]).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), &weights).unwrap();
    let e = load_adapter(&mut model, &dir).err().unwrap().to_string();
    assert!(e.contains("adapter_config.json") && e.contains("not valid JSON"), "{e}");
    let dir = temp_dir("lora-bad-corrupt");
    std::fs::write(dir.join("adapter_config.json"), &peft_json).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    let e = load_adapter(&mut model, &dir).err().unwrap().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("corrupt"), "{e}");
    let mut other = Gpt2::new_random(
        &gpu(),
        glassgrad::model::config::Gpt2Config { n_embd: 12, ..model.config.clone() },
        1,
    )
    .unwrap();
    let e = load_adapter(&mut other, adapter_dir("lora")).err().unwrap().to_string();
    assert!(e.contains("shape") && e.contains("different base"), "{e}");
    assert!(model.named_parameters().iter().all(|(_, t)| t.requires_grad()), "nothing frozen");
    assert!(model.blocks.iter().all(|b| b.c_attn.adapter.is_none()), "nothing wrapped");

    // bias = "all" trains every bias, LayerNorm's included, as PEFT's does.
    let config = LoraConfig { bias: Bias::All, ..LoraConfig::default() };
    let lora = inject(&mut model, &config, 0).unwrap();
    let biases = model.named_parameters().iter().filter(|(n, _)| n.ends_with(".bias")).count();
    assert_eq!(lora.named_parameters(&model).len(), 2 * model.config.n_layer + biases);
    assert!(
        lora.named_parameters(&model)
            .iter()
            .any(|(k, _)| k == "base_model.model.transformer.h.0.ln_1.bias")
    );
    assert!(
        lora.named_parameters(&model)
            .iter()
            .any(|(k, _)| k == "base_model.model.transformer.h.0.attn.c_attn.base_layer.bias")
    );
}

/// The checkpointing trap (peft.md): with the embeddings frozen, nothing entering a recomputed
/// block requires a gradient, yet the LoRA parameters inside must get exactly the plain
/// gradients — with training-mode LoRA dropout on, since the recompute must redraw the same masks.
#[test]
fn lora_in_a_checkpointed_block_gets_the_plain_gradients() {
    use glassgrad::model::gpt2::ForwardOptions;
    let gpu = gpu();
    let mut model = base();
    let lora = load_adapter(&mut model, adapter_dir("lora")).unwrap(); // lora_dropout 0.1
    lora.train(99);
    let ids: Vec<u32> = (0..2 * 5).map(|i| (i * 29 % 97) as u32).collect();
    let targets: Vec<u32> = (0..2 * 5).map(|i| ((i + 1) * 29 % 97) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 5]).unwrap(); // (B, T); wte, wpe frozen
    let targets = Tensor::from_u32(&gpu, &targets, &[2, 5]).unwrap(); // (B, T)
    let params = lora.named_parameters(&model);
    let run = |checkpoint_every: Option<usize>| -> Vec<Vec<f32>> {
        params.iter().for_each(|(_, p)| p.zero_grad());
        let opts = ForwardOptions { checkpoint_every, ..Default::default() };
        let out = model.forward(&ids, &opts).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        params.iter().map(|(n, p)| p.grad().expect(n).to_vec().unwrap()).collect()
    };
    let plain = run(None);
    for k in [1, 2] {
        let recomputed = run(Some(k));
        for ((name, _), (p, r)) in params.iter().zip(plain.iter().zip(&recomputed)) {
            assert!(p.iter().any(|v| *v != 0.0), "{name}: zero gradient");
            assert_eq!(p, r, "{name}: recomputed gradient differs (k = {k})");
        }
    }
    lora.eval();
    let eval = run(None);
    assert!(eval.iter().zip(&plain).any(|(e, p)| e != p), "training-mode dropout had an effect");
}

/// The wrapper is general: the tied LM head ([out, in] storage, x·Wᵀ) carries a LoRA too, its
/// A and B train, and merging is refused by name (it would change the tied embedding).
#[test]
fn the_tied_lm_head_carries_lora_and_refuses_merge() {
    let mut model = base();
    let (plain, _) = logits_and_loss(&model);
    let config = LoraConfig {
        r: 2,
        target_modules: vec!["lm_head".into()],
        init_lora_weights: glassgrad::peft::LoraInit::Random, // B ≠ 0: the term shows
        ..LoraConfig::default()
    };
    let lora = inject(&mut model, &config, 5).unwrap();
    assert!(!lora.config.fan_in_fan_out, "nn.Linear layout");
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    assert!(rel_err(&out.logits.to_vec().unwrap(), &plain) > 1e-3, "the term is applied");
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    for (key, p) in lora.named_parameters(&model) {
        let g = p.grad().unwrap_or_else(|| panic!("{key}: no gradient")).to_vec().unwrap();
        assert!(g.iter().any(|v| *v != 0.0), "{key}: zero gradient");
    }
    assert!(model.wte.grad().is_none(), "wte stays frozen");
    let e = lora.merge().err().unwrap().to_string();
    assert!(e.contains("lm_head") && e.contains("tied"), "{e}");
}
