//! Permutation of dimensions: out = x.permute(perm), out.shape[d] = x.shape[perm[d]].
//! Backward: the inverse permutation of dout. A copy kernel (outputs stay contiguous).
//! Dims are coalesced first; when the last dim stays last with a size % 4 == 0, each invocation
//! copies a run of up to 8 vec4s (one index computation per run), else one element.
//! Used to split attention heads, (B, T, NH, HS) → (B, NH, T, HS), and to merge them back.

use bytemuck::{Pod, Zeroable};

use super::{launch_1d, output};
use crate::error::{Result, shape_err};
use crate::gpu::Kernel;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/permute.wgsl");
static PERMUTE: Kernel =
    Kernel { name: "permute", source: SHADER, entry: "permute", reads: 1, writes: 1 };
static PERMUTE4: Kernel =
    Kernel { name: "permute4", source: SHADER, entry: "permute4", reads: 1, writes: 1 };

/// Vec4s one invocation of `permute4` copies (`RUN` in the shader).
const RUN: usize = 8;

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
    if perm.len() != shape.len()
        || shape.len() > MAX_RANK
        || perm.iter().any(|&d| d >= shape.len() || std::mem::replace(&mut seen[d], true))
    {
        return shape_err(
            "permute",
            format!(
                "{perm:?} is not a permutation of the {} dims of {shape:?} (at most {MAX_RANK})",
                shape.len()
            ),
        );
    }
    Ok(())
}

/// The permutation as output dims and the input stride of each, with size-1 dims dropped and
/// output dims that are adjacent (in order) in the input merged: (B, T, NH, HS) → (B, NH, T, HS)
/// stays 4-D, a permutation that moves nothing becomes one dim of stride 1. Fewer dims, fewer
/// divisions per element in the kernel.
fn coalesce(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let rank = shape.len();
    let mut strides = vec![1usize; rank]; // row-major strides of the input
    for d in (0..rank.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let (mut dims, mut out_strides): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
    for &src in perm.iter().filter(|&&d| shape[d] != 1) {
        match (dims.last_mut(), out_strides.last_mut()) {
            // The previous output dim is the input dim just outside this one: one dim.
            (Some(size), Some(stride)) if *stride == strides[src] * shape[src] => {
                *size *= shape[src];
                *stride = strides[src];
            }
            _ => {
                dims.push(shape[src]);
                out_strides.push(strides[src]);
            }
        }
    }
    if dims.is_empty() { (vec![1], vec![1]) } else { (dims, out_strides) }
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
        let out_shape: Vec<usize> = perm.iter().map(|&d| self.shape()[d]).collect();
        let out = output(self.gpu(), &out_shape, "permute")?;
        if self.numel() > 0 {
            let (dims, strides) = coalesce(self.shape(), perm);
            let r = dims.len();
            let mut params = Params {
                n: self.numel() as u32,
                rank: r as u32,
                _pad0: 0,
                _pad1: 0,
                out_shape: [1; 8],
                in_strides: [0; 8],
            };
            if strides[r - 1] == 1 && dims[r - 1] % 4 == 0 {
                // The innermost dim stays innermost: move vec4s (sizes and strides in vec4 units;
                // every outer stride is a multiple of dims[r − 1], so of 4).
                for d in 0..r {
                    params.out_shape[d] = dims[d] as u32;
                    params.in_strides[d] = (strides[d] / 4).max(1) as u32;
                }
                params.out_shape[r - 1] /= 4;
                params.n /= 4;
                let inner4 = dims[r - 1] / 4;
                let threads = self.numel() / 4 / inner4 * inner4.div_ceil(RUN); // one per run of RUN vec4s
                launch_1d(&PERMUTE4, &params, &[self], &[&out], threads)?;
            } else {
                for d in 0..r {
                    params.out_shape[d] = dims[d] as u32;
                    params.in_strides[d] = strides[d] as u32;
                }
                launch_1d(&PERMUTE, &params, &[self], &[&out], self.numel())?;
            }
        }
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
