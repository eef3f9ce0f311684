//! Matrix products: `matmul`, `matmul_t` (operands read transposed) and `linear` (+ fused bias).
//!
//! Math, with op(X) = X or Xᵀ and dout = dL/dC:
//!   C = op(A)·op(B) (+ bias)        op(A): [.., M, K]   op(B): [.., K, N]   C: [.., M, N]
//!   d op(A) = dout·op(B)ᵀ           d op(B) = op(A)ᵀ·dout          dbias = Σ_rows dout
//! and dA, dB are those or their transposes, each again one product with transpose flags (read
//! in place but for the NOTE below; see `grad_a`, `grad_b`). A broadcast operand ([K, N] against
//! a batched [.., M, K]) gets its gradient summed over the batch: for b that is one product over the
//! flattened rows, op(A) as [(batch·M), K] (a reshape, no loop).
//! Saved for backward: a only if b needs a gradient, b only if a does.
//! Layout: row-major, batch dims leading; one side may be a plain 2-D matrix (broadcast, batch
//! stride 0), otherwise both carry identical batch dims. `linear` is x [.., in] · weight
//! [in, out] + bias [out]: GPT-2's Conv1D layout.
//! Kernels, one per regime, chosen per adapter by [`MatmulKernel::for_gpu`] (all four take the
//! same params and bindings, so any can be forced for tests and benchmarks):
//!   shaders/matmul.wgsl           naive (one output per invocation, the reference) and
//!                                 register-tiled (4×4 per invocation), no workgroup memory;
//!   shaders/matmul_subgroup.wgsl  2×64 per invocation, B shared through subgroup broadcasts:
//!                                 lavapipe's kernel (per-lane loads are its bottleneck);
//!   shaders/matmul_tiled.wgsl     64×64 workgroup tiles in workgroup memory: real GPUs;
//!   shaders/matmul_matvec.wgsl    one column × up to 8 rows per invocation: products of few
//!                                 rows (decoding one token), where the others' 16-to-128-row
//!                                 tiles throw most of their work away.
//! The public products use [`MatmulKernel::Auto`]: the matvec kernel for M ≤ 8, the adapter's
//! kernel otherwise, resolved per product (a backward's products choose by their own M).
//! NOTE: operands are read through strides, except one case: the subgroup kernel (lavapipe) reads
//! a B stored transposed (x·Wᵀ, and every dx = dout·Wᵀ of a backward) as per-lane gathers, 1.8×
//! slower than B (K, N), so for ≥ `TRANSPOSE_B_MIN_ROWS` rows it multiplies a transposed copy.
//! NOTE: f32 accumulation in a fixed order along K: error grows like √K·ε·Σ|a||b|; the tests
//! size their tolerances to that.

use std::ops::Range;
use std::rc::Rc;

use bytemuck::{Pod, Zeroable};

use crate::error::{Result, shape_err};
use crate::gpu::{Gpu, Kernel, Window};
use crate::ops::output;
use crate::tensor::Tensor;

const SHADER: &str = include_str!("../../shaders/matmul.wgsl");
const SHADER_TILED: &str = include_str!("../../shaders/matmul_tiled.wgsl");

/// Field names match `Params` in shaders/matmul*.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Debug)]
pub struct Params {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch: u32,
    pub a_batch: u32,
    pub b_batch: u32,
    pub a_row: u32,
    pub a_col: u32,
    pub b_row: u32,
    pub b_col: u32,
    pub has_bias: u32,
    pub tiles_m: u32,
}

static NAIVE: Kernel =
    Kernel { name: "matmul_naive", source: SHADER, entry: "matmul_naive", reads: 3, writes: 1 };
