// Elementwise unary ops y = f(x), and the backward kernels dx = dout · f'(x) for those whose
// derivative is not itself one of these ops. `alpha` is the factor of `scale`.

struct Params {
    n: u32,      // numel
    alpha: f32,  // scale factor (scale only)
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: x -> y ----
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (n)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // (n)

// NOTE: tanh(u) is written through exp so that large |u| saturates to ±1 instead of producing
// inf/inf = NaN, whatever the platform's tanh does.
fn tanh_stable(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

// GPT-2's gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
const GELU_K: f32 = 0.7978845608028654; // √(2/π)
fn gelu_f(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh_stable(GELU_K * (v + 0.044715 * v * v * v)));
}

@compute @workgroup_size(256)
fn neg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = -x[i];
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = p.alpha * x[i];
}

@compute @workgroup_size(256)
fn exp_(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = exp(x[i]);
}

@compute @workgroup_size(256)
fn log_(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = log(x[i]);
}

@compute @workgroup_size(256)
fn tanh_(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = tanh_stable(x[i]);
}

@compute @workgroup_size(256)
fn relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = max(x[i], 0.0);
}

@compute @workgroup_size(256)
fn gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = gelu_f(x[i]);
}

// ---- backward: (x or y, dout) -> dx ----
@group(0) @binding(1) var<storage, read> saved: array<f32>;      // (n) x, or y for tanh
@group(0) @binding(2) var<storage, read> dout: array<f32>;       // (n)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;   // (n)

// d tanh(x)/dx = 1 − y², with y = tanh(x) saved.
@compute @workgroup_size(256)
fn tanh_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let t = saved[i];
    dx[i] = dout[i] * (1.0 - t * t);
}

// d relu(x)/dx = 1 if x > 0 else 0.
@compute @workgroup_size(256)
fn relu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    dx[i] = select(0.0, dout[i], saved[i] > 0.0);
}

// d gelu(x)/dx = 0.5(1 + t) + 0.5·x·(1 − t²)·√(2/π)(1 + 3·0.044715·x²), t = tanh(√(2/π)(x + 0.044715x³)).
@compute @workgroup_size(256)
fn gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let v = saved[i];
    let t = tanh_stable(GELU_K * (v + 0.044715 * v * v * v));
    let dt = (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * v * v);
    dx[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * v * dt);
}
