//! Permutation of dimensions: out = x.permute(perm), out.shape[d] = x.shape[perm[d]].
//! Backward: the inverse permutation of dout. A copy kernel (outputs stay contiguous).
//! Used to split attention heads, (B, T, NH, HS) → (B, NH, T, HS), and to merge them back.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Result, shape_err};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/permute.wgsl");
static PERMUTE: Kernel = Kernel { name: "permute", source: SHADER, entry: "permute", reads: 1, writes: 1 };

/// Most dimensions a permutation handles (`array<vec4<u32>, 2>` in the shader).
pub const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub rank: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub out_shape: [u32; 8],
    pub in_strides: [u32; 8],
}

fn check(shape: &[usize], perm: &[usize]) -> Result<()> {
    let mut seen = vec![false; shape.len()];
    if perm.len() != shape.len() || shape.len() > MAX_RANK || perm.iter().any(|&d| d >= shape.len() || std::mem::replace(&mut seen[d], true)) {
        return shape_err("permute", format!("{perm:?} is not a permutation of the {} dims of {shape:?} (at most {MAX_RANK})", shape.len()));
    }
    Ok(())
}

/// The inverse permutation: inverse[perm[d]] = d.
pub fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (d, &p) in perm.iter().enumerate() {
        inv[p] = d;
    }
    inv
}

impl Tensor {
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        self.check_f32("permute")?;
        check(self.shape(), perm)?;
        let shape = self.shape();
        let rank = shape.len();
        let mut strides = vec![1usize; rank]; // row-major strides of the input
        for d in (0..rank.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        let out_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
        let mut params = Params { n: self.numel() as u32, rank: rank as u32, _pad0: 0, _pad1: 0, out_shape: [1; 8], in_strides: [0; 8] };
        for (d, &src) in perm.iter().enumerate() {
            params.out_shape[d] = out_shape[d] as u32;
            params.in_strides[d] = strides[src] as u32;
        }
        let out = output(self.gpu(), &out_shape, "permute")?;
        launch_1d(&PERMUTE, &params, &[self], &[&out], self.numel())?;
        let inv = inverse(perm);
        Ok(out.attach("permute", &[self], move |dout| Ok(vec![Some(dout.permute(&inv)?)])))
    }
}

/// f64 reference.
pub mod cpu {
    use crate::cpu::Array;

    pub fn permute(x: &Array, perm: &[usize]) -> Array {
        let rank = x.shape.len();
        let mut strides = vec![1usize; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * x.shape[d + 1];
        }
        let out_shape: Vec<usize> = perm.iter().map(|&d| x.shape[d]).collect();
        let mut out = Array::zeros(&out_shape);
        for i in 0..x.numel() {
            let (mut rest, mut offset) = (i, 0);
            for d in (0..rank).rev() {
                offset += (rest % out_shape[d]) * strides[perm[d]];
                rest /= out_shape[d];
            }
            out.data[i] = x.data[offset];
        }
        out
    }

    pub fn permute_backward(_x: &Array, dout: &Array, perm: &[usize]) -> Array {
        permute(dout, &super::inverse(perm))
    }
}
