#![allow(dead_code)] // some helpers are used only by some test modules
//! The gradient-check harness. One `Case` per op and shape; `check` runs three comparisons:
//!   1. CPU f64 backward vs central finite differences of the CPU f64 forward (rel. err ≤ 1e-6);
//!   2. GPU forward vs CPU forward;
//!   3. GPU backward vs CPU backward.
//!
//! The scalar differentiated is L = Σ out ⊙ w with a fixed random w, so every output element
//! contributes with a different weight (a plain sum would hide transposed or permuted gradients).

use std::rc::Rc;

use glassgrad::cpu::{Array, Rng};
use glassgrad::{Gpu, Result, Tensor};

/// Pass when |got − want| ≤ atol + rtol·max|want| for every element: errors of f32 kernels scale
/// with the size of the values they combine, not with each output's own size, and a fixed atol
/// would be as large as the values themselves where they are small (softmax gradients at C ≈ 100
/// are ~1e-5). `atol` is only for references that are all (near) zero.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

/// f32 elementwise math against f64: a few ulps (2⁻²⁴ ≈ 6e-8 each) of the largest output, with
/// a margin for drivers whose exp/tanh are less exact (Vulkan allows exp 3 + 2|x| ulps); measured
/// on lavapipe: ≤ 6.3e-6 (gelu' of one element near its zero), most ≤ 1e-7. atol 1e-7: the
/// rounding of O(1) intermediate terms is absolute, so an output that crosses zero (gelu' near
/// x = −0.75, alone in a [1] case) keeps it; 1e-7 is 1% of the smallest gradients (softmax's,
/// ~1e-5), so a sign error there still fails.
pub const ELEMENTWISE: Tol = Tol { atol: 1e-7, rtol: 1e-5 };
/// f32 sums of up to a few hundred terms (binary ops' broadcast gradients, row sums): error grows
/// like √n·ε·max|term|, ~1e-6 of the largest (measured ≤ 3.8e-7); 1e-4 is the margin for other
/// summation orders. atol as in ELEMENTWISE.
pub const REDUCTION: Tol = Tol { atol: 1e-7, rtol: 1e-4 };

pub type GpuFn = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
pub type CpuFn = Box<dyn Fn(&[Array]) -> Array>;
pub type CpuBackwardFn = Box<dyn Fn(&[Array], &Array) -> Vec<Array>>;

pub struct Case {
    pub op: &'static str,
    pub inputs: Vec<Array>,
    /// Inputs uploaded as u32 (indices, targets) and never differentiated.
    pub integer: Vec<usize>,
    /// Inputs uploaded as f32 but not requiring grad (masks): never differentiated or checked.
    pub constant: Vec<usize>,
    pub gpu: GpuFn,
    pub cpu: CpuFn,
    /// Gradients for every input (integer and constant inputs: anything, ignored).
    pub cpu_backward: CpuBackwardFn,
    pub tol: Tol,
}

impl Case {
    pub fn new(
        op: &'static str,
        inputs: Vec<Array>,
        gpu: GpuFn,
        cpu: CpuFn,
        cpu_backward: CpuBackwardFn,
    ) -> Case {
        Case {
            op,
            inputs,
            integer: vec![],
            constant: vec![],
            gpu,
            cpu,
            cpu_backward,
            tol: ELEMENTWISE,
        }
    }
    pub fn tol(mut self, tol: Tol) -> Case {
        self.tol = tol;
        self
    }
    pub fn integer(mut self, which: &[usize]) -> Case {
        self.integer = which.to_vec();
        self
    }
    pub fn constant(mut self, which: &[usize]) -> Case {
        self.constant = which.to_vec();
        self
    }
    fn differentiable(&self, i: usize) -> bool {
        !self.integer.contains(&i) && !self.constant.contains(&i)
    }
}

/// The largest |got − want| if every element is within `tol` (scaled by max|want|); otherwise an
/// error naming the first mismatching index, how many mismatch, and the largest difference.
pub fn compare(
    what: &str,
    got: &[f64],
    want: &[f64],
    tol: Tol,
) -> std::result::Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, expected {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let bound = tol.atol + tol.rtol * scale;
    let (mut max_diff, mut max_at): (f64, usize) = (0.0, 0);
    let (mut first, mut bad) = (None, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        // NaN fails.
        if d.is_nan() || d > bound {
            bad += 1;
            first.get_or_insert(i);
        }
        if d.is_nan() || d > max_diff {
            (max_diff, max_at) = (d, i);
        }
    }
    match first {
        None => Ok(max_diff),
        Some(i) => Err(format!(
            "{what}: {bad} of {} values mismatch; first at index {i}: got {}, want {}; \
             max |diff| {max_diff:.3e} at index {max_at} > atol {:.0e} + rtol {:.0e} · max|want| \
             {scale:.3e} = {bound:.3e}",
            got.len(),
            got[i],
            want[i],
            tol.atol,
            tol.rtol
        )),
    }
}

/// Elements of each input the finite-difference check visits (all of small inputs).
const FD_SAMPLES: usize = 300;

/// Runs the three checks. Returns a one-line report, or the first failure.
pub fn check(gpu: &Rc<Gpu>, case: &Case, seed: u64) -> std::result::Result<String, String> {
    check_with(gpu, case, seed, true)
}

