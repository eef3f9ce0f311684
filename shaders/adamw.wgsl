// AdamW (torch.optim.AdamW's formula), in place, for every element of every parameter:
//   m = β1·m + (1 − β1)·g
//   v = β2·v + (1 − β2)·g²
//   p = p − lr·( m̂ / (√v̂ + eps) + weight_decay·p ),   m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)
// The bias corrections 1 − βᵗ are computed on the host (in f64) and passed in.
//
// Two forms of the same arithmetic:
//   adamw_multi_tensor[_clipped]: what src/optim.rs runs. Every trainable parameter of a bucket
//     lies back to back in flat arenas (gradient, parameter, m, v); a slot table gives each its
//     range, its lr and weight decay, and whether it has a gradient this step. One dispatch per
//     bucket (≤ max_storage_buffer_binding_size bytes), whatever the number of parameters.
//   adamw_step[_clipped]: one parameter per dispatch, the form it replaced; kept as the reference
//     the multi-tensor kernels are compared with bit for bit (tests/gpu/optim_multi_tensor.rs).
//
// NOTE: the decay is decoupled (applied to p, not added to g) and uses p before this step's
//       update, exactly as torch's p·(1 − lr·wd) followed by the Adam step.
// NOTE: eps is added to √v̂, not to v̂.
// NOTE: the four kernels write the update as one expression, in the same order, so that they give
//       the same bits.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,  // 1 − β1ᵗ
    bias_correction2: f32,  // 1 − β2ᵗ
    max_norm: f32,          // adamw_step_clipped only
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read_write> param: array<f32>;   // (n)
@group(0) @binding(3) var<storage, read_write> m: array<f32>;       // (n) first moment
@group(0) @binding(4) var<storage, read_write> v: array<f32>;       // (n) second moment

@compute @workgroup_size(256)
fn adamw_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    let g = grad[i];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let w = param[i];
    param[i] = w - p.lr * ((mi / p.bias_correction1) / (sqrt(vi / p.bias_correction2) + p.eps) + p.weight_decay * w);
}

// Global-norm clipping fused into the step: g·min(1, max_norm / (‖g‖ + 1e-6)) with ‖g‖ read from
// the norm buffer — the same product grad_norm.wgsl's clip_scale writes, without writing it.
@group(0) @binding(2) var<storage, read> norm: array<f32>;             // (1)
@group(0) @binding(3) var<storage, read_write> param_c: array<f32>;    // (n)
@group(0) @binding(4) var<storage, read_write> m_c: array<f32>;        // (n)
@group(0) @binding(5) var<storage, read_write> v_c: array<f32>;        // (n)

@compute @workgroup_size(256)
fn adamw_step_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    let g = grad[i] * min(1.0, p.max_norm / (norm[0] + 1e-6));
    let mi = p.beta1 * m_c[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v_c[i] + (1.0 - p.beta2) * g * g;
    m_c[i] = mi;
    v_c[i] = vi;
    let w = param_c[i];
    param_c[i] = w - p.lr * ((mi / p.bias_correction1) / (sqrt(vi / p.bias_correction2) + p.eps) + p.weight_decay * w);
}

// ---- multi-tensor: one dispatch per bucket ----

struct MultiParams {
    n: u32,                 // elements in the bucket's arenas
    slots: u32,             // parameters in the bucket
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias_correction1: f32,  // 1 − β1ᵗ
    bias_correction2: f32,  // 1 − β2ᵗ
    max_norm: f32,          // adamw_multi_tensor_clipped only
}

// One parameter's place in the arenas (shared with grad_norm.wgsl's sumsq_slots).
struct Slot {
    start: u32,         // first element in the arenas
    end: u32,           // one past the last
    chunk_start: u32,   // its first partial sum of the norm (grad_norm.wgsl)
    chunk_end: u32,     // one past its last (= chunk_start when it has no gradient)
    lr: f32,
    weight_decay: f32,
    has_grad: u32,        // 1 when it has a gradient this step; 0: skipped (torch skips it too)
    _pad: u32,
}

@group(0) @binding(0) var<uniform> q: MultiParams;
@group(0) @binding(1) var<storage, read> slots: array<Slot>;        // (slots)
@group(0) @binding(2) var<storage, read> grad_arena: array<f32>;    // (n)
// adamw_multi_tensor:
@group(0) @binding(3) var<storage, read_write> param_arena: array<f32>;  // (n)
@group(0) @binding(4) var<storage, read_write> m_arena: array<f32>;      // (n)
@group(0) @binding(5) var<storage, read_write> v_arena: array<f32>;      // (n)
// adamw_multi_tensor_clipped:
@group(0) @binding(3) var<storage, read> norm_c: array<f32>;                // (1)
@group(0) @binding(4) var<storage, read_write> param_arena_c: array<f32>;  // (n)
@group(0) @binding(5) var<storage, read_write> m_arena_c: array<f32>;      // (n)
@group(0) @binding(6) var<storage, read_write> v_arena_c: array<f32>;      // (n)

// The slot holding element i: the first whose end is past i (binary search; ends increase).
fn slot_of(i: u32) -> u32 {
    var lo = 0u;
    var hi = q.slots;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (slots[mid].end > i) { hi = mid; } else { lo = mid + 1u; }
    }
    return lo;
}

@compute @workgroup_size(256)
fn adamw_multi_tensor(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= q.n) { return; }
    let s = slots[slot_of(i)];
    if (s.has_grad == 0u) { return; }
    let g = grad_arena[i];
    let mi = q.beta1 * m_arena[i] + (1.0 - q.beta1) * g;
    let vi = q.beta2 * v_arena[i] + (1.0 - q.beta2) * g * g;
    m_arena[i] = mi;
    v_arena[i] = vi;
    let w = param_arena[i];
    param_arena[i] = w - s.lr * ((mi / q.bias_correction1) / (sqrt(vi / q.bias_correction2) + q.eps) + s.weight_decay * w);
}

@compute @workgroup_size(256)
fn adamw_multi_tensor_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= q.n) { return; }
    let s = slots[slot_of(i)];
    if (s.has_grad == 0u) { return; }
    let g = grad_arena[i] * min(1.0, q.max_norm / (norm_c[0] + 1e-6));
    let mi = q.beta1 * m_arena_c[i] + (1.0 - q.beta1) * g;
    let vi = q.beta2 * v_arena_c[i] + (1.0 - q.beta2) * g * g;
    m_arena_c[i] = mi;
    v_arena_c[i] = vi;
    let w = param_arena_c[i];
    param_arena_c[i] = w - s.lr * ((mi / q.bias_correction1) / (sqrt(vi / q.bias_correction2) + q.eps) + s.weight_decay * w);
}
