//! AdaLoRA against PEFT. tests/data/adalora_ref was written by scripts/make_adalora_reference.py
//! with torch + peft 0.21.2 on the CPU (the small random GPT-2 of tests/data/gpt2_ref, AdaLoRA on
//! c_attn, c_proj, c_fc with init_r 4, target_r 2, λ ≠ 0): logits, the regularized loss and every
//! A/λ/B gradient; the RankAllocator fed PEFT's weights and gradients over 10 steps gives PEFT's
//! masked λ and rank pattern; PEFT's cut `trained/` directory loads to PEFT's logits and our save
//! writes the same tensors and pattern; merge keeps the logits; a central finite difference
//! agrees with the regularized loss's gradient; a fresh AdaLoRA trains exactly its A, λ, B; the
//! CLI writes an ADALORA directory; bad configs are refused by name.

use std::path::Path;

use glassgrad::io::TensorFile;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::Adapter;
use glassgrad::peft::adalora::{self, AdaLoraModel};
use glassgrad::peft::adalora_allocator::{RankAllocator, RankPattern, Triplets};
use glassgrad::peft::adalora_config::AdaLoraConfig;
use glassgrad::peft::files;

use crate::gpu::harness::{grad_options, temp_dir};
use crate::lora::{base, logits_and_loss, rel_err, set, tokens};

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/adalora_ref");

fn expected() -> TensorFile {
    TensorFile::read(Path::new(REF).join("expected.safetensors")).unwrap()
}

fn load(model: &mut Gpt2, dir: &str) -> AdaLoraModel {
    adalora::load(model, &Path::new(REF).join(dir)).unwrap()
}

/// The training loss: the task loss plus the orthogonal regularizer (PEFT's `outputs.loss`).
fn regularized_loss(model: &Gpt2, ada: &AdaLoraModel, backward: bool) -> (f32, f32) {
    let (ids, targets) = tokens();
    let opts = if backward { grad_options() } else { ForwardOptions::default() };
    let out = model.forward(&ids, &opts).unwrap();
    let task = Gpt2::loss(&out.logits, &targets).unwrap();
    let loss = task.add(&ada.loss_term().unwrap().unwrap()).unwrap();
    if backward {
        loss.backward().unwrap();
    }
    (loss.item().unwrap(), task.item().unwrap())
}

#[test]
fn matches_peft_logits_regularized_loss_and_every_gradient() {
    let mut model = base();
    let ada = load(&mut model, "adapter");
    let expected = expected();
    let (logits, _) = logits_and_loss(&model);
    // f32 through 2 blocks, summed in other orders: 1e-4 of max |want| (as tests/gpu/lora.rs).
    let e = rel_err(&logits, &expected.f32("logits").unwrap().1);
    println!("logits OK (max rel err {e:.2e})");
    assert!(e <= 1e-4, "logits differ from PEFT: rel err {e:.3e}");
    let (loss, task) = regularized_loss(&model, &ada, true);
    for (got, name) in [(loss, "loss"), (task, "task_loss")] {
        let want = expected.f32(name).unwrap().1[0];
        let e = ((got - want) / want).abs();
        println!("{name} {got} vs PEFT {want} (rel err {e:.2e})");
        assert!(e <= 1e-5, "{name}: {got} vs PEFT {want}");
    }
    let params = ada.named_parameters(&model);
    let mut worst = 0f64;
    for (key, p) in &params {
        let (shape, want) = expected.f32(&format!("grad.{key}")).unwrap();
        assert_eq!(p.shape(), shape.as_slice(), "{key}");
        let got = p.grad().unwrap_or_else(|| panic!("{key} got no gradient")).to_vec().unwrap();
        assert!(got.iter().any(|g| *g != 0.0), "{key}: gradient is all zeros");
        let e = rel_err(&got, &want); // one more backward than the logits: the same 1e-4
        worst = worst.max(e);
        assert!(e <= 1e-4, "gradient of {key} differs from PEFT: rel err {e:.3e}");
    }
    println!("{} gradients OK (max rel err {worst:.2e})", params.len());
    let n_grads = expected.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(params.len(), n_grads, "PEFT trains exactly these tensors");
    let counts = expected.get("trainable_params").unwrap().to_i64("trainable_params").unwrap();
    assert_eq!(model.num_trainable_parameters() as i64, counts[0], "PEFT's trainable count");
    for (name, t) in model.named_parameters() {
        let ours = params.iter().any(|(_, p)| p.id() == t.id());
        assert_eq!(t.requires_grad(), ours, "{name}");
        assert!(ours || t.grad().is_none(), "frozen {name} got a gradient");
    }
}

