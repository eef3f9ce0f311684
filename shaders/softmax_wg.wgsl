// Softmax and log-softmax over the last dimension, GPU variants: one workgroup of 256 per row, each
// thread strides the row, then a tree in workgroup memory (fast on GPUs; 20× slower on lavapipe).
// The per-row kernels for CPU drivers, and the NOTEs, are in softmax.wgsl.

struct Params {
    rows: u32,  // number of rows (product of the leading dims)
    cols: u32,  // C, the softmax dimension
}

const WGT: u32 = 256u;   // threads per row

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: x -> y ----
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // (rows, cols)

// Workgroup-per-row variants: each thread strides the row, then a tree in workgroup memory.
var<workgroup> red: array<f32, 256>;

// Tree reduction of red[0..256] (op 0 = sum, 1 = max); every thread gets the result.
// Called from uniform control flow only (the row index is per workgroup).
fn tree(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WGT / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max);
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier(); // red is reused by the next tree
    return out;
}

fn wg_row(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

@compute @workgroup_size(256)
fn softmax_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = wg_row(wid, nwg);
    if (r >= p.rows) { return; } // uniform: the same r for the whole workgroup
    let base = r * p.cols;
    var m = -3.402823e38;
    for (var i = lid; i < p.cols; i += WGT) { m = max(m, x[base + i]); }
    m = tree(lid, m, true);
    var s = 0.0;
    for (var i = lid; i < p.cols; i += WGT) { s += exp(x[base + i] - m); }
    let inv = 1.0 / tree(lid, s, false);
    for (var i = lid; i < p.cols; i += WGT) { y[base + i] = exp(x[base + i] - m) * inv; }
}

@compute @workgroup_size(256)
fn log_softmax_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = wg_row(wid, nwg);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var m = -3.402823e38;
    for (var i = lid; i < p.cols; i += WGT) { m = max(m, x[base + i]); }
    m = tree(lid, m, true);
    var s = 0.0;
    for (var i = lid; i < p.cols; i += WGT) { s += exp(x[base + i] - m); }
    let shift = m + log(tree(lid, s, false));
    for (var i = lid; i < p.cols; i += WGT) { y[base + i] = x[base + i] - shift; }
}
