//! Linear over a frozen f16 weight (`--base-dtype f16`): y = x · Wᵀ with W held in 16 bits and
//! every product and sum in f32. Half the parameter memory of an f32 frozen base, no quantization
//! error beyond one f16 rounding of each weight.
//!
//! Math:      y[r, o]  = Σ_i x[r, i] · W[o, i]        W = f16(W32) [out, in] (nn.Linear layout)
//! Backward:  dx[r, i] = Σ_o dy[r, o] · W[o, i]       (W unpacked again on the fly)
//!            no gradient for W: the f16 weight is frozen (no grad, no optimizer state).
//! Saved for backward: the weight handle only (its GPU tensor, shared, no copy).
//! Layout: x (.., in) row-major → y (.., out); rows = numel(x) / in. W is [out, in] as the 4-bit
//! and int8 bases hold it, two halves per u32 word (element 2j in the LOW 16 bits, as WGSL's
//! core `unpack2x16float` reads them: no SHADER_F16 needed), each row padded with zeros to a
//! multiple of 8 halves so it is whole vec4<u32>s: `row_words` = ceil(in / 8) · 4. Why [out, in]:
//! the forward then reads 8 consecutive K steps of one column per vec4 load, and the backward 8
//! consecutive columns of one K step — both kernels get 8 weights a load (the f32 kernels 1 to 4).
//! Memory: out · row_words · 4 bytes, `Category::Quantized` (the frozen base's category):
//! exactly half the f32 weight when in % 8 == 0 (every GPT-2 projection).
//! Kernels ([`LinearF16Kernel`], chosen per adapter and row count as the 4-bit ones are):
//!   Simple    shaders/linear_f16.wgsl: one column × 4 rows per invocation: runs everywhere;
//!   Matvec    shaders/linear_f16.wgsl, 1..=8 rows: one column per invocation;
//!   MatvecSubgroup  linear_f16_subgroup.wgsl, one row (decoding), in % 8 == 0: a subgroup of 8
//!             splits each W row, 8 columns per subgroup;
//!   Subgroup  shaders/linear_f16_subgroup.wgsl: 16×64 register tiles per subgroup of 8 (lavapipe).
//! Reference: `linear_f16_composed` = `x.matmul_t(&w.dequantize()?, false, true)`; the f64
//! `cpu` module rounds with the `half` crate, which the GPU's unpack must match bit for bit.
//! NOTE: `unpack2x16float` is core WGSL (every WebGPU implementation has it), but wgpu gates it on
//! `DownlevelFlags::SHADER_F16_IN_F32`: Vulkan, Metal and DX12 have it, GL ES may not, and llvmpipe
//! only with SHADER_F16 (Mesa 25 has it). Without it `upload` refuses with a message naming it.
//! NOTE: rounding to f16 is to nearest, ties to even (`half::f16::from_f32`); |w| > 65504 would
//! become ±inf, so it is refused with the tensor's name, as NaN and Inf are.

use std::rc::Rc;

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::output;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu, Kernel, grid_1d};
use crate::ops::matmul::MatmulKernel;
use crate::tensor::Tensor;

const SIMPLE: &str = include_str!("../../shaders/linear_f16.wgsl");
const SUBGROUP: &str = include_str!("../../shaders/linear_f16_subgroup.wgsl");

/// Rows the matvec kernel takes at most (`RV` in linear_f16.wgsl).
pub const MATVEC_ROWS: usize = 8;

/// Field names match `Params` in shaders/linear_f16*.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    in_features: u32,
    out_features: u32,
    row_words: u32,
    tiles_m: u32,
}

const fn kernel(name: &'static str, source: &'static str) -> Kernel {
    Kernel { name, source, entry: name, reads: 2, writes: 1 }
}

