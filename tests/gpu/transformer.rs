//! The transformer kernels: softmax, log_softmax, layernorm, embedding, cross_entropy, bias_gelu
//! (gradient-check cases at odd shapes), fused-vs-composed comparisons, and a tiny model of these
//! ops trained with AdamW (the optimizer's own tests are in optim.rs).

use std::rc::Rc;

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::bias_gelu::cpu as bg;
use glassgrad::ops::cross_entropy::{self, IGNORE, cpu as ce};
use glassgrad::ops::embedding::{self, cpu as emb};
use glassgrad::ops::layernorm::{self, cpu as ln};
use glassgrad::ops::softmax::{self, cpu as sm};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::{Gpu, Result, Tensor};

use crate::gpu::harness::{Case, Tol, compare, gpu};

/// Row reductions of up to ~300 f32 terms, then a division or exp: a few ulps times √C of the
/// largest value (measured ≤ 1.1e-6 of it); rtol 1e-4 for other summation orders. No atol
/// beyond harness::ELEMENTWISE's 1e-7: softmax gradients are ~1e-5, and a fixed 1e-5 let a sign
/// error in softmax's backward pass.
const ROWS: Tol = Tol { atol: 1e-7, rtol: 1e-4 };
/// LayerNorm multiplies by rstd (up to ~3 here) and its backward subtracts two row means: the
/// f32 cancellation in dnorm − mean(dnorm) costs about one more digit than a plain row sum
/// (measured ≤ 1.8e-5 of the largest, at C = 3).
const NORM: Tol = Tol { atol: 1e-7, rtol: 2e-4 };

const EPS: f32 = 1e-5;

pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // T = 1, 17; C = 65; V = 97; a rank-1 and a rank-3 input.
    // C % 4 == 0 shapes ([17, 64], [2, 8], [130, 8]) take the vec4 kernels on CPU drivers;
    // 130 rows fill three workgroups of the 64-row kernels (fold.rs folds them).
    for shape in [
        &[1usize, 65][..],
        &[17, 65],
        &[2, 3, 17],
        &[3, 97],
        &[5],
        &[17, 64],
        &[2, 8],
        &[130, 5],
        &[130, 8],
    ] {
        let x = rng.array(shape, -4.0, 4.0);
        cases.push(
            Case::new(
                "softmax",
                vec![x.clone()],
                Box::new(|t| t[0].softmax()),
                Box::new(|x| sm::softmax(&x[0])),
                Box::new(|x, d| vec![sm::softmax_backward(&x[0], d)]),
            )
            .tol(ROWS),
        );
        cases.push(
            Case::new(
                "log_softmax",
                vec![x],
                Box::new(|t| t[0].log_softmax()),
                Box::new(|x| sm::log_softmax(&x[0])),
                Box::new(|x, d| vec![sm::log_softmax_backward(&x[0], d)]),
            )
            .tol(ROWS),
        );
    }
    for (shape, c) in [(&[3usize][..], 5usize), (&[17], 65), (&[2, 3], 17)] {
        let x = rng.array(shape, -1.0, 1.0);
        cases.push(
            Case::new(
                "expand_last",
                vec![x],
                Box::new(move |t| t[0].expand_last(c)),
                Box::new(move |x| sm::expand_last(&x[0], c)),
                Box::new(move |x, d| vec![sm::expand_last_backward(&x[0], d, c)]),
            )
            .tol(ROWS),
        );
    }
    // [130, 3]: more than two 64-row chunks of the weight/bias column sums.
    for shape in [&[1usize, 65][..], &[17, 65], &[2, 3, 17], &[3, 1, 97], &[17, 64], &[130, 3]] {
        let c = shape[shape.len() - 1];
        // Rows with a large mean and a small spread: the case E[x²] − mean² would get wrong.
        let x = rng.array(shape, -2.0, 2.0).map(|v| v + 3.0);
        let w = rng.array(&[c], 0.5, 1.5);
        let b = rng.array(&[c], -0.5, 0.5);
        cases.push(
            Case::new(
                "layernorm",
                vec![x, w, b],
                Box::new(|t| t[0].layernorm(&t[1], &t[2], EPS)),
                Box::new(|x| ln::layernorm(&x[0], &x[1], &x[2], EPS as f64)),
                Box::new(|x, d| ln::layernorm_backward(&x[0], &x[1], &x[2], EPS as f64, d)),
            )
            .tol(NORM),
        );
    }
    // Embedding: V = 97, C = 65; ids with repeats (the scatter-add must sum them) at T = 1 and 17.
    for ids_shape in [&[1usize][..], &[17], &[2, 17]] {
        let table = rng.array(&[97, 65], -1.0, 1.0);
        let n: usize = ids_shape.iter().product();
        let ids = Array::new(
            ids_shape,
            (0..n).map(|i| if i % 3 == 0 { 5.0 } else { rng.below(97) as f64 }).collect(),
        );
        cases.push(
            Case::new(
                "embedding",
                vec![table, ids],
                Box::new(|t| t[0].embedding(&t[1])),
                Box::new(|x| emb::embedding(&x[0], &x[1])),
                Box::new(|x, d| emb::embedding_backward(&x[0], &x[1], d)),
            )
            .integer(&[1])
            .tol(ROWS),
        );
    }
    // Cross-entropy: V = 97 at T = 1 and 17 with some ignored targets, all ignored (loss 0), and
    // 130 rows (three workgroups of the 64-row kernel).
    for (rows, ignored) in
        [(1usize, vec![]), (17, vec![2, 3, 11]), (3, vec![0, 1, 2]), (130, vec![7, 64])]
    {
        let logits = rng.array(&[rows, 97], -4.0, 4.0);
        let targets = Array::new(
            &[rows],
            (0..rows)
                .map(|r| if ignored.contains(&r) { IGNORE as f64 } else { rng.below(97) as f64 })
                .collect(),
        );
        cases.push(
            Case::new(
                "cross_entropy",
                vec![logits, targets],
                Box::new(|t| t[0].cross_entropy(&t[1])),
                Box::new(|x| ce::cross_entropy(&x[0], &x[1])),
                Box::new(|x, d| ce::cross_entropy_backward(&x[0], &x[1], d)),
            )
            .integer(&[1])
            .tol(ROWS),
        );
    }
    for shape in [&[1usize, 65][..], &[17, 65], &[2, 3, 17]] {
        let c = shape[shape.len() - 1];
        let x = rng.array(shape, -3.0, 3.0);
        let b = rng.array(&[c], -1.0, 1.0);
        cases.push(
            Case::new(
                "bias_gelu",
                vec![x, b],
                Box::new(|t| t[0].bias_gelu(&t[1])),
                Box::new(|x| bg::bias_gelu(&x[0], &x[1])),
                Box::new(|x, d| bg::bias_gelu_backward(&x[0], &x[1], d)),
            )
            .tol(ROWS),
        );
    }
    cases
}

