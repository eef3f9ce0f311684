//! Attention composed from general ops — the reference the fused kernel is tested against, not a
//! fast path: on lavapipe the fused subgroup kernel takes 19.4 ms fwd+bwd at B16 NH4 T128 HS32
//! against 52.8 ms for this (README's table; only the per-row fused fallback, 180 ms, is slower):
//!   q, k, v = split_heads(qkv)                       (B, NH, T, HS)   permute + slice
//!   k, v    = [prefix; k], [prefix; v]                (B, NH, P+T, HS) concat (prefix shared over B)
//!   s       = q · kᵀ                                  (B, NH, T, P+T)  matmul_t
//!   p       = masked_softmax(s / √HS + mask, causal)  (B, NH, T, P+T)
//!   y       = merge_heads(p · v)                      (B, T, C)        matmul + permute
//! Every step is a differentiable op, so the backward is autodiff's; only masked_softmax has a
//! kernel of its own here. Memory: it stores the (T, P+T) probabilities per head, which the fused
//! kernel never does — fine for the tour's sizes, the fused kernel is the one for long sequences.

use bytemuck::{Pod, Zeroable};

use super::attention::Prefix;
use super::output;
use super::shape::concat;
use crate::error::{Result, shape_err};
use crate::gpu::{Kernel, grid_1d};
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/masked_softmax.wgsl");
static FORWARD: Kernel = Kernel {
    name: "masked_softmax_forward",
    source: SHADER,
    entry: "forward",
    reads: 2,
    writes: 1,
};
static BACKWARD: Kernel = Kernel {
    name: "masked_softmax_backward",
    source: SHADER,
    entry: "backward",
    reads: 2,
    writes: 1,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub rows: u32,
    pub cols: u32,
    pub seq: u32,
    pub n_head: u32,
    pub n_prefix: u32,
    pub has_mask: u32,
    pub scale: f32,
    pub _pad: u32,
}

impl Tensor {
    /// Attention probabilities from scores (B, NH, T, P+T): softmax over keys of scale·s + mask,
    /// prefix keys always visible, token keys causal. `mask`: additive (B, P+T), no gradient.
    pub fn masked_softmax(
        &self,
        scale: f32,
        n_prefix: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        const OP: &str = "masked_softmax";
        self.check_f32(OP)?;
        let &[b, nh, t, cols] = self.shape() else {
            return shape_err(
                OP,
                format!("scores must be (B, NH, T, P+T), got {:?}", self.shape()),
            );
        };
        if cols != n_prefix + t {
            return shape_err(
                OP,
                format!("scores {:?}: last dim must be P + T = {n_prefix} + {t}", self.shape()),
            );
        }
        if let Some(m) = mask
            && m.shape() != [b, cols]
        {
            return shape_err(
                OP,
                format!("mask must be (B, P+T) = [{b}, {cols}], got {:?}", m.shape()),
            );
        }
        let params = Params {
            rows: (b * nh * t) as u32,
            cols: cols as u32,
            seq: t as u32,
            n_head: nh as u32,
            n_prefix: n_prefix as u32,
            has_mask: mask.is_some() as u32,
            scale,
            _pad: 0,
        };
        let gpu = self.gpu();
        let y = output(gpu, self.shape(), OP)?; // (B, NH, T, P+T)
        let mask_storage = mask.unwrap_or(self).storage(); // unused binding when there is no mask
        gpu.dispatch(
            &FORWARD,
            &params,
            &[self.storage(), mask_storage],
            &[y.storage()],
            grid_1d(b * nh * t, 64),
        )?;
        let saved_y = y.clone();
        Ok(y.attach(OP, &[self], move |dy| {
            let gpu = dy.gpu();
            let dx = output(gpu, dy.shape(), "masked_softmax_backward")?;
            gpu.dispatch(
                &BACKWARD,
                &params,
                &[saved_y.storage(), dy.storage()],
                &[dx.storage()],
                grid_1d(params.rows as usize, 64),
            )?;
            Ok(vec![Some(dx)])
        }))
    }
}

