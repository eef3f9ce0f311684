//! Elementwise binary ops: add, sub, mul, div, with `b` broadcast when its shape is a suffix of
//! `a`'s (a bias row [C] over [B, T, C]).
//!
//! Math (forward / backward, with dout = dL/dout):
//!   add: a + b    da = dout         db = Σ_bcast dout
//!   sub: a − b    da = dout         db = −Σ_bcast dout
//!   mul: a · b    da = dout · b     db = Σ_bcast dout · a
//!   div: a / b    da = dout / b     db = −Σ_bcast dout · a / b²
//! Σ_bcast sums over the broadcast (leading) rows; it is the identity when shapes are equal.
//! Kernels: when numel(a) and numel(b) are multiples of 4, vec4 ones (`same4` for equal shapes,
//! `bcast4` with one thread per b column and 4 rows); otherwise one thread per element.
//! Equal-shape operands larger than one binding run in windows of the flat index (`same_in_windows`).
//! Saved for backward: mul keeps b (for da) and a (for db) only when that gradient is needed.

use bytemuck::{Pod, Zeroable};

use super::{VEC4_PER_THREAD, launch_1d, launch_vec4, output};
use crate::error::{Result, shape_err};
use crate::gpu::{Kernel, grid_1d};
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/binary.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub nb: u32,
}

/// Params of the vec4 kernels (`Params4` in the shader), sizes in vec4s.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params4 {
    pub n4: u32,
    pub nb4: u32,
    pub op: u32,
    pub rows: u32,
}

static ADD: Kernel =
    Kernel { name: "binary_add", source: SHADER, entry: "add", reads: 2, writes: 1 };
static SUB: Kernel =
    Kernel { name: "binary_sub", source: SHADER, entry: "sub", reads: 2, writes: 1 };
static MUL: Kernel =
    Kernel { name: "binary_mul", source: SHADER, entry: "mul", reads: 2, writes: 1 };
static DIV: Kernel =
    Kernel { name: "binary_div", source: SHADER, entry: "div", reads: 2, writes: 1 };
static SAME4: Kernel =
    Kernel { name: "binary_same4", source: SHADER, entry: "same4", reads: 2, writes: 1 };
static BCAST4: Kernel =
    Kernel { name: "binary_bcast4", source: SHADER, entry: "bcast4", reads: 2, writes: 1 };

/// True when `b`'s shape equals `a`'s or is a suffix of it.
fn broadcasts(a: &[usize], b: &[usize]) -> bool {
    b.len() <= a.len() && a[a.len() - b.len()..] == *b
}

fn forward(
    kernel: &'static Kernel,
    op: &'static str,
    code: u32,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    a.check_f32(op)?;
    b.check_f32(op)?;
    if !broadcasts(a.shape(), b.shape()) {
        return shape_err(
            op,
            format!(
                "cannot combine {:?} with {:?}: b's shape must equal a's or be a suffix of it",
                a.shape(),
                b.shape()
            ),
        );
    }
    let out = output(a.gpu(), a.shape(), op)?; // same shape as a
    let (n, nb) = (a.numel(), b.numel().max(1));
    if n == nb && out.storage().bytes > a.gpu().max_binding() {
        same_in_windows(kernel, code, a, b, &out)?;
    } else if n % 4 == 0 && nb % 4 == 0 && n > 0 {
        // vec4 path (2-4x faster on lavapipe); the scalar kernels below are the fallback.
        let (n4, nb4) = (n / 4, nb / 4);
        let q = Params4 { n4: n4 as u32, nb4: nb4 as u32, op: code, rows: (n4 / nb4) as u32 };
        if n == nb {
            launch_vec4(&SAME4, &q, &[a, b], &[&out], n4)?;
        } else {
            // One thread per (column, V rows).
            launch_1d(&BCAST4, &q, &[a, b], &[&out], nb4 * (n4 / nb4).div_ceil(VEC4_PER_THREAD))?;
        }
    } else {
        launch_1d(kernel, &Params { n: n as u32, nb: nb as u32 }, &[a, b], &[&out], n)?;
    }
    Ok(out)
}

/// Sums `dout` (shape of a) down to `shape` (a suffix of it): the adjoint of broadcasting.
/// Same-shape operands larger than one binding (a gradient of GPT-2's wte, summed over its two
/// uses): the same kernels over windows of the flat index, one dispatch each (gpu/binding.rs).
fn same_in_windows(
    kernel: &'static Kernel,
    code: u32,
    a: &Tensor,
    b: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let gpu = a.gpu();
    let n = a.numel();
    // Windows of whole vec4s where the length allows, else of single floats.
    let lanes = if n.is_multiple_of(4) { 4 } else { 1 };
    for w in gpu.row_windows("an elementwise operand", n / lanes, 4 * lanes)? {
        let views = [a, b, out].map(|t| t.storage().rows(&w, 4 * lanes));
        let (reads, writes) = (&views[..2], &views[2..]);
        if lanes == 4 {
            let n4 = w.len() as u32;
            let q = Params4 { n4, nb4: n4, op: code, rows: 1 };
            let groups = grid_1d(w.len().div_ceil(VEC4_PER_THREAD), 256);
            gpu.dispatch_windows(&SAME4, &q, reads, writes, groups)?;
        } else {
            let q = Params { n: w.len() as u32, nb: w.len() as u32 };
            gpu.dispatch_windows(kernel, &q, reads, writes, grid_1d(w.len(), 256))?;
        }
    }
    Ok(())
}

