// LoRA's term in the base matmul's epilogue (src/ops/lora_linear.rs has the math and backward):
//   y = x·W + b + s·(down·Bᵀ)      x: (M, K)  W: (K, N)  b: (N)  down: (M, R)  B: (N, R)  y: (M, N)
// down = x·Aᵀ is computed before (a small matmul); here each invocation finishes its base tile
// (x·W + b, the same order as matmul_register_tiled in matmul.wgsl), then runs a second,
// R-deep product down·Bᵀ over the same tile and adds it scaled: one dispatch instead of three
// (down·Bᵀ, ·s, +) and no (M, N) intermediate.
// Tiles as matmul_register_tiled: TM×TN = 4×4 outputs per invocation, 64 invocations along N.
// The subgroup form (lavapipe's) is lora_linear_subgroup.wgsl.
// NOTE: the base tile is stored first and read back by the same invocation for the LoRA add, so
//       only one tile of accumulators is live (as many registers as the plain matmul).

struct Params {
    m: u32,         // rows of x
    n: u32,         // output features
    k: u32,         // input features
    rank: u32,      // R
    has_bias: u32,  // 1: add bias[n]
    tiles_m: u32,   // row tiles
    scaling: f32,   // s
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (M, K)
@group(0) @binding(2) var<storage, read> weight: array<f32>;     // (K, N)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N), or any buffer when has_bias = 0
@group(0) @binding(4) var<storage, read> down: array<f32>;       // (M, R)
@group(0) @binding(5) var<storage, read> lora_b: array<f32>;     // (N, R)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // (M, N)

const TM: u32 = 4u;   // rows per invocation (shared by the workgroup)
const TN: u32 = 4u;   // columns per invocation
const WG: u32 = 64u;  // invocations per workgroup, side by side along N

fn bias_at(n: u32) -> f32 {
    if (p.has_bias == 1u) { return bias[n]; }
    return 0.0;
}

// Stores row `row` of the base tile: x·W + b.
fn store_base(row: u32, n0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < TN; j++) {
        let col = n0 + j;
        if (col < p.n) { out[row * p.n + col] = v[j] + bias_at(col); }
    }
}

// Adds s·(down·Bᵀ) to row `row` of the stored base tile.
fn add_lora(row: u32, n0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < TN; j++) {
        let col = n0 + j;
        if (col < p.n) { out[row * p.n + col] = out[row * p.n + col] + p.scaling * v[j]; }
    }
}

@compute @workgroup_size(64)
fn lora_linear_register_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let m0 = (wid.z * nwg.y + wid.y) * TM;  // uniform over the workgroup
    let n0 = (wid.x * WG + lid) * TN;       // this invocation's first column
    if (m0 >= p.m || n0 >= p.n) { return; }
    // Edge rows/columns are clamped so every load is in bounds; their sums are never stored.
    var rows: array<u32, 4>;
    var cols: array<u32, 4>;
    for (var i = 0u; i < 4u; i++) {
        rows[i] = min(m0 + i, p.m - 1u);
        cols[i] = min(n0 + i, p.n - 1u);
    }
    // 1. The base tile: x·W (+ b when stored).
    var c: array<vec4<f32>, 4>;  // (TM rows, TN columns)
    for (var k = 0u; k < p.k; k++) {
        let wk = vec4<f32>(weight[k * p.n + cols[0]], weight[k * p.n + cols[1]],
                           weight[k * p.n + cols[2]], weight[k * p.n + cols[3]]);  // W[k, n0..n0+3]
        for (var i = 0u; i < TM; i++) { c[i] += x[rows[i] * p.k + k] * wk; }
    }
    for (var i = 0u; i < TM; i++) { store_base(m0 + i, n0, c[i]); }
    // 2. The LoRA term: down·Bᵀ over the same tile, R deep.
    var d: array<vec4<f32>, 4>;
    for (var r = 0u; r < p.rank; r++) {
        let br = vec4<f32>(lora_b[cols[0] * p.rank + r], lora_b[cols[1] * p.rank + r],
                           lora_b[cols[2] * p.rank + r], lora_b[cols[3] * p.rank + r]);  // Bᵀ[r, n0..n0+3]
        for (var i = 0u; i < TM; i++) { d[i] += down[rows[i] * p.rank + r] * br; }
    }
    for (var i = 0u; i < TM; i++) { add_lora(m0 + i, n0, d[i]); }
}

// ---- LoRA's rank-R products: out[i, r] = α·Σ_k P[i, k]·Q[k, r], r < R ≤ 16 ----
// down = x·Aᵀ, d down = s·dy·B, dB = s·dyᵀ·down, dA = d downᵀ·x all have R as their output width
// (or height). A matmul tile of 64 columns would compute 64 − R of them for nothing; here one
// invocation owns one i and all R of its outputs, so only P's loads differ per lane and every Q
// load (k, r) is the same for the whole subgroup. P, Q and out are read through strides, so
// each product reads its operands in place (see src/ops/lora_linear.rs for the four layouts).

struct RankParams {
    n: u32,      // outputs i
    k: u32,      // summed length
    rank: u32,   // R ≤ 16
    p_i: u32,    // P[i, k] at p_i·i + p_k·k
    p_k: u32,
    q_k: u32,    // Q[k, r] at q_k·k + q_r·r
    q_r: u32,
    o_i: u32,    // out[i, r] at o_i·i + o_r·r
    o_r: u32,
    alpha: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> rp: RankParams;
@group(0) @binding(1) var<storage, read> rank_p: array<f32>;
@group(0) @binding(2) var<storage, read> rank_q: array<f32>;
@group(0) @binding(3) var<storage, read_write> rank_out: array<f32>;

const RMAX: u32 = 16u;

// Q[k, r0 .. r0 + 4] (a column past R reads column R − 1 again: in bounds, never stored).
fn q4(k: u32, r0: u32) -> vec4<f32> {
    let last = rp.rank - 1u;
    let at = rp.q_k * k;
    return vec4<f32>(rank_q[at + rp.q_r * min(r0, last)], rank_q[at + rp.q_r * min(r0 + 1u, last)],
                     rank_q[at + rp.q_r * min(r0 + 2u, last)], rank_q[at + rp.q_r * min(r0 + 3u, last)]);
}

@compute @workgroup_size(64)
fn lora_rank_product(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid;
    if (i >= rp.n) { return; }
    // 16 accumulators as four vec4 registers (no array indexed at run time).
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let wide = rp.rank > 8u;  // uniform: ranks ≤ 8 skip the upper half
    for (var k = 0u; k < rp.k; k++) {
        let pv = rank_p[rp.p_i * i + rp.p_k * k];
        acc0 += pv * q4(k, 0u);
        acc1 += pv * q4(k, 4u);
        if (wide) {
            acc2 += pv * q4(k, 8u);
            acc3 += pv * q4(k, 12u);
        }
    }
    let o = rp.o_i * i;
    for (var r = 0u; r < 4u; r++) {
        if (r < rp.rank) { rank_out[o + rp.o_r * r] = rp.alpha * acc0[r]; }
        if (r + 4u < rp.rank) { rank_out[o + rp.o_r * (r + 4u)] = rp.alpha * acc1[r]; }
        if (r + 8u < rp.rank) { rank_out[o + rp.o_r * (r + 8u)] = rp.alpha * acc2[r]; }
        if (r + 12u < rp.rank) { rank_out[o + rp.o_r * (r + 12u)] = rp.alpha * acc3[r]; }
    }
}