static SIMPLE_FORWARD: Kernel = kernel("linear_f16_forward", SIMPLE);
static SIMPLE_BACKWARD: Kernel = kernel("linear_f16_backward_x", SIMPLE);
static MATVEC: Kernel = kernel("linear_f16_matvec", SIMPLE);
static MATVEC8: Kernel = kernel("linear_f16_matvec8", SIMPLE);
static SUBGROUP_FORWARD: Kernel = kernel("linear_f16_subgroup_forward", SUBGROUP);
static SUBGROUP_BACKWARD: Kernel = kernel("linear_f16_subgroup_backward_x", SUBGROUP);
static SUBGROUP_MATVEC: Kernel = kernel("linear_f16_subgroup_matvec", SUBGROUP);

/// A frozen f16 weight [out, in] on the GPU.
#[derive(Clone)]
pub struct WeightF16 {
    /// [out, in]
    pub shape: [usize; 2],
    /// u32 words per row: ceil(in / 8) · 4 (8 halves per vec4<u32>).
    pub row_words: usize,
    /// (out, row_words) u32: W[o, 2j] in the low half of word j of row o, W[o, 2j + 1] high.
    pub packed: Tensor,
}

impl WeightF16 {
    /// Rounds `w` [out, in] (row-major) to f16 and uploads it; `name` names it in errors (a value
    /// f16 cannot hold, a weight past one storage binding).
    pub fn upload(gpu: &Rc<Gpu>, name: &str, w: &[f32], shape: [usize; 2]) -> Result<WeightF16> {
        let [out, inp] = shape;
        if w.len() != out * inp {
            return shape_err("linear_f16", format!("{name}: {} values for {shape:?}", w.len()));
        }
        if let Some(k) = w.iter().position(|v| !v.is_finite() || v.abs() > f16::MAX.to_f32()) {
            return Err(Error::Input(format!(
                "{name}: element [{}, {}] of its [out, in] layout is {}: f16 holds finite values \
                 up to 65504; keep this weight f32 (--base-dtype f32)",
                k / inp,
                k % inp,
                w[k]
            )));
        }
        let downlevel = gpu.adapter.get_downlevel_capabilities().flags;
        if !downlevel.contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32) {
            return Err(Error::Input(format!(
                "{name}: an f16 base needs WGSL's unpack2x16float (wgpu's downlevel flag \
                 SHADER_F16_IN_F32), which adapter {} lacks; use --base-dtype f32",
                gpu.info.name
            )));
        }
        let row_words = inp.div_ceil(8) * 4;
        let bytes = out * row_words * 4;
        let max = gpu.limits.max_storage_buffer_binding_size as usize;
        if bytes > max {
            return Err(Error::Limit {
                op: "linear_f16",
                message: format!(
                    "{name} {shape:?} in f16 takes {bytes} bytes, more than one storage binding \
                     ({max} bytes); keep it f32"
                ),
            });
        }
        let words = cpu::pack(w, shape);
        let packed = Tensor::from_u32(gpu, &words, &[out, row_words])?; // (out, row_words)
        packed.set_category(Category::Quantized);
        Ok(WeightF16 { shape, row_words, packed })
    }

    /// The weight in f32, [out, in], no gradient (unpacked on the host from the GPU's words; for
    /// merges and DoRA's norm, not the hot path).
    pub fn dequantize(&self) -> Result<Tensor> {
        let words = self.packed.to_vec_u32()?;
        let w = cpu::unpack(&words, self.shape, self.row_words);
        Tensor::from_f32(self.packed.gpu(), &w, &self.shape)
    }

    /// Bytes on the GPU: four per word.
    pub fn bytes(&self) -> usize {
        self.packed.numel() * 4
    }
}

/// Which kernel computes an f16 linear. All give the same results up to f32 rounding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearF16Kernel {
    Simple,
    Matvec,
    /// One row, in % 8 == 0 (decoding a real layer): a subgroup of 8 splits each row of W.
    MatvecSubgroup,
    Subgroup,
}

impl LinearF16Kernel {
    pub const ALL: [LinearF16Kernel; 4] = [
        LinearF16Kernel::Simple,
        LinearF16Kernel::Matvec,
        LinearF16Kernel::MatvecSubgroup,
        LinearF16Kernel::Subgroup,
    ];

