//! Attention: gradient checks at odd shapes (with and without a prefix, with an additive mask),
//! the two CPU references against each other, frozen-qkv prefix tuning, determinism, bad shapes,
//! and the fused kernels against the composed path. Timings: `cargo run --release -- bench attention`.

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::attention::{AttentionKernel, Prefix, cpu};
use glassgrad::ops::attention_composed::{attention_composed, cpu as composed_cpu};
use glassgrad::ops::permute;
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, compare, gpu};

/// f32 scores are dot products of HS ≤ 67 terms, softmax over ≤ 68 keys, and gradients sum over
/// ≤ 68 queries of terms of size ~1: rounding grows like √n·ε·|terms| ≈ 1e-6 of the largest
/// (measured ≤ 7e-7 of it); rtol 1e-4 for other summation orders. The softmax gradients are
/// small (~1e-5), so no atol beyond harness::ELEMENTWISE's 1e-7.
const TOL: Tol = Tol { atol: 1e-7, rtol: 1e-4 };

/// An additive mask (B, P+T): small random biases, and padding (−1e9) on some token columns of
/// the last batch row. Token column 0 is never padded, so every query sees at least one key.
fn mask(rng: &mut Rng, b: usize, p: usize, t: usize) -> Array {
    let mut m = rng.array(&[b, p + t], -1.0, 0.0);
    for j in (p + 1..p + t).filter(|j| j % 3 == 2) {
        m.data[(b - 1) * (p + t) + j] = -1e9;
    }
    m
}

/// qkv (B, T, 3C), then (keys, values) (P, C) if `p > 0`, then the mask (constant) if `masked`.
/// `kernel`: None for the composed path, else the fused kernel family to run.
fn case(
    rng: &mut Rng,
    (b, t, c, nh): (usize, usize, usize, usize),
    p: usize,
    masked: bool,
    kernel: Option<AttentionKernel>,
) -> Case {
    let mut inputs = vec![rng.array(&[b, t, 3 * c], -2.0, 2.0)];
    if p > 0 {
        inputs.push(rng.array(&[p, c], -2.0, 2.0));
        inputs.push(rng.array(&[p, c], -2.0, 2.0));
    }
    if masked {
        inputs.push(mask(rng, b, p, t));
    }
    let mask_at = masked.then_some(inputs.len() - 1);
    let n_inputs = inputs.len();
    let prefix = move |x: &[Array]| -> Option<(Array, Array)> {
        (p > 0).then(|| (x[1].clone(), x[2].clone()))
    };
    let case = Case::new(
        if kernel.is_none() { "attention_composed" } else { "attention" },
        inputs,
        Box::new(move |x| {
            let pre = (p > 0).then(|| Prefix { keys: &x[1], values: &x[2] });
            match kernel {
                None => attention_composed(&x[0], nh, pre, mask_at.map(|i| &x[i])),
                Some(k) => x[0].attention_with_kernel(nh, pre, mask_at.map(|i| &x[i]), k),
            }
        }),
        Box::new(move |x| {
            let pre = prefix(x);
            cpu::attention(&x[0], nh, pre.as_ref().map(|(k, v)| (k, v)), mask_at.map(|i| &x[i]))
        }),
        Box::new(move |x, dy| {
            let pre = prefix(x);
            let (dqkv, dprefix) = cpu::attention_backward(
                &x[0],
                nh,
                pre.as_ref().map(|(k, v)| (k, v)),
                mask_at.map(|i| &x[i]),
                dy,
            );
            let mut grads = vec![dqkv];
            if let Some((dk, dv)) = dprefix {
                grads.extend([dk, dv]);
            }
            grads.resize(n_inputs, Array::zeros(&[1])); // the mask: not differentiated
            grads
        }),
    )
    .tol(TOL);
    match mask_at {
        Some(i) => case.constant(&[i]),
        None => case,
    }
}

pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // (B, T, C, NH): a single token; HS = 4 with 17 tokens; HS = 8 with 65 (past a KB = 16 block);
    // HS = 11 (not a multiple of 4 or 8) with 9 tokens, 2 past a subgroup's 8 queries; HS = 40 and
    // 67: the subgroup kernels' 64 and 128 head-size bounds (HS ≤ 32 uses the 32 one).
    let kernels = AttentionKernel::available(&gpu());
    for shape in
        [(1, 1, 8, 2), (2, 17, 12, 3), (1, 65, 16, 2), (2, 9, 22, 2), (1, 3, 80, 2), (1, 2, 67, 1)]
    {
        for (p, masked) in [(0, false), (3, false), (0, true), (3, true)] {
            for &k in &kernels {
                cases.push(case(rng, shape, p, masked, Some(k)));
            }
            // The composed path (permute, matmul_t, masked_softmax, matmul) against the same reference.
            cases.push(case(rng, shape, p, masked, None));
        }
    }
    // P = 9: the subgroup dk/dv kernel's first tile of 8 keys is all prefix, the second mixed;
    // trainable, then frozen (tiles of prefix keys only are skipped; mask constant as always).
    for &k in &kernels {
        cases.push(case(rng, (2, 9, 22, 2), 9, true, Some(k)));
        cases.push(case(rng, (2, 9, 22, 2), 9, true, Some(k)).constant(&[1, 2, 3]));
    }
    // permute: odd sizes, including the head split and merge of the composed path.
    for (shape, perm) in [
        (vec![2, 3, 4], vec![2, 0, 1]),
        (vec![1, 17, 3, 5], vec![0, 2, 1, 3]),
        (vec![3, 1, 2, 5, 2], vec![2, 0, 3, 1, 4]),
    ] {
        let x = rng.array(&shape, -1.0, 1.0);
        let (p1, p2, p3) = (perm.clone(), perm.clone(), perm);
        cases.push(Case::new(
            "permute",
            vec![x],
            Box::new(move |t| t[0].permute(&p1)),
            Box::new(move |x| permute::cpu::permute(&x[0], &p2)),
            Box::new(move |x, d| vec![permute::cpu::permute_backward(&x[0], d, &p3)]),
        ));
    }
    // masked_softmax: (B, NH, T, P+T) with and without a prefix and an additive mask.
    for (b, nh, t, p, masked) in
        [(1, 1, 1, 0, false), (2, 3, 17, 0, true), (1, 2, 5, 3, false), (2, 1, 9, 3, true)]
    {
        let x = rng.array(&[b, nh, t, p + t], -3.0, 3.0);
        let scale = 0.37;
        let mut inputs = vec![x];
        if masked {
            inputs.push(mask(rng, b, p, t));
        }
        let case = Case::new(
            "masked_softmax",
            inputs,
            Box::new(move |x| x[0].masked_softmax(scale, p, x.get(1))),
            Box::new(move |x| composed_cpu::masked_softmax(&x[0], scale as f64, p, x.get(1))),
            Box::new(move |x, d| {
                let mut g = vec![composed_cpu::masked_softmax_backward(
                    &x[0],
                    d,
                    scale as f64,
                    p,
                    x.get(1),
                )];
                if x.len() > 1 {
                    g.push(Array::zeros(&x[1].shape)); // the mask: not differentiated
                }
                g
            }),
        )
        .tol(TOL);
        cases.push(if masked { case.constant(&[1]) } else { case });
    }
    cases
}

