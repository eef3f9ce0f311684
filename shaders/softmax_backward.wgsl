// Backward of softmax and log-softmax over the last dimension, x viewed as [rows, cols]: one
// invocation per row, from the saved output y (the forward kernels are in softmax.wgsl).

struct Params {
    rows: u32,  // number of rows (product of the leading dims)
    cols: u32,  // C, the softmax dimension
}

const WG: u32 = 64u;     // rows per workgroup in the *_rows kernels

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- backward: (y, dout) -> dx, one invocation per row ----
@group(0) @binding(1) var<storage, read> saved_y: array<f32>;    // (rows, cols)
@group(0) @binding(2) var<storage, read> dout: array<f32>;       // (rows, cols)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;   // (rows, cols)

// softmax: dx = y ⊙ (dout − Σ_c dout ⊙ y)
@compute @workgroup_size(64)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var dot = 0.0;
    for (var i = 0u; i < p.cols; i++) { dot += dout[base + i] * saved_y[base + i]; }
    for (var i = 0u; i < p.cols; i++) { dx[base + i] = saved_y[base + i] * (dout[base + i] - dot); }
}

// log_softmax (y = log-probabilities): dx = dout − exp(y) · Σ_c dout
@compute @workgroup_size(64)
fn log_softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var total = 0.0;
    for (var i = 0u; i < p.cols; i++) { total += dout[base + i]; }
    for (var i = 0u; i < p.cols; i++) { dx[base + i] = dout[base + i] - exp(saved_y[base + i]) * total; }
}

// vec4 variants of the two backward kernels (C % 4 == 0), for CPU drivers like the forward ones.
@group(0) @binding(1) var<storage, read> saved_y4: array<vec4<f32>>;    // (rows, cols / 4)
@group(0) @binding(2) var<storage, read> dout4: array<vec4<f32>>;       // (rows, cols / 4)
@group(0) @binding(3) var<storage, read_write> dx4: array<vec4<f32>>;   // (rows, cols / 4)

@compute @workgroup_size(64)
fn softmax_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    var dot4 = vec4<f32>(0.0);
    for (var i = 0u; i < n4; i++) { dot4 += dout4[base + i] * saved_y4[base + i]; }
    let dot = (dot4.x + dot4.y) + (dot4.z + dot4.w);
    for (var i = 0u; i < n4; i++) { dx4[base + i] = saved_y4[base + i] * (dout4[base + i] - dot); }
}

@compute @workgroup_size(64)
fn log_softmax_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    var total4 = vec4<f32>(0.0);
    for (var i = 0u; i < n4; i++) { total4 += dout4[base + i]; }
    let total = (total4.x + total4.y) + (total4.z + total4.w);
    for (var i = 0u; i < n4; i++) { dx4[base + i] = dout4[base + i] - exp(saved_y4[base + i]) * total; }
}