static REGISTER_TILED: Kernel = Kernel {
    name: "matmul_register_tiled",
    source: SHADER,
    entry: "matmul_register_tiled",
    reads: 3,
    writes: 1,
};
static TRANSPOSE: Kernel = Kernel {
    name: "matmul_transpose",
    source: SHADER,
    entry: "matmul_transpose",
    reads: 1,
    writes: 1,
};
static WORKGROUP_TILED: Kernel = Kernel {
    name: "matmul_workgroup_tiled",
    source: SHADER_TILED,
    entry: "matmul_workgroup_tiled",
    reads: 3,
    writes: 1,
};
/// The file says `enable subgroups;` (the WGSL spec and tint require it); the dispatch helper
/// hands naga the source without it (`gpu::source_for_naga`).
static MATVEC: Kernel = Kernel {
    name: "matmul_matvec",
    source: include_str!("../../shaders/matmul_matvec.wgsl"),
    entry: "matmul_matvec",
    reads: 3,
    writes: 1,
};
static MATVEC_NN4: Kernel = Kernel {
    name: "matmul_matvec_nn4",
    source: include_str!("../../shaders/matmul_matvec.wgsl"),
    entry: "matmul_matvec_nn4",
    reads: 3,
    writes: 1,
};
static MATVEC_NT4: Kernel = Kernel {
    name: "matmul_matvec_nt4",
    source: include_str!("../../shaders/matmul_matvec.wgsl"),
    entry: "matmul_matvec_nt4",
    reads: 3,
    writes: 1,
};
/// Rows up to which [`MatmulKernel::Auto`] takes the matvec kernel (its rows per invocation).
pub const MATVEC_ROWS: usize = 8;
/// Columns from which [`MatmulKernel::Auto`] takes the matvec kernel: 8 workgroups of 64.
pub const MATVEC_MIN_COLUMNS: usize = 512;
static SUBGROUP: Kernel = Kernel {
    name: "matmul_subgroup",
    source: include_str!("../../shaders/matmul_subgroup.wgsl"),
    entry: "matmul_subgroup",
    reads: 3,
    writes: 1,
};

/// Which kernel computes a product. All give the same results up to f32 rounding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// One output per invocation: the reference.
    Naive,
    /// 4×4 register tiles per invocation, no workgroup memory: the CPU-driver kernel that needs
    /// no optional feature.
    RegisterTiled,
    /// 2×64 register tiles per invocation, operands shared across a subgroup of 8 by
    /// `subgroupBroadcast`, no workgroup memory: fastest on lavapipe (needs subgroups of 8).
    Subgroup,
    /// Workgroup-memory tiles + register tiles: fastest on real GPUs.
    WorkgroupTiled,
    /// One column × up to 8 rows per invocation: products of few rows (any M works).
    Matvec,
    /// `Matvec` for M ≤ [`MATVEC_ROWS`], [`for_gpu`](Self::for_gpu) otherwise, per product.
    Auto,
}

impl MatmulKernel {
    pub const ALL: [MatmulKernel; 5] = [
        MatmulKernel::Naive,
        MatmulKernel::RegisterTiled,
        MatmulKernel::Subgroup,
        MatmulKernel::WorkgroupTiled,
        MatmulKernel::Matvec,
    ];

    /// The kernel that computes a product of `m` rows and `n` columns: `Auto` resolved, any other
    /// as it is. The matvec kernel runs 64 columns a workgroup, so it takes a few-row product
    /// only when it has at least [`MATVEC_MIN_COLUMNS`] columns to spread over the cores (a decode
    /// step's projections and head). Measured on lavapipe (`glassgrad bench finetune-step`, quiet
    /// 2 cores): letting it take the narrow few-row products of training (LoRA's r = 8 gradient,
    /// 64–128 columns) made the L4 C128 step 1.8× slower, full and LoRA alike.
    pub fn resolve(self, gpu: &Gpu, m: usize, n: usize) -> MatmulKernel {
        match self {
            MatmulKernel::Auto if m <= MATVEC_ROWS && n >= MATVEC_MIN_COLUMNS => {
                MatmulKernel::Matvec
            }
            MatmulKernel::Auto => MatmulKernel::for_gpu(gpu),
            kernel => kernel,
        }
    }

    /// The fast kernel for this adapter: workgroup memory is slow on a CPU driver, and there
    /// sharing through subgroup broadcasts beats per-lane loads.
    pub fn for_gpu(gpu: &Gpu) -> MatmulKernel {
        match (gpu.is_cpu(), MatmulKernel::Subgroup.supported(gpu)) {
            (true, true) => MatmulKernel::Subgroup,
            (true, false) => MatmulKernel::RegisterTiled,
            (false, _) => MatmulKernel::WorkgroupTiled,
        }
    }

    /// Whether this adapter can run the kernel (the subgroup kernel hard-codes 8 lanes).
    pub fn supported(self, gpu: &Gpu) -> bool {
        match self {
            MatmulKernel::Subgroup => {
                gpu.features.contains(wgpu::Features::SUBGROUP)
                    && gpu.info.subgroup_min_size == 8
                    && gpu.info.subgroup_max_size == 8
            }
            _ => true,
        }
    }