    /// The forward kernel for this adapter, row count and `in`: matvec for 1..=8 rows (the
    /// subgroup matvec for one row where it runs), else [`training`](Self::training).
    pub fn for_gpu(gpu: &Gpu, rows: usize, in_features: usize) -> LinearF16Kernel {
        let one_row = LinearF16Kernel::MatvecSubgroup;
        match rows {
            1 if in_features.is_multiple_of(8) && one_row.supported(gpu) => one_row,
            r if r <= MATVEC_ROWS => LinearF16Kernel::Matvec,
            _ => Self::training(gpu),
        }
    }

    /// The adapter's kernel for many rows and for every backward: the subgroup kernel where
    /// the f32 matmul takes its subgroup kernel (a CPU driver with subgroups of 8), else simple.
    pub fn training(gpu: &Gpu) -> LinearF16Kernel {
        if MatmulKernel::for_gpu(gpu) == MatmulKernel::Subgroup {
            LinearF16Kernel::Subgroup
        } else {
            LinearF16Kernel::Simple
        }
    }

    /// Whether this adapter can run the kernel (the subgroup kernel hard-codes 8 lanes).
    pub fn supported(self, gpu: &Gpu) -> bool {
        match self {
            LinearF16Kernel::Subgroup | LinearF16Kernel::MatvecSubgroup => {
                MatmulKernel::Subgroup.supported(gpu)
            }
            _ => true,
        }
    }

    /// The variants this adapter can run.
    pub fn available(gpu: &Gpu) -> Vec<LinearF16Kernel> {
        Self::ALL.into_iter().filter(|k| k.supported(gpu)).collect()
    }

    /// The kernel that computes dx when this one computed y (the matvec has no backward).
    pub fn backward(self, gpu: &Gpu) -> LinearF16Kernel {
        match self {
            LinearF16Kernel::Matvec | LinearF16Kernel::MatvecSubgroup => Self::training(gpu),
            other => other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LinearF16Kernel::Simple => "simple",
            LinearF16Kernel::Matvec => "matvec",
            LinearF16Kernel::MatvecSubgroup => "matvec_subgroup",
            LinearF16Kernel::Subgroup => "subgroup",
        }
    }
}

/// Records one product: `a` (.., k) → c `c_shape` (.., n), forward (a = x) or backward (a = dy).
pub fn launch(
    kernel: LinearF16Kernel,
    backward: bool,
    w: &WeightF16,
    a: &Tensor,
    c_shape: &[usize],
) -> Result<Tensor> {
    let op = if backward { "linear_f16_backward" } else { "linear_f16" };
    let gpu = a.gpu();
    let c = output(gpu, c_shape, op)?;
    let rows = a.numel() / a.last_dim().max(1);
    let [out, inp] = w.shape;
    if c.numel() == 0 || out * inp == 0 {
        return Ok(c);
    }
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
    // Row tiles of 128 folded over y and z like grid_1d folds (tests lower the fold point).
    let tiles = rows.div_ceil(128);
    let tiled = || {
        let g = grid_1d(tiles, 1);
        [cols.div_ceil(64) as u32, g[0], g[1]]
    };
    let (k, groups, tiles_m): (&'static Kernel, [u32; 3], usize) = match (kernel, backward) {
        (LinearF16Kernel::Simple, false) => {
            (&SIMPLE_FORWARD, grid_1d(rows.div_ceil(4) * cols, 256), 0)
        }
        (LinearF16Kernel::Simple, true) => {
            (&SIMPLE_BACKWARD, grid_1d(rows.div_ceil(4) * cols, 256), 0)
        }
        (LinearF16Kernel::Matvec | LinearF16Kernel::MatvecSubgroup, true) => {
            return unsupported("has no backward (use LinearF16Kernel::backward)".into());
        }
        (LinearF16Kernel::Matvec, false) if rows > MATVEC_ROWS => {
            return unsupported(format!("takes at most {MATVEC_ROWS} rows of x, got {rows}"));
        }
        (LinearF16Kernel::MatvecSubgroup, false) if rows != 1 || !inp.is_multiple_of(8) => {
            return unsupported(format!(
                "takes one row of x with in % 8 == 0, got ({rows}, {inp})"
            ));
        }
        (LinearF16Kernel::MatvecSubgroup, false) => (&SUBGROUP_MATVEC, grid_1d(out, 64), 0),
        (LinearF16Kernel::Matvec, false) if inp.is_multiple_of(8) => {
            (&MATVEC8, grid_1d(out, 64), 0)
        }
        (LinearF16Kernel::Matvec, false) => (&MATVEC, grid_1d(out, 64), 0),
        (LinearF16Kernel::Subgroup, false) => (&SUBGROUP_FORWARD, tiled(), tiles),
        (LinearF16Kernel::Subgroup, true) => (&SUBGROUP_BACKWARD, tiled(), tiles),
    };
    let params = Params {
        rows: rows as u32,
        in_features: inp as u32,
        out_features: out as u32,
        row_words: w.row_words as u32,
        tiles_m: tiles_m as u32,
    };
    gpu.dispatch(k, &params, &[w.packed.storage(), a.storage()], &[c.storage()], groups)?;
    Ok(c)
}

