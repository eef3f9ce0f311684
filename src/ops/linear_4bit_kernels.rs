//! The fused 4-bit linear's kernels, one per regime, chosen per adapter and per row count as
//! the matmul is (`MatmulKernel::for_gpu`). All compute, for W = dequant(Wq) [out, in]:
//!   forward     y (rows, out)  = x (rows, in)   · Wᵀ      y[r, o]  = Σ_i x[r, i] · W[o, i]
//!   backward_x  dx (rows, in)  = dy (rows, out) · W       dx[r, i] = Σ_o dy[r, o] · W[o, i]
//! with W decoded in registers or workgroup memory, never written to global memory, and the
//! nested absmax decoded in the kernel. The variants (same params and bindings):
//!   Simple          shaders/linear_4bit.wgsl: one column × 4 rows per invocation, each weight
//!                   decoded per use: the fused reference, runs everywhere.
//!   Matvec          shaders/linear_4bit_matvec.wgsl, 1..=8 rows, forward: one invocation per
//!                   output, codes decoded by a tree of selects (portable; CPU drivers).
//!   MatvecSubgroup  shaders/linear_4bit_matvec_subgroup.wgsl, the same for in % 32 == 0 on
//!                   subgroups of 8 (lavapipe): 32 codes a load, codes looked up by
//!                   subgroupShuffle, x shared by subgroupBroadcast (otherwise Matvec runs).
//!   MatvecWorkgroup the same file: one workgroup per output, coalesced W words and a tree
//!                   reduction (real GPUs).
//!   Subgroup        shaders/linear_4bit_subgroup.wgsl: 16×64 register tiles per subgroup of 8,
//!                   W decoded once per tile and shared by subgroupBroadcast (lavapipe).
//!   Tiled           shaders/linear_4bit_tiled.wgsl: 64×64 workgroup tiles, W decoded once per
//!                   tile into workgroup memory (real GPUs).
//! The matvec kernels have no backward: a decode step rarely needs one, and when it does the
//! adapter's training kernel computes dx ([`Linear4bitKernel::backward`]).
//! NOTE: f32 accumulation, each kernel in its own order: tests compare with a tolerance that
//! scales with √K·max|x|·max|W| (see tests/gpu/quant_kernels.rs).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, grid_1d};
use crate::ops::dequant::Weight4bit;
use crate::ops::output;
use crate::tensor::Tensor;

use super::linear_4bit::Params;

const SIMPLE: &str = include_str!("../../shaders/linear_4bit.wgsl");
const MATVEC: &str = include_str!("../../shaders/linear_4bit_matvec.wgsl");
const MATVEC_SUBGROUP: &str = include_str!("../../shaders/linear_4bit_matvec_subgroup.wgsl");
const SUBGROUP: &str = include_str!("../../shaders/linear_4bit_subgroup.wgsl");
const TILED: &str = include_str!("../../shaders/linear_4bit_tiled.wgsl");

/// Rows the matvec kernels take at most (`R` in linear_4bit_matvec.wgsl).
pub const MATVEC_ROWS: usize = 8;

const fn kernel(name: &'static str, source: &'static str) -> Kernel {
    Kernel { name, source, entry: name, reads: 5, writes: 1 }
}

static SIMPLE_FORWARD: Kernel = kernel("linear_4bit_forward", SIMPLE);
static SIMPLE_BACKWARD: Kernel = kernel("linear_4bit_backward_x", SIMPLE);
static MATVEC_LANES: Kernel = kernel("linear_4bit_matvec", MATVEC);
static MATVEC_SG: Kernel = kernel("linear_4bit_matvec_subgroup", MATVEC_SUBGROUP);
static MATVEC_WG: Kernel = kernel("linear_4bit_matvec_wg", MATVEC);
static SUBGROUP_FORWARD: Kernel = kernel("linear_4bit_subgroup_forward", SUBGROUP);
static SUBGROUP_BACKWARD: Kernel = kernel("linear_4bit_subgroup_backward_x", SUBGROUP);
static TILED_FORWARD: Kernel = kernel("linear_4bit_tiled_forward", TILED);
static TILED_BACKWARD: Kernel = kernel("linear_4bit_tiled_backward_x", TILED);

/// Which kernel computes a 4-bit (or int8: `linear_int8_kernels::Int8Kernel`) linear. All give
/// the same results up to f32 rounding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linear4bitKernel {
    Simple,
    Matvec,
    MatvecSubgroup,
    MatvecWorkgroup,
    Subgroup,
    Tiled,
}

impl Linear4bitKernel {
    pub const ALL: [Linear4bitKernel; 6] = [
        Linear4bitKernel::Simple,
        Linear4bitKernel::Matvec,
        Linear4bitKernel::MatvecSubgroup,
        Linear4bitKernel::MatvecWorkgroup,
        Linear4bitKernel::Subgroup,
        Linear4bitKernel::Tiled,
    ];

    /// The fast forward kernel for this adapter and row count: matvec for 1..=8 rows, else the
    /// tiled kernel of the regime (workgroup memory is slow on a CPU driver; see matmul.rs).
    pub fn for_gpu(gpu: &Gpu, rows: usize) -> Linear4bitKernel {
        if rows <= MATVEC_ROWS {
            return match (gpu.is_cpu(), Linear4bitKernel::MatvecSubgroup.supported(gpu)) {
                (true, true) => Linear4bitKernel::MatvecSubgroup,
                (true, false) => Linear4bitKernel::Matvec,
                (false, _) => Linear4bitKernel::MatvecWorkgroup,
            };
        }
        Self::training(gpu)
    }

