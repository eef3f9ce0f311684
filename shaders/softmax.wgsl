// Softmax and log-softmax over the last dimension, x viewed as [rows, cols], forward kernels for CPU
// drivers; and two row helpers (row_max, expand_last) that the composed reference uses.
//
// Variants of every forward row kernel:
//   *_rows:  one invocation per row, no workgroup memory, no barriers (fast on CPU drivers);
//   *_rows4: the same with vec4 loads when cols % 4 == 0 (CPU drivers);
//   *_wg:    one workgroup of 256 per row, a barrier tree (fast on GPUs; 20× slower on lavapipe),
//            in softmax_wg.wgsl. The backward kernels are in softmax_backward.wgsl.
// Each visits a row in the same order within a thread, so each is deterministic run to run.
//
// NOTE: max-subtraction: exp(x − max) ≤ 1 never overflows, and the largest term is exactly 1 so
// the sum is ≥ 1 (no 0/0, no log 0).

struct Params {
    rows: u32,  // number of rows (product of the leading dims)
    cols: u32,  // C, the softmax dimension
}

const WG: u32 = 64u;     // rows per workgroup in the *_rows kernels

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: x -> y ----
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // (rows, cols)

fn row_max_of(base: u32) -> f32 {
    var m = x[base];
    for (var i = 1u; i < p.cols; i++) { m = max(m, x[base + i]); }
    return m;
}

// y = exp(x − m) / Σ exp(x − m). Pass 2 stores e = exp(x − m) in y; pass 3 rescales it.
@compute @workgroup_size(64)
fn softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max_of(base);
    var s = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let e = exp(x[base + i] - m);
        y[base + i] = e;
        s += e;
    }
    let inv = 1.0 / s;
    for (var i = 0u; i < p.cols; i++) { y[base + i] *= inv; }
}

// y = x − m − log Σ exp(x − m).
@compute @workgroup_size(64)
fn log_softmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max_of(base);
    var s = 0.0;
    for (var i = 0u; i < p.cols; i++) { s += exp(x[base + i] - m); }
    let shift = m + log(s);
    for (var i = 0u; i < p.cols; i++) { y[base + i] = x[base + i] - shift; }
}

// vec4 variants of the two kernels above, for cols % 4 == 0: a CPU driver gathers each lane's
// loads, and a vec4 gather moves four times the bytes per instruction (2–3× faster on lavapipe).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;         // (rows, cols / 4)
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;   // (rows, cols / 4)

fn row_max4(base: u32, n4: u32) -> f32 {
    var m4 = x4[base];
    for (var i = 1u; i < n4; i++) { m4 = max(m4, x4[base + i]); }
    return max(max(m4.x, m4.y), max(m4.z, m4.w));
}

fn row_sum_exp4(base: u32, n4: u32, m: f32) -> f32 {
    var s4 = vec4<f32>(0.0);
    for (var i = 0u; i < n4; i++) { s4 += exp(x4[base + i] - m); }
    return (s4.x + s4.y) + (s4.z + s4.w);
}

// Recomputes exp in the last pass rather than storing and rescaling: one store per element.
@compute @workgroup_size(64)
fn softmax_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    let m = row_max4(base, n4);
    let inv = 1.0 / row_sum_exp4(base, n4, m);
    for (var i = 0u; i < n4; i++) { y4[base + i] = exp(x4[base + i] - m) * inv; }
}

@compute @workgroup_size(64)
fn log_softmax_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    let m = row_max4(base, n4);
    let shift = m + log(row_sum_exp4(base, n4, m));
    for (var i = 0u; i < n4; i++) { y4[base + i] = x4[base + i] - shift; }
}

// ---- helpers for the composed reference (no autodiff of their own in the kernels) ----
// row_max: y[r] = max_c x[r, c]            (rows)
@compute @workgroup_size(64)
fn row_max(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    y[r] = row_max_of(r * p.cols);
}

// expand_last: y[r, c] = x[r]              (rows, cols), one thread per output
@compute @workgroup_size(64)
fn expand_last(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    y[i] = x[i / p.cols];
}
