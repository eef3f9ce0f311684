// One AdamW step for one parameter, in place (torch.optim.AdamW's formula):
//   m = β1·m + (1 − β1)·g
//   v = β2·v + (1 − β2)·g²
//   p = p − lr·( m̂ / (√v̂ + eps) + weight_decay·p ),   m̂ = m / (1 − β1ᵗ),  v̂ = v / (1 − β2ᵗ)
// The bias corrections 1 − βᵗ are computed on the host (in f64) and passed in.
//
// NOTE: the decay is decoupled (applied to p, not added to g) and uses p before this step's
//       update, exactly as torch's p·(1 − lr·wd) followed by the Adam step.
// NOTE: eps is added to √v̂, not to v̂.

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
    let m_hat = mi / p.bias_correction1;
    let v_hat = vi / p.bias_correction2;
    let w = param[i];
    param[i] = w - p.lr * (m_hat / (sqrt(v_hat) + p.eps) + p.weight_decay * w);
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
