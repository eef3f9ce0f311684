// GELU fused with the bias add before it (GPT-2's MLP: gelu(x·W_fc + b_fc)):
//   y = gelu(x + bias[c])                      x (rows, C), bias (C)
//   dx = dout · gelu'(x + bias[c])             (dbias = Σ_rows dx, done by sum_rows)
// gelu is GPT-2's gelu_new, the same function as `gelu` in unary.wgsl:
//   gelu(u) = 0.5·u·(1 + tanh(√(2/π)(u + 0.044715u³)))
//
// NOTE: tanh through exp(−2|u|), so large |u| saturates to ±1 instead of inf/inf.

struct Params {
    n: u32,     // numel(x)
    cols: u32,  // C = numel(bias)
}

const WG: u32 = 256u;
const GELU_K: f32 = 0.7978845608028654; // √(2/π)

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn tanh_stable(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> bias: array<f32>;       // (C)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (rows, C)

@compute @workgroup_size(256)
fn bias_gelu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let u = x[i] + bias[i % p.cols];
    y[i] = 0.5 * u * (1.0 + tanh_stable(GELU_K * (u + 0.044715 * u * u * u)));
}

@group(0) @binding(1) var<storage, read> bx: array<f32>;          // (rows, C)
@group(0) @binding(2) var<storage, read> bbias: array<f32>;       // (C)
@group(0) @binding(3) var<storage, read> dout: array<f32>;        // (rows, C)
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;    // (rows, C)

// gelu'(u) = 0.5(1 + t) + 0.5·u·(1 − t²)·√(2/π)(1 + 3·0.044715·u²)
@compute @workgroup_size(256)
fn bias_gelu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    let u = bx[i] + bbias[i % p.cols];
    let t = tanh_stable(GELU_K * (u + 0.044715 * u * u * u));
    let dt = (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * u * u);
    dx[i] = dout[i] * (0.5 * (1.0 + t) + 0.5 * u * dt);
}

// ---- vec4 variants (C % 4 == 0): thread t owns vec4 column j = t % c4 of rows [V·r, V·r + V),
// r = t / c4, so bias is loaded once per thread and no modulo runs per element. ----
struct Params4 {
    rows: u32,  // numel(x) / C
    c4: u32,    // C / 4
}

@group(0) @binding(0) var<uniform> q: Params4;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;        // (rows, C/4)
@group(0) @binding(2) var<storage, read> bias4: array<vec4<f32>>;     // (C/4)
@group(0) @binding(3) var<storage, read_write> y4: array<vec4<f32>>;  // (rows, C/4)
@group(0) @binding(3) var<storage, read> dout4: array<vec4<f32>>;     // (rows, C/4)
@group(0) @binding(4) var<storage, read_write> dx4: array<vec4<f32>>; // (rows, C/4)

const V: u32 = 4u;

fn tanh4(u: vec4<f32>) -> vec4<f32> {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

@compute @workgroup_size(256)
fn bias_gelu_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let j = t % q.c4;
    let r0 = (t / q.c4) * V;
    if (r0 >= q.rows) { return; }
    let b = bias4[j];
    for (var r = r0; r < min(r0 + V, q.rows); r++) {
        let i = r * q.c4 + j;
        let u = x4[i] + b;
        y4[i] = 0.5 * u * (1.0 + tanh4(GELU_K * (u + 0.044715 * u * u * u)));
    }
}

@compute @workgroup_size(256)
fn bias_gelu_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let j = t % q.c4;
    let r0 = (t / q.c4) * V;
    if (r0 >= q.rows) { return; }
    let b = bias4[j];
    for (var r = r0; r < min(r0 + V, q.rows); r++) {
        let i = r * q.c4 + j;
        let u = x4[i] + b;
        let th = tanh4(GELU_K * (u + 0.044715 * u * u * u));
        let dt = (1.0 - th * th) * GELU_K * (1.0 + 3.0 * 0.044715 * u * u);
        dx4[i] = dout4[i] * (0.5 * (1.0 + th) + 0.5 * u * dt);
    }
}
