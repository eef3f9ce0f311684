//! The model can be wrapped and re-run: every projection goes through one `Linear` that an
//! adapter wraps (its term lands before the layer's epilogue), the registry names what adapters
//! add, and a block's forward can be called again by a recomputing wrapper.

use std::path::Path;
use std::rc::Rc;

use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{BlockContext, ForwardOptions, Gpt2};
use glassgrad::model::layers::{Linear, LinearAdapter};
use glassgrad::{Result, Tensor, autograd};

use crate::gpu::harness::gpu;

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// A minimal method for the test: y = x·W + b + delta, with a trainable delta (out).
struct Shift {
    delta: Tensor, // (out)
}

impl LinearAdapter for Shift {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        layer.project(x)?.add(&self.delta) // (.., out)
    }
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}shift.delta"), &self.delta);
    }
}

fn shift(layer: &mut Linear, values: Vec<f32>) -> Tensor {
    let n = layer.out_features();
    assert_eq!(values.len(), n);
    let delta = Tensor::parameter(&gpu(), &values, &[n], true).unwrap();
    layer.adapter = Some(Rc::new(Shift { delta: delta.clone() }));
    delta
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn batch() -> (Tensor, Tensor) {
    let gpu = gpu();
    let ids = Tensor::from_u32(&gpu, &[5, 17, 42, 96, 0, 33, 7, 8], &[2, 4]).unwrap();
    let targets = Tensor::from_u32(&gpu, &[17, 42, 96, 0, 33, 7, 8, 1], &[2, 4]).unwrap();
    (ids, targets)
}

/// Wrap all five kinds of projection (c_attn, attn.c_proj, c_fc, mlp.c_proj, the LM head) on a
/// frozen base: a zero term leaves the logits as they were, every adapter parameter gets a
/// nonzero gradient, no base parameter gets one, and the registry names the adapters but does
/// not save them as base weights.
#[test]
fn an_adapter_on_every_projection_is_used_and_trained() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let plain = Gpt2::from_weights(&gpu, &weights).unwrap();
    let mut model = Gpt2::from_weights(&gpu, &weights).unwrap();
    model.set_requires_grad(false).unwrap();
    let mut deltas = vec![];
    for block in &mut model.blocks {
        for layer in
            [&mut block.c_attn, &mut block.attn_c_proj, &mut block.c_fc, &mut block.mlp_c_proj]
        {
            let n = layer.out_features();
            deltas.push(shift(layer, vec![0.0; n]));
        }
    }
    let v = model.config.vocab_size;
    deltas.push(shift(&mut model.lm_head, vec![0.0; v]));
    let (ids, targets) = batch();
    let want = plain.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    // The wrapped c_fc runs gelu(project(x) + 0) instead of the fused bias_gelu: a few ulps.
    let d = max_diff(&out.logits.to_vec().unwrap(), &want);
    assert!(d <= 1e-5, "a zero adapter term changed the logits by {d}");
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    for (i, delta) in deltas.iter().enumerate() {
        let g = delta.grad().unwrap_or_else(|| panic!("adapter {i} got no gradient"));
        assert!(g.to_vec().unwrap().iter().any(|x| *x != 0.0), "adapter {i}: zero gradient");
    }
    let names = model.named_parameters();
    for (name, t) in &names {
        if name.contains("shift.delta") {
            continue;
        }
        assert!(t.grad().is_none(), "frozen {name} got a gradient");
    }
    let adapter_names: Vec<&String> =
        names.iter().map(|(n, _)| n).filter(|n| n.contains("shift")).collect();
    assert_eq!(adapter_names.len(), 4 * model.config.n_layer + 1);
    assert!(adapter_names.contains(&&"transformer.h.1.mlp.c_fc.shift.delta".to_string()));
    assert!(adapter_names.contains(&&"lm_head.shift.delta".to_string()));
    let saved = model.to_weights().unwrap();
    assert_eq!(saved.params.len(), weights.params.len(), "adapters are not base weights");
    // 2 blocks × (72 + 24 + 96 + 24) + 97 = 529, of 17,592 + 529 = 18,121; as PEFT prints it.
    assert_eq!(deltas.iter().map(Tensor::numel).sum::<usize>(), 529);
    assert_eq!(
        model.trainable_summary(),
        "trainable params: 529 || all params: 18,121 || trainable%: 2.9193"
    );
}

