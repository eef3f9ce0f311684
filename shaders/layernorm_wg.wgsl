// LayerNorm, GPU variants: one 256-wide workgroup per row, partial sums combined by a barrier tree
// (the per-row kernels for CPU drivers, and the math, are in layernorm.wgsl; the same NOTEs hold:
// biased variance from a second pass over x − mean, eps inside the square root).

struct Params {
    rows: u32,
    cols: u32,  // C
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward ----
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (rows, cols)
@group(0) @binding(2) var<storage, read> weight: array<f32>;         // (cols)
@group(0) @binding(3) var<storage, read> bias: array<f32>;           // (cols)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;        // (rows, cols)
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;     // (rows)
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;     // (rows)

// ---- backward for x: dx = rstd · (dnorm − mean(dnorm) − norm · mean(dnorm ⊙ norm)), dnorm = dout ⊙ weight ----
@group(0) @binding(1) var<storage, read> bx: array<f32>;              // (rows, cols)
@group(0) @binding(2) var<storage, read> bweight: array<f32>;         // (cols)
@group(0) @binding(3) var<storage, read> bmean: array<f32>;           // (rows)
@group(0) @binding(4) var<storage, read> brstd: array<f32>;           // (rows)
@group(0) @binding(5) var<storage, read> dout: array<f32>;            // (rows, cols)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;        // (rows, cols)

const WGT: u32 = 256u;
var<workgroup> red: array<f32, 256>;

// Σ of v over the workgroup, returned to every invocation. Uniform control flow only.
fn tree_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WGT / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
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
fn layernorm_forward_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let r = wg_row(wid, nwg);
    if (r >= p.rows) { return; } // uniform: one row per workgroup
    let base = r * p.cols;
    var s = 0.0;
    for (var i = lid; i < p.cols; i += WGT) { s += x[base + i]; }
    let m = tree_sum(lid, s) / f32(p.cols);
    var v = 0.0;
    for (var i = lid; i < p.cols; i += WGT) {
        let d = x[base + i] - m;
        v += d * d;
    }
    let rs = inverseSqrt(tree_sum(lid, v) / f32(p.cols) + p.eps);
    for (var i = lid; i < p.cols; i += WGT) {
        y[base + i] = (x[base + i] - m) * rs * weight[i] + bias[i];
    }
    if (lid == 0u) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

@compute @workgroup_size(256)
fn layernorm_backward_x_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let r = wg_row(wid, nwg);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = bmean[r];
    let rs = brstd[r];
    var a = 0.0;  // Σ dnorm
    var b = 0.0;  // Σ dnorm · norm
    for (var i = lid; i < p.cols; i += WGT) {
        let dnorm = dout[base + i] * bweight[i];
        a += dnorm;
        b += dnorm * (bx[base + i] - m) * rs;
    }
    let dnorm_mean = tree_sum(lid, a) / f32(p.cols);
    let dnorm_norm_mean = tree_sum(lid, b) / f32(p.cols);
    for (var i = lid; i < p.cols; i += WGT) {
        let norm = (bx[base + i] - m) * rs;
        dx[base + i] = rs * (dout[base + i] * bweight[i] - dnorm_mean - norm * dnorm_norm_mean);
    }
}