/// `check` with or without the finite-difference check of the CPU backward (1.), which runs on
/// the CPU alone: a test that only varies how the GPU runs can skip it.
pub fn check_with(
    gpu: &Rc<Gpu>,
    case: &Case,
    seed: u64,
    finite_differences: bool,
) -> std::result::Result<String, String> {
    let mut rng = Rng::new(seed);
    let shapes: Vec<_> = case.inputs.iter().map(|a| a.shape.clone()).collect();
    let label = format!("{} {:?}", case.op, shapes);
    let want = (case.cpu)(&case.inputs);
    let w = rng.array(&want.shape, -1.0, 1.0);
    let grads = (case.cpu_backward)(&case.inputs, &w);

    // 1. CPU backward vs central differences of L(x) = Σ cpu(x) ⊙ w.
    let loss = |inputs: &[Array]| (case.cpu)(inputs).dot(&w);
    let mut fd_max: f64 = 0.0;
    for (i, input) in case.inputs.iter().enumerate() {
        if !case.differentiable(i) || !finite_differences {
            continue;
        }
        let scale = grads[i].data.iter().fold(1.0f64, |m, g| m.max(g.abs()));
        let picks: Vec<usize> = if input.numel() <= FD_SAMPLES {
            (0..input.numel()).collect()
        } else {
            (0..FD_SAMPLES).map(|_| rng.below(input.numel())).collect()
        };
        for j in picks {
            let h = 1e-5 * input.data[j].abs().max(1.0);
            let mut plus = case.inputs.clone();
            plus[i].data[j] += h;
            let mut minus = case.inputs.clone();
            minus[i].data[j] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            // Relative to the gradient's largest magnitude: f64 central differences with h = 1e-5
            // are accurate to ~1e-10 relative, so 1e-6 catches any wrong formula.
            let err = (fd - grads[i].data[j]).abs() / scale;
            if err > 1e-6 {
                return Err(format!(
                    "{label}: CPU backward of input {i} at {j}: analytic {} vs finite difference {fd} (rel. err {err:.2e} > 1e-6)",
                    grads[i].data[j]
                ));
            }
            fd_max = fd_max.max(err);
        }
    }

    // 2. GPU forward vs CPU. Differentiable inputs are leaves that require grad.
    let tensors: Vec<Tensor> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if case.integer.contains(&i) {
                let ids: Vec<u32> = a.data.iter().map(|&v| v as u32).collect();
                Tensor::from_u32(gpu, &ids, &a.shape)
            } else if case.constant.contains(&i) {
                Tensor::from_f32(gpu, &a.to_f32(), &a.shape)
            } else {
                Tensor::parameter(gpu, &a.to_f32(), &a.shape, true)
            }
        })
        .collect::<Result<_>>()
        .map_err(|e| format!("{label}: upload: {e}"))?;
    let out = (case.gpu)(&tensors).map_err(|e| format!("{label}: GPU forward: {e}"))?;
    if out.shape() != want.shape.as_slice() {
        return Err(format!("{label}: GPU output shape {:?}, CPU {:?}", out.shape(), want.shape));
    }
    let got: Vec<f64> =
        out.to_vec().map_err(|e| e.to_string())?.iter().map(|&v| v as f64).collect();
    let fwd_max = compare(&format!("{label}: forward"), &got, &want.data, case.tol)?;

    // 3. GPU backward vs CPU backward.
    let seed_t = Tensor::from_f32(gpu, &w.to_f32(), &w.shape).map_err(|e| e.to_string())?;
    out.backward_with(&seed_t).map_err(|e| format!("{label}: GPU backward: {e}"))?;
    let mut bwd_max: f64 = 0.0;
    for (i, t) in tensors.iter().enumerate() {
        if !case.differentiable(i) {
            continue;
        }
        let g = t.grad().ok_or_else(|| format!("{label}: input {i} received no gradient"))?;
        let got: Vec<f64> =
            g.to_vec().map_err(|e| e.to_string())?.iter().map(|&v| v as f64).collect();
        bwd_max = bwd_max.max(compare(
            &format!("{label}: gradient of input {i}"),
            &got,
            &grads[i].data,
            case.tol,
        )?);
    }
    Ok(format!(
        "OK {label:<40} fd rel {fd_max:.1e}  fwd maxdiff {fwd_max:.1e}  bwd maxdiff {bwd_max:.1e}"
    ))
}

/// The GPU, or a failure that says what to install (never a silent skip).
pub fn gpu() -> Rc<Gpu> {
    match Gpu::shared() {
        Ok(g) => g,
        Err(e) => panic!(
            "this test needs a GPU adapter and found none (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

pub use crate::temp_dir::TempDir;

/// A fresh, empty directory for one test, removed when the returned guard drops.
pub fn temp_dir(name: &str) -> TempDir {
    TempDir::new(name)
}

/// `GLASSGRAD_CHECKPOINTING=K` (a test switch; .ci/run sets it for a second run of the model-level
/// gradient checks): the forward of every check that differentiates the whole model (against
/// transformers, PEFT or a finite difference) checkpoints every K blocks. Unset or empty: none.
/// A value that is not 1..=1000 fails the test that reads it rather than running unchecked.
pub fn checkpointing() -> Option<usize> {
    let v = std::env::var("GLASSGRAD_CHECKPOINTING").ok().filter(|v| !v.is_empty())?;
    match v.trim().parse::<usize>() {
        Ok(k @ 1..=1000) => Some(k),
        _ => panic!("GLASSGRAD_CHECKPOINTING={v}: give a segment length of 1 to 1000 blocks"),
    }
}

/// The forward options of a model-level gradient check: the defaults, with
/// [`checkpointing`]'s segment length.
pub fn grad_options() -> glassgrad::model::gpt2::ForwardOptions<'static> {
    let checkpoint_every = checkpointing();
    if let Some(k) = checkpoint_every {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("gradient checks with checkpointing every {k} blocks"));
    }
    glassgrad::model::gpt2::ForwardOptions { checkpoint_every, ..Default::default() }
}