impl Tensor {
    /// x (.., in) · Wᵀ → (.., out), W [out, in] f16 and frozen.
    pub fn linear_f16(&self, w: &WeightF16) -> Result<Tensor> {
        let rows = self.numel() / self.last_dim().max(1);
        let kernel = LinearF16Kernel::for_gpu(self.gpu(), rows, w.shape[1]);
        self.linear_f16_with_kernel(w, kernel)
    }

    /// `linear_f16` with a chosen forward kernel (tests and benchmarks compare the variants);
    /// dx comes from `kernel.backward(gpu)`.
    pub fn linear_f16_with_kernel(&self, w: &WeightF16, kernel: LinearF16Kernel) -> Result<Tensor> {
        self.check_f32("linear_f16")?;
        if self.rank() == 0 || self.last_dim() != w.shape[1] {
            return shape_err(
                "linear_f16",
                format!(
                    "x {:?} · Wᵀ with W {:?} [out, in]: x's last dim must be in",
                    self.shape(),
                    w.shape
                ),
            );
        }
        let mut y_shape = self.shape().to_vec();
        *y_shape.last_mut().unwrap() = w.shape[0]; // (.., out)
        let y = launch(kernel, false, w, self, &y_shape)?;
        let w = w.clone();
        let x_shape = self.shape().to_vec();
        let backward = kernel.backward(self.gpu());
        Ok(y.attach("linear_f16", &[self], move |dy| {
            Ok(vec![Some(launch(backward, true, &w, dy, &x_shape)?)]) // (.., in)
        }))
    }

    /// The composed reference: W unpacked to f32, then `matmul_t` (autodiff through matmul).
    pub fn linear_f16_composed(&self, w: &WeightF16) -> Result<Tensor> {
        self.matmul_t(&w.dequantize()?, false, true)
    }
}

/// The host side: packing, and the plain f64 reference.
pub mod cpu {
    use half::f16;

    /// `w` [out, in] rounded to f16 (nearest, ties to even), two per word, rows padded to 8.
    pub fn pack(w: &[f32], shape: [usize; 2]) -> Vec<u32> {
        let [out, inp] = shape;
        let row_words = inp.div_ceil(8) * 4;
        let mut words = vec![0u32; out * row_words];
        for o in 0..out {
            for i in 0..inp {
                let bits = f16::from_f32(w[o * inp + i]).to_bits() as u32;
                words[o * row_words + i / 2] |= bits << (16 * (i % 2)); // element 2j low
            }
        }
        words
    }

    /// The words back to f32 [out, in].
    pub fn unpack(words: &[u32], shape: [usize; 2], row_words: usize) -> Vec<f32> {
        let [out, inp] = shape;
        let half = |o: usize, i: usize| (words[o * row_words + i / 2] >> (16 * (i % 2))) as u16;
        (0..out * inp).map(|k| f16::from_bits(half(k / inp, k % inp)).to_f32()).collect()
    }

    /// W [out, in] as the GPU computes with it: each value rounded to f16, in f64.
    pub fn round(w: &[f32]) -> Vec<f64> {
        w.iter().map(|&v| f16::from_f32(v).to_f64()).collect()
    }
}
