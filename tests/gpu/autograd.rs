//! The graph's lifetime: a second backward through a spent graph, grad mode inside backward,
//! recomputation (checkpoint) giving the plain gradients, and freezing leaves in place.

use glassgrad::{Error, Tensor, autograd};

use crate::gpu::harness::gpu;

/// h = exp(w); l1 = Σh; l2 = Σh². After l1.backward() the graph through h is spent: l2.backward()
/// must refuse (it used to return Ok with w.grad = 1.649 instead of 7.085 and give h a .grad).
#[test]
fn second_backward_through_a_spent_graph_is_an_error() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[0.5], &[1], true).unwrap();
    let h = w.exp().unwrap(); // (1)
    let l1 = h.sum_all().unwrap();
    let l2 = h.mul(&h).unwrap().sum_all().unwrap();
    l1.backward().unwrap();
    let after_first = w.grad().unwrap().to_vec().unwrap()[0];
    assert!((after_first - 0.5f32.exp()).abs() < 1e-6); // dl1/dw = e^w = 1.6487
    let err = l2.backward().expect_err("a second backward through h must be refused");
    assert!(matches!(err, Error::Autograd(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("second time") && msg.contains("exp"), "{msg}");
    // Refused before anything moved: w keeps the first gradient, h never became a leaf.
    assert_eq!(w.grad().unwrap().to_vec().unwrap()[0], after_first);
    assert!(h.grad().is_none());
    // The same loss twice is refused too, not accumulated into the loss as if it were a leaf.
    assert!(l1.backward().is_err());
    assert!(l1.grad().is_none());
    // Rebuilding the graph works: d/dw Σh² = 2·e^{2w} = 5.437 (plus l1's e^w: the 7.085 of the issue).
    w.zero_grad();
    let h = w.exp().unwrap();
    h.mul(&h).unwrap().sum_all().unwrap().backward().unwrap();
    let g = w.grad().unwrap().to_vec().unwrap()[0];
    assert!((g - 2.0 * 1f32.exp()).abs() < 1e-5, "{g}");
}

#[test]
fn enable_grad_records_inside_no_grad_and_restores_the_mode() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[2.0], &[1], true).unwrap();
    let _off = autograd::no_grad();
    assert!(!w.exp().unwrap().requires_grad());
    {
        let _on = autograd::enable_grad();
        assert!(autograd::is_grad_enabled());
        let y = w.exp().unwrap().sum_all().unwrap();
        assert!(y.requires_grad());
        y.backward().unwrap(); // backward turns recording off for its pass and back on after
        assert!(autograd::is_grad_enabled());
    }
    assert!(!autograd::is_grad_enabled());
    assert!(w.grad().is_some());
}

/// A little two-layer segment: tanh(x·W1 + b) · W2, with a residual around it.
fn segment(x: &Tensor, w1: &Tensor, b: &Tensor, w2: &Tensor) -> glassgrad::Result<Tensor> {
    let h = x.linear(w1, Some(b))?.tanh()?; // (B, T, H)
    x.add(&h.linear(w2, None)?) // (B, T, C)
}

fn values(rng: &mut glassgrad::cpu::Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * 0.5).collect()
}

