//! Dispatches past 65,535 workgroups. `grid_1d` folds a large 1-D dispatch into x and y, and every
//! kernel recovers its flat index as `(wid.y * nwg.x + wid.x) * WG + lid.x`. A kernel that drops
//! `wid.y` is right below the fold and wrong past it, so it is checked two ways:
//!   1. every gradient check and kernel-variant test again, with the fold lowered to 1 and to 2
//!      workgroups (`fold_dispatches_at`): every dispatch of 2 or 3 groups or more is then folded,
//!      so every kernel family's folded index runs at the usual small shapes (well under a second);
//!   2. shapes just past the real fold (65,535 × WG threads) for the two index patterns, a thread
//!      per element (WG = 256) and a thread per row (WG = 64), checked in full against f64;
//!   3. AdamW and clipping (no gradient check covers them): folded steps give the unfolded bits.

use glassgrad::Tensor;
use glassgrad::gpu::fold_dispatches_at;
use glassgrad::ops::cross_entropy::{self, IGNORE};
use glassgrad::ops::softmax::RowKernel;

use crate::gpu::harness::{Tol, check_with, compare, gpu};

/// The real fold point: one dispatch dimension holds at most this many workgroups.
const MAX_GROUPS: usize = 65_535;

/// Every gradient check (`ops::all_cases`) and the tests that run each kernel variant by name
/// (the workgroup-per-row ones never run by default on a CPU driver), with the fold lowered.
#[test]
fn every_kernel_is_right_when_its_dispatch_folds() {
    let gpu = gpu();
    let cases = crate::ops::all_cases();
    // Fold at 1: wid.x is always 0, so a kernel that ignores wid.y repeats group 0 everywhere.
    // Fold at 2: a kernel that drops wid.x (uses wid.y · nwg.x alone) repeats every other group.
    for fold in [1, 2] {
        let _fold = fold_dispatches_at(fold);
        let mut failures = vec![];
        for (i, case) in cases.iter().enumerate() {
            // The CPU-only finite differences already ran in ops::gradient_checks.
            if let Err(e) = check_with(&gpu, case, 1000 + i as u64, false) {
                failures.push(e);
            }
        }
        assert!(
            failures.is_empty(),
            "folded at {fold} workgroups, {} of {} gradient checks failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        crate::transformer::every_softmax_kernel_variant_matches_cpu();
        crate::transformer::every_layernorm_kernel_variant_matches_cpu();
        crate::transformer::cross_entropy_row_kernels_agree();
        crate::matmul::every_kernel_matches_the_reference_across_tile_edges();
        crate::attention::fused_kernel_matches_the_composed_path_outputs_and_gradients();
        println!("OK every gradient check and kernel variant with dispatches folded at {fold}");
    }
}

/// A deterministic value in [-1, 1) for element `i` (cheaper than the Rng at 16M elements).
fn value(i: usize, salt: usize) -> f32 {
    let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 2_000_003;
    h as f32 / 1_000_001.5 - 1.0
}

/// y = exp(a) over 65,536 workgroups of 256 (one past the fold), forward and backward: the
/// scalar unary kernel, and the binary one in the backward (dy·y; the numel is odd, so no vec4
/// kernel is chosen).
#[test]
fn elementwise_ops_past_the_real_fold() {
    let gpu = gpu();
    let n = MAX_GROUPS * 256 + 1; // 16,776,961
    let a: Vec<f32> = (0..n).map(|i| value(i, 1)).collect();
    let w: Vec<f32> = (0..n).map(|i| value(i, 2)).collect();
    let at = Tensor::parameter(&gpu, &a, &[n], true).unwrap();
    let y = at.exp().unwrap();
    y.backward_with(&Tensor::from_f32(&gpu, &w, &[n]).unwrap()).unwrap();
    // dy/da = exp(a), seeded with w.
    let want_y: Vec<f64> = a.iter().map(|&v| (v as f64).exp()).collect();
    let want_da: Vec<f64> = want_y.iter().zip(&w).map(|(y, &w)| y * w as f64).collect();
    // An exp of |x| ≤ 1 and a product in f32 (Vulkan allows exp 3 + 2|x| ulps): ≤ 1e-6 of the
    // largest value, e ≈ 2.7; 1e-5 leaves room for other drivers.
    let tol = Tol { atol: 0.0, rtol: 1e-5 };
    let got = |t: &Tensor| -> Vec<f64> { t.to_vec().unwrap().iter().map(|&v| v as f64).collect() };
    for (what, got, want) in
        [("exp(a)", got(&y), &want_y), ("d a", got(&at.grad().unwrap()), &want_da)]
    {
        let d =
            compare(&format!("{what} [{n}]"), &got, want, tol).unwrap_or_else(|e| panic!("{e}"));
        println!("OK {what} [{n}] past the fold, maxdiff {d:.1e}");
    }
}

/// Cross-entropy over [N, V] = [4,194,305, 4]: the per-row kernel (64 rows a workgroup) needs
/// 65,537 workgroups, and the backward (one thread per logit, 256 a workgroup) 65,537 as well.
/// A few columns keep it cheap (the GPT-2 vocabulary crosses the same fold at 334 tokens).
#[test]
fn cross_entropy_past_the_real_fold() {
    let gpu = gpu();
    let (rows, cols) = (MAX_GROUPS * 64 + 65, 4);
    assert!(rows.div_ceil(64) > MAX_GROUPS && (rows * cols).div_ceil(256) > MAX_GROUPS);
    let logits: Vec<f32> = (0..rows * cols).map(|i| 4.0 * value(i, 4)).collect();
    let targets: Vec<u32> = (0..rows)
        .map(|r| if r % 97 == 5 { IGNORE } else { (value(r, 5).abs() * 3.99) as u32 })
        .collect();
    let x = Tensor::parameter(&gpu, &logits, &[rows, cols], true).unwrap();
    let t = Tensor::from_u32(&gpu, &targets, &[rows]).unwrap();

    // The f64 reference, row by row: loss_r = lse_r − x[r, t_r]; dx = (softmax − onehot) / count.
    let count = targets.iter().filter(|&&t| t != IGNORE).count() as f64;
    let mut want_rows = vec![0.0f64; rows];
    let mut want_dx = vec![0.0f64; rows * cols];
    for r in 0..rows {
        if targets[r] == IGNORE {
            continue;
        }
        let row: Vec<f64> = logits[r * cols..(r + 1) * cols].iter().map(|&v| v as f64).collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        want_rows[r] = m + s.ln() - row[targets[r] as usize];
        for k in 0..cols {
            let onehot = if k == targets[r] as usize { 1.0 } else { 0.0 };
            want_dx[r * cols + k] = ((row[k] - m).exp() / s - onehot) / count;
        }
    }

    let lse = Tensor::zeros(&gpu, &[rows]).unwrap();
    let row_loss = Tensor::zeros(&gpu, &[rows]).unwrap();
    cross_entropy::row_losses(&x, &t, RowKernel::Rows, &lse, &row_loss).unwrap();
    let got: Vec<f64> = row_loss.to_vec().unwrap().iter().map(|&v| v as f64).collect();
    // A log of a sum of 4 exps of x − max ≥ −8 in f32 (exp: 3 + 2|x| ulps, ≤ 2e-6): relative to
    // the largest loss (≈ 9); 1e-5 leaves room for other drivers.
    let rows_tol = Tol { atol: 0.0, rtol: 1e-5 };
    let d = compare("cross_entropy row losses past the fold", &got, &want_rows, rows_tol)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("OK cross_entropy row losses [{rows}, {cols}] maxdiff {d:.1e}");

    x.cross_entropy(&t).unwrap().backward().unwrap();
    let got: Vec<f64> = x.grad().unwrap().to_vec().unwrap().iter().map(|&v| v as f64).collect();
    // softmax − onehot, |·| < 1, from the same f32 exps (≤ 2e-6 relative), divided by count:
    // relative to the largest, ≈ 1/count.
    let dx_tol = Tol { atol: 0.0, rtol: 1e-5 };
    let d = compare("cross_entropy dlogits past the fold", &got, &want_dx, dx_tol)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("OK cross_entropy dlogits [{rows}, {cols}] maxdiff {d:.1e}");
}

/// AdamW and gradient clipping (adamw.wgsl, grad_norm.wgsl) are not among the gradient checks:
/// their steps, folded at 1 and 2 workgroups, must give the bits of the unfolded ones (parameters
/// of 600 and 1,073 elements: 3 and 5 workgroups of 256).
#[test]
fn adamw_and_clipping_give_the_same_bits_when_their_dispatch_folds() {
    let shapes = [vec![600], vec![37, 29]];
    let numel = |s: &[usize]| s.iter().product::<usize>();
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| (0..numel(s)).map(|i| value(i, 6 + k)).collect())
        .collect();
    let grads: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(k, s)| (0..numel(s)).map(|i| 3.0 * value(i, 8 + k)).collect())
        .collect();
    // Gradients of norm ≈ 50 against max_norm 0.5: the clip is active.
    let run = |fold: Option<u32>, fused: bool| {
        let _fold = fold.map(fold_dispatches_at);
        crate::optim::two_clipped_steps(&data, &grads, &shapes, 1, fused)
    };
    for fused in [true, false] {
        let plain = run(None, fused);
        assert_ne!(plain.0[0], data[0], "the steps changed the parameters");
        for fold in [1, 2] {
            let folded = run(Some(fold), fused);
            assert!(folded.0 == plain.0, "fused={fused}: parameters differ when folded at {fold}");
            assert!(
                folded.1 == plain.1,
                "fused={fused}: AdamW moments differ when folded at {fold}"
            );
        }
    }
}
