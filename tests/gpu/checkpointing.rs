//! Gradient checkpointing of the model (`ForwardOptions::checkpoint_every`): the same gradients as
//! a plain run — with dropout, with a frozen base in front of trainable layers (the trap of
//! torch's reentrant checkpoint), with a prefix computed by ops — and less activation memory.
//! [`checkpointing_keeps_gradients`] states the claim once for any way of building the trained
//! model; each method (full fine-tuning, LoRA, DoRA, VeRA, IA3, prefix and prompt tuning,
//! BitFit, bottleneck adapters) is one call of it.

use std::rc::Rc;

use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2, LayerPrefix};
use glassgrad::model::layers::{Linear, LinearAdapter};
use glassgrad::peft::Adapter;
use glassgrad::{Category, Result, Tensor};

use crate::gpu::harness::gpu;
use crate::peft_support::set;

/// y = x·W + b + delta: a stand-in for an adapter on a frozen base.
struct Shift(Tensor);

impl LinearAdapter for Shift {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        layer.project(x)?.add(&self.0)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}shift"), &self.0);
    }
}

fn model(n_layer: usize, dropout: f64) -> Gpt2 {
    let mut config = Gpt2Config::new(61, 32, 24, n_layer, 3);
    (config.resid_pdrop, config.embd_pdrop) = (dropout, dropout);
    Gpt2::new_random(&gpu(), config, 5).unwrap()
}

fn ids(b: usize, t: usize, v: usize) -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 13 % v) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| ((i + 1) * 13 % v) as u32).collect();
    (
        Tensor::from_u32(&gpu(), &ids, &[b, t]).unwrap(),
        Tensor::from_u32(&gpu(), &targets, &[b, t]).unwrap(),
    )
}

/// Gradients of every trainable tensor in `watch` after one forward/backward.
fn grads(
    model: &Gpt2,
    watch: &[(String, Tensor)],
    prefix: Option<&dyn Fn() -> Vec<LayerPrefix>>,
    every: Option<usize>,
) -> Vec<Vec<f32>> {
    watch.iter().for_each(|(_, t)| t.zero_grad());
    let (ids, targets) = ids(2, 7, model.config.vocab_size);
    let layers = prefix.map(|p| p());
    let p = layers.as_ref().map_or(0, |l| l[0].keys.shape()[0]);
    let opts = ForwardOptions {
        prefix: layers.as_deref(),
        position_offset: p,
        dropout_seed: Some(11),
        checkpoint_every: every,
        ..Default::default()
    };
    let out = model.forward(&ids, &opts).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    watch
        .iter()
        .map(|(n, t)| t.grad().unwrap_or_else(|| panic!("{n}: no gradient")).to_vec().unwrap())
        .collect()
}

/// |got − want| ≤ 1e-6·max|want| for each tensor (the bound; in practice the replay runs
/// the same kernels on the same values, and the bits agree).
fn assert_same(label: &str, watch: &[(String, Tensor)], plain: &[Vec<f32>], got: &[Vec<f32>]) {
    for ((name, _), (p, g)) in watch.iter().zip(plain.iter().zip(got)) {
        let scale = p.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0, "{label}: {name} has a zero gradient");
        let d = p.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-6 * scale, "{label}: {name} differs by {d} (scale {scale})");
    }
}

#[test]
fn full_training_with_dropout_gives_the_plain_gradients_for_every_segment_length() {
    let model = model(3, 0.1);
    let watch = model.named_parameters();
    let plain = grads(&model, &watch, None, None);
    for k in [1, 2, 3, 5] {
        assert_same(&format!("k = {k}"), &watch, &plain, &grads(&model, &watch, None, Some(k)));
    }
}

/// Frozen embeddings and base, trainable terms inside the blocks: nothing entering a segment
/// requires grad, and the adapters must still get exactly the plain gradients.
#[test]
fn a_frozen_base_in_front_of_adapters_is_not_the_reentrant_trap() {
    let mut model = model(3, 0.0);
    model.set_requires_grad(false).unwrap();
    for block in &mut model.blocks {
        let n = block.c_attn.out_features();
        let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.05 - 0.1).collect();
        let delta = Tensor::parameter(&gpu(), &values, &[n], true).unwrap();
        block.c_attn.adapter = Some(Rc::new(Shift(delta)));
    }
    let watch: Vec<_> =
        model.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    assert_eq!(watch.len(), 3);
    let plain = grads(&model, &watch, None, None);
    for k in [1, 2] {
        assert_same(&format!("k = {k}"), &watch, &plain, &grads(&model, &watch, None, Some(k)));
    }
    for (name, t) in model.named_parameters() {
        assert!(t.requires_grad() || t.grad().is_none(), "frozen {name} got a gradient");
    }
}

