//! Every fused int8 linear kernel (src/ops/linear_int8_kernels.rs) against the two references:
//! dequantize-then-matmul (`linear_int8_composed`, W bit-exact with bitsandbytes) and the simple
//! fused kernel, outputs y and input gradients dx, at odd shapes: rows 1, 3, 8, 17, 65; in odd
//! (the code path), in % 16 == 0 (the 16-code matvec), in % 8 == 4 (the subgroup backward's
//! half-live words), out not a multiple of 64; across the workgroup fold; rows whose scales
//! differ by 10⁴ (a wrong row's scale is off by that factor).
//! Tolerance, per element: two f32 sums of the same K products in different orders differ by at
//! most 2·K·ε·Σ|a||w| (each is within K·ε·Σ|a||w| of the exact sum); the fused kernels apply the
//! row scale after the sum (forward) or to dy (backward) instead of to each weight, which moves
//! each product by at most 4 roundings more: tol = (2K + 8)·ε·Σ_k |a_k|·|w_k|, in f64 from the
//! host-dequantized W. A wrong code, byte or scale is off by O(|a||w|).

use glassgrad::cpu::Rng;
use glassgrad::gpu::fold_dispatches_at;
use glassgrad::ops::linear_int8::{Int8Kernel, WeightInt8};
use glassgrad::quant::int8::{Int8Rowwise, dequantize_int8_rowwise, quantize_int8_rowwise};
use glassgrad::{Gpu, Tensor};

use crate::gpu::harness::gpu;
use crate::quant_kernels::{assert_close, bounds_with, normal};

/// The per-element bounds of the header: (2K + 8)·ε·Σ_k |a_k|·|w_k|.
fn bounds(a: &[f32], w: &[f32], rows: usize, out: usize, inp: usize, backward: bool) -> Vec<f64> {
    let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    bounds_with(a, &w, rows, out, inp, backward, 8)
}

/// y and dx of `x · Wᵀ` through `kernel` (None: the composed reference), dy fixed.
fn run(
    gpu: &std::rc::Rc<Gpu>,
    w: &WeightInt8,
    x: &[f32],
    dy: &[f32],
    rows: usize,
    kernel: Option<Int8Kernel>,
) -> (Vec<f32>, Vec<f32>) {
    let (out, inp) = (w.shape[0], w.shape[1]);
    let x = Tensor::from_f32(gpu, x, &[rows, inp]).unwrap().with_requires_grad(true);
    let dy = Tensor::from_f32(gpu, dy, &[rows, out]).unwrap();
    // Freed buffers are pooled (last freed, first reused): a kernel that skips outputs would
    // otherwise hand back the previous variant's correct y and dx. These now hold NaN.
    let poison: Vec<Tensor> = (0..4)
        .flat_map(|_| [[rows, out], [rows, inp]])
        .map(|shape| Tensor::full(gpu, &shape, f32::NAN).unwrap())
        .collect();
    drop(poison);
    let y = match kernel {
        Some(k) => x.linear_int8_with_kernel(w, k),
        None => x.linear_int8_composed(w),
    }
    .unwrap();
    y.backward_with(&dy).unwrap();
    (y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap())
}

/// A weight [out, in] whose rows have scales 10⁻² .. 10² (row o: 10^(o % 5 − 2)), and a zero
/// row when there are more than 3 rows (absmax 0: codes 0).
fn weight(rng: &mut Rng, out: usize, inp: usize) -> Int8Rowwise {
    let mut w = normal(rng, out * inp, 1.0);
    for (o, row) in w.chunks_exact_mut(inp).enumerate() {
        let s = if o == 3 { 0.0 } else { 10f32.powi(o as i32 % 5 - 2) };
        row.iter_mut().for_each(|v| *v *= s);
    }
    quantize_int8_rowwise("w", &w, &[out, inp]).unwrap()
}

/// Every available kernel that takes `rows`, against the composed and the simple reference.
fn check_all(rng: &mut Rng, rows: usize, inp: usize, out: usize) {
    let gpu = gpu();
    let q = weight(rng, out, inp);
    let w_host = dequantize_int8_rowwise(&q);
    let w = WeightInt8::upload(&gpu, "w", &q).unwrap();
    let x = normal(rng, rows * inp, 1.0);
    let dy = normal(rng, rows * out, 1.0);
    let tol_y = bounds(&x, &w_host, rows, out, inp, false);
    let tol_dx = bounds(&dy, &w_host, rows, out, inp, true);
    let (y_ref, dx_ref) = run(&gpu, &w, &x, &dy, rows, None);
    let (y_simple, dx_simple) = run(&gpu, &w, &x, &dy, rows, Some(Int8Kernel::Simple));
    for kernel in Int8Kernel::available(&gpu) {
        let matvec = matches!(
            kernel,
            Int8Kernel::Matvec | Int8Kernel::MatvecWorkgroup | Int8Kernel::MatvecSubgroup
        );
        if matvec && rows > 8 {
            continue;
        }
        let label = format!("{} ({rows}, {inp}) · [{out}, {inp}]ᵀ int8", kernel.name());
        let (y, dx) = run(&gpu, &w, &x, &dy, rows, Some(kernel));
        assert_close(&y, &y_ref, &tol_y, &format!("{label} y vs composed"));
        assert_close(&y, &y_simple, &tol_y, &format!("{label} y vs simple"));
        let dx_label = format!("{label} dx (by {})", kernel.backward(&gpu).name());
        assert_close(&dx, &dx_ref, &tol_dx, &format!("{dx_label} vs composed"));
        assert_close(&dx, &dx_simple, &tol_dx, &format!("{dx_label} vs simple"));
    }
}

