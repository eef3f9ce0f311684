//! The optimizer: AdamW against a CPU f64 AdamW (torch.optim.AdamW's formula) with two groups and
//! a frozen parameter, its state round trip, gradient clipping against the CPU, and the fused
//! clipped step against clip-then-step. (Moved as they were from transformer.rs.)

use glassgrad::cpu::Rng;
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::{Category, Tensor};

use crate::gpu::harness::{Tol, compare, gpu};

// ---- AdamW against a CPU f64 AdamW (torch.optim.AdamW's formula) ----

struct CpuAdamW {
    m: Vec<f64>,
    v: Vec<f64>,
}

impl CpuAdamW {
    /// One step for one parameter at step t (from 1).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        p: &mut [f64],
        g: &[f64],
        t: i32,
        lr: f64,
        wd: f64,
        b1: f64,
        b2: f64,
        eps: f64,
    ) {
        for i in 0..p.len() {
            // torch: p.mul_(1 - lr*wd); m, v updates; p.addcdiv_(m, sqrt(v)/sqrt(bc2) + eps, value=-lr/bc1)
            p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g[i] * g[i];
            let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
            p[i] -= lr / bc1 * self.m[i] / (self.v[i].sqrt() / bc2.sqrt() + eps);
        }
    }
}

/// L = Σ_i c_i · p_i² per parameter, so g = 2·c·p changes every step (checks m and v carry over).
fn quadratic_loss(params: &[&Tensor], coefs: &[Vec<f32>]) -> Tensor {
    let gpu = params[0].gpu().clone();
    let mut total: Option<Tensor> = None;
    for (p, c) in params.iter().zip(coefs) {
        let c = Tensor::from_f32(&gpu, c, p.shape()).unwrap();
        let term = p.mul(p).unwrap().mul(&c).unwrap().sum_all().unwrap();
        total = Some(match total {
            Some(t) => t.add(&term).unwrap(),
            None => term,
        });
    }
    total.unwrap()
}

#[test]
fn adamw_matches_cpu_reference_with_two_groups_and_a_frozen_param() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    let data: Vec<Vec<f64>> =
        [17usize, 65, 3].iter().map(|&n| rng.array(&[n], -1.0, 1.0).data).collect();
    let coefs: Vec<Vec<f32>> =
        [17usize, 65].iter().map(|&n| rng.array(&[n], 0.1, 2.0).to_f32()).collect();
    let f32s = |d: &Vec<f64>| d.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let a = Tensor::parameter(&gpu, &f32s(&data[0]), &[17], true).unwrap();
    let b = Tensor::parameter(&gpu, &f32s(&data[1]), &[65], true).unwrap();
    let frozen = Tensor::parameter(&gpu, &f32s(&data[2]), &[3], false).unwrap();
    let before = gpu.memory().live(Category::Optimizer);
    let (b1, b2, eps) = (0.9, 0.95, 1e-8);
    let mut opt = AdamW::new(
        vec![
            ParamGroup { params: vec![a.clone(), frozen.clone()], lr: 0.05, weight_decay: 0.1 },
            ParamGroup { params: vec![b.clone()], lr: 0.01, weight_decay: 0.0 },
        ],
        b1,
        b2,
        eps,
    )
    .unwrap();
    // State only for the two trainable params: m and v, 4 bytes each.
    assert_eq!(gpu.memory().live(Category::Optimizer) - before, 2 * 4 * (17 + 65));
    let mut cpu_p = [data[0].clone(), data[1].clone()];
    let mut cpu_opt = [
        CpuAdamW { m: vec![0.0; 17], v: vec![0.0; 17] },
        CpuAdamW { m: vec![0.0; 65], v: vec![0.0; 65] },
    ];
    let groups = [(0.05, 0.1), (0.01, 0.0)];
    for t in 1..=4 {
        opt.zero_grad();
        quadratic_loss(&[&a, &b], &coefs).backward().unwrap();
        opt.step().unwrap();
        for k in 0..2 {
            let g: Vec<f64> =
                cpu_p[k].iter().zip(&coefs[k]).map(|(p, c)| 2.0 * *c as f64 * p).collect();
            cpu_opt[k].step(
                &mut cpu_p[k],
                &g,
                t,
                groups[k].0,
                groups[k].1,
                b1 as f64,
                b2 as f64,
                eps as f64,
            );
        }
    }
    // f32 arithmetic over 4 steps of size ~lr: a few ulps of max|p| ≈ 1, plus f32 rounding of
    // lr (measured 8e-8 of it).
    let tol = Tol { atol: 0.0, rtol: 1e-5 };
    for (k, p) in [&a, &b].iter().enumerate() {
        let got: Vec<f64> = p.to_vec().unwrap().iter().map(|&v| v as f64).collect();
        let d = compare(&format!("AdamW param {k}"), &got, &cpu_p[k], tol).unwrap();
        println!("OK AdamW group {k} after 4 steps maxdiff {d:.1e}");
    }
    assert_eq!(frozen.to_vec().unwrap(), f32s(&data[2]), "a frozen parameter is never touched");
    assert_eq!(opt.step, 4);
}