/// The same loss with each segment recomputed in backward: every gradient bit-identical to the
/// plain run (same kernels on the same values in the same order), and the recompute really ran.
#[test]
fn checkpointed_segments_give_the_plain_gradients() {
    let gpu = gpu();
    let (b, t, c, hidden) = (2, 5, 17, 9);
    let mut rng = glassgrad::cpu::Rng::new(7);
    let x0 = Tensor::from_f32(&gpu, &values(&mut rng, b * t * c), &[b, t, c]).unwrap();
    let layers: Vec<[Tensor; 3]> = (0..3)
        .map(|_| {
            [
                Tensor::parameter(&gpu, &values(&mut rng, c * hidden), &[c, hidden], true).unwrap(),
                Tensor::parameter(&gpu, &values(&mut rng, hidden), &[hidden], true).unwrap(),
                Tensor::parameter(&gpu, &values(&mut rng, hidden * c), &[hidden, c], true).unwrap(),
            ]
        })
        .collect();
    // Leading input trainable in one run, frozen (PEFT's frozen embedding) in the other.
    for input_trainable in [true, false] {
        let x = x0.with_requires_grad(input_trainable);
        let run = |recompute: bool| -> Vec<Vec<f32>> {
            x.zero_grad();
            layers.iter().flatten().for_each(|p| p.zero_grad());
            let mut h = x.clone();
            for [w1, bias, w2] in &layers {
                h = if recompute {
                    let (w1c, bc, w2c) = (w1.clone(), bias.clone(), w2.clone());
                    autograd::checkpoint(&[&h], &[w1.clone(), bias.clone(), w2.clone()], move |i| {
                        segment(&i[0], &w1c, &bc, &w2c)
                    })
                    .unwrap()
                } else {
                    segment(&h, w1, bias, w2).unwrap()
                };
            }
            h.mul(&h).unwrap().sum_all().unwrap().backward().unwrap();
            let mut grads: Vec<Vec<f32>> =
                layers.iter().flatten().map(|p| p.grad().unwrap().to_vec().unwrap()).collect();
            grads.push(x.grad().map(|g| g.to_vec().unwrap()).unwrap_or_default());
            grads
        };
        let plain = run(false);
        let recomputed = run(true);
        assert_eq!(plain.len(), recomputed.len());
        for (i, (p, r)) in plain.iter().zip(&recomputed).enumerate() {
            assert!(p.iter().any(|v| *v != 0.0) || p.is_empty(), "gradient {i} is all zero");
            assert_eq!(
                p, r,
                "gradient {i} differs with recomputation (input trainable: {input_trainable})"
            );
        }
        assert_eq!(plain.last().unwrap().is_empty(), !input_trainable);
    }
}

/// Recomputation must happen in backward: a segment that counts its runs ran twice, and nothing
/// it made in the first run was kept for backward (its output has one node, the checkpoint).
#[test]
fn checkpoint_recomputes_in_backward() {
    use std::cell::Cell;
    use std::rc::Rc;
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[0.3, -0.2, 0.1], &[3], true).unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0, 2.0, 3.0], &[3]).unwrap(); // frozen input
    let runs = Rc::new(Cell::new(0));
    let (r, wc) = (runs.clone(), w.clone());
    let y = autograd::checkpoint(&[&x], std::slice::from_ref(&w), move |i| {
        r.set(r.get() + 1);
        assert_eq!(autograd::is_grad_enabled(), r.get() == 2, "off in forward, on in backward");
        i[0].mul(&wc)?.exp()
    })
    .unwrap();
    assert!(y.requires_grad(), "a trainable parameter inside makes the output trainable");
    assert_eq!(runs.get(), 1);
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(runs.get(), 2);
    // d/dw Σ exp(x·w) = x·exp(x·w)
    let g = w.grad().unwrap().to_vec().unwrap();
    for (i, (xi, wi)) in [(1.0f32, 0.3f32), (2.0, -0.2), (3.0, 0.1)].iter().enumerate() {
        assert!((g[i] - xi * (xi * wi).exp()).abs() < 1e-5, "{g:?}");
    }
}

#[test]
fn set_requires_grad_freezes_a_leaf_in_place_and_refuses_an_op_output() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[1.0, 2.0], &[2], true).unwrap();
    let handle = w.clone();
    w.exp().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(handle.grad().is_some());
    w.set_requires_grad(false).unwrap();
    assert!(!handle.requires_grad(), "every handle sees the change");
    assert!(handle.grad().is_none(), "freezing drops the gradient");
    assert!(!w.exp().unwrap().requires_grad());
    w.set_requires_grad(true).unwrap();
    let y = w.exp().unwrap();
    assert!(y.set_requires_grad(false).is_err(), "an op's output is not a leaf");
}
