// LayerNorm over the last dimension, x viewed as [rows, cols]:
//   y = (x − mean) · rstd · weight + bias,   rstd = 1 / √(var + eps),  var = Σ (x − mean)² / cols
// and its backward for x (derivation: docs/layernorm.md). Rows are independent: here one invocation
// per row without barriers, for CPU drivers (scalar, or vec4 when cols % 4 == 0); one 256-wide
// workgroup per row with barrier trees, for GPUs, is in layernorm_wg.wgsl; the weight/bias
// gradients (column sums in two fixed-order stages, no atomics) in layernorm_params.wgsl.
//
// NOTE: var is the biased variance (÷ cols, like PyTorch), never as E[x²] − mean² (which cancels
//       catastrophically when |mean| ≫ std): the scalar and GPU kernels take a second pass over
//       x − mean; the vec4 CPU kernel shifts by the row's first element in one pass (see there).
// NOTE: eps goes inside the square root.

struct Params {
    rows: u32,
    cols: u32,  // C
    eps: f32,
}

const WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward ----
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (rows, cols)
@group(0) @binding(2) var<storage, read> weight: array<f32>;         // (cols)
@group(0) @binding(3) var<storage, read> bias: array<f32>;           // (cols)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;        // (rows, cols)
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;     // (rows)
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;     // (rows)

@compute @workgroup_size(64)
fn layernorm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var i = 0u; i < p.cols; i++) { s += x[base + i]; }
    let m = s / f32(p.cols);
    var v = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let d = x[base + i] - m;
        v += d * d;
    }
    let rs = inverseSqrt(v / f32(p.cols) + p.eps);
    for (var i = 0u; i < p.cols; i++) {
        y[base + i] = (x[base + i] - m) * rs * weight[i] + bias[i];
    }
    mean[r] = m;
    rstd[r] = rs;
}

// vec4 variant for cols % 4 == 0 (a CPU driver gathers per lane; vec4 moves 4× the bytes each).
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;         // (rows, cols / 4)
@group(0) @binding(2) var<storage, read> weight4: array<vec4<f32>>;    // (cols / 4)
@group(0) @binding(3) var<storage, read> bias4: array<vec4<f32>>;      // (cols / 4)
@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;   // (rows, cols / 4)

@compute @workgroup_size(64)
fn layernorm_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    // One pass over x for both moments, shifted by k = x[row, 0] (the "shifted data" algorithm):
    // with d = x − k, mean = k + Σd/n and var = (Σd² − (Σd)²/n)/n. Because |x[0] − mean| is of
    // the order of the std, nothing cancels catastrophically even when |mean| ≫ std.
    let k = x4[base].x;
    var s4 = vec4<f32>(0.0);
    var q4 = vec4<f32>(0.0);
    for (var i = 0u; i < n4; i++) {
        let d = x4[base + i] - k;
        s4 += d;
        q4 += d * d;
    }
    let n = f32(p.cols);
    let s = (s4.x + s4.y) + (s4.z + s4.w);
    let q = (q4.x + q4.y) + (q4.z + q4.w);
    let m = k + s / n;
    let rs = inverseSqrt(max(q - s * s / n, 0.0) / n + p.eps);
    for (var i = 0u; i < n4; i++) {
        y4[base + i] = (x4[base + i] - m) * rs * weight4[i] + bias4[i];
    }
    mean[r] = m;
    rstd[r] = rs;
}

// ---- backward for x: dx = rstd · (dnorm − mean(dnorm) − norm · mean(dnorm ⊙ norm)), dnorm = dout ⊙ weight ----
@group(0) @binding(1) var<storage, read> bx: array<f32>;              // (rows, cols)
@group(0) @binding(2) var<storage, read> bweight: array<f32>;         // (cols)
@group(0) @binding(3) var<storage, read> bmean: array<f32>;           // (rows)
@group(0) @binding(4) var<storage, read> brstd: array<f32>;           // (rows)
@group(0) @binding(5) var<storage, read> dout: array<f32>;            // (rows, cols)
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;        // (rows, cols)

@compute @workgroup_size(64)
fn layernorm_backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = bmean[r];
    let rs = brstd[r];
    var dnorm_mean = 0.0;
    var dnorm_norm_mean = 0.0;
    for (var i = 0u; i < p.cols; i++) {
        let norm = (bx[base + i] - m) * rs;
        let dnorm = dout[base + i] * bweight[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm;
    }
    dnorm_mean /= f32(p.cols);
    dnorm_norm_mean /= f32(p.cols);
    for (var i = 0u; i < p.cols; i++) {
        let norm = (bx[base + i] - m) * rs;
        let dnorm = dout[base + i] * bweight[i];
        dx[base + i] = rs * (dnorm - dnorm_mean - norm * dnorm_norm_mean);
    }
}

// vec4 variant for cols % 4 == 0 (CPU drivers, as layernorm_forward4).
@group(0) @binding(1) var<storage, read> bx4: array<vec4<f32>>;          // (rows, cols / 4)
@group(0) @binding(2) var<storage, read> bweight4: array<vec4<f32>>;     // (cols / 4)
@group(0) @binding(5) var<storage, read> dout4: array<vec4<f32>>;        // (rows, cols / 4)
@group(0) @binding(6) var<storage, read_write> dx4: array<vec4<f32>>;    // (rows, cols / 4)

@compute @workgroup_size(64)
fn layernorm_backward_x4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let n4 = p.cols / 4u;
    let base = r * n4;
    let m = bmean[r];
    let rs = brstd[r];
    var a4 = vec4<f32>(0.0);  // Σ dnorm
    var b4 = vec4<f32>(0.0);  // Σ dnorm ⊙ norm
    for (var i = 0u; i < n4; i++) {
        let dnorm = dout4[base + i] * bweight4[i];
        a4 += dnorm;
        b4 += dnorm * (bx4[base + i] - m) * rs;
    }
    let dnorm_mean = ((a4.x + a4.y) + (a4.z + a4.w)) / f32(p.cols);
    let dnorm_norm_mean = ((b4.x + b4.y) + (b4.z + b4.w)) / f32(p.cols);
    for (var i = 0u; i < n4; i++) {
        let norm = (bx4[base + i] - m) * rs;
        dx4[base + i] = rs * (dout4[base + i] * bweight4[i] - dnorm_mean - norm * dnorm_norm_mean);
    }
}