/// Prefix tuning on a frozen base: each layer's keys and values are slices of one trainable table
/// (computed by ops, not leaves), so the segment must take them as inputs.
#[test]
fn a_prefix_computed_by_ops_gets_the_plain_gradient() {
    let model = model(2, 0.0);
    model.set_requires_grad(false).unwrap();
    let (p, c, l) = (3, model.config.n_embd, model.config.n_layer);
    let values: Vec<f32> = (0..p * 2 * l * c).map(|i| ((i * 7 % 19) as f32 - 9.0) * 0.05).collect();
    let table = Tensor::parameter(&gpu(), &values, &[p, 2 * l * c], true).unwrap(); // (P, 2LC)
    let layers = || -> Vec<LayerPrefix> {
        (0..l)
            .map(|i| LayerPrefix {
                keys: table.slice(1, 2 * i * c, (2 * i + 1) * c).unwrap(), // (P, C)
                values: table.slice(1, (2 * i + 1) * c, (2 * i + 2) * c).unwrap(), // (P, C)
            })
            .collect()
    };
    let watch = vec![("prompt_embeddings".to_string(), table.clone())];
    let plain = grads(&model, &watch, Some(&layers), None);
    assert_same("k = 1", &watch, &plain, &grads(&model, &watch, Some(&layers), Some(1)));
}

/// Peak activation bytes over a forward and backward, by the engine's own accounting, on an
/// 8-layer model: checkpointing every block keeps at most half of what a plain run keeps.
#[test]
fn checkpointing_halves_peak_activation_memory_on_eight_layers() {
    let gpu = gpu();
    let model = Gpt2::new_random(&gpu, Gpt2Config::new(61, 64, 64, 8, 4), 3).unwrap();
    let (ids, targets) = ids(4, 64, 61);
    let mut peaks = vec![];
    for every in [None, Some(1), Some(2), Some(4)] {
        model.named_parameters().iter().for_each(|(_, t)| t.zero_grad());
        gpu.synchronize().unwrap();
        gpu.reset_peaks();
        let base = gpu.memory().live(Category::Activations);
        let opts = ForwardOptions { checkpoint_every: every, ..Default::default() };
        let out = model.forward(&ids, &opts).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        gpu.synchronize().unwrap();
        let peak = gpu.memory().peak(Category::Activations) - base;
        println!("checkpoint_every {every:?}: peak activations {peak} bytes");
        peaks.push(peak);
    }
    assert!(peaks[1] * 2 <= peaks[0], "k = 1: {} vs plain {}", peaks[1], peaks[0]);
    assert!(peaks[1] < peaks[2] && peaks[2] < peaks[3] && peaks[3] < peaks[0], "{peaks:?}");
}

/// Residual, embedding and (where the method has one) adapter dropout probability of the
/// [`checkpointing_keeps_gradients`] cases: training mode, so the recompute must redraw the masks.
const P: f64 = 0.1;

/// The claim for one way of building a trained model: `attach` puts a method on a 3-layer model
/// with dropout `P` (freezing what it freezes; `None` for full fine-tuning) and the method is put
/// in training mode; then one forward/backward with checkpointing every k = 1 and 2 blocks (the
/// last segment runs plainly: k = 1 recomputes blocks 0 and 1, k = 2 blocks 0–1 as one segment)
/// gives every trainable tensor its plain gradient to 1e-6 of its largest entry, none zero, and
/// no frozen tensor a gradient. A new method (QLoRA on a 4-bit base) is one more call.
pub fn checkpointing_keeps_gradients(
    label: &str,
    attach: impl FnOnce(&mut Gpt2) -> Option<Box<dyn Adapter>>,
) {
    let mut model = model(3, P);
    let adapter = attach(&mut model);
    if let Some(a) = &adapter {
        a.train(23);
    }
    let mut watch: Vec<_> =
        model.named_parameters().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    for (key, t) in adapter.as_ref().map(|a| a.named_parameters(&model)).unwrap_or_default() {
        if !watch.iter().any(|(_, w)| w.id() == t.id()) {
            watch.push((key, t)); // a trainable tensor the model's registry does not name
        }
    }
    assert!(!watch.is_empty(), "{label}: nothing trains");
    let plain = grads(&model, &watch, None, None);
    for k in [1, 2] {
        let got = grads(&model, &watch, None, Some(k));
        assert_same(&format!("{label}, k = {k}"), &watch, &plain, &got);
    }
    for (name, t) in model.named_parameters() {
        assert!(t.requires_grad() || t.grad().is_none(), "{label}: frozen {name} got a gradient");
    }
    println!("{label}: {} trainable tensors, the plain gradients for k = 1, 2", watch.len());
}

