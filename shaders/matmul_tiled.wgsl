// Workgroup-tiled matrix product for real GPUs: C = op(A)·op(B) (+ bias), batched, with the same
// Params, bindings and layout as shaders/matmul.wgsl (see there and src/ops/matmul.rs).
// A workgroup of 16×16 invocations computes a 64×64 tile of C; each invocation a 4×4 register
// tile. Per step of BK = 16 along K, the workgroup stages a 64×16 slice of op(A) and a 16×64 slice
// of op(B) in workgroup memory (zero-filled past the edges), then every invocation reads vec4s from
// there. Global loads walk the stored layout's contiguous direction, so they coalesce for either
// transpose.
// NOTE: both barriers sit in uniform control flow: the only early return depends on workgroup_id.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_batch: u32,
    b_batch: u32,
    a_row: u32,
    a_col: u32,
    b_row: u32,
    b_col: u32,
    has_bias: u32,
    tiles_m: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // (batch?, M, K) or (batch?, K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (batch?, K, N) or (batch?, N, K)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N), or any buffer when has_bias = 0
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (batch, M, N)

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_tile: array<vec4<f32>, 256>;  // (BK, BM/4): op(A)[m0 + m, k0 + k] at [k][m/4][m%4]
var<workgroup> b_tile: array<vec4<f32>, 256>;  // (BK, BN/4): op(B)[k0 + k, n0 + n] at [k][n/4][n%4]

@compute @workgroup_size(256)
fn matmul_workgroup_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    if (bi >= p.batch) { return; }  // uniform: the same for the whole workgroup
    let m0 = (t % p.tiles_m) * BM;
    let n0 = wid.x * BN;
    let tx = lid % 16u;  // this invocation's columns: n0 + 4·tx ..
    let ty = lid / 16u;  // rows: m0 + 4·ty ..
    let a_base = bi * p.a_batch;
    let b_base = bi * p.b_batch;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage 4 of the 1024 elements of each slice per invocation.
        for (var j = 0u; j < 4u; j++) {
            let i = lid + j * 256u;
            var m = i / BK;  // A stored (M, K): k is contiguous, let neighbours read along k
            var k = i % BK;
            if (p.a_col != 1u) { k = i / BM; m = i % BM; }  // A stored (K, M): along m
            var va = 0.0;
            if (m0 + m < p.m && k0 + k < p.k) { va = a[a_base + (m0 + m) * p.a_row + (k0 + k) * p.a_col]; }
            a_tile[k * 16u + m / 4u][m % 4u] = va;

            var kb = i / BN;  // B stored (K, N): along n
            var n = i % BN;
            if (p.b_col != 1u) { n = i / BK; kb = i % BK; }  // B stored (N, K): along k
            var vb = 0.0;
            if (kb + k0 < p.k && n0 + n < p.n) { vb = b[b_base + (k0 + kb) * p.b_row + (n0 + n) * p.b_col]; }
            b_tile[kb * 16u + n / 4u][n % 4u] = vb;
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            let av = a_tile[k * 16u + ty];  // op(A)[m0 + 4ty .. +3, k0 + k]
            let bv = b_tile[k * 16u + tx];  // op(B)[k0 + k, n0 + 4tx .. +3]
            c0 += av.x * bv;
            c1 += av.y * bv;
            c2 += av.z * bv;
            c3 += av.w * bv;
        }
        workgroupBarrier();
    }
    let n = n0 + 4u * tx;
    store_row(bi, m0 + 4u * ty, n, c0);
    store_row(bi, m0 + 4u * ty + 1u, n, c1);
    store_row(bi, m0 + 4u * ty + 2u, n, c2);
    store_row(bi, m0 + 4u * ty + 3u, n, c3);
}

fn store_row(bi: u32, row: u32, n0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    let o = (bi * p.m + row) * p.n;
    for (var j = 0u; j < 4u; j++) {
        let col = n0 + j;
        if (col < p.n) {
            var bj = 0.0;
            if (p.has_bias == 1u) { bj = bias[col]; }
            out[o + col] = v[j] + bj;
        }
    }
}
