//! f64 references for attention (the `cpu` module of attention.rs).
//!
//! Two independent definitions that tests compare with each other and with the GPU:
//! - `attention` / `attention_backward`: plain loops, one query row at a time (scores, mask,
//!   softmax, weighted sum) — the definition the fused kernels follow.
//! - `composed` / `composed_backward`: nanoGPT's formulation on whole matrices — split heads,
//!   att = q·kᵀ/√HS + mask + causal, softmax, att·v, merge heads — and its matrix backward;
//!   the GPU composed path (`attention_composed.rs`, matmul + masked_softmax ops) mirrors it.
//!
//! `prefix` is (keys, values), each (P, C); `mask` is (B, P+T). Gradients: (dqkv (B, T, 3C),
//! Some((d keys, d values)) summed over the batch when a prefix is given).

// Plain index loops on purpose (style.md: the references are clear loops, no cleverness).
#![allow(clippy::needless_range_loop)]

use crate::cpu::Array;

type Prefix<'a> = Option<(&'a Array, &'a Array)>;
pub type Grads = (Array, Option<(Array, Array)>);

/// Sizes (B, T, C, NH, HS, P) and indexers for q, k, v of token or prefix rows.
struct View<'a> {
    qkv: &'a Array,
    prefix: Prefix<'a>,
    mask: Option<&'a Array>,
    b: usize,
    t: usize,
    c: usize,
    hs: usize,
    p: usize,
}

impl<'a> View<'a> {
    fn new(qkv: &'a Array, n_head: usize, prefix: Prefix<'a>, mask: Option<&'a Array>) -> View<'a> {
        let (b, t, c) = (qkv.shape[0], qkv.shape[1], qkv.shape[2] / 3);
        let p = prefix.map_or(0, |(k, _)| k.shape[0]);
        View { qkv, prefix, mask, b, t, c, hs: c / n_head, p }
    }
    /// Index into qkv of token (b, t), part (0 q, 1 k, 2 v), head h, dim d.
    fn at(&self, b: usize, t: usize, part: usize, h: usize, d: usize) -> usize {
        (b * self.t + t) * 3 * self.c + part * self.c + h * self.hs + d
    }
    /// Key (part 1) or value (part 2) j of the P+T key list: prefix rows first, then tokens.
    fn kv(&self, b: usize, j: usize, part: usize, h: usize, d: usize) -> f64 {
        match self.prefix {
            Some((k, v)) if j < self.p => [k, v][part - 1].data[j * self.c + h * self.hs + d],
            _ => self.qkv.data[self.at(b, j - self.p, part, h, d)],
        }
    }
    fn mask(&self, b: usize, j: usize) -> f64 {
        self.mask.map_or(0.0, |m| m.data[b * (self.p + self.t) + j])
    }
    /// Softmax weights of query (b, h, t) over keys 0..P+t+1.
    fn probs(&self, b: usize, h: usize, t: usize) -> Vec<f64> {
        let scale = 1.0 / (self.hs as f64).sqrt();
        let mut s: Vec<f64> = (0..self.p + t + 1)
            .map(|j| {
                let dot: f64 = (0..self.hs)
                    .map(|d| self.qkv.data[self.at(b, t, 0, h, d)] * self.kv(b, j, 1, h, d))
                    .sum();
                dot * scale + self.mask(b, j)
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
        s.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
        s
    }
}

pub fn attention(qkv: &Array, n_head: usize, prefix: Prefix, mask: Option<&Array>) -> Array {
    let v = View::new(qkv, n_head, prefix, mask);
    let mut y = Array::zeros(&[v.b, v.t, v.c]); // (B, T, C)
    for b in 0..v.b {
        for h in 0..n_head {
            for t in 0..v.t {
                for (j, pj) in v.probs(b, h, t).iter().enumerate() {
                    for d in 0..v.hs {
                        y.data[(b * v.t + t) * v.c + h * v.hs + d] += pj * v.kv(b, j, 2, h, d);
                    }
                }
            }
        }
    }
    y
}

pub fn attention_backward(
    qkv: &Array,
    n_head: usize,
    prefix: Prefix,
    mask: Option<&Array>,
    dy: &Array,
) -> Grads {
    let v = View::new(qkv, n_head, prefix, mask);
    let scale = 1.0 / (v.hs as f64).sqrt();
    let mut dqkv = Array::zeros(&qkv.shape); // (B, T, 3C)
    let mut dprefix = [Array::zeros(&[v.p, v.c]), Array::zeros(&[v.p, v.c])]; // keys, values (P, C)
    for b in 0..v.b {
        for h in 0..n_head {
            for t in 0..v.t {
                let probs = v.probs(b, h, t);
                let g = |d: usize| dy.data[(b * v.t + t) * v.c + h * v.hs + d];
                // dp_j = dy·v_j; softmax backward: ds_j = p_j (dp_j − Σ_i p_i dp_i).
                let dp: Vec<f64> = (0..probs.len())
                    .map(|j| (0..v.hs).map(|d| g(d) * v.kv(b, j, 2, h, d)).sum())
                    .collect();
                let pdp: f64 = probs.iter().zip(&dp).map(|(p, d)| p * d).sum();
                for (j, &pj) in probs.iter().enumerate() {
                    let ds = pj * (dp[j] - pdp);
                    for d in 0..v.hs {
                        let q = qkv.data[v.at(b, t, 0, h, d)];
                        dqkv.data[v.at(b, t, 0, h, d)] += ds * v.kv(b, j, 1, h, d) * scale;
                        let (dk, dv) = (ds * q * scale, pj * g(d));
                        if j < v.p {
                            dprefix[0].data[j * v.c + h * v.hs + d] += dk;
                            dprefix[1].data[j * v.c + h * v.hs + d] += dv;
                        } else {
                            dqkv.data[v.at(b, j - v.p, 1, h, d)] += dk;
                            dqkv.data[v.at(b, j - v.p, 2, h, d)] += dv;
                        }
                    }
                }
            }
        }
    }
    let [dk, dv] = dprefix;
    (dqkv, prefix.map(|_| (dk, dv)))
}

/// Row-major (n, m) matrices as Vec<f64>.
fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for l in 0..k {
            for j in 0..m {
                out[i * m + j] += a[i * k + l] * b[l * m + j];
            }
        }
    }
    out
}
fn transpose(a: &[f64], n: usize, m: usize) -> Vec<f64> {
    (0..m * n).map(|i| a[(i % n) * m + i / n]).collect()
}

/// Per (b, h): q (T, HS), the key and value matrices (P+T, HS), and the additive bias
/// (T, P+T) = mask + causal (−∞ above the diagonal of the token block).
fn split(v: &View, b: usize, h: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (t, n, hs) = (v.t, v.p + v.t, v.hs);
    let q = (0..t * hs).map(|i| v.qkv.data[v.at(b, i / hs, 0, h, i % hs)]).collect();
    let k = (0..n * hs).map(|i| v.kv(b, i / hs, 1, h, i % hs)).collect();
    let vv = (0..n * hs).map(|i| v.kv(b, i / hs, 2, h, i % hs)).collect();
    let bias = (0..t * n)
        .map(|i| if i % n > v.p + i / n { f64::NEG_INFINITY } else { v.mask(b, i % n) })
        .collect();
    (q, k, vv, bias)
}

/// att = softmax(q·kᵀ/√HS + bias) row-wise: (T, P+T).
fn probs_matrix(q: &[f64], k: &[f64], bias: &[f64], t: usize, n: usize, hs: usize) -> Vec<f64> {
    let scale = 1.0 / (hs as f64).sqrt();
    let mut att = matmul(q, &transpose(k, n, hs), t, hs, n);
    for (a, m) in att.iter_mut().zip(bias) {
        *a = *a * scale + m;
    }
    for row in att.chunks_mut(n) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
    }
    att
}

