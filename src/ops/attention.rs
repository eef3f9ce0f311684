//! GPT-2's causal multi-head self-attention, fused flash-style, reading c_attn's output directly.
//!
//! Math (per batch b, head h, query t; HS = C / NH; keys j = 0..P are the prefix, P..P+T the tokens):
//!   s_tj = q_t·k_j / √HS + mask[b, j]    for j < P (prefix: every t) and P ≤ j ≤ P + t (causal)
//!   y_t  = Σ_j softmax_j(s_t) v_j        (heads merged back into (B, T, C))
//! Backward (FlashAttention-2, see docs/attention.md): D_t = dy_t·y_t, ds_tj = p_tj (dy_t·v_j − D_t),
//!   dq_t = Σ_j ds_tj k_j / √HS,  dk_j = Σ_t ds_tj q_t / √HS,  dv_j = Σ_t p_tj dy_t.
//! Layout: qkv (B, T, 3C) = [q | k | v] along the last dim, head h at channels h·HS..(h+1)·HS of
//! each part — exactly what c_attn writes, so no head split/merge copies. prefix keys/values (P, C),
//! shared over the batch (prefix tuning). mask (B, P+T), additive, broadcast over heads and queries.
//! Saved for backward (only when qkv or the prefix requires grad): y (B, T, C) and the per-row
//! logsumexp (B, NH, T); p is recomputed from them, so no (T, T) matrix is ever stored.
//! Kernels, two families with the same params and bindings ([`AttentionKernel`], chosen per adapter):
//!   PerRow   (attention.wgsl, attention_backward.wgsl): one invocation per query row (forward, dq)
//!            or per key (dk, dv): portable, for real GPUs and adapters without subgroups of 8;
//!   Subgroup (attention_subgroup.wgsl, attention_subgroup_backward.wgsl (dq), _dkv.wgsl): a
//!            workgroup is one subgroup of 8 lanes = 8 consecutive queries (keys) of one head,
//!            sharing each k/v (q/dy) row by subgroupBroadcast; head loops unrolled to 32, 64 or
//!            128: lavapipe's.
//! Neither uses workgroup memory or atomics: deterministic everywhere.
//! NOTE: online softmax (running max, rescaled sum) — scores are never exponentiated unshifted.
//! NOTE: a padding mask should use a large finite negative (−1e9, or f32::MIN as HF does), not −inf.
//! NOTE: prefix gradients are summed over the batch by one thread per element in a fixed order.

use bytemuck::{Pod, Zeroable};

use super::output;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Gpu, Kernel, grid_1d};
use crate::tensor::Tensor;

#[path = "attention_cpu.rs"]
pub mod cpu;

const SHADER: &str = include_str!("../../shaders/attention.wgsl");
const SHADER_BACKWARD: &str = include_str!("../../shaders/attention_backward.wgsl");
const SHADER_SUBGROUP: &str = include_str!("../../shaders/attention_subgroup.wgsl");
const SHADER_SUBGROUP_BACKWARD: &str =
    include_str!("../../shaders/attention_subgroup_backward.wgsl");
const SHADER_SUBGROUP_DKV: &str = include_str!("../../shaders/attention_subgroup_dkv.wgsl");
/// Queries (or keys) per workgroup of the subgroup kernels (`L` in attention_subgroup*.wgsl).
const LANES: usize = 8;

/// Largest head size the kernels hold in registers (`MAX_HS` in the shaders).
pub const MAX_HEAD_SIZE: usize = 128;
/// Workgroup size of the per-row kernels (`WG` in attention.wgsl, attention_backward.wgsl).
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Params {
    pub batch: u32,
    pub seq: u32,
    pub n_head: u32,
    pub head_size: u32,
    pub n_prefix: u32,
    pub has_mask: u32,
    pub prefix_grad: u32,
    pub scale: f32,
}

static FORWARD: Kernel =
    Kernel { name: "attention_forward", source: SHADER, entry: "forward", reads: 4, writes: 2 };
