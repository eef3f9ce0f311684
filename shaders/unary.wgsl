// Elementwise unary ops y = f(x), and the backward kernels dx = dout · f'(saved) for those whose
// derivative is not itself one of these ops. `op` picks the function (a uniform branch): one
// entry point per direction, with a scalar kernel (any n) and a vec4 kernel (n % 4 == 0, sizes
// in vec4s; 2-4x faster on lavapipe). The math is written once on vec4s; the scalar kernels use
// lane .x (a CPU driver drops the other lanes' dead code).

struct Params {
    n: u32,      // numel (scalar kernels) or numel / 4 (vec4 kernels)
    alpha: f32,  // scale factor (scale only)
    op: u32,     // forward: 0 neg, 1 scale, 2 exp, 3 log, 4 tanh, 5 relu, 6 gelu
                 // backward: 0 tanh (saved y), 1 relu (saved x), 2 gelu (saved x)
    _pad: u32,
}

const WG: u32 = 256u;
const V: u32 = 4u; // vec4s per invocation of the vec4 kernels

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// NOTE: tanh(u) is written through exp so that large |u| saturates to ±1 instead of producing
// inf/inf = NaN, whatever the platform's tanh does.
fn tanh_stable(u: vec4<f32>) -> vec4<f32> {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

// GPT-2's gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
const GELU_K: f32 = 0.7978845608028654; // √(2/π)

fn forward_f(v: vec4<f32>) -> vec4<f32> {
    switch p.op {
        case 0u: { return -v; }
        case 1u: { return p.alpha * v; }
        case 2u: { return exp(v); }
        case 3u: { return log(v); }
        case 4u: { return tanh_stable(v); }
        case 5u: { return max(v, vec4<f32>(0.0)); }
        case 7u: { return sqrt(v); }
        default: { return 0.5 * v * (1.0 + tanh_stable(GELU_K * (v + 0.044715 * v * v * v))); }
    }
}

// dx = d · f'(s), s the saved tensor.
fn backward_f(s: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    switch p.op {
        // d tanh(x)/dx = 1 − y², with y = tanh(x) saved.
        case 0u: { return d * (1.0 - s * s); }
        // d relu(x)/dx = 1 if x > 0 else 0.
        case 1u: { return select(vec4<f32>(0.0), d, s > vec4<f32>(0.0)); }
        // d gelu(x)/dx = 0.5(1 + t) + 0.5·x·(1 − t²)·√(2/π)(1 + 3·0.044715·x²), t = tanh(√(2/π)(x + 0.044715x³)).
        default: {
            let t = tanh_stable(GELU_K * (s + 0.044715 * s * s * s));
            let dt = (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * s * s);
            return d * (0.5 * (1.0 + t) + 0.5 * s * dt);
        }
    }
}

// ---- forward: x -> y ----
@group(0) @binding(1) var<storage, read> x: array<f32>;           // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;     // (n)
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;        // (n/4)
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;  // (n/4)

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = forward_f(vec4<f32>(x[i])).x;
}

// Vec4s i0 + k·WG of a block of WG·V: the 8 lanes of a lavapipe subgroup touch 8 consecutive vec4s.
@compute @workgroup_size(256)
fn forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i0 = (wid.y * nwg.x + wid.x) * WG * V + lid;
    for (var k = 0u; k < V; k++) {
        let i = i0 + k * WG;
        if (i < p.n) { y4[i] = forward_f(x4[i]); }
    }
}

// ---- backward: (x or y, dout) -> dx ----
@group(0) @binding(1) var<storage, read> saved: array<f32>;          // (n) x, or y for tanh
@group(0) @binding(2) var<storage, read> dout: array<f32>;           // (n)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;       // (n)
@group(0) @binding(1) var<storage, read> saved4: array<vec4<f32>>;   // (n/4)
@group(0) @binding(2) var<storage, read> dout4: array<vec4<f32>>;    // (n/4)
@group(0) @binding(3) var<storage, read_write> dx4: array<vec4<f32>>; // (n/4)

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    dx[i] = backward_f(vec4<f32>(saved[i]), vec4<f32>(dout[i])).x;
}

@compute @workgroup_size(256)
fn backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i0 = (wid.y * nwg.x + wid.x) * WG * V + lid;
    for (var k = 0u; k < V; k++) {
        let i = i0 + k * WG;
        if (i < p.n) { dx4[i] = backward_f(saved4[i], dout4[i]); }
    }
}