    /// The variants this adapter can run (tests and benchmarks go through all of them).
    pub fn available(gpu: &Gpu) -> Vec<MatmulKernel> {
        MatmulKernel::ALL.into_iter().filter(|k| k.supported(gpu)).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Naive => "naive",
            MatmulKernel::RegisterTiled => "register_tiled",
            MatmulKernel::Subgroup => "subgroup",
            MatmulKernel::WorkgroupTiled => "workgroup_tiled",
            MatmulKernel::Matvec => "matvec",
            MatmulKernel::Auto => "auto",
        }
    }

    /// The kernel, and the C tile one workgroup covers: (rows, columns).
    fn kernel(self) -> (&'static Kernel, usize, usize) {
        match self {
            MatmulKernel::Naive => (&NAIVE, 16, 16),
            MatmulKernel::RegisterTiled => (&REGISTER_TILED, 4, 64 * 4),
            MatmulKernel::Subgroup => (&SUBGROUP, 128, 64),
            MatmulKernel::WorkgroupTiled => (&WORKGROUP_TILED, 64, 64),
            MatmulKernel::Matvec => (&MATVEC, MATVEC_ROWS, 64),
            MatmulKernel::Auto => unreachable!("launch resolves Auto before asking for its kernel"),
        }
    }
}

/// Shapes of one product, resolved from the operands' shapes and transpose flags.
struct Dims {
    batch_dims: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    a_broadcast: bool,
    b_broadcast: bool,
}

fn dims(op: &'static str, a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<Dims> {
    let err = || {
        shape_err(
            op,
            format!("cannot multiply {a:?} (transposed: {ta}) by {b:?} (transposed: {tb})"),
        )
    };
    if a.len() < 2 || b.len() < 2 {
        return err();
    }
    let (ra, rb) = (a.len() - 2, b.len() - 2);
    let (m, k) = if ta { (a[ra + 1], a[ra]) } else { (a[ra], a[ra + 1]) };
    let (kb, n) = if tb { (b[rb + 1], b[rb]) } else { (b[rb], b[rb + 1]) };
    if k != kb {
        return err();
    }
    // One side is a plain matrix (broadcast), or both carry the same batch dims.
    let batch_dims = match (ra, rb) {
        (_, 0) => a[..ra].to_vec(),
        (0, _) => b[..rb].to_vec(),
        _ if a[..ra] == b[..rb] => a[..ra].to_vec(),
        _ => return err(),
    };
    let batched = !batch_dims.is_empty();
    Ok(Dims {
        batch_dims,
        m,
        k,
        n,
        a_broadcast: batched && ra == 0,
        b_broadcast: batched && rb == 0,
    })
}

/// Records one product into a fresh tensor (no autodiff).
fn launch(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    ta: bool,
    tb: bool,
    kernel: MatmulKernel,
) -> Result<Tensor> {
    a.check_f32(op)?;
    b.check_f32(op)?;
    launch_operands(op, a.gpu(), Operand::of(a), Operand::of(b), bias, ta, tb, kernel)
}

/// An operand as the kernels read it: a whole tensor's storage, or a window of whole rows of a
/// 2-D one (the tied LM head's vocabulary windows of wte, bound in place: see `matmul_rows`).
#[derive(Clone, Copy)]
struct Operand<'a> {
    window: Window<'a>,
    shape: &'a [usize],
}