static ROW_STATS: Kernel =
    Kernel { name: "attention_row_stats", source: SHADER, entry: "row_stats", reads: 3, writes: 1 };
static BACKWARD_DQ: Kernel = Kernel {
    name: "attention_backward_dq",
    source: SHADER_BACKWARD,
    entry: "backward_dq",
    reads: 6,
    writes: 1,
};
static BACKWARD_DKV: Kernel = Kernel {
    name: "attention_backward_dkv",
    source: SHADER_BACKWARD,
    entry: "backward_dkv",
    reads: 6,
    writes: 2,
};
/// The subgroup kernels come in three head-size bounds, [32, 64, 128] (see `head_bound`).
const fn sub(
    name: &'static str,
    source: &'static str,
    entry: &'static str,
    reads: usize,
    writes: usize,
) -> Kernel {
    Kernel { name, source, entry, reads, writes }
}
static FORWARD_SUBGROUP: [Kernel; 3] = [
    sub("attention_forward_subgroup_32", SHADER_SUBGROUP, "forward_subgroup_32", 4, 2),
    sub("attention_forward_subgroup_64", SHADER_SUBGROUP, "forward_subgroup_64", 4, 2),
    sub("attention_forward_subgroup_128", SHADER_SUBGROUP, "forward_subgroup_128", 4, 2),
];
static BACKWARD_DQ_SUBGROUP: [Kernel; 3] = [
    sub(
        "attention_backward_dq_subgroup_32",
        SHADER_SUBGROUP_BACKWARD,
        "backward_dq_subgroup_32",
        6,
        1,
    ),
    sub(
        "attention_backward_dq_subgroup_64",
        SHADER_SUBGROUP_BACKWARD,
        "backward_dq_subgroup_64",
        6,
        1,
    ),
    sub(
        "attention_backward_dq_subgroup_128",
        SHADER_SUBGROUP_BACKWARD,
        "backward_dq_subgroup_128",
        6,
        1,
    ),
];
static BACKWARD_DKV_SUBGROUP: [Kernel; 3] = [
    sub(
        "attention_backward_dkv_subgroup_32",
        SHADER_SUBGROUP_DKV,
        "backward_dkv_subgroup_32",
        6,
        2,
    ),
    sub(
        "attention_backward_dkv_subgroup_64",
        SHADER_SUBGROUP_DKV,
        "backward_dkv_subgroup_64",
        6,
        2,
    ),
    sub(
        "attention_backward_dkv_subgroup_128",
        SHADER_SUBGROUP_DKV,
        "backward_dkv_subgroup_128",
        6,
        2,
    ),
];
static PREFIX_SUM: Kernel = Kernel {
    name: "attention_prefix_sum",
    source: SHADER,
    entry: "prefix_sum",
    reads: 1,
    writes: 2,
};

/// Which of the subgroup kernels' compile-time head-size bounds (32, 64, 128) fits `hs`: their
/// head loops are unrolled to that bound so the per-lane arrays stay in registers on lavapipe.
fn head_bound(hs: usize) -> usize {
    match hs {
        0..=32 => 0,
        33..=64 => 1,
        _ => 2,
    }
}

/// Learned keys and values every query attends to (prefix tuning), shared across the batch.
#[derive(Clone, Copy)]
pub struct Prefix<'a> {
    pub keys: &'a Tensor,   // (P, C)
    pub values: &'a Tensor, // (P, C)
}