// ---- fused vs composed: the same function two ways, outputs and every gradient ----

type Op = dyn Fn(&[Tensor]) -> Result<Tensor>;

/// Output and input gradients of L = Σ f(inputs) ⊙ w, with the inputs as fresh leaves.
fn run(gpu: &Rc<Gpu>, f: &Op, inputs: &[Array], w: &Array) -> (Vec<f64>, Vec<Vec<f64>>) {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|a| Tensor::parameter(gpu, &a.to_f32(), &a.shape, true).unwrap())
        .collect();
    let out = f(&leaves).unwrap();
    let seed = Tensor::from_f32(gpu, &w.to_f32(), &w.shape).unwrap();
    out.backward_with(&seed).unwrap();
    let to64 = |t: &Tensor| t.to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
    (
        to64(&out),
        leaves.iter().map(|l| to64(&l.grad().expect("every input gets a gradient"))).collect(),
    )
}

fn fused_matches_composed(
    name: &str,
    fused: &Op,
    composed: &Op,
    inputs: Vec<Array>,
    out_shape: &[usize],
    tol: Tol,
) {
    let gpu = gpu();
    let w = Rng::new(7).array(out_shape, -1.0, 1.0);
    let (y1, g1) = run(&gpu, fused, &inputs, &w);
    let (y2, g2) = run(&gpu, composed, &inputs, &w);
    let d = compare(&format!("{name}: fused vs composed output"), &y1, &y2, tol).unwrap();
    println!("OK {name} output maxdiff {d:.1e}");
    for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
        let d = compare(&format!("{name}: fused vs composed gradient of input {i}"), a, b, tol)
            .unwrap();
        println!("OK {name} gradient {i} maxdiff {d:.1e}");
    }
}