fn max_diff(what: &str, got: &Array, want: &Array, tol: Tol) -> f64 {
    compare(what, &got.data, &want.data, tol).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn loop_and_composed_references_agree() {
    let mut rng = Rng::new(7);
    let (b, t, c, nh, p) = (2, 9, 12, 3, 3);
    let qkv = rng.array(&[b, t, 3 * c], -2.0, 2.0);
    let (k, v) = (rng.array(&[p, c], -2.0, 2.0), rng.array(&[p, c], -2.0, 2.0));
    let m = mask(&mut rng, b, p, t);
    let dy = rng.array(&[b, t, c], -1.0, 1.0);
    // Two f64 computations of the same sums in different orders: agree to rounding.
    let tol = Tol { atol: 1e-12, rtol: 1e-10 };
    for (pre, mk) in [(None, None), (Some((&k, &v)), Some(&m))] {
        let d = max_diff(
            "forward",
            &cpu::attention(&qkv, nh, pre, mk),
            &cpu::composed(&qkv, nh, pre, mk),
            tol,
        );
        let (g1, p1) = cpu::attention_backward(&qkv, nh, pre, mk, &dy);
        let (g2, p2) = cpu::composed_backward(&qkv, nh, pre, mk, &dy);
        let mut d_bwd = max_diff("dqkv", &g1, &g2, tol);
        if let (Some((k1, v1)), Some((k2, v2))) = (p1, p2) {
            d_bwd = d_bwd
                .max(max_diff("d keys", &k1, &k2, tol))
                .max(max_diff("d values", &v1, &v2, tol));
        }
        println!(
            "OK loop vs composed (prefix {}) fwd maxdiff {d:.1e} bwd maxdiff {d_bwd:.1e}",
            pre.is_some()
        );
    }
}

/// Prefix tuning's first layer: qkv comes from frozen weights, only the prefix trains.
#[test]
fn prefix_gets_gradients_when_qkv_is_frozen() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let (b, t, c, nh, p) = (3, 5, 8, 2, 2);
    let qkv = rng.array(&[b, t, 3 * c], -2.0, 2.0);
    let (k, v) = (rng.array(&[p, c], -2.0, 2.0), rng.array(&[p, c], -2.0, 2.0));
    let dy = rng.array(&[b, t, c], -1.0, 1.0);
    let qkv_t = Tensor::from_f32(&gpu, &qkv.to_f32(), &qkv.shape).unwrap();
    let k_t = Tensor::parameter(&gpu, &k.to_f32(), &k.shape, true).unwrap();
    let v_t = Tensor::parameter(&gpu, &v.to_f32(), &v.shape, true).unwrap();
    let y = qkv_t.attention(nh, Some(Prefix { keys: &k_t, values: &v_t }), None).unwrap();
    y.backward_with(&Tensor::from_f32(&gpu, &dy.to_f32(), &dy.shape).unwrap()).unwrap();
    let (_, want) = cpu::attention_backward(&qkv, nh, Some((&k, &v)), None, &dy);
    let (dk, dv) = want.unwrap();
    let got = |t: &Tensor| {
        Array::from_f32(t.shape(), &t.grad().expect("prefix has a gradient").to_vec().unwrap())
    };
    max_diff("d keys", &got(&k_t), &dk, TOL);
    max_diff("d values", &got(&v_t), &dv, TOL);
    assert!(qkv_t.grad().is_none());
}

#[test]
fn backward_is_deterministic() {
    let gpu = gpu();
    let mut rng = Rng::new(13);
    let (b, t, c, nh, p) = (4, 33, 16, 2, 3);
    let qkv = Tensor::parameter(
        &gpu,
        &rng.array(&[b, t, 3 * c], -2.0, 2.0).to_f32(),
        &[b, t, 3 * c],
        true,
    )
    .unwrap();
    let k =
        Tensor::parameter(&gpu, &rng.array(&[p, c], -2.0, 2.0).to_f32(), &[p, c], true).unwrap();
    let v =
        Tensor::parameter(&gpu, &rng.array(&[p, c], -2.0, 2.0).to_f32(), &[p, c], true).unwrap();
    let dy =
        Tensor::from_f32(&gpu, &rng.array(&[b, t, c], -1.0, 1.0).to_f32(), &[b, t, c]).unwrap();
    for kernel in AttentionKernel::available(&gpu) {
        let run = || {
            for x in [&qkv, &k, &v] {
                x.zero_grad();
            }
            qkv.attention_with_kernel(nh, Some(Prefix { keys: &k, values: &v }), None, kernel)
                .unwrap()
                .backward_with(&dy)
                .unwrap();
            [&qkv, &k, &v].map(|x| x.grad().unwrap().to_vec().unwrap())
        };
        assert!(run() == run(), "{}: two backward passes gave different bits", kernel.name());
    }
}

