//! Inverted dropout with a counter-based random mask.
//!
//! Math: y = m ⊙ x / (1 − p), m[i] = [hash(seed, i) ≥ round(p·2³²)]     dx = m ⊙ dout / (1 − p)
//! The mask is a pure function of (seed, flat index i): `hash` is PCG's hash chained over the two
//! halves of the seed and i, using only wrapping u32 arithmetic, so the GPU (any backend) and the
//! Rust reference below produce the same bits.
//! Saved for backward: nothing but (p, seed). Backward is the forward kernel applied to dout — it
//! recomputes the mask. Re-running a forward with the same seed gives the same mask, which is what
//! gradient checkpointing needs.
//! Layout: flat; the mask depends only on the flat index, not on the shape.
//! NOTE: p = 0 or `training == false` returns the input itself (no copy, no dispatch).
//! NOTE: a caller must vary the seed per layer and per step; the same seed on two tensors of the
//! same size drops the same positions.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Error, Result};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/dropout.wgsl");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub threshold: u32,
    pub scale: f32,
}

static DROPOUT: Kernel =
    Kernel { name: "dropout", source: SHADER, entry: "dropout", reads: 1, writes: 1 };

impl Params {
    fn new(n: usize, p: f32, seed: u64) -> Params {
        Params {
            n: n as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            threshold: cpu::threshold(p),
            scale: 1.0 / (1.0 - p),
        }
    }
}

/// y = mask(seed) ⊙ x · scale, with no autodiff (forward and backward both use it).
fn apply(x: &Tensor, params: &Params, op: &'static str) -> Result<Tensor> {
    let y = output(x.gpu(), x.shape(), op)?; // same shape as x
    launch_1d(&DROPOUT, params, &[x], &[&y], x.numel())?;
    Ok(y)
}

impl Tensor {
    /// Drops each element with probability `p` (0 ≤ p < 1) and scales the rest by 1/(1 − p).
    /// The mask is a function of `seed` and the element's flat index only.
    pub fn dropout(&self, p: f32, seed: u64, training: bool) -> Result<Tensor> {
        self.check_f32("dropout")?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::Input(format!(
                "dropout: p must be in [0, 1), got {p} (shape {:?})",
                self.shape()
            )));
        }
        if p == 0.0 || !training {
            return Ok(self.clone());
        }
        let params = Params::new(self.numel(), p, seed);
        let y = apply(self, &params, "dropout")?;
        // Only `params` (p and seed) is captured: the backward recomputes the mask.
        Ok(y.attach("dropout", &[self], move |dout| {
            Ok(vec![Some(apply(dout, &params, "dropout_backward")?)])
        }))
    }
}

/// The same hash in Rust, and f64 references.
pub mod cpu {
    use crate::cpu::Array;

    /// PCG hash (one LCG step + RXS-M-XS), wrapping u32 arithmetic as in the shader.
    pub fn pcg(v: u32) -> u32 {
        let state = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
        let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
        (word >> 22) ^ word
    }

    /// hash(seed, i) = pcg(i ^ pcg(seed_lo ^ pcg(seed_hi))).
    pub fn hash(seed: u64, i: u32) -> u32 {
        let key = pcg((seed as u32) ^ pcg((seed >> 32) as u32));
        pcg(i ^ key)
    }

    /// round(p · 2³²), the hash value below which an element is dropped.
    pub fn threshold(p: f32) -> u32 {
        (p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
    }

    /// keep[i] for i in 0..n.
    pub fn mask(n: usize, p: f32, seed: u64) -> Vec<bool> {
        let t = threshold(p);
        (0..n).map(|i| hash(seed, i as u32) >= t).collect()
    }

    pub fn dropout(x: &Array, p: f32, seed: u64) -> Array {
        let scale = 1.0 / (1.0 - p as f64);
        let keep = mask(x.numel(), p, seed);
        Array::new(
            &x.shape,
            x.data.iter().zip(keep).map(|(&v, k)| if k { v * scale } else { 0.0 }).collect(),
        )
    }
    pub fn dropout_backward(_x: &Array, dout: &Array, p: f32, seed: u64) -> Array {
        dropout(dout, p, seed)
    }
}