/// Our allocator, fed the weights and gradients PEFT's saw at global steps 1..10, masks the same
/// λ (warmup, the cubic budget, the forced final mask at T − tfinal, then the fixed pattern).
#[test]
fn rank_allocator_masks_as_peft_update_and_allocate() {
    let config = AdaLoraConfig::read(&Path::new(REF).join("adapter/adapter_config.json")).unwrap();
    let expected = expected();
    let mut allocator = RankAllocator::new(config.schedule());
    let layers: Vec<String> = expected
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("alloc.1.value.base_model.model."))
        .filter_map(|k| k.strip_suffix(".lora_E"))
        .map(str::to_string)
        .collect();
    assert_eq!(layers.len(), 8, "c_attn, c_proj ×2, c_fc in 2 blocks");
    let mut masked_steps = 0;
    for t in 1..=10 {
        let get = |what: &str, layer: &str, p: &str| {
            expected.f32(&format!("alloc.{t}.{what}.base_model.model.{layer}.{p}")).unwrap()
        };
        let mut triplets: Vec<Triplets> = layers
            .iter()
            .map(|l| {
                let (a_shape, lora_a) = get("value", l, "lora_A");
                let (b_shape, lora_b) = get("value", l, "lora_B");
                Triplets {
                    name: l.clone(),
                    r: a_shape[0],
                    fan_in: a_shape[1],
                    fan_out: b_shape[0],
                    lora_a,
                    lora_e: get("value", l, "lora_E").1,
                    lora_b,
                    grad_a: get("grad", l, "lora_A").1,
                    grad_e: get("grad", l, "lora_E").1,
                    grad_b: get("grad", l, "lora_B").1,
                }
            })
            .collect();
        let budget = allocator.update_and_allocate(&mut triplets, t);
        let want_budget = expected.get(&format!("alloc.{t}.budget")).unwrap().to_i64("b").unwrap();
        assert_eq!(budget as i64, want_budget[0], "step {t}: budget");
        let mut zeros = 0;
        for tr in &triplets {
            let want = get("after", &tr.name, "lora_E").1;
            assert_eq!(tr.lora_e, want, "step {t}: λ of {} after masking", tr.name);
            zeros += want.iter().filter(|v| **v == 0.0).count();
        }
        masked_steps += usize::from(zeros > 0);
        // Ī and Ū themselves (f32 in PEFT's order of operations: a few ulps at most).
        for tr in &triplets {
            let ours = allocator.ema(&tr.name);
            let peft = expected.f32(&format!("alloc.{t}.ipt.{}.lora_A", tr.name));
            assert_eq!(ours.is_some(), peft.is_ok(), "step {t}: {} has scores", tr.name);
            let Some(ours) = ours else { continue };
            for ((ipt, unc), p) in ours.iter().zip(["lora_A", "lora_E", "lora_B"]) {
                for (got, what) in [(ipt, "ipt"), (unc, "unc")] {
                    let key = format!("alloc.{t}.{what}.{}.{p}", tr.name);
                    let e = rel_err(got, &expected.f32(&key).unwrap().1);
                    assert!(e <= 1e-6, "step {t}: {key} differs from PEFT's: rel err {e:.2e}");
                }
            }
        }
        println!("step {t}: budget {budget}, {zeros} λ masked, as PEFT");
    }
    assert_eq!(masked_steps, 8, "steps 3..10 mask (2 warmup steps), so the test can fail");
    let trained = AdaLoraConfig::read(&Path::new(REF).join("trained/adapter_config.json")).unwrap();
    let ours: RankPattern = allocator
        .rank_pattern
        .unwrap()
        .into_iter()
        .map(|(k, v)| (format!("{k}.lora_E"), v))
        .collect();
    assert_eq!(Some(ours), trained.rank_pattern, "the final rank pattern PEFT saved");
}

