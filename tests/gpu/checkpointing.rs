//! Gradient checkpointing of the model (`ForwardOptions::checkpoint_every`): the same gradients as
//! a plain run — with dropout, with a frozen base in front of trainable layers (the trap of
//! torch's reentrant checkpoint), with a prefix computed by ops — and less activation memory.

use std::rc::Rc;

use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2, LayerPrefix};
use glassgrad::model::layers::{Linear, LinearAdapter};
use glassgrad::{Category, Result, Tensor};

use crate::gpu::harness::gpu;

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

#[test]
fn a_segment_length_of_zero_is_refused() {
    let model = model(1, 0.0);
    let (ids, _) = ids(1, 3, model.config.vocab_size);
    let opts = ForwardOptions { checkpoint_every: Some(0), ..Default::default() };
    let err = model.forward(&ids, &opts).err().expect("k = 0 is an error");
    assert!(err.to_string().contains("every 0 blocks"), "{err}");
}
