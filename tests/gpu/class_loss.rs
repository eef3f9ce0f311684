//! `Gpt2::forward_class_loss`, the sentiment task's two-way classifier loss: its value against
//! the full logits restricted to the classes (f64 on the host), its gradient against central
//! differences, and a target outside the classes refused by name.

use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::ops::cross_entropy::IGNORE;
use glassgrad::{Tensor, autograd};

use crate::gpu::harness::gpu;

const V: usize = 11;
const CLASSES: [u32; 2] = [7, 3];

/// A 1-layer model, B 2 T 5, one counted target a row (as the task's rows have).
fn setup() -> (Gpt2, Tensor, Vec<u32>) {
    let gpu = gpu();
    let model = Gpt2::new_random(&gpu, Gpt2Config::new(V, 8, 16, 1, 2), 5).unwrap();
    let ids: Vec<u32> = (0..10).map(|i| (i * 4 % V) as u32).collect();
    let mut targets = vec![IGNORE; 10]; // (B, T)
    targets[3] = CLASSES[0];
    targets[9] = CLASSES[1];
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 5]).unwrap();
    (model, ids, targets)
}

fn class_loss(model: &Gpt2, ids: &Tensor, targets: &[u32]) -> f64 {
    let _g = autograd::no_grad();
    let opts = ForwardOptions::default();
    model.forward_class_loss(ids, targets, &CLASSES, &opts).unwrap().item().unwrap() as f64
}

#[test]
fn class_loss_is_the_two_way_cross_entropy_of_the_full_logits() {
    let (model, ids, targets) = setup();
    let logits = {
        let _g = autograd::no_grad();
        model.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap()
    }; // (B, T, V)
    let mut want = 0.0;
    for (r, &t) in targets.iter().enumerate().filter(|(_, t)| **t != IGNORE) {
        let z: Vec<f64> = CLASSES.iter().map(|&c| logits[r * V + c as usize] as f64).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        want += lse - z[CLASSES.iter().position(|&c| c == t).unwrap()];
    }
    want /= 2.0;
    let got = class_loss(&model, &ids, &targets);
    // f32 logits of size ~1 through one lse: a few ulps.
    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "got {got}, want {want}");
    // Not the full-vocabulary cross-entropy (which would make this test unable to tell).
    let full: f64 = {
        let _g = autograd::no_grad();
        let t = Tensor::from_u32(model.gpu(), &targets, &[2, 5]).unwrap();
        let opts = ForwardOptions::default();
        model.forward_loss(&ids, &t, &opts).unwrap().item().unwrap() as f64
    };
    assert!((full - want).abs() > 0.1, "full {full} vs two-way {want}");
}

#[test]
fn class_loss_gradients_match_central_differences() {
    let (model, ids, targets) = setup();
    let opts = ForwardOptions::default();
    model.forward_class_loss(&ids, &targets, &CLASSES, &opts).unwrap().backward().unwrap();
    // wte feeds both the input embedding and the classes' head rows; c_attn sits in between.
    for (name, index) in [
        ("transformer.wte.weight", 7 * 16 + 2),
        ("transformer.wte.weight", 4 * 16),
        ("transformer.h.0.attn.c_attn.weight", 5),
    ] {
        let p = model.named_parameters().into_iter().find(|(n, _)| n == name).unwrap().1;
        let grad = p.grad().unwrap().to_vec().unwrap()[index] as f64;
        let values = p.to_vec().unwrap();
        let at = |delta: f32| {
            let mut v = values.clone();
            v[index] += delta;
            model.gpu().upload(p.storage(), bytemuck::cast_slice(&v)).unwrap();
            class_loss(&model, &ids, &targets)
        };
        let h = 1e-2;
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        model.gpu().upload(p.storage(), bytemuck::cast_slice(&values)).unwrap();
        // f32 forward, h = 1e-2: the difference quotient carries ~1e-4 of rounding and O(h²).
        assert!((grad - fd).abs() <= 2e-3 + 2e-2 * fd.abs(), "{name}[{index}]: {grad} vs {fd}");
        assert!(grad != 0.0, "{name}[{index}] got no gradient");
    }
}

#[test]
fn a_target_outside_the_classes_is_refused() {
    let (model, ids, mut targets) = setup();
    targets[4] = 5;
    let opts = ForwardOptions::default();
    let err = model.forward_class_loss(&ids, &targets, &CLASSES, &opts).err().unwrap().to_string();
    assert!(err.contains("target token 5 is not one of the classes [7, 3]"), "{err}");
}

#[test]
fn forward_at_gives_the_full_forwards_logits_at_those_positions() {
    // The accuracy evaluation reads one position per sequence through `forward_at`, which runs
    // the head on those rows only. Same values, same kernels on fewer rows: the same logits to
    // f32 rounding of the head's sums (1e-5 of the largest); a wrong row is off by O(1).
    let (model, ids, _) = setup();
    let _g = autograd::no_grad();
    let full = model.forward(&ids, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    let positions = [4, 0, 9, 6]; // (B·T) flat, out of order, both rows
    let got = model.forward_at(&ids, &positions, &ForwardOptions::default()).unwrap();
    assert_eq!(got.shape(), &[4, V]);
    let got = got.to_vec().unwrap();
    let scale = full.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, &p) in positions.iter().enumerate() {
        for j in 0..V {
            let (g, w) = (got[i * V + j], full[p * V + j]);
            assert!((g - w).abs() <= 1e-5 * scale, "position {p} logit {j}: {g} vs {w}");
        }
    }
    let err = model.forward_at(&ids, &[10], &ForwardOptions::default()).unwrap_err().to_string();
    assert!(err.contains("position 10") && err.contains("2×5"), "{err}");
}
