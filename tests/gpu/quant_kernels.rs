//! Every fused 4-bit linear kernel (src/ops/linear_4bit_kernels.rs) against the two references:
//! dequantize-then-matmul (`linear_4bit_composed`) and the simple fused kernel, outputs y and
//! input gradients dx, at odd shapes: rows 1, 3, 8, 17, 65; in not a multiple of 8 (the element
//! path), of the block or of the tile (the word path); across the workgroup fold.
//! Tolerance, per element: two f32 sums of the same K products in different orders differ by at
//! most 2·K·ε·Σ|a||w| (each is within K·ε·Σ|a||w| of the exact sum), and a weight decoded with
//! or without an fma (nested absmax) by 2 ulps more: tol = (2K + 4)·ε·Σ_k |a_k|·|w_k|, computed
//! in f64 from the host-dequantized W. A wrong code, nibble or absmax is off by O(|a||w|).

use glassgrad::cpu::Rng;
use glassgrad::gpu::fold_dispatches_at;
use glassgrad::ops::dequant::{Weight4bit, cpu};
use glassgrad::ops::linear_4bit::Linear4bitKernel;
use glassgrad::quant::{Format, Quantized4, quantize_4bit};
use glassgrad::{Gpu, Tensor};

use crate::gpu::harness::gpu;

/// y = a·Wᵀ (forward, a (rows, in)) or a·W (backward, a (rows, out)) error bounds, per element.
fn bounds(a: &[f32], w: &[f64], rows: usize, out: usize, inp: usize, backward: bool) -> Vec<f64> {
    bounds_with(a, w, rows, out, inp, backward, 4)
}

/// `bounds` with `slack` roundings beyond the two sums' 2K: (2K + slack)·ε·Σ_k |a_k|·|w_k|.
pub fn bounds_with(
    a: &[f32],
    w: &[f64],
    rows: usize,
    out: usize,
    inp: usize,
    backward: bool,
    slack: usize,
) -> Vec<f64> {
    let (k, n) = if backward { (out, inp) } else { (inp, out) };
    let mut b = vec![0.0; rows * n];
    for r in 0..rows {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|kk| {
                    let wv = if backward { w[kk * inp + j] } else { w[j * inp + kk] };
                    (a[r * k + kk] as f64 * wv).abs()
                })
                .sum();
            b[r * n + j] = (2 * k + slack) as f64 * f32::EPSILON as f64 * s + 1e-30;
        }
    }
    b
}

pub fn assert_close(got: &[f32], want: &[f32], tol: &[f64], label: &str) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
        let d = (*g as f64 - *w as f64).abs();
        assert!(d <= *t, "{label}: index {i}: got {g}, want {w}, diff {d:e} > tol {t:e}");
    }
}

/// y and dx of `x · Wᵀ` through `kernel` (None: the composed reference), dy fixed.
fn run(
    gpu: &std::rc::Rc<Gpu>,
    w: &Weight4bit,
    x: &[f32],
    dy: &[f32],
    rows: usize,
    kernel: Option<Linear4bitKernel>,
) -> (Vec<f32>, Vec<f32>) {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let x = Tensor::from_f32(gpu, x, &[rows, inp]).unwrap().with_requires_grad(true);
    let dy = Tensor::from_f32(gpu, dy, &[rows, out]).unwrap();
    // Freed buffers are pooled (last freed, first reused): without this, a kernel that skips
    // outputs (a wrong fold index) would hand back the previous variant's correct y and dx. The
    // next few buffers of these sizes now hold NaN, which fails every comparison.
    let poison: Vec<Tensor> = (0..4)
        .flat_map(|_| [[rows, out], [rows, inp]])
        .map(|shape| Tensor::full(gpu, &shape, f32::NAN).unwrap())
        .collect();
    drop(poison);
    let y = match kernel {
        Some(k) => x.linear_4bit_with_kernel(w, k),
        None => x.linear_4bit_composed(w),
    }
    .unwrap();
    y.backward_with(&dy).unwrap();
    (y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap())
}

pub fn normal(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * scale) as f32).collect()
}

/// Every available kernel that takes `rows`, against the composed and the simple reference.
fn check_all(
    rng: &mut Rng,
    rows: usize,
    inp: usize,
    out: usize,
    q_of: &dyn Fn(&[f32]) -> Quantized4,
) {
    let gpu = gpu();
    let q = q_of(&normal(rng, out * inp, 0.05));
    let w_host = cpu::dequantize_4bit(&q);
    let w = Weight4bit::upload(&gpu, &q).unwrap();
    let x = normal(rng, rows * inp, 1.0);
    let dy = normal(rng, rows * out, 1.0);
    let tol_y = bounds(&x, &w_host, rows, out, inp, false);
    let tol_dx = bounds(&dy, &w_host, rows, out, inp, true);
    let (y_ref, dx_ref) = run(&gpu, &w, &x, &dy, rows, None);
    let (y_simple, dx_simple) = run(&gpu, &w, &x, &dy, rows, Some(Linear4bitKernel::Simple));
    for kernel in Linear4bitKernel::available(&gpu) {
        let matvec = matches!(
            kernel,
            Linear4bitKernel::Matvec
                | Linear4bitKernel::MatvecSubgroup
                | Linear4bitKernel::MatvecWorkgroup
        );
        if matvec && rows > 8 {
            continue;
        }
        let label = format!(
            "{} ({rows}, {inp}) · [{out}, {inp}]ᵀ {:?} b{}",
            kernel.name(),
            q.format,
            q.blocksize
        );
        let (y, dx) = run(&gpu, &w, &x, &dy, rows, Some(kernel));
        assert_close(&y, &y_ref, &tol_y, &format!("{label} y vs composed"));
        assert_close(&y, &y_simple, &tol_y, &format!("{label} y vs simple"));
        assert_close(&dx, &dx_ref, &tol_dx, &format!("{label} dx vs composed"));
        assert_close(&dx, &dx_simple, &tol_dx, &format!("{label} dx vs simple"));
    }
}