/// c_fc's epilogue is gelu_new(· + b): an adapter's term must land inside it, before the GELU.
/// A shift δ on c_fc equals a model whose c_fc bias is b + δ.
#[test]
fn an_adapter_term_lands_before_the_layers_epilogue() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let hidden = weights.config.mlp_hidden();
    let delta: Vec<f32> = (0..hidden).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
    let mut moved = weights.clone();
    let bias = moved.params.get_mut("transformer.h.0.mlp.c_fc.bias").unwrap();
    bias.data.iter_mut().zip(&delta).for_each(|(b, d)| *b += d);
    let want = Gpt2::from_weights(&gpu, &moved).unwrap();
    let mut model = Gpt2::from_weights(&gpu, &weights).unwrap();
    shift(&mut model.blocks[0].c_fc, delta);
    let (ids, _) = batch();
    let got = model.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    let want = want.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = max_diff(&got, &want);
    // Same math, bias_gelu fused vs add then gelu: f32 rounding only.
    assert!(d <= 1e-5 * scale.max(1.0), "max diff {d} (logit scale {scale})");
    // And it is not the same as shifting after the GELU, which would change the logits more.
    let unchanged = Gpt2::from_weights(&gpu, &weights).unwrap();
    let base =
        unchanged.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    assert!(max_diff(&got, &base) > 1e-3, "the shift had no effect");
}

/// A block's forward is a function that can be called again: run twice it gives the same bits,
/// and recomputed inside `autograd::checkpoint` it gives the plain gradients, for the block's
/// parameters and its input, with the embeddings frozen (nothing entering it requires grad).
#[test]
fn a_block_can_be_recomputed_by_a_checkpoint_wrapper() {
    let gpu = gpu();
    let weights = Gpt2Weights::load(Path::new(REF).join("model")).unwrap();
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    model.set_trainable(|name| name.starts_with("transformer.h.")).unwrap();
    let (b, t, c) = (2, 5, model.config.n_embd);
    let x: Vec<f32> = (0..b * t * c).map(|i| ((i * 29 % 23) as f32 - 11.0) * 0.1).collect();
    let x = Tensor::from_f32(&gpu, &x, &[b, t, c]).unwrap(); // (B, T, C), frozen
    let ctx = BlockContext::default();
    let block = &model.blocks[1];
    let once = block.forward(&x, &ctx).unwrap().x.to_vec().unwrap();
    let twice = block.forward(&x, &ctx).unwrap().x.to_vec().unwrap();
    assert_eq!(once, twice);
    let params: Vec<(String, Tensor)> = model
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| n.starts_with("transformer.h."))
        .collect();
    let run = |recompute: bool| -> Vec<Vec<f32>> {
        params.iter().for_each(|(_, p)| p.zero_grad());
        let mut h = x.clone();
        for block in &model.blocks {
            h = if recompute {
                let (blk, ctx) = (block.clone(), ctx.clone());
                let mine: Vec<Tensor> =
                    glassgrad::model::layers::Parameters::named_parameters(block, "")
                        .into_iter()
                        .map(|(_, t)| t)
                        .collect();
                autograd::checkpoint(&[&h], &mine, move |i| Ok(blk.forward(&i[0], &ctx)?.x))
                    .unwrap()
            } else {
                block.forward(&h, &ctx).unwrap().x
            };
        }
        h.mul(&h).unwrap().sum_all().unwrap().backward().unwrap();
        params.iter().map(|(n, p)| p.grad().expect(n).to_vec().unwrap()).collect()
    };
    let plain = run(false);
    let recomputed = run(true);
    for ((name, _), (p, r)) in params.iter().zip(plain.iter().zip(&recomputed)) {
        assert!(p.iter().any(|v| *v != 0.0), "{name}: zero gradient");
        assert_eq!(p, r, "{name}: recomputed gradient differs");
    }
}
