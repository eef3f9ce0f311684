// Matrix products C = op(A)·op(B) (+ bias), batched. op(X) is X or Xᵀ, read in place through
// strides (never a transpose copy); see src/ops/matmul.rs for the math and the backward.
//   op(A): (M, K) at a[bi·a_batch + m·a_row + k·a_col]
//   op(B): (K, N) at b[bi·b_batch + k·b_row + n·b_col]     (b_batch = 0: b broadcast)
//   C:     (M, N) at out[bi·M·N + m·N + n]                 C += bias[n] when has_bias = 1
// Two kernels here, both without workgroup memory (the CPU-driver regime):
//   matmul_naive           one output per invocation: the reference (llm.c's kernel 1).
//   matmul_register_tiled  TM×TN = 4×4 outputs per invocation, needing no optional feature. The
//                          invocations of a workgroup share their TM rows of A (addresses uniform
//                          over the workgroup, which a driver may turn into one broadcast load;
//                          lavapipe 25.0.7 measured no gain from it, nor from 8×4, 8×8 or vec4
//                          tiles). matmul_subgroup.wgsl is lavapipe's fast kernel.
// Workgroups: x over column tiles, (y, z) over the folded (batch, row tile) index t = z·ny + y,
// which keeps every dispatch dimension under 65,535.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,     // number of C matrices
    a_batch: u32,   // elements between consecutive A matrices (0: broadcast)
    b_batch: u32,   // elements between consecutive B matrices (0: broadcast)
    a_row: u32,     // stride of m in op(A)
    a_col: u32,     // stride of k in op(A)
    b_row: u32,     // stride of k in op(B)
    b_col: u32,     // stride of n in op(B)
    has_bias: u32,  // 1: add bias[n] in the epilogue
    tiles_m: u32,   // row tiles per matrix
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // (batch?, M, K) or (batch?, K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (batch?, K, N) or (batch?, N, K)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N), or any buffer when has_bias = 0
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (batch, M, N)

fn bias_at(n: u32) -> f32 {
    if (p.has_bias == 1u) { return bias[n]; }
    return 0.0;
}

@compute @workgroup_size(16, 16)
fn matmul_naive(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    let row = (t % p.tiles_m) * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    if (bi >= p.batch || row >= p.m || col >= p.n) { return; }
    let a0 = bi * p.a_batch + row * p.a_row;
    let b0 = bi * p.b_batch + col * p.b_col;
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc += a[a0 + k * p.a_col] * b[b0 + k * p.b_row];
    }
    out[(bi * p.m + row) * p.n + col] = acc + bias_at(col);
}

const TM: u32 = 4u;   // rows per invocation (shared by the workgroup)
const TN: u32 = 4u;   // columns per invocation
const WG: u32 = 64u;  // invocations per workgroup, side by side along N

// Stores one row of the register tile, bounds-checked, with the bias epilogue.
fn store_row(bi: u32, row: u32, n0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    let o = (bi * p.m + row) * p.n;
    for (var j = 0u; j < TN; j++) {
        let col = n0 + j;
        if (col < p.n) { out[o + col] = v[j] + bias_at(col); }
    }
}

@compute @workgroup_size(64)
fn matmul_register_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    let m0 = (t % p.tiles_m) * TM;         // uniform over the workgroup
    let n0 = (wid.x * WG + lid) * TN;      // this invocation's first column
    if (bi >= p.batch || n0 >= p.n) { return; }
    // Edge rows/columns are clamped so every load is in bounds; their sums are never stored.
    let a0 = bi * p.a_batch + min(m0, p.m - 1u) * p.a_row;
    let a1 = bi * p.a_batch + min(m0 + 1u, p.m - 1u) * p.a_row;
    let a2 = bi * p.a_batch + min(m0 + 2u, p.m - 1u) * p.a_row;
    let a3 = bi * p.a_batch + min(m0 + 3u, p.m - 1u) * p.a_row;
    let b0 = bi * p.b_batch + min(n0, p.n - 1u) * p.b_col;
    let b1 = bi * p.b_batch + min(n0 + 1u, p.n - 1u) * p.b_col;
    let b2 = bi * p.b_batch + min(n0 + 2u, p.n - 1u) * p.b_col;
    let b3 = bi * p.b_batch + min(n0 + 3u, p.n - 1u) * p.b_col;
    var c0 = vec4<f32>(0.0);  // row m0, columns n0..n0+3
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        let kb = k * p.b_row;
        let bk = vec4<f32>(b[b0 + kb], b[b1 + kb], b[b2 + kb], b[b3 + kb]);  // op(B)[k, n0..n0+3]
        let ka = k * p.a_col;
        c0 += a[a0 + ka] * bk;
        c1 += a[a1 + ka] * bk;
        c2 += a[a2 + ka] * bk;
        c3 += a[a3 + ka] * bk;
    }
    store_row(bi, m0, n0, c0);
    store_row(bi, m0 + 1u, n0, c1);
    store_row(bi, m0 + 2u, n0, c2);
    store_row(bi, m0 + 3u, n0, c3);
}

// A stored (batch?, R, S) copied to (batch?, S, R): the subgroup kernel then reads a B stored
// transposed (N, K) as rows (K, N) (src/ops/matmul.rs, `transpose_operand`):
//   xt[bi, s, r] = x[bi, r, s]      with R = p.n, S = p.k, p.b_batch = R·S.
// Invocation (r, s0): x over R in workgroups of 64, y over S in steps of 4, z over the batch, so
// there is no division per element (scalarised on a CPU driver, the slow part of a flat index).
// An exact copy: only the indexing can be wrong.
@group(0) @binding(1) var<storage, read> x_stored: array<f32>;       // (batch?, R, S)
@group(0) @binding(2) var<storage, read_write> x_t: array<f32>;      // (batch?, S, R)

@compute @workgroup_size(64)
fn matmul_transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.x * WG + lid;
    if (r >= p.n) { return; }
    let src = wid.z * p.b_batch + r * p.k;
    let dst = wid.z * p.b_batch + r;
    for (var s = wid.y * 4u; s < min(wid.y * 4u + 4u, p.k); s++) {
        x_t[dst + s * p.n] = x_stored[src + s];
    }
}