pub fn composed(qkv: &Array, n_head: usize, prefix: Prefix, mask: Option<&Array>) -> Array {
    let v = View::new(qkv, n_head, prefix, mask);
    let (t, n, hs) = (v.t, v.p + v.t, v.hs);
    let mut y = Array::zeros(&[v.b, t, v.c]); // (B, T, C)
    for b in 0..v.b {
        for h in 0..n_head {
            let (q, k, vv, bias) = split(&v, b, h);
            let yh = matmul(&probs_matrix(&q, &k, &bias, t, n, hs), &vv, t, n, hs); // (T, HS)
            for i in 0..t * hs {
                y.data[(b * t + i / hs) * v.c + h * hs + i % hs] = yh[i]; // merge heads
            }
        }
    }
    y
}

/// dV = attᵀ·dY, dAtt = dY·Vᵀ, dS = att ⊙ (dAtt − rowsum(dAtt ⊙ att)), dQ = dS·K/√HS, dK = dSᵀ·Q/√HS.
pub fn composed_backward(
    qkv: &Array,
    n_head: usize,
    prefix: Prefix,
    mask: Option<&Array>,
    dy: &Array,
) -> Grads {
    let v = View::new(qkv, n_head, prefix, mask);
    let (t, n, hs, c) = (v.t, v.p + v.t, v.hs, v.c);
    let scale = 1.0 / (hs as f64).sqrt();
    let mut dqkv = Array::zeros(&qkv.shape);
    let mut dk_prefix = Array::zeros(&[v.p, c]);
    let mut dv_prefix = Array::zeros(&[v.p, c]);
    for b in 0..v.b {
        for h in 0..n_head {
            let (q, k, vv, bias) = split(&v, b, h);
            let att = probs_matrix(&q, &k, &bias, t, n, hs); // (T, N)
            let dyh: Vec<f64> =
                (0..t * hs).map(|i| dy.data[(b * t + i / hs) * c + h * hs + i % hs]).collect();
            let dv = matmul(&transpose(&att, t, n), &dyh, n, t, hs); // (N, HS)
            let datt = matmul(&dyh, &transpose(&vv, n, hs), t, hs, n); // (T, N)
            let mut ds = vec![0.0; t * n];
            for r in 0..t {
                let dot: f64 = (0..n).map(|j| datt[r * n + j] * att[r * n + j]).sum();
                for j in 0..n {
                    ds[r * n + j] = att[r * n + j] * (datt[r * n + j] - dot) * scale;
                }
            }
            let dq = matmul(&ds, &k, t, n, hs); // (T, HS)
            let dk = matmul(&transpose(&ds, t, n), &q, n, t, hs); // (N, HS)
            for i in 0..t * hs {
                dqkv.data[v.at(b, i / hs, 0, h, i % hs)] += dq[i];
            }
            for i in 0..n * hs {
                let (j, d) = (i / hs, i % hs);
                if j < v.p {
                    dk_prefix.data[j * c + h * hs + d] += dk[i];
                    dv_prefix.data[j * c + h * hs + d] += dv[i];
                } else {
                    dqkv.data[v.at(b, j - v.p, 1, h, d)] += dk[i];
                    dqkv.data[v.at(b, j - v.p, 2, h, d)] += dv[i];
                }
            }
        }
    }
    (dqkv, prefix.map(|_| (dk_prefix, dv_prefix)))
}
