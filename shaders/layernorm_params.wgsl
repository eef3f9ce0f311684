// LayerNorm backward for weight and bias (the forward and dx are in layernorm.wgsl):
//   dweight[c] = Σ_r dout[r, c] · norm[r, c],   dbias[c] = Σ_r dout[r, c],   norm = (x − mean) · rstd
// Column sums over rows, in two deterministic stages (fixed order, no atomics).

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

// Stage 1, one invocation per (chunk of ROWS_PER_CHUNK rows, column): partial sums in row order.
// Stage 2, one invocation per column: sums its chunks in order. More parallelism than one
// invocation per column (C = 768 invocations is too few for a GPU), still no atomics.
const ROWS_PER_CHUNK: u32 = 64u;

@group(0) @binding(1) var<storage, read> cx: array<f32>;                // (rows, cols)
@group(0) @binding(2) var<storage, read> cmean: array<f32>;             // (rows)
@group(0) @binding(3) var<storage, read> crstd: array<f32>;             // (rows)
@group(0) @binding(4) var<storage, read> cdout: array<f32>;             // (rows, cols)
@group(0) @binding(5) var<storage, read_write> part_dweight: array<f32>; // (chunks, cols)
@group(0) @binding(6) var<storage, read_write> part_dbias: array<f32>;   // (chunks, cols)

@compute @workgroup_size(64)
fn layernorm_backward_params_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                     @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let chunks = (p.rows + ROWS_PER_CHUNK - 1u) / ROWS_PER_CHUNK;
    if (t >= chunks * p.cols) { return; }
    let chunk = t / p.cols;
    let c = t % p.cols;  // adjacent invocations read adjacent columns
    var dw = 0.0;
    var db = 0.0;
    for (var r = chunk * ROWS_PER_CHUNK; r < min((chunk + 1u) * ROWS_PER_CHUNK, p.rows); r++) {
        let i = r * p.cols + c;
        let d = cdout[i];
        dw += d * (cx[i] - cmean[r]) * crstd[r];
        db += d;
    }
    part_dweight[t] = dw;
    part_dbias[t] = db;
}

@group(0) @binding(1) var<storage, read> sum_dweight: array<f32>;       // (chunks, cols)
@group(0) @binding(2) var<storage, read> sum_dbias: array<f32>;         // (chunks, cols)
@group(0) @binding(3) var<storage, read_write> dweight: array<f32>;     // (cols)
@group(0) @binding(4) var<storage, read_write> dbias: array<f32>;       // (cols)

@compute @workgroup_size(64)
fn layernorm_backward_params_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                                 @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= p.cols) { return; }
    let chunks = (p.rows + ROWS_PER_CHUNK - 1u) / ROWS_PER_CHUNK;
    var dw = 0.0;
    var db = 0.0;
    for (var k = 0u; k < chunks; k++) {
        dw += sum_dweight[k * p.cols + c];
        db += sum_dbias[k * p.cols + c];
    }
    dweight[c] = dw;
    dbias[c] = db;
}