#[test]
fn softmax_fused_matches_composed() {
    let mut rng = Rng::new(1);
    for shape in [&[17usize, 65][..], &[2, 3, 97], &[5]] {
        // Large logits: the composed path must subtract the max as well, or exp overflows.
        let x = rng.array(shape, -40.0, 40.0);
        fused_matches_composed(
            "softmax",
            &|t| t[0].softmax(),
            &|t| softmax::softmax_composed(&t[0]),
            vec![x.clone()],
            shape,
            ROWS,
        );
        fused_matches_composed(
            "log_softmax",
            &|t| t[0].log_softmax(),
            &|t| softmax::log_softmax_composed(&t[0]),
            vec![x],
            shape,
            ROWS,
        );
    }
}

#[test]
pub fn every_softmax_kernel_variant_matches_cpu() {
    use softmax::RowKernel;
    let gpu = gpu();
    let mut rng = Rng::new(8);
    // 300 columns: more than one stride of the 256-wide workgroup kernel, and C % 4 == 0.
    for shape in [&[17usize, 300][..], &[3, 64], &[1, 4]] {
        let x = rng.array(shape, -20.0, 20.0);
        let t = Tensor::from_f32(&gpu, &x.to_f32(), shape).unwrap();
        for kernel in [RowKernel::Rows, RowKernel::Rows4, RowKernel::Workgroup] {
            for log in [false, true] {
                let got: Vec<f64> = softmax::softmax_forward_with(&t, log, kernel)
                    .unwrap()
                    .to_vec()
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let want = if log { sm::log_softmax(&x) } else { sm::softmax(&x) };
                // log-softmax values reach ~40 here: relative error of f32 on the shift.
                let d = compare(&format!("{kernel:?} log={log} {shape:?}"), &got, &want.data, ROWS)
                    .unwrap();
                println!("OK {kernel:?} log={log} {shape:?} maxdiff {d:.1e}");
            }
        }
    }
    let odd = Tensor::from_f32(&gpu, &[0.0; 6], &[2, 3]).unwrap();
    assert!(softmax::softmax_forward_with(&odd, false, RowKernel::Rows4).is_err());
}

#[test]
fn layernorm_fused_matches_composed() {
    let mut rng = Rng::new(2);
    for shape in [&[17usize, 65][..], &[2, 3, 17]] {
        let c = shape[shape.len() - 1];
        let inputs = vec![
            rng.array(shape, -2.0, 2.0),
            rng.array(&[c], 0.5, 1.5),
            rng.array(&[c], -0.5, 0.5),
        ];
        fused_matches_composed(
            "layernorm",
            &|t| t[0].layernorm(&t[1], &t[2], EPS),
            &|t| layernorm::layernorm_composed(&t[0], &t[1], &t[2], EPS),
            inputs,
            shape,
            NORM,
        );
    }
}

#[test]
pub fn every_layernorm_kernel_variant_matches_cpu() {
    use softmax::RowKernel;
    let mut rng = Rng::new(10);
    // C = 300: more than one stride of the 256-wide workgroup kernel; C % 4 == 0 for Rows4.
    let (shape, c) = ([5usize, 300], 300);
    let inputs = vec![
        rng.array(&shape, -2.0, 2.0).map(|v| v + 3.0),
        rng.array(&[c], 0.5, 1.5),
        rng.array(&[c], -0.5, 0.5),
    ];
    let w = Rng::new(11).array(&shape, -1.0, 1.0);
    let want_y = ln::layernorm(&inputs[0], &inputs[1], &inputs[2], EPS as f64);
    let want_grads = ln::layernorm_backward(&inputs[0], &inputs[1], &inputs[2], EPS as f64, &w);
    for kernel in [RowKernel::Rows, RowKernel::Rows4, RowKernel::Workgroup] {
        let (y, grads) =
            run(&gpu(), &move |t| t[0].layernorm_with(&t[1], &t[2], EPS, kernel), &inputs, &w);
        compare(&format!("layernorm {kernel:?} output"), &y, &want_y.data, NORM).unwrap();
        for (i, (g, want)) in grads.iter().zip(&want_grads).enumerate() {
            let d = compare(&format!("layernorm {kernel:?} gradient {i}"), g, &want.data, NORM)
                .unwrap();
            println!("OK layernorm {kernel:?} gradient {i} maxdiff {d:.1e}");
        }
    }
}