/// Splits (P, C) prefix rows into heads and repeats them over the batch: (B, NH, P, HS).
fn prefix_heads(x: &Tensor, b: usize, n_head: usize) -> Result<Tensor> {
    let (p, c) = (x.shape()[0], x.shape()[1]);
    let heads = x.reshape(&[1, p, n_head, c / n_head])?.permute(&[0, 2, 1, 3])?; // (1, NH, P, HS)
    concat(&vec![&heads; b], 0) // (B, NH, P, HS)
}

/// The composed attention (see the module header); same contract as `Tensor::attention`.
pub fn attention_composed(
    qkv: &Tensor,
    n_head: usize,
    prefix: Option<Prefix>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let &[b, t, c3] = qkv.shape() else {
        return shape_err(
            "attention_composed",
            format!("qkv must be (B, T, 3C), got {:?}", qkv.shape()),
        );
    };
    if n_head == 0 || c3 % (3 * n_head) != 0 {
        return shape_err(
            "attention_composed",
            format!(
                "qkv {:?}: last dim must be 3C with C a multiple of n_head = {n_head}",
                qkv.shape()
            ),
        );
    }
    let (c, hs) = (c3 / 3, c3 / 3 / n_head);
    let heads = qkv.reshape(&[b, t, 3, n_head, hs])?.permute(&[2, 0, 3, 1, 4])?; // (3, B, NH, T, HS)
    let part = |i: usize| heads.slice(0, i, i + 1)?.reshape(&[b, n_head, t, hs]); // (B, NH, T, HS)
    let (q, mut k, mut v) = (part(0)?, part(1)?, part(2)?);
    let n_prefix = prefix.map_or(0, |p| p.keys.shape()[0]);
    if let Some(p) = prefix {
        k = concat(&[&prefix_heads(p.keys, b, n_head)?, &k], 2)?; // (B, NH, P+T, HS)
        v = concat(&[&prefix_heads(p.values, b, n_head)?, &v], 2)?; // (B, NH, P+T, HS)
    }
    let scores = q.matmul_t(&k, false, true)?; // (B, NH, T, P+T)
    let probs = scores.masked_softmax(1.0 / (hs as f32).sqrt(), n_prefix, mask)?; // (B, NH, T, P+T)
    let y = probs.matmul(&v)?; // (B, NH, T, HS)
    y.permute(&[0, 2, 1, 3])?.reshape(&[b, t, c]) // (B, T, C)
}

/// f64 reference of masked_softmax.
pub mod cpu {
    use crate::cpu::Array;

    /// x (B, NH, T, P+T), mask (B, P+T) or None.
    pub fn masked_softmax(x: &Array, scale: f64, n_prefix: usize, mask: Option<&Array>) -> Array {
        let (nh, t, cols) = (x.shape[1], x.shape[2], x.shape[3]);
        let mut y = Array::zeros(&x.shape);
        for r in 0..x.numel() / cols {
            let (b, ti) = (r / (nh * t), r % t);
            let visible = |j: usize| j < n_prefix || j - n_prefix <= ti;
            let s: Vec<f64> = (0..cols)
                .map(|j| scale * x.data[r * cols + j] + mask.map_or(0.0, |m| m.data[b * cols + j]))
                .collect();
            let max =
                (0..cols).filter(|&j| visible(j)).map(|j| s[j]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..cols).filter(|&j| visible(j)).map(|j| (s[j] - max).exp()).sum();
            for j in (0..cols).filter(|&j| visible(j)) {
                y.data[r * cols + j] = (s[j] - max).exp() / sum;
            }
        }
        y
    }

    pub fn masked_softmax_backward(
        x: &Array,
        dy: &Array,
        scale: f64,
        n_prefix: usize,
        mask: Option<&Array>,
    ) -> Array {
        let y = masked_softmax(x, scale, n_prefix, mask);
        let cols = x.shape[3];
        let mut dx = Array::zeros(&x.shape);
        for r in 0..x.numel() / cols {
            let row = r * cols..(r + 1) * cols;
            let dot: f64 = row.clone().map(|i| dy.data[i] * y.data[i]).sum();
            for i in row {
                dx.data[i] = scale * y.data[i] * (dy.data[i] - dot);
            }
        }
        dx
    }
}
