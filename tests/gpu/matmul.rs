//! matmul, matmul_t and linear: gradient checks for every kernel variant at odd shapes (1, 3, 17,
//! 65, and just over each kernel's tile: 65 rows/cols for the 64×64 workgroup tile, 257 columns
//! for the register-tiled kernel's 256-column workgroup, K = 17, 33 over the 16-deep K step),
//! plus forward sweeps across tile edges, the dispatch fold past 65,535 workgroups, and errors.

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::matmul::{MatmulKernel, cpu};
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, compare, gpu};

/// f32 dot products of up to ~200 terms of magnitude ≤ 1 (K ≤ 65; the flattened dB sums over
/// batch·M ≤ 198 rows): rounding grows like √n·ε·Σ|a·b|, ~1e-6 of the largest (measured ≤ 5.5e-7
/// of it); rtol 1e-4 for other summation orders, atol as harness::ELEMENTWISE.
const TOL: Tol = Tol { atol: 1e-7, rtol: 1e-4 };

/// Stored shape of an operand that is read as op(X) = [.., rows, cols].
fn stored(batch: &[usize], rows: usize, cols: usize, transposed: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if transposed { [cols, rows] } else { [rows, cols] });
    s
}

fn matmul_case(rng: &mut Rng, kernel: MatmulKernel, a_shape: &[usize], b_shape: &[usize]) -> Case {
    let a = rng.array(a_shape, -1.0, 1.0);
    let b = rng.array(b_shape, -1.0, 1.0);
    Case::new(
        "matmul",
        vec![a, b],
        Box::new(move |t| t[0].matmul_with_kernel(&t[1], false, false, kernel)),
        Box::new(|x| cpu::matmul(&x[0], &x[1])),
        Box::new(|x, d| cpu::matmul_backward(&x[0], &x[1], d)),
    )
    .tol(TOL)
}

/// op(A) [batch_a.., M, K] · op(B) [batch_b.., K, N] with both operands stored as transposed.
#[allow(clippy::too_many_arguments)]
fn matmul_t_case(
    rng: &mut Rng,
    kernel: MatmulKernel,
    ta: bool,
    tb: bool,
    batch_a: &[usize],
    batch_b: &[usize],
    mkn: [usize; 3],
) -> Case {
    let [m, k, n] = mkn;
    let a = rng.array(&stored(batch_a, m, k, ta), -1.0, 1.0);
    let b = rng.array(&stored(batch_b, k, n, tb), -1.0, 1.0);
    Case::new(
        "matmul_t",
        vec![a, b],
        Box::new(move |t| t[0].matmul_with_kernel(&t[1], ta, tb, kernel)),
        Box::new(move |x| cpu::matmul_t(&x[0], &x[1], ta, tb)),
        Box::new(move |x, d| cpu::matmul_t_backward(&x[0], &x[1], ta, tb, d)),
    )
    .tol(TOL)
}

fn linear_case(
    rng: &mut Rng,
    kernel: MatmulKernel,
    x_shape: &[usize],
    out: usize,
    with_bias: bool,
) -> Case {
    let inp = *x_shape.last().unwrap();
    let mut inputs = vec![rng.array(x_shape, -1.0, 1.0), rng.array(&[inp, out], -1.0, 1.0)];
    if with_bias {
        inputs.push(rng.array(&[out], -1.0, 1.0));
    }
    Case::new(
        "linear",
        inputs,
        Box::new(move |t| t[0].linear_with_kernel(&t[1], t.get(2), kernel)),
        Box::new(|x| cpu::linear(&x[0], &x[1], x.get(2))),
        Box::new(|x, d| cpu::linear_backward(&x[0], &x[1], x.get(2), d)),
    )
    .tol(TOL)
}

pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for kernel in MatmulKernel::available(&gpu()) {
        for (a, b) in [
            (&[1, 1][..], &[1, 1][..]),
            (&[3, 17], &[17, 5]),
            (&[17, 65], &[65, 3]),
            (&[2, 3, 33, 17], &[17, 5]), // b broadcast over a's batch
            (&[2, 3, 33, 17], &[2, 3, 17, 5]), // batched, identical batch dims
            (&[65, 17], &[17, 66]),      // just over the 64×64 workgroup tile and BK = 16
            (&[5, 33], &[33, 257]),      // just over the register-tiled 256-column workgroup
        ] {
            cases.push(matmul_case(rng, kernel, a, b));
        }
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            cases.push(matmul_t_case(rng, kernel, ta, tb, &[], &[], [3, 17, 5]));
            cases.push(matmul_t_case(rng, kernel, ta, tb, &[2, 3], &[], [7, 9, 5])); // b broadcast
            cases.push(matmul_t_case(rng, kernel, ta, tb, &[], &[2], [5, 3, 6])); // a broadcast
            cases.push(matmul_t_case(rng, kernel, ta, tb, &[2], &[2], [65, 17, 3])); // batched
        }
        cases.push(linear_case(rng, kernel, &[3], 1, true));
        cases.push(linear_case(rng, kernel, &[2, 3, 17], 5, false));
        cases.push(linear_case(rng, kernel, &[2, 3, 17], 5, true));
        cases.push(linear_case(rng, kernel, &[65, 17], 66, true));
    }
    cases
}

fn run_forward(a: &Array, b: &Array, ta: bool, tb: bool, kernel: MatmulKernel) -> Vec<f64> {
    let gpu = gpu();
    let at = Tensor::from_f32(&gpu, &a.to_f32(), &a.shape).unwrap();
    let bt = Tensor::from_f32(&gpu, &b.to_f32(), &b.shape).unwrap();
    let c = at.matmul_with_kernel(&bt, ta, tb, kernel).unwrap();
    c.to_vec().unwrap().iter().map(|&v| v as f64).collect()
}