pub fn sum_to(dout: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if dout.shape() == shape {
        return Ok(dout.clone());
    }
    let nb: usize = shape.iter().product();
    dout.reshape(&[dout.numel() / nb, nb])?.sum_rows()?.reshape(shape)
}

impl Tensor {
    pub fn add(&self, b: &Tensor) -> Result<Tensor> {
        let out = forward(&ADD, "add", 0, self, b)?;
        let b_shape = b.shape().to_vec();
        let b_grad = b.requires_grad(); // a frozen b (wpe in LoRA) costs no broadcast sum
        Ok(out.attach("add", &[self, b], move |dout| {
            Ok(vec![Some(dout.clone()), b_grad.then(|| sum_to(dout, &b_shape)).transpose()?])
        }))
    }

    pub fn sub(&self, b: &Tensor) -> Result<Tensor> {
        let out = forward(&SUB, "sub", 1, self, b)?;
        let b_shape = b.shape().to_vec();
        let b_grad = b.requires_grad();
        Ok(out.attach("sub", &[self, b], move |dout| {
            let db = b_grad.then(|| sum_to(dout, &b_shape)?.neg()).transpose()?;
            Ok(vec![Some(dout.clone()), db])
        }))
    }

    pub fn mul(&self, b: &Tensor) -> Result<Tensor> {
        let out = forward(&MUL, "mul", 2, self, b)?;
        let saved_b = self.requires_grad().then(|| b.clone()); // for da
        let saved_a = b.requires_grad().then(|| self.clone()); // for db
        let b_shape = b.shape().to_vec();
        Ok(out.attach("mul", &[self, b], move |dout| {
            let da = saved_b.map(|b| dout.mul(&b)).transpose()?;
            let db = saved_a.map(|a| sum_to(&dout.mul(&a)?, &b_shape)).transpose()?;
            Ok(vec![da, db])
        }))
    }

    pub fn div(&self, b: &Tensor) -> Result<Tensor> {
        let out = forward(&DIV, "div", 3, self, b)?;
        let saved_b = b.clone();
        let saved_a = b.requires_grad().then(|| self.clone());
        let b_shape = b.shape().to_vec();
        Ok(out.attach("div", &[self, b], move |dout| {
            let da = dout.div(&saved_b)?;
            let db = match saved_a {
                // −dout · a / b² = −(dout/b)·(a/b); dout/b is da.
                Some(a) => Some(sum_to(&da.mul(&a.div(&saved_b)?)?, &b_shape)?.neg()?),
                None => None,
            };
            Ok(vec![Some(da), db])
        }))
    }
}

/// f64 references: forward(a, b) and backward(a, b, dout) -> [da, db].
pub mod cpu {
    use crate::cpu::Array;

    fn apply(a: &Array, b: &Array, f: impl Fn(f64, f64) -> f64) -> Array {
        let nb = b.numel();
        Array::new(&a.shape, (0..a.numel()).map(|i| f(a.data[i], b.data[i % nb])).collect())
    }

    /// Σ over broadcast rows of per-element contributions g(i).
    fn reduce_b(a: &Array, b: &Array, g: impl Fn(usize) -> f64) -> Array {
        let nb = b.numel();
        let mut db = Array::zeros(&b.shape);
        for i in 0..a.numel() {
            db.data[i % nb] += g(i);
        }
        db
    }

    pub fn add(a: &Array, b: &Array) -> Array {
        apply(a, b, |x, y| x + y)
    }
    pub fn sub(a: &Array, b: &Array) -> Array {
        apply(a, b, |x, y| x - y)
    }
    pub fn mul(a: &Array, b: &Array) -> Array {
        apply(a, b, |x, y| x * y)
    }
    pub fn div(a: &Array, b: &Array) -> Array {
        apply(a, b, |x, y| x / y)
    }

    pub fn add_backward(a: &Array, b: &Array, dout: &Array) -> Vec<Array> {
        vec![dout.clone(), reduce_b(a, b, |i| dout.data[i])]
    }
    pub fn sub_backward(a: &Array, b: &Array, dout: &Array) -> Vec<Array> {
        vec![dout.clone(), reduce_b(a, b, |i| -dout.data[i])]
    }
    pub fn mul_backward(a: &Array, b: &Array, dout: &Array) -> Vec<Array> {
        let nb = b.numel();
        let da =
            Array::new(&a.shape, (0..a.numel()).map(|i| dout.data[i] * b.data[i % nb]).collect());
        vec![da, reduce_b(a, b, |i| dout.data[i] * a.data[i])]
    }
    pub fn div_backward(a: &Array, b: &Array, dout: &Array) -> Vec<Array> {
        let nb = b.numel();
        let da =
            Array::new(&a.shape, (0..a.numel()).map(|i| dout.data[i] / b.data[i % nb]).collect());
        let db = reduce_b(a, b, |i| {
            let bi = b.data[i % nb];
            -dout.data[i] * a.data[i] / (bi * bi)
        });
        vec![da, db]
    }
}