/// Every tensor of `adapter` whose key contains `part`, set to a seeded pattern (a zero-init
/// factor would leave the other factor without a gradient).
fn nonzero(model: &Gpt2, adapter: &dyn Adapter, part: &str) {
    let mut found = false;
    for (key, t) in adapter.named_parameters(model) {
        if key.contains(part) {
            let v: Vec<f32> = (0..t.numel()).map(|j| 0.05 * ((j * 5 % 11) as f32 - 5.0)).collect();
            set(&t, &v);
            found = true;
        }
    }
    assert!(found, "the adapter has no tensor named *{part}*");
}

#[test]
fn full_fine_tuning_keeps_its_gradients_under_checkpointing() {
    checkpointing_keeps_gradients("full", |_| None);
}

/// The classic trap: the embeddings are frozen, so nothing entering any segment requires grad.
#[test]
fn lora_with_dropout_on_a_frozen_base_keeps_its_gradients_under_checkpointing() {
    use glassgrad::peft::{LoraConfig, LoraInit, inject};
    checkpointing_keeps_gradients("lora", |m| {
        let config = LoraConfig {
            r: 2,
            lora_dropout: P,
            target_modules: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
            init_lora_weights: LoraInit::Random, // B ≠ 0: A gets a gradient
            ..LoraConfig::default()
        };
        let lora = inject(m, &config, 3).unwrap();
        assert!(m.wte.grad().is_none() && !m.wte.requires_grad(), "the embedding is frozen");
        Some(Box::new(lora))
    });
}

/// QLoRA: the projections held in NF4 with double quantization (and in int8), frozen, nothing
/// entering a segment requiring grad; LoRA with dropout on top.
#[test]
fn qlora_with_dropout_on_a_4bit_base_keeps_its_gradients_under_checkpointing() {
    use glassgrad::model::quantized::QuantizeSpec;
    use glassgrad::peft::{LoraConfig, LoraInit, inject};
    for (label, kind, double_quant) in
        [("qlora nf4+dq", "nf4", true), ("qlora int8", "int8", false)]
    {
        checkpointing_keeps_gradients(label, |m| {
            m.quantize_base(QuantizeSpec::parse(kind, 64, double_quant).unwrap()).unwrap();
            let config = LoraConfig {
                r: 2,
                lora_dropout: P,
                target_modules: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
                init_lora_weights: LoraInit::Random, // B ≠ 0: A gets a gradient
                ..LoraConfig::default()
            };
            let lora = inject(m, &config, 5).unwrap();
            assert!(m.blocks[0].c_attn.quantized.is_some(), "{label}: the base is quantized");
            Some(Box::new(lora))
        });
    }
}

#[test]
fn dora_with_dropout_keeps_its_gradients_under_checkpointing() {
    use glassgrad::peft::{LoraConfig, LoraInit, inject};
    checkpointing_keeps_gradients("dora", |m| {
        let config = LoraConfig {
            r: 2,
            lora_dropout: P,
            use_dora: true,
            target_modules: vec!["c_attn".into(), "mlp.c_proj".into()],
            init_lora_weights: LoraInit::Random,
            ..LoraConfig::default()
        };
        Some(Box::new(inject(m, &config, 4).unwrap()))
    });
}

#[test]
fn vera_with_dropout_keeps_its_gradients_under_checkpointing() {
    use glassgrad::peft::vera::{VeraConfig, inject};
    checkpointing_keeps_gradients("vera", |m| {
        let config = VeraConfig {
            r: 4,
            vera_dropout: P,
            target_modules: vec!["c_attn".into(), "c_fc".into()],
            ..VeraConfig::default()
        };
        let vera = inject(m, &config, 5).unwrap();
        nonzero(m, &vera, "lambda_b"); // λ_b = 0 would give λ_d no gradient
        Some(Box::new(vera))
    });
}

#[test]
fn ia3_keeps_its_gradients_under_checkpointing() {
    use glassgrad::peft::ia3::{Ia3Config, inject};
    checkpointing_keeps_gradients("ia3", |m| {
        let config = Ia3Config {
            target_modules: vec!["c_attn".into(), "c_fc".into(), "mlp.c_proj".into()],
            feedforward_modules: vec!["mlp.c_proj".into()],
            ..Ia3Config::default()
        };
        Some(Box::new(inject(m, &config, 6).unwrap())) // l = 1: every input has a gradient
    });
}