    /// The adapter's kernel for many rows (and for every backward).
    pub fn training(gpu: &Gpu) -> Linear4bitKernel {
        match (gpu.is_cpu(), Linear4bitKernel::Subgroup.supported(gpu)) {
            (true, true) => Linear4bitKernel::Subgroup,
            (true, false) => Linear4bitKernel::Simple,
            (false, _) => Linear4bitKernel::Tiled,
        }
    }

    /// Whether this adapter can run the kernel (the subgroup kernel hard-codes 8 lanes).
    pub fn supported(self, gpu: &Gpu) -> bool {
        match self {
            Linear4bitKernel::Subgroup | Linear4bitKernel::MatvecSubgroup => {
                crate::ops::matmul::MatmulKernel::Subgroup.supported(gpu)
            }
            _ => true,
        }
    }

    /// The variants this adapter can run.
    pub fn available(gpu: &Gpu) -> Vec<Linear4bitKernel> {
        Self::ALL.into_iter().filter(|k| k.supported(gpu)).collect()
    }

    /// The kernel that computes dx when this one computed y.
    pub fn backward(self, gpu: &Gpu) -> Linear4bitKernel {
        match self {
            Linear4bitKernel::Matvec
            | Linear4bitKernel::MatvecSubgroup
            | Linear4bitKernel::MatvecWorkgroup => Self::training(gpu),
            other => other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Linear4bitKernel::Simple => "simple",
            Linear4bitKernel::Matvec => "matvec",
            Linear4bitKernel::MatvecSubgroup => "matvec_subgroup",
            Linear4bitKernel::MatvecWorkgroup => "matvec_wg",
            Linear4bitKernel::Subgroup => "subgroup",
            Linear4bitKernel::Tiled => "tiled",
        }
    }
}

/// Records one product: `a` (.., k) → c `c_shape` (.., n), forward (a = x) or backward (a = dy).
pub(crate) fn launch(
    kernel: Linear4bitKernel,
    backward: bool,
    w: &Weight4bit,
    a: &Tensor,
    c_shape: &[usize],
) -> Result<Tensor> {
    let op = if backward { "linear_4bit_backward" } else { "linear_4bit" };
    let gpu = a.gpu();
    let c = output(gpu, c_shape, op)?;
    let rows = a.numel() / a.last_dim().max(1);
    if c.numel() == 0 || w.numel() == 0 {
        return Ok(c);
    }
    let (out, inp) = (w.shape[0], w.shape[1]);
    let cols = if backward { inp } else { out }; // columns of c
    let unsupported =
        |why: String| Err(Error::Input(format!("{op}: {} kernel {why}", kernel.name())));
    if !kernel.supported(gpu) {
        let i = &gpu.info;
        return unsupported(format!(
            "needs subgroups of exactly 8 invocations; adapter {} has {}..{}",
            i.name, i.subgroup_min_size, i.subgroup_max_size
        ));
    }
    let tile_rows = |t: usize| rows.div_ceil(t);
    // Row tiles folded over y and z like grid_1d folds (so tests can lower the fold point).
    let tiled = |tile_m: usize| {
        let g = grid_1d(tile_rows(tile_m), 1);
        [cols.div_ceil(64) as u32, g[0], g[1]]
    };
    let (k, groups, tiles_m): (&'static Kernel, [u32; 3], usize) = match (kernel, backward) {
        (Linear4bitKernel::Simple, false) => {
            (&SIMPLE_FORWARD, grid_1d(tile_rows(4) * cols, 256), 0)
        }
        (Linear4bitKernel::Simple, true) => {
            (&SIMPLE_BACKWARD, grid_1d(tile_rows(4) * cols, 256), 0)
        }
        (
            Linear4bitKernel::Matvec
            | Linear4bitKernel::MatvecSubgroup
            | Linear4bitKernel::MatvecWorkgroup,
            true,
        ) => {
            return unsupported("has no backward (use Linear4bitKernel::backward)".into());
        }
        (
            Linear4bitKernel::Matvec
            | Linear4bitKernel::MatvecSubgroup
            | Linear4bitKernel::MatvecWorkgroup,
            false,
        ) if rows > MATVEC_ROWS => {
            return unsupported(format!("takes at most {MATVEC_ROWS} rows of x, got {rows}"));
        }
        (Linear4bitKernel::MatvecSubgroup, false) if inp % 32 == 0 => {
            (&MATVEC_SG, grid_1d(out, 64), 0)
        }
        (Linear4bitKernel::Matvec | Linear4bitKernel::MatvecSubgroup, false) => {
            (&MATVEC_LANES, grid_1d(out, 64), 0)
        }
        (Linear4bitKernel::MatvecWorkgroup, false) => (&MATVEC_WG, grid_1d(out * 64, 64), 0),
        (Linear4bitKernel::Subgroup, false) => (&SUBGROUP_FORWARD, tiled(128), tile_rows(128)),
        (Linear4bitKernel::Subgroup, true) => (&SUBGROUP_BACKWARD, tiled(128), tile_rows(128)),
        (Linear4bitKernel::Tiled, false) => (&TILED_FORWARD, tiled(64), tile_rows(64)),
        (Linear4bitKernel::Tiled, true) => (&TILED_BACKWARD, tiled(64), tile_rows(64)),
    };
    let base = w.params();
    let params = Params {
        n: base.n,
        blocksize: base.blocksize,
        nested: base.nested,
        offset: base.offset,
        rows: rows as u32,
        in_features: inp as u32,
        out_features: out as u32,
        tiles_m: tiles_m as u32,
    };
    let [p0, p1, p2, p3] = w.reads();
    let reads = [p0.storage(), p1.storage(), p2.storage(), p3.storage(), a.storage()];
    gpu.dispatch(k, &params, &reads, &[c.storage()], groups)?;
    Ok(c)
}