/// Checks shapes and limits; returns the kernel params (prefix_grad = 0).
fn params(
    qkv: &Tensor,
    n_head: usize,
    prefix: Option<&Prefix>,
    mask: Option<&Tensor>,
) -> Result<Params> {
    const OP: &str = "attention";
    qkv.check_f32(OP)?;
    let &[b, t, c3] = qkv.shape() else {
        return shape_err(OP, format!("qkv must be (B, T, 3C), got {:?}", qkv.shape()));
    };
    if n_head == 0 || c3 % (3 * n_head) != 0 || b * t == 0 {
        return shape_err(
            OP,
            format!(
                "qkv {:?}: last dim must be 3C with C a multiple of n_head = {n_head}, B, T > 0",
                qkv.shape()
            ),
        );
    }
    let c = c3 / 3;
    let hs = c / n_head;
    if hs > MAX_HEAD_SIZE {
        return shape_err(
            OP,
            format!(
                "head size HS = C / n_head = {c} / {n_head} = {hs} exceeds {MAX_HEAD_SIZE} (the kernels keep a head in registers)"
            ),
        );
    }
    let mut n_prefix = 0;
    if let Some(pre) = prefix {
        pre.keys.check_f32(OP)?;
        pre.values.check_f32(OP)?;
        let ok = pre.keys.rank() == 2
            && pre.keys.shape()[1] == c
            && pre.values.shape() == pre.keys.shape();
        if !ok || pre.keys.shape()[0] == 0 {
            return shape_err(
                OP,
                format!(
                    "prefix keys {:?} and values {:?} must both be (P, C) with P > 0, C = {c}",
                    pre.keys.shape(),
                    pre.values.shape()
                ),
            );
        }
        n_prefix = pre.keys.shape()[0];
    }
    if let Some(m) = mask {
        m.check_f32(OP)?;
        if m.shape() != [b, n_prefix + t] {
            return shape_err(
                OP,
                format!("mask must be (B, P+T) = [{b}, {}], got {:?}", n_prefix + t, m.shape()),
            );
        }
    }
    let max_bytes = qkv.gpu().limits.max_storage_buffer_binding_size;
    if qkv.storage().bytes > max_bytes {
        return Err(Error::Limit {
            op: OP,
            message: format!(
                "qkv {:?} takes {} bytes, more than max_storage_buffer_binding_size = {max_bytes}",
                qkv.shape(),
                qkv.storage().bytes
            ),
        });
    }
    Ok(Params {
        batch: b as u32,
        seq: t as u32,
        n_head: n_head as u32,
        head_size: hs as u32,
        n_prefix: n_prefix as u32,
        has_mask: mask.is_some() as u32,
        prefix_grad: 0,
        scale: 1.0 / (hs as f32).sqrt(),
    })
}

/// Everything backward needs; `prefix`/`mask` are `None` when absent.
struct Saved {
    qkv: Tensor,
    prefix: Option<(Tensor, Tensor)>,
    mask: Option<Tensor>,
    y: Tensor,   // (B, T, C)
    lse: Tensor, // (B, NH, T)
    params: Params,
    kernel: AttentionKernel,
}

/// Which kernels compute attention. Both are exact (the same sums, f32 rounding order aside)
/// and deterministic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// One invocation per query row (forward, dq) or key (dk, dv), workgroups of 64: portable,
    /// the kernel for real GPUs.
    PerRow,
    /// Workgroups of one subgroup of 8 = 8 consecutive queries (or keys) of one (b, h): each
    /// key/value (query/dy) row is loaded once, one element per lane, and shared by
    /// `subgroupBroadcast`, instead of gathered per lane: lavapipe's kernels (needs subgroups of 8).
    Subgroup,
}

impl AttentionKernel {
    pub const ALL: [AttentionKernel; 2] = [AttentionKernel::PerRow, AttentionKernel::Subgroup];

    /// The fast kernel for this adapter: on a CPU driver, sharing rows through subgroup
    /// broadcasts beats per-lane loads; real GPUs keep one invocation per row.
    pub fn for_gpu(gpu: &Gpu) -> AttentionKernel {
        match gpu.is_cpu() && AttentionKernel::Subgroup.supported(gpu) {
            true => AttentionKernel::Subgroup,
            false => AttentionKernel::PerRow,
        }
    }