/// Prefix tuning's keys and values come out of its reparameterization MLP in front of every
/// segment (PEFT refuses prefix tuning with checkpointing; we do not have to).
#[test]
fn prefix_and_prompt_tuning_keep_their_gradients_under_checkpointing() {
    use glassgrad::peft::{prefix_tuning, prompt_tuning};
    checkpointing_keeps_gradients("prefix", |m| {
        let config = prefix_tuning::PrefixTuningConfig {
            num_virtual_tokens: 3,
            prefix_projection: true,
            encoder_hidden_size: Some(16),
            ..Default::default()
        };
        Some(Box::new(prefix_tuning::inject(m, &config, 7).unwrap()))
    });
    checkpointing_keeps_gradients("prompt", |m| {
        let config =
            prompt_tuning::PromptTuningConfig { num_virtual_tokens: 3, ..Default::default() };
        Some(Box::new(prompt_tuning::inject(m, &config, 8).unwrap()))
    });
}

#[test]
fn bitfit_and_bottleneck_adapters_keep_their_gradients_under_checkpointing() {
    use glassgrad::peft::{bitfit, bottleneck};
    checkpointing_keeps_gradients("bitfit", |m| {
        Some(Box::new(bitfit::inject(m, &bitfit::BitFitConfig::default()).unwrap()))
    });
    checkpointing_keeps_gradients("bottleneck", |m| {
        let config = bottleneck::BottleneckConfig { bottleneck_size: 4, ..Default::default() };
        let adapter = bottleneck::inject(m, &config, 9).unwrap();
        nonzero(m, &adapter, "adapter_up"); // W_up = 0 would give W_down no gradient
        Some(Box::new(adapter))
    });
}

#[test]
fn a_segment_length_of_zero_is_refused() {
    let model = model(1, 0.0);
    let (ids, _) = ids(1, 3, model.config.vocab_size);
    let opts = ForwardOptions { checkpoint_every: Some(0), ..Default::default() };
    let err = model.forward(&ids, &opts).err().expect("k = 0 is an error");
    assert!(err.to_string().contains("every 0 blocks"), "{err}");
}

/// `compare --checkpointing 2` on a tiny 4-layer base: besides each method's run (trained with
/// k = 2), one row per method and setting (none, k = 1, 2 = ⌈√4⌉; k = 4 would be a plain run,
/// the last segment running plainly) with the peak activation
/// bytes and step time, the same gradients as without checkpointing, less activation memory at
/// k = 1, and the table's files and picture.
#[test]
fn compare_checkpointing_measures_memory_and_time_for_several_segment_lengths() {
    use crate::cli::{glassgrad, s};
    let dir = crate::gpu::harness::temp_dir("compare-checkpointing");
    let base = dir.join("base");
    let train = ["train", "--out", s(&base), "--steps", "1", "--n-layer", "4", "--n-embd", "16"];
    let train =
        [&train[..], &["--n-head", "2", "--batch-size", "2", "--eval-batches", "1"]].concat();
    let (ok, _, err) = glassgrad(&train);
    assert!(ok, "{err}");
    let out = dir.join("cmp");
    let args = ["compare", "--model", s(&base), "--methods", "lora,full", "--steps", "1"];
    let more = ["--batch-size", "4", "--task", "style", "--checkpointing", "2"];
    let more = [&more[..], &["--out", s(&out), "--json"]].concat();
    let (ok, stdout, stderr) = glassgrad(&[&args[..], &more[..]].concat());
    assert!(ok, "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["rows"].as_array().unwrap().len(), 2, "{last}");
    let rows = last["checkpointing"].as_array().expect("the sweep's rows");
    let settings: Vec<(String, Option<u64>)> = rows
        .iter()
        .map(|r| (r["method"].as_str().unwrap().to_string(), r["checkpoint_every"].as_u64()))
        .collect();
    let want: Vec<(String, Option<u64>)> = ["lora", "full"]
        .iter()
        .flat_map(|m| [None, Some(1), Some(2)].map(|k| (m.to_string(), k)))
        .collect();
    assert_eq!(settings, want);
    for method in rows.chunks(3) {
        let bytes = |i: usize| method[i]["peak_activation_bytes"].as_u64().unwrap();
        assert!(bytes(1) < bytes(0), "k = 1 keeps less than none: {method:?}");
        for r in method {
            assert!(r["step_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["max_grad_diff"].as_f64().unwrap() <= 1e-6, "{r}");
        }
    }
    for f in ["checkpointing.csv", "checkpointing.json", "compare.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let svg = std::fs::read_to_string(out.join("checkpointing.svg")).unwrap();
    assert!(svg.contains("k=1") && svg.contains("none") && svg.contains("lora"), "{svg}");
}