#[test]
fn adamw_state_round_trips() {
    let gpu = gpu();
    let make = || Tensor::parameter(&gpu, &[1.0, -2.0, 0.5], &[3], true).unwrap();
    let (p1, p2) = (make(), make());
    let coefs = vec![vec![1.0, 2.0, 3.0]];
    let mut opt1 = AdamW::new(
        vec![ParamGroup { params: vec![p1.clone()], lr: 0.1, weight_decay: 0.01 }],
        0.9,
        0.999,
        1e-8,
    )
    .unwrap();
    let mut opt2 = AdamW::new(
        vec![ParamGroup { params: vec![p2.clone()], lr: 0.1, weight_decay: 0.01 }],
        0.9,
        0.999,
        1e-8,
    )
    .unwrap();
    for _ in 0..2 {
        opt1.zero_grad();
        quadratic_loss(&[&p1], &coefs).backward().unwrap();
        opt1.step().unwrap();
    }
    // Restore opt1's state and parameters into opt2, then one more step each: identical.
    let state = opt1.state().unwrap();
    let names: Vec<_> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["step", "0.0.exp_avg", "0.0.exp_avg_sq"]);
    opt2.load_state(&state).unwrap();
    gpu.upload(p2.storage(), bytemuck::cast_slice(&p1.to_vec().unwrap())).unwrap();
    for (opt, p) in [(&mut opt1, &p1), (&mut opt2, &p2)] {
        opt.zero_grad();
        quadratic_loss(&[p], &coefs).backward().unwrap();
        opt.step().unwrap();
    }
    assert_eq!(opt2.step, 3);
    assert_eq!(p1.to_vec().unwrap(), p2.to_vec().unwrap());
    let bad = vec![("step".to_string(), vec![1.0]), ("0.0.exp_avg".to_string(), vec![0.0; 2])];
    assert!(opt2.load_state(&bad).unwrap_err().to_string().contains("0.0.exp_avg"));
}