/// PEFT's `trained/` (tensors cut to the pattern) loads to PEFT's logits; saving it again writes
/// PEFT's tensors and pattern; merge_and_unload keeps the logits.
#[test]
fn trained_directory_loads_saves_and_merges_as_peft() {
    let expected = expected();
    let mut model = base();
    let ada = load(&mut model, "trained");
    let (logits, _) = logits_and_loss(&model);
    let e = rel_err(&logits, &expected.f32("trained_logits").unwrap().1);
    println!("trained/ logits vs PEFT: max rel err {e:.2e}");
    assert!(e <= 1e-4, "trained/ logits differ from PEFT: {e:.3e}");
    let dir = temp_dir("adalora-save");
    files::save(&model, &ada, &dir).unwrap();
    let peft = TensorFile::read(Path::new(REF).join("trained/adapter_model.safetensors")).unwrap();
    let ours = TensorFile::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(ours.tensors.len(), peft.tensors.len());
    for key in peft.tensors.keys() {
        assert_eq!(ours.f32(key).unwrap(), peft.f32(key).unwrap(), "{key}");
    }
    let reread = AdaLoraConfig::read(&dir.join("adapter_config.json")).unwrap();
    let want = AdaLoraConfig::read(&Path::new(REF).join("trained/adapter_config.json")).unwrap();
    assert_eq!(reread.rank_pattern, want.rank_pattern);
    assert!(reread.rank_pattern.is_some());
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    assert!(text.contains("\"peft_type\": \"ADALORA\""), "{text}");

    let n = Box::new(ada).merge_and_unload(&mut model).unwrap();
    assert_eq!(n, 8);
    let (merged, _) = logits_and_loss(&model);
    // W + ΔW rounded once to f32, then the same forward: a few ulps of the logits.
    let e = rel_err(&merged, &logits);
    println!("merged logits vs adapter logits: max rel err {e:.2e}");
    assert!(e <= 1e-5, "merge changed the logits: {e:.3e}");
    assert!(model.named_parameters().iter().all(|(n, _)| !n.contains("lora_")));
}

/// (L(θ + hd) − L(θ − hd)) / 2h along one random direction d over every A, λ, B, with L the task
/// loss plus the regularizer, against ⟨∇L, d⟩; Richardson removes the h² term (as lora.rs).
#[test]
fn regularized_gradient_agrees_with_a_central_finite_difference() {
    let mut model = base();
    let ada = load(&mut model, "adapter");
    let params = ada.named_parameters(&model);
    regularized_loss(&model, &ada, true);
    let mut rng = glassgrad::cpu::Rng::new(3);
    let (mut analytic, mut dirs) = (0f64, vec![]);
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
        regularized_loss(&model, &ada, false).0 as f64
    };
    let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
    let h = 1e-3;
    let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
    println!("directional derivative {analytic:.6} vs finite difference {numeric:.6}");
    // f32 loss noise over 2h (≈1e-3 absolute, as in lora.rs) plus 1% of the derivative; a
    // missing or wrong regularizer term is off by O(1).
    assert!((numeric - analytic).abs() <= 5e-3 + 1e-2 * analytic.abs(), "{analytic} vs {numeric}");
}