#[test]
fn layernorm_stays_accurate_when_the_mean_dwarfs_the_spread() {
    use softmax::RowKernel;
    // Rows of mean 1000 and std ≈ 0.29: E[x²] − mean² would be garbage in f32 (ulp(1e6) = 0.06 against
    // a variance of 0.08). Two-pass and shifted one-pass both hold; what remains is f32's own limit:
    // the mean is known to ~ulp(1000) = 6e-5, i.e. ~2e-4 of a std in y.
    let mut rng = Rng::new(12);
    let (shape, c) = ([7usize, 64], 64);
    let inputs = [
        rng.array(&shape, -0.5, 0.5).map(|v| v + 1000.0),
        rng.array(&[c], 0.5, 1.5),
        rng.array(&[c], -0.5, 0.5),
    ];
    let inputs: Vec<Array> = inputs.iter().map(|a| a.map(|v| v as f32 as f64)).collect(); // exactly what the GPU sees
    let w = Rng::new(13).array(&shape, -1.0, 1.0);
    let want_y = ln::layernorm(&inputs[0], &inputs[1], &inputs[2], EPS as f64);
    // y is O(1) (max ≈ 3) with the mean's f32 rounding (~2e-4) in it: 1e-3 of the largest
    // leaves margin (measured 6.4e-5 of it), garbage fails.
    let tol = Tol { atol: 0.0, rtol: 1e-3 };
    for kernel in [RowKernel::Rows, RowKernel::Rows4, RowKernel::Workgroup] {
        let (y, _) =
            run(&gpu(), &move |t| t[0].layernorm_with(&t[1], &t[2], EPS, kernel), &inputs, &w);
        let d =
            compare(&format!("layernorm {kernel:?} output at mean 1000"), &y, &want_y.data, tol)
                .unwrap();
        println!("OK layernorm {kernel:?} at mean 1000, std 0.29: maxdiff {d:.1e}");
    }
}

#[test]
fn bias_gelu_fused_matches_composed() {
    let mut rng = Rng::new(3);
    let inputs = vec![rng.array(&[17, 65], -3.0, 3.0), rng.array(&[65], -1.0, 1.0)];
    fused_matches_composed(
        "bias_gelu",
        &|t| t[0].bias_gelu(&t[1]),
        &|t| t[0].add(&t[1])?.gelu(),
        inputs,
        &[17, 65],
        ROWS,
    );
}

#[test]
fn cross_entropy_fused_matches_composed() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    let logits = rng.array(&[17, 97], -6.0, 6.0);
    let targets: Vec<u32> =
        (0..17).map(|r| if r % 5 == 2 { IGNORE } else { rng.below(97) as u32 }).collect();
    let t = Tensor::from_u32(&gpu, &targets, &[17]).unwrap();
    let t2 = t.clone();
    fused_matches_composed(
        "cross_entropy",
        &move |x| x[0].cross_entropy(&t),
        &move |x| cross_entropy::cross_entropy_composed(&x[0], &t2),
        vec![logits],
        &[1],
        ROWS,
    );
}

#[test]
pub fn cross_entropy_row_kernels_agree() {
    use glassgrad::ops::softmax::RowKernel;
    let gpu = gpu();
    let mut rng = Rng::new(9);
    // V = 600: more than two strides of the 256-wide workgroup kernel.
    let logits = rng.array(&[5, 600], -8.0, 8.0);
    let targets = [3u32, IGNORE, 599, 0, 17];
    let want: Vec<f64> = (0..5)
        .map(|r| {
            let t = Array::new(&[1], vec![targets[r] as f64]);
            let row = Array::new(&[1, 600], logits.data[r * 600..(r + 1) * 600].to_vec());
            ce::cross_entropy(&row, &t).data[0]
        })
        .collect();
    let x = Tensor::from_f32(&gpu, &logits.to_f32(), &[5, 600]).unwrap();
    let t = Tensor::from_u32(&gpu, &targets, &[5]).unwrap();
    for kernel in [RowKernel::Rows, RowKernel::Workgroup] {
        let lse = Tensor::zeros(&gpu, &[5]).unwrap();
        let row_loss = Tensor::zeros(&gpu, &[5]).unwrap();
        cross_entropy::row_losses(&x, &t, kernel, &lse, &row_loss).unwrap();
        let got: Vec<f64> = row_loss.to_vec().unwrap().iter().map(|&v| v as f64).collect();
        let d =
            compare(&format!("cross_entropy {kernel:?} row losses"), &got, &want, ROWS).unwrap();
        println!("OK cross_entropy {kernel:?} row losses maxdiff {d:.1e}");
    }
}