#[test]
pub fn every_kernel_matches_the_reference_across_tile_edges() {
    let mut rng = Rng::new(7);
    for kernel in MatmulKernel::available(&gpu()) {
        for (m, k, n) in [
            (4, 16, 256),
            (3, 15, 255),
            (5, 17, 257),
            (63, 1, 65),
            (64, 64, 64),
            (65, 65, 63),
            (1, 130, 1),
            (129, 3, 65),
            (128, 2, 64),
            (9, 33, 65), // just over the matvec kernel's 8 rows
            (9, 32, 65), // the same with K % 4 = 0 (its vec4 form of x·Wᵀ)
        ] {
            // All four layouts: the matvec kernel has a vec4 form for B (K, N) and one for
            // x·Wᵀ (B stored (N, K), K % 4 = 0), e.g. (4, 16, 256) and (9, 33, 65) → 8 + 1 rows.
            for (ta, tb) in [(false, false), (true, true), (false, true), (true, false)] {
                let a = rng.array(&stored(&[], m, k, ta), -1.0, 1.0);
                let b = rng.array(&stored(&[], k, n, tb), -1.0, 1.0);
                let want = cpu::matmul_t(&a, &b, ta, tb);
                let got = run_forward(&a, &b, ta, tb, kernel);
                let what = format!("{kernel:?} ({m}, {k}, {n}) ta={ta} tb={tb}");
                compare(&what, &got, &want.data, TOL).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn more_row_tiles_than_one_dispatch_dimension_allows() {
    // 65,537 matrices of one row: 65,537 (batch, row tile) pairs for every kernel, past the
    // 65,535 workgroups one dispatch dimension allows, so the index folds into z.
    let mut rng = Rng::new(8);
    let a = rng.array(&[65_537, 1, 2], -1.0, 1.0);
    let b = rng.array(&[2, 3], -1.0, 1.0);
    let want = cpu::matmul(&a, &b);
    for kernel in MatmulKernel::available(&gpu()) {
        let got = run_forward(&a, &b, false, false, kernel);
        compare(&format!("{kernel:?} [65537, 1, 2] x [2, 3]"), &got, &want.data, TOL)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The public products take the matvec kernel for at most 8 rows (decoding one token) and the
/// adapter's kernel above; a product's backward chooses by its own rows.
#[test]
fn auto_takes_the_matvec_kernel_for_few_rows() {
    let gpu = gpu();
    let auto = MatmulKernel::Auto;
    assert_eq!(auto.resolve(&gpu, 1, 768), MatmulKernel::Matvec);
    assert_eq!(auto.resolve(&gpu, 8, 512), MatmulKernel::Matvec);
    assert_eq!(auto.resolve(&gpu, 9, 768), MatmulKernel::for_gpu(&gpu));
    // Narrow few-row products (training's bias and LoRA gradients) keep the tiled kernel.
    assert_eq!(auto.resolve(&gpu, 8, 128), MatmulKernel::for_gpu(&gpu));
    let mut rng = Rng::new(9);
    let x = rng.array(&[1, 768], -1.0, 1.0).to_f32();
    let w = rng.array(&[768, 300], -1.0, 1.0).to_f32();
    let xt = Tensor::from_f32(&gpu, &x, &[1, 768]).unwrap();
    let wt = Tensor::from_f32(&gpu, &w, &[768, 300]).unwrap();
    let bits = |t: Tensor| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let matvec = bits(xt.matmul_with_kernel(&wt, false, false, MatmulKernel::Matvec).unwrap());
    assert_eq!(bits(xt.linear(&wt, None).unwrap()), matvec, "linear at M = 1 is not the matvec");
}

#[test]
fn each_adapter_gets_its_regime_kernel() {
    // CPU drivers: no workgroup memory, and the subgroup kernel wherever subgroups are 8 wide
    // (lavapipe on AVX2); real GPUs: workgroup tiles. Whatever is chosen is among the variants
    // the gradient checks above ran.
    let gpu = gpu();
    let chosen = MatmulKernel::for_gpu(&gpu);
    let eight_lanes = gpu.features.contains(wgpu::Features::SUBGROUP)
        && gpu.info.subgroup_min_size == 8
        && gpu.info.subgroup_max_size == 8;
    let want = match (gpu.is_cpu(), eight_lanes) {
        (true, true) => MatmulKernel::Subgroup,
        (true, false) => MatmulKernel::RegisterTiled,
        (false, _) => MatmulKernel::WorkgroupTiled,
    };
    assert_eq!(chosen, want, "{}", gpu.describe());
    assert!(MatmulKernel::available(&gpu).contains(&chosen));
}

#[test]
fn broadcast_weight_gradient_is_one_product_not_a_loop() {
    // dA and dB of a [4, 8, 16] × b [16, 8]: exactly two dispatches, whatever the batch.
    let gpu = gpu();
    let mut rng = Rng::new(9);
    let a = Tensor::parameter(&gpu, &rng.array(&[4, 8, 16], -1.0, 1.0).to_f32(), &[4, 8, 16], true)
        .unwrap();
    let b =
        Tensor::parameter(&gpu, &rng.array(&[16, 8], -1.0, 1.0).to_f32(), &[16, 8], true).unwrap();
    let c = a.matmul(&b).unwrap(); // (4, 8, 8)
    let seed = Tensor::full(&gpu, &[4, 8, 8], 1.0).unwrap();
    let before = gpu.dispatches.get();
    c.backward_with(&seed).unwrap();
    assert_eq!(
        gpu.dispatches.get() - before,
        2,
        "backward of a broadcast matmul should be two products"
    );
    assert_eq!(b.grad().unwrap().shape(), &[16, 8]);
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[3, 4]).unwrap();
    let b = Tensor::zeros(&gpu, &[5, 2]).unwrap();
    let batched = Tensor::zeros(&gpu, &[2, 4, 2]).unwrap();
    let other = Tensor::zeros(&gpu, &[3, 3, 4]).unwrap();
    for (result, op) in [
        (a.matmul(&b), "matmul"),
        (a.matmul_t(&b, true, false), "matmul_t"),
        (other.matmul(&batched), "matmul"),
        (a.linear(&b, None), "linear"),
    ] {
        match result {
            Err(Error::Shape { op: got, message }) => {
                assert_eq!(got, op);
                assert!(message.contains('['), "message should show the shapes: {message}");
            }
            other => panic!("expected a shape error from {op}, got {other:?}"),
        }
    }
    let bias = Tensor::zeros(&gpu, &[3]).unwrap();
    let w = Tensor::zeros(&gpu, &[4, 2]).unwrap();
    assert!(matches!(a.linear(&w, Some(&bias)), Err(Error::Shape { op: "linear", .. })));
}
