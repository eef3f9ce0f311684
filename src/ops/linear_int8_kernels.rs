//! The fused int8 linear's kernels, one per regime, chosen per adapter and per row count as the
//! 4-bit ones are (`Linear4bitKernel::for_gpu`). All compute, for W[o, i] = q[o, i] · s_o with
//! s_o = row_stats[o] · (1/127) (W [out, in], one scale per row):
//!   forward     y (rows, out)  = x (rows, in)   · Wᵀ     y[r, o]  = s_o · Σ_i x[r, i] · q[o, i]
//!   backward_x  dx (rows, in)  = dy (rows, out) · W      dx[r, i] = Σ_o (dy[r, o] · s_o) · q[o, i]
//! with the codes converted in registers or workgroup memory, never written to global memory.
//! The variants (same params and bindings):
//!   Simple          shaders/linear_int8.wgsl: one column × 4 rows per invocation, each weight
//!                   decoded (and scaled) per use: the fused reference, runs everywhere.
//!   Matvec          shaders/linear_int8_matvec.wgsl, 1..=8 rows, forward: one invocation per
//!                   output, x reads uniform across lanes, 16 codes per load when in % 16 == 0
//!                   (CPU drivers).
//!   MatvecWorkgroup the same file: one workgroup per output, coalesced words, a tree reduction
//!                   (real GPUs).
//!   MatvecSubgroup  shaders/linear_int8_subgroup.wgsl, 1..=8 rows, forward: the 16-code matvec
//!                   with x loaded once per subgroup and shared by subgroupBroadcast (lavapipe,
//!                   where per-lane x loads were the cost); in % 32 != 0 runs `Matvec`'s code.
//!   Subgroup        the same file: 16×64 register tiles per subgroup of 8, codes shared by
//!                   subgroupBroadcast (lavapipe; both need subgroups of exactly 8).
//!   Tiled           shaders/linear_int8_tiled.wgsl: 64×64 workgroup tiles (real GPUs, and any
//!                   adapter: no optional feature).
//! The matvec kernels have no backward: the adapter's training kernel computes dx
//! ([`Int8Kernel::backward`]).
//! NOTE: f32 accumulation, each kernel in its own order, and the scale applied after the sum
//! (forward) or to dy (backward) rather than to each weight: tests compare with a tolerance that
//! bounds both (tests/gpu/int8_kernels.rs).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Kernel, grid_1d};
use crate::ops::linear_int8::WeightInt8;
use crate::ops::output;
use crate::quant::int8::INV_127;
use crate::tensor::Tensor;

const SIMPLE: &str = include_str!("../../shaders/linear_int8.wgsl");
const MATVEC: &str = include_str!("../../shaders/linear_int8_matvec.wgsl");
const SUBGROUP: &str = include_str!("../../shaders/linear_int8_subgroup.wgsl");
const TILED: &str = include_str!("../../shaders/linear_int8_tiled.wgsl");

/// Rows the matvec kernels take at most (`R` in linear_int8_matvec.wgsl).
pub const MATVEC_ROWS: usize = 8;

/// The params of every shaders/linear_int8*.wgsl kernel (field names match).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    in_features: u32,
    out_features: u32,
    inv_127: f32,
    /// Row tiles of the tiled kernels (the fold's padding tiles store nothing).
    tiles_m: u32,
    pad: [u32; 3],
}

const fn kernel(name: &'static str, source: &'static str) -> Kernel {
    Kernel { name, source, entry: name, reads: 3, writes: 1 }
}

static SIMPLE_FORWARD: Kernel = kernel("linear_int8_forward", SIMPLE);
static SIMPLE_BACKWARD: Kernel = kernel("linear_int8_backward_x", SIMPLE);
static MATVEC_LANES: Kernel = kernel("linear_int8_matvec", MATVEC);
static MATVEC_LANES16: Kernel = kernel("linear_int8_matvec16", MATVEC);
static MATVEC_WG: Kernel = kernel("linear_int8_matvec_wg", MATVEC);
static SUBGROUP_MATVEC: Kernel = kernel("linear_int8_subgroup_matvec", SUBGROUP);
static SUBGROUP_FORWARD: Kernel = kernel("linear_int8_subgroup_forward", SUBGROUP);
static SUBGROUP_BACKWARD: Kernel = kernel("linear_int8_subgroup_backward_x", SUBGROUP);
static TILED_FORWARD: Kernel = kernel("linear_int8_tiled_forward", TILED);
static TILED_BACKWARD: Kernel = kernel("linear_int8_tiled_backward_x", TILED);