    /// Whether this adapter can run the kernels (the subgroup ones hard-code 8 lanes).
    pub fn supported(self, gpu: &Gpu) -> bool {
        match self {
            AttentionKernel::Subgroup => {
                gpu.features.contains(wgpu::Features::SUBGROUP)
                    && gpu.info.subgroup_min_size == 8
                    && gpu.info.subgroup_max_size == 8
            }
            AttentionKernel::PerRow => true,
        }
    }

    /// The variants this adapter can run (tests and benchmarks go through all of them).
    pub fn available(gpu: &Gpu) -> Vec<AttentionKernel> {
        AttentionKernel::ALL.into_iter().filter(|k| k.supported(gpu)).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::PerRow => "per_row",
            AttentionKernel::Subgroup => "subgroup",
        }
    }
}

impl Tensor {
    /// Causal multi-head self-attention on c_attn's output.
    ///
    /// qkv: (B, T, 3C) as GPT-2's c_attn produces it (q | k | v along the last dim, heads contiguous
    /// inside each: head h uses channels h*HS..(h+1)*HS). Returns (B, T, C) with heads merged.
    /// `prefix`: (P, C) keys and values every query also attends to (no causal mask on them).
    /// `mask`: optional additive (B, P+T) mask added to every score of key column j (0 or −1e9).
    pub fn attention(
        &self,
        n_head: usize,
        prefix: Option<Prefix>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.attention_with_kernel(n_head, prefix, mask, AttentionKernel::for_gpu(self.gpu()))
    }

    /// `attention` with a chosen kernel family (tests and benchmarks compare them).
    pub fn attention_with_kernel(
        &self,
        n_head: usize,
        prefix: Option<Prefix>,
        mask: Option<&Tensor>,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        let params = params(self, n_head, prefix.as_ref(), mask)?;
        if !kernel.supported(self.gpu()) {
            let info = &self.gpu().info;
            return Err(Error::Input(format!(
                "attention: the {} kernels need subgroups of exactly 8 invocations; adapter {} has {}..{}",
                kernel.name(),
                info.name,
                info.subgroup_min_size,
                info.subgroup_max_size
            )));
        }
        let (b, t, c) = (params.batch as usize, params.seq as usize, self.shape()[2] / 3);
        let gpu = self.gpu();
        let y = output(gpu, &[b, t, c], "attention")?; // (B, T, C)
        let lse = output(gpu, &[b, n_head, t], "attention")?; // (B, NH, T)
        // Absent inputs are bound to qkv itself (read-only twice is allowed; the kernel never reads them).
        let pk = prefix.map_or(self, |p| p.keys);
        let pv = prefix.map_or(self, |p| p.values);
        let m = mask.unwrap_or(self);
        let reads = [self.storage(), pk.storage(), pv.storage(), m.storage()];
        match kernel {
            AttentionKernel::PerRow => gpu.dispatch(
                &FORWARD,
                &params,
                &reads,
                &[y.storage(), lse.storage()],
                grid_1d(b * n_head * t, WG),
            )?,
            AttentionKernel::Subgroup => {
                let groups = b * n_head * t.div_ceil(LANES); // (b, h, block of 8 queries)
                gpu.dispatch(
                    &FORWARD_SUBGROUP[head_bound(params.head_size as usize)],
                    &params,
                    &reads,
                    &[y.storage(), lse.storage()],
                    grid_1d(groups, 1),
                )?
            }
        }

        let mut inputs = vec![self];
        if let Some(p) = &prefix {
            inputs.extend([p.keys, p.values]);
        }
        if let Some(m) = mask {
            inputs.push(m);
        }
        let needs_grad = self.requires_grad()
            || prefix.is_some_and(|p| p.keys.requires_grad() || p.values.requires_grad());
        let saved = needs_grad.then(|| Saved {
            qkv: self.clone(),
            prefix: prefix.map(|p| (p.keys.clone(), p.values.clone())),
            mask: mask.cloned(),
            y: y.clone(),
            lse,
            params,
            kernel,
        });
        let n_inputs = inputs.len();
        Ok(y.attach("attention", &inputs, move |dy| {
            let saved = saved.expect("attention: backward without saved activations");
            let (dqkv, dprefix) = attention_backward(&saved, dy)?;
            let mut grads = vec![Some(dqkv)];
            if let Some((dk, dv)) = dprefix {
                grads.extend([Some(dk), Some(dv)]);
            } else if saved.prefix.is_some() {
                grads.extend([None, None]);
            }
            grads.resize(n_inputs, None); // the mask gets no gradient
            Ok(grads)
        }))
    }
}