/// (in, out) pairs: in odd (element path); in a multiple of 8 but not of the block (64) or the
/// tile (32/64), out not a multiple of 64 (word path with edges); (72, 264) has 297 blocks of 64
/// and (200, 67) 419 of 32: more than one nested-absmax block of 256 when double-quantized.
/// in a multiple of 32 (the subgroup matvec's 32-code loads): (96, 67), whose rows start
/// inside a block of 64 or 128, and (320, 130), 650 blocks of 64.
const SHAPES: [(usize, usize); 7] =
    [(17, 5), (72, 130), (200, 67), (8, 1), (72, 264), (96, 67), (320, 130)];

#[test]
fn every_4bit_kernel_matches_the_references_at_odd_shapes() {
    let mut rng = Rng::new(161);
    // The formats rotate over the 35 cases: each meets every row count and every shape.
    let formats = [(Format::Nf4, 64, true), (Format::Fp4, 32, true), (Format::Nf4, 128, false)];
    let mut case = 0;
    for rows in [1, 3, 8, 17, 65] {
        for (inp, out) in SHAPES {
            let (format, blocksize, dq) = formats[case % formats.len()];
            case += 1;
            let q_of =
                |w: &[f32]| quantize_4bit("w", w, &[out, inp], format, blocksize, dq).unwrap();
            check_all(&mut rng, rows, inp, out, &q_of);
        }
    }
}

#[test]
fn every_4bit_kernel_matches_past_a_lowered_fold() {
    // Fold after 2 workgroups: every kernel's folded (y, z) index runs at these shapes
    // (subgroup: 3 row tiles of 128; tiled: 5 of 64; matvec: 3 groups of 64 outputs).
    let _fold = fold_dispatches_at(2);
    let mut rng = Rng::new(162);
    for (rows, inp, out) in [(3, 72, 130), (1, 96, 130), (300, 72, 130), (300, 17, 70)] {
        let q_of = |w: &[f32]| quantize_4bit("w", w, &[out, inp], Format::Nf4, 64, true).unwrap();
        check_all(&mut rng, rows, inp, out, &q_of);
    }
}

#[test]
fn matvec_workgroup_kernel_past_the_real_fold() {
    // One workgroup per output: 65,600 outputs > 65,535 workgroups, so the dispatch folds.
    let mut rng = Rng::new(163);
    let (rows, inp, out) = (2, 32, 65_600);
    let q_of = |w: &[f32]| quantize_4bit("w", w, &[out, inp], Format::Nf4, 64, true).unwrap();
    let gpu = gpu();
    let q = q_of(&normal(&mut rng, out * inp, 0.05));
    let w_host = cpu::dequantize_4bit(&q);
    let w = Weight4bit::upload(&gpu, &q).unwrap();
    let x = normal(&mut rng, rows * inp, 1.0);
    let dy = normal(&mut rng, rows * out, 1.0);
    let (y_ref, _) = run(&gpu, &w, &x, &dy, rows, None);
    for kernel in Linear4bitKernel::available(&gpu) {
        if !matches!(
            kernel,
            Linear4bitKernel::Matvec
                | Linear4bitKernel::MatvecSubgroup
                | Linear4bitKernel::MatvecWorkgroup
        ) {
            continue;
        }
        let (y, _) = run(&gpu, &w, &x, &dy, rows, Some(kernel));
        let tol = bounds(&x, &w_host, rows, out, inp, false);
        assert_close(&y, &y_ref, &tol, kernel.name());
    }
}

#[test]
fn kernel_choice_follows_the_adapter_and_the_rows() {
    let gpu = gpu();
    let training = Linear4bitKernel::training(&gpu);
    for rows in [1, 8] {
        let want = match (gpu.is_cpu(), Linear4bitKernel::MatvecSubgroup.supported(&gpu)) {
            (true, true) => Linear4bitKernel::MatvecSubgroup,
            (true, false) => Linear4bitKernel::Matvec,
            (false, _) => Linear4bitKernel::MatvecWorkgroup,
        };
        assert_eq!(Linear4bitKernel::for_gpu(&gpu, rows), want);
        assert_eq!(want.backward(&gpu), training);
    }
    assert_eq!(Linear4bitKernel::for_gpu(&gpu, 9), training);
    // A forced matvec with too many rows is refused by name, nothing computed.
    let q = quantize_4bit("w", &[0.5; 16], &[2, 8], Format::Nf4, 64, false).unwrap();
    let w = Weight4bit::upload(&gpu, &q).unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0; 72], &[9, 8]).unwrap();
    let err = x.linear_4bit_with_kernel(&w, Linear4bitKernel::Matvec).err().unwrap().to_string();
    assert!(err.contains("matvec") && err.contains("at most 8 rows"), "{err}");
    println!("adapter {}: training kernel {}", gpu.info.name, training.name());
}