#[test]
fn each_adapter_gets_its_kernel_and_both_are_checked() {
    // CPU drivers with 8-wide subgroups (lavapipe on AVX2): the subgroup kernels; anything else
    // the per-row ones. The per-row fallback always runs, so the gradient checks cover it too.
    let gpu = gpu();
    let eight_lanes = gpu.features.contains(wgpu::Features::SUBGROUP)
        && gpu.info.subgroup_min_size == 8
        && gpu.info.subgroup_max_size == 8;
    let want = if gpu.is_cpu() && eight_lanes {
        AttentionKernel::Subgroup
    } else {
        AttentionKernel::PerRow
    };
    assert_eq!(AttentionKernel::for_gpu(&gpu), want, "{}", gpu.describe());
    let available = AttentionKernel::available(&gpu);
    assert!(available.contains(&want) && available.contains(&AttentionKernel::PerRow));
    assert_eq!(available.contains(&AttentionKernel::Subgroup), eight_lanes);
    if !eight_lanes {
        let x = Tensor::zeros(&gpu, &[1, 2, 12]).unwrap();
        let e = x.attention_with_kernel(2, None, None, AttentionKernel::Subgroup).unwrap_err();
        assert!(e.to_string().contains("subgroups of exactly 8"), "{e}");
    }
}

#[test]
fn bad_shapes_are_errors_that_name_the_problem() {
    let gpu = gpu();
    let x = Tensor::zeros(&gpu, &[1, 2, 3 * 258]).unwrap();
    let e = x.attention(2, None, None).unwrap_err(); // HS = 129
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("HS"), "{e}");
    let x = Tensor::zeros(&gpu, &[2, 3, 12]).unwrap();
    assert!(x.attention(3, None, None).is_err(), "C = 4 is not a multiple of n_head = 3");
    let bad_mask = Tensor::zeros(&gpu, &[2, 4]).unwrap();
    let e = x.attention(2, None, Some(&bad_mask)).unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
}

#[test]
pub fn fused_kernel_matches_the_composed_path_outputs_and_gradients() {
    let gpu = gpu();
    let mut rng = Rng::new(11);
    let (b, t, c, nh, p) = (2, 33, 24, 3, 4);
    let qkv_data = rng.array(&[b, t, 3 * c], -2.0, 2.0).to_f32();
    let keys_data = rng.array(&[p, c], -2.0, 2.0).to_f32();
    let values_data = rng.array(&[p, c], -2.0, 2.0).to_f32();
    let m = Tensor::from_f32(&gpu, &mask(&mut rng, b, p, t).to_f32(), &[b, p + t]).unwrap();
    let dy =
        Tensor::from_f32(&gpu, &rng.array(&[b, t, c], -1.0, 1.0).to_f32(), &[b, t, c]).unwrap();
    let run = |composed: bool| -> Vec<Vec<f32>> {
        let qkv = Tensor::parameter(&gpu, &qkv_data, &[b, t, 3 * c], true).unwrap();
        let keys = Tensor::parameter(&gpu, &keys_data, &[p, c], true).unwrap();
        let values = Tensor::parameter(&gpu, &values_data, &[p, c], true).unwrap();
        let prefix = Some(Prefix { keys: &keys, values: &values });
        let y = if composed {
            attention_composed(&qkv, nh, prefix, Some(&m))
        } else {
            qkv.attention(nh, prefix, Some(&m))
        }
        .unwrap();
        y.backward_with(&dy).unwrap();
        [&y, &qkv.grad().unwrap(), &keys.grad().unwrap(), &values.grad().unwrap()]
            .iter()
            .map(|x| x.to_vec().unwrap())
            .collect()
    };
    let (fused, composed) = (run(false), run(true));
    for (what, (f, c)) in
        ["output", "dqkv", "d keys", "d values"].iter().zip(fused.iter().zip(&composed))
    {
        let f: Vec<f64> = f.iter().map(|&v| v as f64).collect();
        let c: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let d = compare(what, &f, &c, TOL).unwrap_or_else(|e| panic!("fused vs composed: {e}"));
        println!("fused vs composed {what:<9} OK (maxdiff {d:.1e})");
    }
}