/// (in, out): in odd (code path); in % 16 == 8 (word matvec); in % 32 == 0 (the subgroup
/// matvec; 16-code matvec); in % 32 == 16 (16-code matvec); in % 8 == 4 (half-live words in the
/// subgroup backward); out 1, 9, 67, 130 (not multiples of 8 or 64, several column tiles).
const SHAPES: [(usize, usize); 6] = [(17, 5), (72, 130), (64, 67), (12, 70), (5, 1), (48, 9)];

#[test]
fn every_int8_kernel_matches_the_references_at_odd_shapes() {
    let mut rng = Rng::new(181);
    for rows in [1, 3, 8, 17, 65] {
        for (inp, out) in SHAPES {
            check_all(&mut rng, rows, inp, out);
        }
    }
}

#[test]
fn every_int8_kernel_matches_past_a_lowered_fold() {
    // Fold after 2 workgroups: every kernel's folded (y, z) index runs at these shapes
    // (subgroup: 3 row tiles of 128; tiled: 5 of 64; matvec: 3 groups of 64 outputs).
    let _fold = fold_dispatches_at(2);
    let mut rng = Rng::new(182);
    for (rows, inp, out) in [(3, 96, 130), (3, 17, 150), (300, 72, 130), (300, 17, 70)] {
        check_all(&mut rng, rows, inp, out);
    }
}

#[test]
fn int8_matvec_workgroup_kernel_past_the_real_fold() {
    // matvec_wg: one workgroup per output, 65,600 outputs > 65,535 workgroups, so the dispatch
    // folds (the others run 1,025 workgroups of 64 outputs; the lowered fold covers them).
    let mut rng = Rng::new(183);
    let (rows, inp, out) = (2, 32, 65_600);
    let gpu = gpu();
    let q = weight(&mut rng, out, inp);
    let w_host = dequantize_int8_rowwise(&q);
    let w = WeightInt8::upload(&gpu, "w", &q).unwrap();
    let x = normal(&mut rng, rows * inp, 1.0);
    let dy = normal(&mut rng, rows * out, 1.0);
    let (y_ref, _) = run(&gpu, &w, &x, &dy, rows, None);
    let tol = bounds(&x, &w_host, rows, out, inp, false);
    for kernel in Int8Kernel::available(&gpu) {
        if !matches!(
            kernel,
            Int8Kernel::Matvec | Int8Kernel::MatvecWorkgroup | Int8Kernel::MatvecSubgroup
        ) {
            continue;
        }
        let (y, _) = run(&gpu, &w, &x, &dy, rows, Some(kernel));
        assert_close(&y, &y_ref, &tol, kernel.name());
    }
}

#[test]
fn int8_kernel_choice_follows_the_adapter_and_the_rows() {
    let gpu = gpu();
    let training = Int8Kernel::training(&gpu);
    for rows in [1, 8] {
        let want = match (gpu.is_cpu(), Int8Kernel::MatvecSubgroup.supported(&gpu)) {
            (true, true) => Int8Kernel::MatvecSubgroup,
            (true, false) => Int8Kernel::Matvec,
            (false, _) => Int8Kernel::MatvecWorkgroup,
        };
        assert_eq!(Int8Kernel::for_gpu(&gpu, rows), want);
        assert_eq!(want.backward(&gpu), training);
    }
    assert_eq!(Int8Kernel::for_gpu(&gpu, 9), training);
    if gpu.is_cpu() && Int8Kernel::Subgroup.supported(&gpu) {
        assert_eq!(training, Int8Kernel::Subgroup);
    }
    // A forced matvec with too many rows is refused by name, nothing computed.
    let q = quantize_int8_rowwise("w", &[0.5; 16], &[2, 8]).unwrap();
    let w = WeightInt8::upload(&gpu, "w", &q).unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0; 72], &[9, 8]).unwrap();
    let err = x.linear_int8_with_kernel(&w, Int8Kernel::Matvec).err().unwrap().to_string();
    assert!(err.contains("matvec") && err.contains("at most 8 rows"), "{err}");
    println!("adapter {}: int8 training kernel {}", gpu.info.name, training.name());
}
