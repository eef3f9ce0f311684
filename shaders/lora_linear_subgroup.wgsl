enable subgroups;
// LoRA's term in the epilogue of lavapipe's matmul (matmul_subgroup.wgsl's tiles and broadcasts):
//   y = x·W + b + s·(down·Bᵀ)      x: (M, K)  W: (K, N)  b: (N)  down: (M, R)  B: (N, R)  y: (M, N)
// Params, bindings and the two phases as lora_linear.wgsl (see there and src/ops/lora_linear.rs):
// the base tile x·W + b is stored, then an R-deep product down·Bᵀ over the same accumulators is
// added to it, scaled by s.
// Layout: a subgroup owns a 16×64 tile of y: lane l computes rows m0 + l and m0 + 8 + l, all 64
// columns; 8 subgroups of a 64-invocation workgroup stack along M (128×64 per workgroup).
// NOTE: needs subgroups of exactly 8 consecutive invocations (src/ops/lora_linear.rs checks).
// NOTE: no early return: every lane must reach every subgroupBroadcast, so edge rows/columns are
//       clamped for loading and only the stores are bounds-checked.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    rank: u32,
    has_bias: u32,
    tiles_m: u32,
    scaling: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (M, K)
@group(0) @binding(2) var<storage, read> weight: array<f32>;     // (K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N), or any buffer when has_bias = 0
@group(0) @binding(4) var<storage, read> down: array<f32>;       // (M, R)
@group(0) @binding(5) var<storage, read> lora_b: array<f32>;     // (N, R)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // (M, N)

const R: u32 = 2u;  // rows per lane, 8 apart
const C: u32 = 8u;  // blocks of 8 columns per subgroup

// 64 values, one per lane and block, spread to every lane: lane l of block c holds column 8c + l.
fn broadcast(v: array<f32, C>) -> array<vec4<f32>, 16> {
    var out: array<vec4<f32>, 16>;
    for (var c = 0u; c < C; c++) {
        out[2u * c] = vec4<f32>(subgroupBroadcast(v[c], 0u), subgroupBroadcast(v[c], 1u),
                                subgroupBroadcast(v[c], 2u), subgroupBroadcast(v[c], 3u));
        out[2u * c + 1u] = vec4<f32>(subgroupBroadcast(v[c], 4u), subgroupBroadcast(v[c], 5u),
                                     subgroupBroadcast(v[c], 6u), subgroupBroadcast(v[c], 7u));
    }
    return out;
}

@compute @workgroup_size(64)
fn lora_linear_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let t = wid.z * nwg.y + wid.y;
    // Past the last row tile: clamp and store nothing (no early return).
    let m0 = min(t, p.tiles_m - 1u) * (64u * R) + (lid / 8u) * (8u * R);  // this subgroup's first row
    let n0 = wid.x * (8u * C);
    var col: array<u32, C>;  // this lane's column of block c, clamped
    for (var c = 0u; c < C; c++) { col[c] = min(n0 + 8u * c + lane, p.n - 1u); }
    var row: array<u32, R>;  // this lane's row r, clamped
    for (var r = 0u; r < R; r++) { row[r] = min(m0 + 8u * r + lane, p.m - 1u); }
    let store = t < p.tiles_m;
    // 1. The base tile: x·W, stored with + b.
    var acc: array<array<vec4<f32>, 16>, R>;  // (R, 64 columns as 16 vec4)
    for (var k = 0u; k < p.k; k++) {
        var v: array<f32, C>;
        for (var c = 0u; c < C; c++) { v[c] = weight[k * p.n + col[c]]; }
        let wk = broadcast(v);  // W[k, n0 .. n0 + 64]
        for (var r = 0u; r < R; r++) {
            let xv = x[row[r] * p.k + k];
            for (var j = 0u; j < 16u; j++) { acc[r][j] += xv * wk[j]; }
        }
    }
    for (var r = 0u; r < R; r++) {
        let m = m0 + 8u * r + lane;
        for (var j = 0u; j < 64u; j++) {
            let n = n0 + j;
            if (store && m < p.m && n < p.n) {
                var bj = 0.0;
                if (p.has_bias == 1u) { bj = bias[n]; }
                out[m * p.n + n] = acc[r][j / 4u][j % 4u] + bj;
            }
        }
        // Whole vec4s at loop indices: a per-component write at j % 4 would keep acc in memory.
        for (var j = 0u; j < 16u; j++) { acc[r][j] = vec4<f32>(0.0); }
    }
    // 2. The LoRA term: down·Bᵀ in the same accumulators, R deep, added scaled.
    for (var q = 0u; q < p.rank; q++) {
        var v: array<f32, C>;
        for (var c = 0u; c < C; c++) { v[c] = lora_b[col[c] * p.rank + q]; }
        let bq = broadcast(v);  // Bᵀ[q, n0 .. n0 + 64]
        for (var r = 0u; r < R; r++) {
            let dv = down[row[r] * p.rank + q];
            for (var j = 0u; j < 16u; j++) { acc[r][j] += dv * bq[j]; }
        }
    }
    for (var r = 0u; r < R; r++) {
        let m = m0 + 8u * r + lane;
        for (var j = 0u; j < 64u; j++) {
            let n = n0 + j;
            if (store && m < p.m && n < p.n) {
                out[m * p.n + n] = out[m * p.n + n] + p.scaling * acc[r][j / 4u][j % 4u];
            }
        }
    }
}
