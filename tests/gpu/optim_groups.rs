//! AdamW's groups and moments are paired by construction: a group added later is updated exactly
//! as one given at the start, and a parameter the optimizer cannot update is an error, not a skip.

use glassgrad::Tensor;
use glassgrad::optim::{AdamW, ParamGroup};

use crate::gpu::harness::gpu;

fn param(values: &[f32]) -> Tensor {
    Tensor::parameter(&gpu(), values, &[values.len()], true).unwrap()
}

/// L = Σ exp(a) + Σ b²: both parameters get a gradient.
fn backward(a: &Tensor, b: &Tensor) {
    let loss = a.exp().unwrap().sum_all().unwrap().add(&b.mul(b).unwrap().sum_all().unwrap());
    loss.unwrap().backward().unwrap();
}

#[test]
fn a_group_added_after_new_is_updated_like_one_given_at_the_start() {
    let (a1, b1) = (param(&[0.1, -0.4, 0.7]), param(&[1.0, -2.0]));
    let (a2, b2) = (param(&[0.1, -0.4, 0.7]), param(&[1.0, -2.0]));
    let group = |p: &Tensor, lr| ParamGroup { params: vec![p.clone()], lr, weight_decay: 0.01 };
    let mut at_start =
        AdamW::new(vec![group(&a1, 0.1), group(&b1, 0.05)], 0.9, 0.95, 1e-8).unwrap();
    let mut added = AdamW::new(vec![group(&a2, 0.1)], 0.9, 0.95, 1e-8).unwrap();
    added.add_param_group(group(&b2, 0.05)).unwrap();
    assert_eq!(added.num_groups(), 2);
    for _ in 0..3 {
        for (opt, a, b) in [(&mut at_start, &a1, &b1), (&mut added, &a2, &b2)] {
            opt.zero_grad();
            backward(a, b);
            opt.step_clipped(1.0).unwrap();
        }
    }
    let b_after = b2.to_vec().unwrap();
    assert_ne!(b_after, vec![1.0, -2.0], "the added group was updated");
    assert_eq!(b1.to_vec().unwrap(), b_after);
    assert_eq!(a1.to_vec().unwrap(), a2.to_vec().unwrap());
    // Its moments are in the checkpoint state under its group index.
    let names: Vec<String> = added.state().unwrap().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"1.0.exp_avg".to_string()), "{names:?}");
}

#[test]
fn a_parameter_unfrozen_after_joining_frozen_is_an_error_not_a_silent_skip() {
    let (a, b) = (param(&[0.5]), param(&[2.0]));
    b.set_requires_grad(false).unwrap();
    let groups =
        vec![ParamGroup { params: vec![a.clone(), b.clone()], lr: 0.1, weight_decay: 0.0 }];
    let mut opt = AdamW::new(groups, 0.9, 0.95, 1e-8).unwrap();
    b.set_requires_grad(true).unwrap();
    backward(&a, &b);
    let err = opt.step().expect_err("b has a gradient but no moments");
    assert!(err.to_string().contains("frozen when it joined"), "{err}");
    assert_eq!(a.to_vec().unwrap(), vec![0.5], "refused before anything was updated");
}

#[test]
fn the_same_parameter_twice_is_refused() {
    let a = param(&[0.5, 1.0]);
    let twice = vec![ParamGroup { params: vec![a.clone()], lr: 0.1, weight_decay: 0.0 }; 2];
    assert!(AdamW::new(twice, 0.9, 0.95, 1e-8).is_err());
    let mut opt = AdamW::new(
        vec![ParamGroup { params: vec![a.clone()], lr: 0.1, weight_decay: 0.0 }],
        0.9,
        0.95,
        1e-8,
    )
    .unwrap();
    // A second handle to the same storage (with_requires_grad) is the same parameter.
    let again = ParamGroup { params: vec![a.with_requires_grad(true)], lr: 0.1, weight_decay: 0.0 };
    let err = opt.add_param_group(again).expect_err("same storage");
    assert!(err.to_string().contains("already in the optimizer"), "{err}");
}