/// PEFT's init (λ = 0: the base model; A, B ~ N(0, 0.02²)); after one AdamW step on the
/// regularized loss every A, λ, B has a nonzero gradient and every frozen parameter none.
#[test]
fn fresh_adalora_starts_at_the_base_and_trains_only_its_triplets() {
    let mut model = base();
    let (plain, _) = logits_and_loss(&model);
    let mut config = AdaLoraConfig::new(10);
    config.init_r = 3;
    config.target_r = 2;
    config.target_modules = vec!["c_attn".into(), "mlp.c_proj".into()];
    let ada = adalora::inject(&mut model, &config, 5).unwrap();
    let (wrapped, _) = logits_and_loss(&model);
    assert!(rel_err(&wrapped, &plain) <= 1e-6, "λ = 0 leaves the base model");
    let a: Vec<f32> = ada.layers.iter().flat_map(|l| l.svd.lora_a.to_vec().unwrap()).collect();
    let std = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
    assert!((std - 0.02).abs() < 0.003, "A's std {std}, PEFT's 0.02");
    let params: Vec<_> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
    for _ in 0..2 {
        opt.zero_grad();
        regularized_loss(&model, &ada, true);
        opt.step().unwrap();
    }
    for (name, t) in model.named_parameters() {
        let adapter =
            name.ends_with(".lora_A") || name.ends_with(".lora_E") || name.ends_with(".lora_B");
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

/// `glassgrad finetune --method adalora --steps 3 --json` writes PEFT's ADALORA directory with the
/// final rank pattern (step 3 = total_step fixes it), which `files::load` reads back.
#[test]
fn finetune_adalora_writes_an_adalora_directory() {
    let dir = temp_dir("finetune-adalora");
    let base = dir.join("base");
    crate::finetune::tiny_base(&base);
    let out = dir.join("adalora");
    let (ok, stdout, stderr) = crate::cli::glassgrad(&[
        "finetune",
        "--model",
        crate::cli::s(&base),
        "--out",
        crate::cli::s(&out),
        "--steps",
        "3",
        "--method",
        "adalora",
        "--r",
        "4",
        "--target-r",
        "2",
        "--batch-size",
        "4",
        "--eval-batches",
        "1",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["method"], "adalora");
    // init_r 4 on c_attn (16 → 48): A 4·16 + λ 4 + B 48·4 = 260.
    assert_eq!(j["trainable_params"].as_u64(), Some(260));
    let text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    assert!(text.contains("\"peft_type\": \"ADALORA\""), "{text}");
    let config = AdaLoraConfig::read(&out.join("adapter_config.json")).unwrap();
    assert_eq!(config.total_step, 3);
    let pattern = config.rank_pattern.expect("the final step sets the rank pattern");
    assert_eq!(pattern.values().flatten().filter(|k| **k).count(), 2, "target_r 2 × 1 layer");
    let gpu = crate::gpu::harness::gpu();
    let weights = glassgrad::model::Gpt2Weights::load(&base).unwrap();
    let mut model = Gpt2::from_weights(&gpu, &weights).unwrap();
    assert_eq!(files::load(&mut model, &out).unwrap().peft_type(), "ADALORA");
}

#[test]
fn bad_adalora_configs_are_refused_by_name() {
    let text = std::fs::read_to_string(Path::new(REF).join("adapter/adapter_config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = [
        ("total_step", serde_json::Value::Null, "total_step"),
        ("tinit", serde_json::json!(9), "tinit"),
        ("target_r", serde_json::json!(5), "target_r"),
        ("beta1", serde_json::json!(1.0), "beta1"),
        ("use_rslora", serde_json::json!(true), "use_rslora"),
    ];
    for (key, value, says) in cases {
        let saved = json[key].clone();
        json[key] = value;
        let err = AdaLoraConfig::from_json_str(&json.to_string(), "cfg").unwrap_err().to_string();
        assert!(err.contains(says), "{key}: {err}");
        json[key] = saved;
    }
    assert!(AdaLoraConfig::from_json_str(&json.to_string(), "cfg").is_ok());
}

/// A layer the allocator pruned to rank 0: PEFT would save (0, in) tensors; we refuse with a
/// message naming the layer (not yet supported), and write nothing.
#[test]
fn a_layer_pruned_to_rank_zero_is_refused_by_name() {
    let mut model = base();
    let ada = load(&mut model, "adapter");
    let mut pattern = RankPattern::new();
    for l in &ada.layers {
        pattern.insert(l.name.clone(), vec![l.name.contains("h.0."); 4]);
    }
    ada.allocator.borrow_mut().rank_pattern = Some(pattern);
    let dir = temp_dir("adalora-rank-zero");
    let err = files::save(&model, &ada, &dir).unwrap_err().to_string();
    assert!(err.contains("transformer.h.1.") && err.contains("rank 0"), "{err}");
    assert!(!dir.join("adapter_model.safetensors").exists(), "nothing written");
}
