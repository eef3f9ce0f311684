//! The transformer kernels: softmax, log_softmax, layernorm, embedding, cross_entropy, bias_gelu
//! (gradient-check cases at odd shapes), fused-vs-composed comparisons, and AdamW / clipping
//! against a CPU f64 reference.

use std::rc::Rc;

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::bias_gelu::cpu as bg;
use glassgrad::ops::cross_entropy::{self, IGNORE, cpu as ce};
use glassgrad::ops::embedding::{self, cpu as emb};
use glassgrad::ops::layernorm::{self, cpu as ln};
use glassgrad::ops::softmax::{self, cpu as sm};
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::{Category, Gpu, Result, Tensor};

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
    let inputs = vec![
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

#[test]
fn fused_clipped_step_equals_clip_then_step_bit_for_bit() {
    let gpu = gpu();
    let mut rng = Rng::new(21);
    let shapes = [vec![17, 5], vec![5], vec![3, 65]];
    let data: Vec<Vec<f32>> = shapes.iter().map(|s| rng.array(s, -1.0, 1.0).to_f32()).collect();
    let grads: Vec<Vec<f32>> = shapes.iter().map(|s| rng.array(s, -3.0, 3.0).to_f32()).collect();
    // max_norm 0.5 against gradients of norm ≈ 10: the clip is active.
    let run = |fused: bool| -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let params: Vec<Tensor> = data
            .iter()
            .zip(&shapes)
            .map(|(d, s)| Tensor::parameter(&gpu, d, s, true).unwrap())
            .collect();
        let groups = vec![
            ParamGroup { params: params[..2].to_vec(), lr: 0.01, weight_decay: 0.1 },
            ParamGroup { params: params[2..].to_vec(), lr: 0.003, weight_decay: 0.0 },
        ];
        let mut opt = AdamW::new(groups, 0.9, 0.95, 1e-8).unwrap();
        for _ in 0..2 {
            // L = Σ p ⊙ g_fixed, so dL/dp = g_fixed.
            for (p, (g, s)) in params.iter().zip(grads.iter().zip(&shapes)) {
                let w = Tensor::from_f32(&gpu, g, s).unwrap();
                p.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            }
            if fused {
                opt.step_clipped(0.5).unwrap();
            } else {
                opt.clip_grad_norm_lazy(0.5).unwrap();
                opt.step().unwrap();
            }
            if fused {
                // The fused step leaves the gradients as backward produced them.
                assert_eq!(params[0].grad().unwrap().to_vec().unwrap(), grads[0]);
            }
            opt.zero_grad();
        }
        let values = params.iter().map(|p| p.to_vec().unwrap()).collect();
        let state = opt.state().unwrap().into_iter().map(|(_, v)| v).collect();
        (values, state)
    };
    let (fused, unfused) = (run(true), run(false));
    assert_eq!(fused.0, unfused.0, "parameters after two clipped steps");
    assert_eq!(fused.1, unfused.1, "AdamW moments");
    assert_ne!(fused.0[0], data[0], "the step changed the parameters");
}