/// Which kernel computes an int8 linear: the same regimes, chosen by the same rules
/// (`for_gpu`, `training`, `backward`, `supported`), as the 4-bit linear's, so one enum serves
/// both; each family has its own shaders (`launch` below).
pub type Int8Kernel = crate::ops::linear_4bit::Linear4bitKernel;

// The matvec rule (`Linear4bitKernel::for_gpu`) sends both families the same row counts.
const _: () = assert!(MATVEC_ROWS == super::linear_4bit_kernels::MATVEC_ROWS);

/// Records one product: `a` (.., k) → c `c_shape` (.., n), forward (a = x) or backward (a = dy).
pub(crate) fn launch(
    kernel: Int8Kernel,
    backward: bool,
    w: &WeightInt8,
    a: &Tensor,
    c_shape: &[usize],
) -> Result<Tensor> {
    let op = if backward { "linear_int8_backward" } else { "linear_int8" };
    let gpu = a.gpu();
    let c = output(gpu, c_shape, op)?;
    let rows = a.numel() / a.last_dim().max(1);
    if c.numel() == 0 || w.codes.numel() == 0 {
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
        (Int8Kernel::Simple, false) => (&SIMPLE_FORWARD, grid_1d(tile_rows(4) * cols, 256), 0),
        (Int8Kernel::Simple, true) => (&SIMPLE_BACKWARD, grid_1d(tile_rows(4) * cols, 256), 0),
        (Int8Kernel::Matvec | Int8Kernel::MatvecWorkgroup | Int8Kernel::MatvecSubgroup, true) => {
            return unsupported("has no backward (use Int8Kernel::backward)".into());
        }
        (Int8Kernel::Matvec | Int8Kernel::MatvecWorkgroup | Int8Kernel::MatvecSubgroup, false)
            if rows > MATVEC_ROWS =>
        {
            return unsupported(format!("takes at most {MATVEC_ROWS} rows of x, got {rows}"));
        }
        (Int8Kernel::MatvecSubgroup, false) if inp % 32 == 0 => {
            (&SUBGROUP_MATVEC, grid_1d(out, 64), 0)
        }
        (Int8Kernel::Matvec | Int8Kernel::MatvecSubgroup, false) if inp % 16 == 0 => {
            (&MATVEC_LANES16, grid_1d(out, 64), 0)
        }
        (Int8Kernel::Matvec | Int8Kernel::MatvecSubgroup, false) => {
            (&MATVEC_LANES, grid_1d(out, 64), 0)
        }
        (Int8Kernel::MatvecWorkgroup, false) => (&MATVEC_WG, grid_1d(out * 64, 64), 0),
        (Int8Kernel::Subgroup, false) => (&SUBGROUP_FORWARD, tiled(128), tile_rows(128)),
        (Int8Kernel::Subgroup, true) => (&SUBGROUP_BACKWARD, tiled(128), tile_rows(128)),
        (Int8Kernel::Tiled, false) => (&TILED_FORWARD, tiled(64), tile_rows(64)),
        (Int8Kernel::Tiled, true) => (&TILED_BACKWARD, tiled(64), tile_rows(64)),
    };
    let params = Params {
        rows: rows as u32,
        in_features: inp as u32,
        out_features: out as u32,
        inv_127: INV_127,
        tiles_m: tiles_m as u32,
        pad: [0; 3],
    };
    let reads = [w.codes.storage(), w.row_stats.storage(), a.storage()];
    gpu.dispatch(k, &params, &reads, &[c.storage()], groups)?;
    Ok(c)
}