#[test]
fn clip_grad_norm_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    // 3000 elements: more than one 1024-chunk, so the partial sums are summed in a second pass.
    let a_data = rng.array(&[3000], -1.0, 1.0).to_f32();
    let b_data = rng.array(&[17], -1.0, 1.0).to_f32();
    for max_norm in [1.0f32, 1e6] {
        let a = Tensor::parameter(&gpu, &a_data, &[3000], true).unwrap();
        let b = Tensor::parameter(&gpu, &b_data, &[17], true).unwrap();
        let opt = AdamW::new(
            vec![ParamGroup { params: vec![a.clone(), b.clone()], lr: 0.0, weight_decay: 0.0 }],
            0.9,
            0.999,
            1e-8,
        )
        .unwrap();
        // L = Σ a² + Σ 3b  → ga = 2a, gb = 3
        let three = Tensor::full(&gpu, &[17], 3.0).unwrap();
        a.mul(&a)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&b.mul(&three).unwrap().sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let ga: Vec<f64> = a_data.iter().map(|&v| 2.0 * v as f64).collect();
        let gb = vec![3.0f64; 17];
        let norm = ga.iter().chain(&gb).map(|g| g * g).sum::<f64>().sqrt();
        let got = opt.clip_grad_norm(max_norm).unwrap() as f64;
        assert!((got - norm).abs() <= 1e-5 * norm, "norm {got} vs CPU {norm}");
        let scale = (max_norm as f64 / (norm + 1e-6)).min(1.0);
        // One f32 multiply by the scale: an ulp or two of the largest (measured 1.8e-8 of it).
        let tol = Tol { atol: 0.0, rtol: 1e-5 };
        for (p, g) in [(&a, &ga), (&b, &gb)] {
            let got: Vec<f64> =
                p.grad().unwrap().to_vec().unwrap().iter().map(|&v| v as f64).collect();
            let want: Vec<f64> = g.iter().map(|v| v * scale).collect();
            compare("clipped gradient", &got, &want, tol).unwrap();
        }
        println!(
            "OK clip_grad_norm max_norm {max_norm}: norm {got:.6} (CPU {norm:.6}), scale {scale:.4}"
        );
    }
}

/// Two clipped AdamW steps (max_norm 0.5) over parameters `data` of `shapes` with fixed
/// gradients `grads` (L = Σ p ⊙ g_fixed, so dL/dp = g_fixed); the first `split` parameters in a
/// decaying group, the rest in another. `fused`: `step_clipped`, else clip then step.
/// Returns (the parameters after, AdamW's state). Shared with the fold test.
pub fn two_clipped_steps(
    data: &[Vec<f32>],
    grads: &[Vec<f32>],
    shapes: &[Vec<usize>],
    split: usize,
    fused: bool,
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let gpu = gpu();
    let params: Vec<Tensor> = data
        .iter()
        .zip(shapes)
        .map(|(d, s)| Tensor::parameter(&gpu, d, s, true).unwrap())
        .collect();
    let groups = vec![
        ParamGroup { params: params[..split].to_vec(), lr: 0.01, weight_decay: 0.1 },
        ParamGroup { params: params[split..].to_vec(), lr: 0.003, weight_decay: 0.0 },
    ];
    let mut opt = AdamW::new(groups, 0.9, 0.95, 1e-8).unwrap();
    for _ in 0..2 {
        for (p, (g, s)) in params.iter().zip(grads.iter().zip(shapes)) {
            let w = Tensor::from_f32(&gpu, g, s).unwrap();
            p.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        }
        if fused {
            opt.step_clipped(0.5).unwrap();
            // The fused step leaves the gradients as backward produced them.
            assert_eq!(params[0].grad().unwrap().to_vec().unwrap(), grads[0]);
        } else {
            opt.clip_grad_norm_lazy(0.5).unwrap();
            opt.step().unwrap();
        }
        opt.zero_grad();
    }
    let values = params.iter().map(|p| p.to_vec().unwrap()).collect();
    let state = opt.state().unwrap().into_iter().map(|(_, v)| v).collect();
    (values, state)
}

#[test]
fn fused_clipped_step_equals_clip_then_step_bit_for_bit() {
    let mut rng = Rng::new(21);
    let shapes = [vec![17, 5], vec![5], vec![3, 65]];
    let data: Vec<Vec<f32>> = shapes.iter().map(|s| rng.array(s, -1.0, 1.0).to_f32()).collect();
    let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.array(s, -3.0, 3.0).to_f32()).collect();
    // max_norm 0.5 against gradients of norm ≈ 10: the clip is active.
    let run = |fused: bool| two_clipped_steps(&data, &grads, &shapes, 2, fused);
    let (fused, unfused) = (run(true), run(false));
    assert_eq!(fused.0, unfused.0, "parameters after two clipped steps");
    assert_eq!(fused.1, unfused.1, "AdamW moments");
    assert_ne!(fused.0[0], data[0], "the step changed the parameters");
}