impl<'a> Operand<'a> {
    fn of(t: &'a Tensor) -> Operand<'a> {
        Operand { window: t.storage().whole(), shape: t.shape() }
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_operands(
    op: &'static str,
    gpu: &Rc<Gpu>,
    a: Operand,
    b: Operand,
    bias: Option<&Tensor>,
    ta: bool,
    tb: bool,
    kernel: MatmulKernel,
) -> Result<Tensor> {
    let d = dims(op, a.shape, b.shape, ta, tb)?;
    let kernel = kernel.resolve(gpu, d.m, d.n);
    if let Some(bias) = bias {
        bias.check_f32(op)?;
        if bias.shape() != [d.n] {
            return shape_err(
                op,
                format!("bias {:?} does not match the {} output columns", bias.shape(), d.n),
            );
        }
    }
    let batch: usize = d.batch_dims.iter().product();
    let mut shape = d.batch_dims.clone();
    shape.extend([d.m, d.n]);
    let out = output(gpu, &shape, op)?; // (batch.., M, N)
    if out.numel() == 0 {
        return Ok(out);
    }
    if !kernel.supported(gpu) {
        return Err(crate::Error::Input(format!(
            "{op}: the {} matmul kernel needs subgroups of exactly 8 invocations; adapter {} has {}..{}",
            kernel.name(),
            gpu.info.name,
            gpu.info.subgroup_min_size,
            gpu.info.subgroup_max_size
        )));
    }
    let b_matrices: usize = b.shape[..b.shape.len() - 2].iter().product();
    let transposable = d.k.div_ceil(4) <= 65_535 && b_matrices <= 65_535; // its dispatch's y, z
    if kernel == MatmulKernel::Subgroup && tb && !ta && d.m >= TRANSPOSE_B_MIN_ROWS && transposable
    {
        // The subgroup kernel's lanes read 8 columns of op(B) at one k: consecutive in B (K, N),
        // a per-lane gather 4·K bytes apart in B stored (N, K) (1.8× slower at 1024³). Bᵀ
        // copied once (K·N moves) is cheap beside the 2·M·K·N product of ≥ 64 rows.
        let bt = transpose_operand(gpu, b)?; // (batch_b.., K, N)
        return launch_operands(op, gpu, a, Operand::of(&bt), bias, ta, false, kernel);
    }
    let (mut kern, tile_m, mut tile_n) = kernel.kernel();
    if kernel == MatmulKernel::Matvec {
        // B read 4 values per load where its layout allows (see shaders/matmul_matvec.wgsl).
        if !tb && d.n % 4 == 0 {
            (kern, tile_n) = (&MATVEC_NN4, 4 * 64);
        } else if tb && !ta && d.k % 4 == 0 {
            kern = &MATVEC_NT4;
        }
    }
    let tiles_m = d.m.div_ceil(tile_m);
    let params = Params {
        m: d.m as u32,
        n: d.n as u32,
        k: d.k as u32,
        batch: batch as u32,
        a_batch: if d.a_broadcast { 0 } else { (d.m * d.k) as u32 },
        b_batch: if d.b_broadcast { 0 } else { (d.k * d.n) as u32 },
        // Stored A is (M, K), or (K, M) when transposed; the same for B.
        a_row: if ta { 1 } else { d.k as u32 },
        a_col: if ta { d.m as u32 } else { 1 },
        b_row: if tb { 1 } else { d.n as u32 },
        b_col: if tb { d.k as u32 } else { 1 },
        has_bias: bias.is_some() as u32,
        tiles_m: tiles_m as u32,
    };
    // (batch, row tile) folded over y and z so neither exceeds 65,535 workgroups.
    let rows = batch * tiles_m;
    let groups =
        [d.n.div_ceil(tile_n) as u32, rows.min(65_535) as u32, rows.div_ceil(65_535) as u32];
    let bias = bias.map_or(b.window, |t| t.storage().whole()); // bound but unread without bias
    gpu.dispatch_windows(
        kern,
        &params,
        &[a.window, b.window, bias],
        &[out.storage().whole()],
        groups,
    )?;
    Ok(out)
}

/// Products of at least this many rows on the subgroup kernel read a B stored transposed (N, K)
/// through a copy laid out (K, N) (`transpose_operand`); fewer rows read it in place.
pub const TRANSPOSE_B_MIN_ROWS: usize = 64;

/// x stored [batch?, R, S] copied to [batch?, S, R] (shaders/matmul.wgsl, `matmul_transpose`).
fn transpose_operand(gpu: &Rc<Gpu>, x: Operand) -> Result<Tensor> {
    let r = x.shape.len();
    let (rows, cols) = (x.shape[r - 2], x.shape[r - 1]);
    let mut shape = x.shape.to_vec();
    shape.swap(r - 2, r - 1);
    let out = output(gpu, &shape, "matmul_transpose")?; // (batch?, S, R)
    let batch = out.numel() / (rows * cols).max(1);
    if out.numel() == 0 {
        return Ok(out);
    }
    let params = Params {
        n: rows as u32,
        k: cols as u32,
        batch: batch as u32,
        b_batch: (rows * cols) as u32,
        ..Params::zeroed()
    };
    // x over R in workgroups of 64, y over S in steps of 4, z over the batch.
    let groups = [rows.div_ceil(64) as u32, cols.div_ceil(4) as u32, batch as u32];
    gpu.dispatch_windows(&TRANSPOSE, &params, &[x.window], &[out.storage().whole()], groups)?;
    Ok(out)
}

/// xᵀ of a 2-D x [R, S] as a fresh [S, R] (no autodiff; the fused head's x blocks).
pub(crate) fn transpose(x: &Tensor) -> Result<Tensor> {
    x.check_f32("matmul_transpose")?;
    if x.rank() != 2 {
        return shape_err("matmul_transpose", format!("expects a matrix, got {:?}", x.shape()));
    }
    transpose_operand(x.gpu(), Operand::of(x))
}

/// A window of whole rows of a 2-D W [R, cols] as an operand bound in place, no copy (the tied
/// LM head's vocabulary windows of wte, which is larger than one binding). The window must start
/// at an aligned offset (`Gpu::row_windows`).
fn rows_of<'a>(w: &'a Tensor, rows: &Range<usize>, shape: &'a [usize; 2]) -> Result<Operand<'a>> {
    let op = "matmul_rows";
    w.check_f32(op)?;
    if w.rank() != 2 || rows.end > w.shape()[0] {
        return shape_err(
            op,
            format!("rows {rows:?} of {:?} is not a window of a matrix", w.shape()),
        );
    }
    let cols = w.shape()[1];
    let align = w.gpu().limits.min_storage_buffer_offset_alignment as usize;
    if !(rows.start * cols * 4).is_multiple_of(align) {
        return shape_err(
            op,
            format!(
                "rows {rows:?} of {:?} start {} bytes in, not at a {align}-byte aligned offset",
                w.shape(),
                rows.start * cols * 4
            ),
        );
    }
    Ok(Operand { window: w.storage().rows(rows, cols * 4), shape })
}

/// op(A)·op(W[rows]): W's rows bound in place (`rows_of`). No autodiff: the caller owns
/// backward. Kernel `Auto`, as for the public products.
pub(crate) fn matmul_rows(
    a: &Tensor,
    w: &Tensor,
    rows: &Range<usize>,
    ta: bool,
    tb: bool,
) -> Result<Tensor> {
    a.check_f32("matmul_rows")?;
    let shape = [rows.len(), w.shape().get(1).copied().unwrap_or(0)];
    let b = rows_of(w, rows, &shape)?;
    launch_operands("matmul_rows", a.gpu(), Operand::of(a), b, None, ta, tb, MatmulKernel::Auto)
}

/// op(W[rows])·op(B), W's rows bound in place as A (see `matmul_rows`).
pub(crate) fn rows_matmul(
    w: &Tensor,
    rows: &Range<usize>,
    b: &Tensor,
    ta: bool,
    tb: bool,
) -> Result<Tensor> {
    b.check_f32("matmul_rows")?;
    let shape = [rows.len(), w.shape().get(1).copied().unwrap_or(0)];
    let a = rows_of(w, rows, &shape)?;
    launch_operands("matmul_rows", b.gpu(), a, Operand::of(b), None, ta, tb, MatmulKernel::Auto)
}

/// Sums a [batch.., R, C] tensor over its batch dims: → [R, C].
fn sum_batch(x: &Tensor) -> Result<Tensor> {
    let r = x.rank();
    let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
    x.reshape(&[x.numel() / (rows * cols), rows * cols])?.sum_rows()?.reshape(&[rows, cols])
}

/// What a product's backward needs, fixed at the forward.
#[derive(Clone, Copy)]
struct Layout {
    ta: bool,
    tb: bool,
    a_broadcast: bool,
    b_broadcast: bool,
    kernel: MatmulKernel,
}

/// dA from the saved b: d op(A) = dout·op(B)ᵀ, and dA is that or its transpose op(B)·doutᵀ.
fn grad_a(dout: &Tensor, b: &Tensor, l: Layout) -> Result<Tensor> {
    let op = "matmul_backward";
    let g = if l.ta {
        launch(op, b, dout, None, l.tb, true, l.kernel)?
    } else {
        launch(op, dout, b, None, false, !l.tb, l.kernel)?
    };
    // A broadcast a ([M, K] against a batched b) sums its per-batch gradients.
    if l.a_broadcast { sum_batch(&g) } else { Ok(g) }
}

/// dB from the saved a: d op(B) = op(A)ᵀ·dout, and dB is that or its transpose doutᵀ·op(A).
fn grad_b(dout: &Tensor, a: &Tensor, l: Layout) -> Result<Tensor> {
    let op = "matmul_backward";
    if l.b_broadcast && !l.ta {
        // Σ_i A_iᵀ·dout_i over the batch is one product over the flattened rows.
        let (k, n) = (a.last_dim(), dout.last_dim());
        let rows = dout.numel() / n;
        let a2 = a.reshape(&[rows, k])?; // ((batch·M), K)
        let d2 = dout.reshape(&[rows, n])?; // ((batch·M), N)
        return if l.tb {
            launch(op, &d2, &a2, None, true, false, l.kernel)
        } else {
            launch(op, &a2, &d2, None, true, false, l.kernel)
        };
    }
    let g = if l.tb {
        launch(op, dout, a, None, true, l.ta, l.kernel)?
    } else {
        launch(op, a, dout, None, !l.ta, false, l.kernel)?
    };
    // Stored transposed a ([.., K, M]) cannot be flattened: per-batch products, then their sum.
    if l.b_broadcast { sum_batch(&g) } else { Ok(g) }
}

/// The differentiable product behind `matmul`, `matmul_t` and `linear`.
fn product(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    ta: bool,
    tb: bool,
    kernel: MatmulKernel,
) -> Result<Tensor> {
    let out = launch(op, a, b, bias, ta, tb, kernel)?;
    let d = dims(op, a.shape(), b.shape(), ta, tb)?;
    let l = Layout { ta, tb, a_broadcast: d.a_broadcast, b_broadcast: d.b_broadcast, kernel };
    let saved_b = a.requires_grad().then(|| b.clone()); // for dA
    let saved_a = b.requires_grad().then(|| a.clone()); // for dB
    let backward = move |dout: &Tensor| -> Result<(Option<Tensor>, Option<Tensor>)> {
        let da = saved_b.map(|b| grad_a(dout, &b, l)).transpose()?;
        let db = saved_a.map(|a| grad_b(dout, &a, l)).transpose()?;
        Ok((da, db))
    };
    Ok(match bias {
        None => out.attach(op, &[a, b], move |dout| {
            let (da, db) = backward(dout)?;
            Ok(vec![da, db])
        }),
        Some(bias) => {
            let n = d.n;
            // A frozen bias (LoRA's base layers) gets no gradient: no row sum for it.
            let bias_grad = bias.requires_grad();
            out.attach(op, &[a, b, bias], move |dout| {
                let (da, db) = backward(dout)?;
                let dbias = bias_grad
                    .then(|| dout.reshape(&[dout.numel() / n, n])?.sum_rows())
                    .transpose()?; // (N)
                Ok(vec![da, db, dbias])
            })
        }
    })
}

impl Tensor {
    /// a [.., M, K] × b [K, N] (broadcast over a's batch) or b [.., K, N] (same batch): [.., M, N].
    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        product("matmul", self, b, None, false, false, MatmulKernel::Auto)
    }

    /// op(a)·op(b) where op transposes the last two dims when asked; read in place, never copied.
    pub fn matmul_t(&self, b: &Tensor, transpose_a: bool, transpose_b: bool) -> Result<Tensor> {
        product("matmul_t", self, b, None, transpose_a, transpose_b, MatmulKernel::Auto)
    }

    /// x [.., in] · weight [in, out] (+ bias [out], added in the kernel's epilogue): [.., out].
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_with_kernel(weight, bias, MatmulKernel::Auto)
    }

    /// `matmul_t` with a chosen kernel (tests and benchmarks compare the variants).
    pub fn matmul_with_kernel(
        &self,
        b: &Tensor,
        transpose_a: bool,
        transpose_b: bool,
        kernel: MatmulKernel,
    ) -> Result<Tensor> {
        let op = if transpose_a || transpose_b { "matmul_t" } else { "matmul" };
        product(op, self, b, None, transpose_a, transpose_b, kernel)
    }

    /// `linear` with a chosen kernel.
    pub fn linear_with_kernel(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        kernel: MatmulKernel,
    ) -> Result<Tensor> {
        if self.rank() < 1 || weight.rank() != 2 {
            return shape_err(
                "linear",
                format!(
                    "expects x [.., in] and weight [in, out], got {:?} and {:?}",
                    self.shape(),
                    weight.shape()
                ),
            );
        }
        let cols = self.last_dim();
        let x2 = self.reshape(&[self.numel() / cols.max(1), cols])?; // (rows, in)
        let y = product("linear", &x2, weight, bias, false, false, kernel)?; // (rows, out)
        let mut shape = self.shape().to_vec();
        *shape.last_mut().unwrap() = weight.shape()[1];
        y.reshape(&shape)
    }
}

/// f64 references with clear loops: forward and backward of op(A)·op(B) under the same batching.
#[path = "matmul_cpu.rs"]
pub mod cpu;
