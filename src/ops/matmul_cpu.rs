//! f64 references for matmul (the `cpu` module of matmul.rs): forward and backward of
//! op(A)·op(B) under the same batching, with clear loops.

use crate::cpu::Array;

/// (matrices, rows, cols) of a stored [.., R, C] array.
fn mats(x: &Array) -> (usize, usize, usize) {
    let r = x.shape.len();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    (x.numel() / (rows * cols).max(1), rows, cols)
}

/// Flat index of op(X)[i, j] in matrix `mat` (a broadcast X has one matrix, used by all).
fn index(x: &Array, mat: usize, i: usize, j: usize, t: bool) -> usize {
    let (count, rows, cols) = mats(x);
    let base = (mat % count) * rows * cols;
    if t { base + j * cols + i } else { base + i * cols + j }
}

/// (batch dims, M, K, N) for op(A)·op(B).
fn dims(a: &Array, b: &Array, ta: bool, tb: bool) -> (Vec<usize>, usize, usize, usize) {
    let (_, ar, ac) = mats(a);
    let (_, br, bc) = mats(b);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    let batch = if a.shape.len() >= b.shape.len() {
        &a.shape[..a.shape.len() - 2]
    } else {
        &b.shape[..b.shape.len() - 2]
    };
    (batch.to_vec(), m, k, n)
}

pub fn matmul_t(a: &Array, b: &Array, ta: bool, tb: bool) -> Array {
    let (batch, m, k, n) = dims(a, b, ta, tb);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = Array::zeros(&shape);
    for mat in 0..batch.iter().product() {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    s += a.data[index(a, mat, i, p, ta)] * b.data[index(b, mat, p, j, tb)];
                }
                out.data[(mat * m + i) * n + j] = s;
            }
        }
    }
    out
}

/// [da, db]: each product term dout[i, j]·… added where its operand element came from, so a
/// broadcast operand sums over the batch by construction.
pub fn matmul_t_backward(a: &Array, b: &Array, ta: bool, tb: bool, dout: &Array) -> Vec<Array> {
    let (batch, m, k, n) = dims(a, b, ta, tb);
    let mut da = Array::zeros(&a.shape);
    let mut db = Array::zeros(&b.shape);
    for mat in 0..batch.iter().product() {
        for i in 0..m {
            for j in 0..n {
                let d = dout.data[(mat * m + i) * n + j];
                for p in 0..k {
                    let (ia, ib) = (index(a, mat, i, p, ta), index(b, mat, p, j, tb));
                    da.data[ia] += d * b.data[ib];
                    db.data[ib] += d * a.data[ia];
                }
            }
        }
    }
    vec![da, db]
}

pub fn matmul(a: &Array, b: &Array) -> Array {
    matmul_t(a, b, false, false)
}

pub fn matmul_backward(a: &Array, b: &Array, dout: &Array) -> Vec<Array> {
    matmul_t_backward(a, b, false, false, dout)
}

/// x [.., in] · weight [in, out] (+ bias [out]).
pub fn linear(x: &Array, weight: &Array, bias: Option<&Array>) -> Array {
    let x2 = x.reshape(&[x.rows(), x.last_dim()]);
    let mut y = matmul(&x2, weight);
    if let Some(bias) = bias {
        let n = bias.numel();
        for (i, v) in y.data.iter_mut().enumerate() {
            *v += bias.data[i % n];
        }
    }
    let mut shape = x.shape.clone();
    *shape.last_mut().unwrap() = weight.shape[1];
    y.reshape(&shape)
}

/// [dx, dweight] and, with a bias, dbias = column sums of dout.
pub fn linear_backward(
    x: &Array,
    weight: &Array,
    bias: Option<&Array>,
    dout: &Array,
) -> Vec<Array> {
    let x2 = x.reshape(&[x.rows(), x.last_dim()]);
    let d2 = dout.reshape(&[dout.rows(), dout.last_dim()]);
    let mut grads = matmul_backward(&x2, weight, &d2);
    grads[0] = grads[0].reshape(&x.shape);
    if let Some(bias) = bias {
        let n = bias.numel();
        let mut dbias = Array::zeros(&bias.shape);
        for (i, v) in d2.data.iter().enumerate() {
            dbias.data[i % n] += v;
        }
        grads.push(dbias);
    }
    grads
}