/// dqkv (B, T, 3C), and (d keys, d values) (P, C) when the prefix requires grad.
fn attention_backward(s: &Saved, dy: &Tensor) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let gpu = s.qkv.gpu();
    let mut params = s.params;
    let (b, t, nh) = (params.batch as usize, params.seq as usize, params.n_head as usize);
    let (n_prefix, c) = (params.n_prefix as usize, s.qkv.shape()[2] / 3);
    let prefix_grad =
        s.prefix.as_ref().is_some_and(|(k, v)| k.requires_grad() || v.requires_grad());
    params.prefix_grad = prefix_grad as u32;
    let rows = b * nh * t;

    let stats = output(gpu, &[b, nh, t, 2], "attention_backward")?; // (B, NH, T, 2): (lse, D)
    gpu.dispatch(
        &ROW_STATS,
        &params,
        &[s.y.storage(), dy.storage(), s.lse.storage()],
        &[stats.storage()],
        grid_1d(rows, WG),
    )?;

    // dqkv is always produced: a frozen qkv (prefix tuning's first layer) just drops it.
    let dqkv = output(gpu, s.qkv.shape(), "attention_backward")?; // (B, T, 3C)
    let dprefix = match prefix_grad {
        true => output(gpu, &[b, 2, n_prefix, c], "attention_backward")?, // (B, 2, P, C)
        false => output(gpu, &[1], "attention_backward")?,                // unused binding
    };
    let (pk, pv) = s.prefix.as_ref().map_or((&s.qkv, &s.qkv), |(k, v)| (k, v));
    let m = s.mask.as_ref().unwrap_or(&s.qkv);
    let reads =
        [s.qkv.storage(), pk.storage(), pv.storage(), m.storage(), dy.storage(), stats.storage()];
    let writes = [dqkv.storage(), dprefix.storage()];
    let keys = n_prefix + t;
    match s.kernel {
        AttentionKernel::PerRow => {
            gpu.dispatch(&BACKWARD_DQ, &params, &reads, &writes[..1], grid_1d(rows, WG))?;
            gpu.dispatch(&BACKWARD_DKV, &params, &reads, &writes, grid_1d(b * nh * keys, WG))?;
        }
        AttentionKernel::Subgroup => {
            let bound = head_bound(params.head_size as usize);
            // One workgroup per (b, h, tile of 8 queries) and per (b, h, tile of 8 keys).
            gpu.dispatch(
                &BACKWARD_DQ_SUBGROUP[bound],
                &params,
                &reads,
                &writes[..1],
                grid_1d(b * nh * t.div_ceil(LANES), 1),
            )?;
            gpu.dispatch(
                &BACKWARD_DKV_SUBGROUP[bound],
                &params,
                &reads,
                &writes,
                grid_1d(b * nh * keys.div_ceil(LANES), 1),
            )?;
        }
    }
    if !prefix_grad {
        return Ok((dqkv, None));
    }
    let d_keys = output(gpu, &[n_prefix, c], "attention_backward")?; // (P, C)
    let d_values = output(gpu, &[n_prefix, c], "attention_backward")?; // (P, C)
    gpu.dispatch(
        &PREFIX_SUM,
        &params,
        &[dprefix.storage()],
        &[d_keys.storage(), d_values.storage()],
        grid_1d(n_prefix * c, WG),
    )?;
    Ok((dqkv, Some((d_keys, d_values))))
}