#[test]
fn cross_entropy_all_ignored_is_zero_not_nan() {
    let gpu = gpu();
    let logits = Tensor::parameter(&gpu, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3], true).unwrap();
    let targets = Tensor::from_u32(&gpu, &[IGNORE, IGNORE], &[2]).unwrap();
    let loss = logits.cross_entropy(&targets).unwrap();
    assert_eq!(loss.item().unwrap(), 0.0);
    loss.backward().unwrap();
    assert_eq!(logits.grad().unwrap().to_vec().unwrap(), vec![0.0; 6]);
}

#[test]
fn embedding_ids_out_of_range_is_an_error_naming_the_id() {
    let gpu = gpu();
    let err = embedding::embedding_ids(&gpu, &[1, 2, 97, 3], &[4], 97).unwrap_err().to_string();
    assert!(err.contains("97") && err.contains("V = 97") && err.contains("position 2"), "{err}");
    let ids = embedding::embedding_ids(&gpu, &[0, 96], &[2], 97).unwrap();
    assert_eq!(ids.to_vec_u32().unwrap(), vec![0, 96]);
}

#[test]
fn frozen_table_saves_nothing_and_gets_no_gradient() {
    let gpu = gpu();
    let table = Tensor::parameter(&gpu, &[0.5; 12], &[4, 3], false).unwrap();
    let w = Tensor::parameter(&gpu, &[1.0, 2.0, 3.0], &[3], true).unwrap();
    let ids = Tensor::from_u32(&gpu, &[3, 0, 3], &[3]).unwrap();
    let loss = table.embedding(&ids).unwrap().mul(&w).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    assert!(table.grad().is_none());
    // dL/dw_c = Σ_n table[ids[n], c] = 3 · 0.5
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![1.5; 3]);
}

#[test]
fn a_tiny_model_of_these_ops_trains_with_adamw() {
    // ids → embedding [V, V] → layernorm → bias_gelu → cross_entropy against the next id (V = 12):
    // every op of this file in one graph, every parameter must get a gradient, and 40 AdamW
    // steps (with clipping) must drive the loss well below its start.
    let gpu = gpu();
    let v = 12;
    let mut rng = Rng::new(12);
    let table =
        Tensor::parameter(&gpu, &rng.array(&[v, v], -0.5, 0.5).to_f32(), &[v, v], true).unwrap();
    let ln_w = Tensor::parameter(&gpu, &[1.0; 12], &[v], true).unwrap();
    let ln_b = Tensor::parameter(&gpu, &[0.0; 12], &[v], true).unwrap();
    let fc_b = Tensor::parameter(&gpu, &[0.0; 12], &[v], true).unwrap();
    let params = [&table, &ln_w, &ln_b, &fc_b];
    let ids: Vec<u32> = (0..17).map(|i| (i * 5 % v) as u32).collect();
    let mut targets: Vec<u32> = ids.iter().map(|&i| (i + 1) % v as u32).collect();
    targets[4] = IGNORE;
    let ids = embedding::embedding_ids(&gpu, &ids, &[17], v).unwrap();
    let targets = Tensor::from_u32(&gpu, &targets, &[17]).unwrap();
    let mut opt = AdamW::new(
        vec![
            ParamGroup { params: vec![table.clone()], lr: 0.05, weight_decay: 0.01 },
            ParamGroup {
                params: vec![ln_w.clone(), ln_b.clone(), fc_b.clone()],
                lr: 0.05,
                weight_decay: 0.0,
            },
        ],
        0.9,
        0.99,
        1e-8,
    )
    .unwrap();
    let mut losses = vec![];
    for step in 0..40 {
        opt.zero_grad();
        let h = table.embedding(&ids).unwrap().layernorm(&ln_w, &ln_b, EPS).unwrap(); // (17, V)
        let loss = h.bias_gelu(&fc_b).unwrap().cross_entropy(&targets).unwrap(); // (1)
        loss.backward().unwrap();
        if step == 0 {
            for (i, p) in params.iter().enumerate() {
                let g = p
                    .grad()
                    .unwrap_or_else(|| panic!("parameter {i} received no gradient"))
                    .to_vec()
                    .unwrap();
                assert!(g.iter().any(|x| *x != 0.0), "parameter {i} has an all-zero gradient");
            }
        }
        opt.clip_grad_norm_lazy(1.0).unwrap();
        opt.step().unwrap();
        losses.push(loss.item().unwrap());
    }
    println!("tiny model loss: {:.4} → {:.4}", losses[0], losses[39]);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[39] < 0.5 * losses[0], "loss did not fall: {losses:?}");
}
