// Matrix products with few rows, C = op(A)·op(B) (+ bias): decoding one token (M = 1) and other
// products of up to 8 rows. Same Params, bindings and layout as shaders/matmul.wgsl:
//   op(A): (M, K) at a[bi·a_batch + m·a_row + k·a_col]
//   op(B): (K, N) at b[bi·b_batch + k·b_row + n·b_col]     (b_batch = 0: b broadcast)
//   C:     (M, N) at out[bi·M·N + m·N + n]                 C += bias[n] when has_bias = 1
// Why: the big-shape kernels compute a tile of 16 to 128 rows whatever M is (the subgroup
// kernel's workgroup covers 128 rows), so at M = 1 nearly all their multiply-adds are thrown
// away. Here an invocation computes ONE column for R = 8 rows: every B value is loaded once per
// 8 rows and feeds only the rows that exist (the loop over rows stops at M), and the A values
// of a step k are the same for the whole workgroup (uniform addresses). Any M works (row tiles
// of 8 in y, folded with the batch as matmul.wgsl does); src/ops/matmul.rs picks this kernel for
// M ≤ 8.
// Two vec4 forms read B four values per load where the layout allows (loads whose address
// differs per lane are lavapipe's bottleneck), chosen by src/ops/matmul.rs:
//   matmul_matvec_nn4  B stored (K, N), N % 4 = 0: an invocation computes 4 adjacent columns;
//                      K is summed in order, as in matmul_matvec (the same bits);
//   matmul_matvec_nt4  B stored (N, K) (x·Wᵀ, the LM head) and A (M, K), K % 4 = 0: A and B
//                      both read 4 steps of k per load, summed as a dot of 4 then added
//                      (another order: f32 rounding only).
// NOTE: matmul_matvec sums K in order, one product at a time, as the other kernels do.

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
    tiles_m: u32,   // row tiles of R per matrix
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // (batch?, M, K) or (batch?, K, M)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (batch?, K, N) or (batch?, N, K)
@group(0) @binding(3) var<storage, read> bias: array<f32>;       // (N), or any buffer when has_bias = 0
@group(0) @binding(4) var<storage, read_write> out: array<f32>;  // (batch, M, N)

const R: u32 = 8u;  // rows per invocation

@compute @workgroup_size(64)
fn matmul_matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    let m0 = (t % p.tiles_m) * R;
    let col = wid.x * 64u + lid;
    if (bi >= p.batch || col >= p.n) { return; }
    let rows = min(R, p.m - m0);
    let a0 = bi * p.a_batch + m0 * p.a_row;
    let b0 = bi * p.b_batch + col * p.b_col;
    var acc: array<f32, R>;
    for (var k = 0u; k < p.k; k++) {
        let w = b[b0 + k * p.b_row];
        let ak = a0 + k * p.a_col;
        for (var r = 0u; r < rows; r++) {
            acc[r] += a[ak + r * p.a_row] * w;
        }
    }
    var bj = 0.0;
    if (p.has_bias == 1u) { bj = bias[col]; }
    for (var r = 0u; r < rows; r++) {
        out[(bi * p.m + m0 + r) * p.n + col] = acc[r] + bj;
    }
}

@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;   // a, 4 values per element (nt4)
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;   // b, 4 values per element
@group(0) @binding(4) var<storage, read_write> out4: array<vec4<f32>>;  // out, nn4 only

@compute @workgroup_size(64)
fn matmul_matvec_nn4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    let m0 = (t % p.tiles_m) * R;
    let col4 = wid.x * 64u + lid;  // columns 4·col4 .. 4·col4 + 3
    if (bi >= p.batch || 4u * col4 >= p.n) { return; }
    let rows = min(R, p.m - m0);
    let a0 = bi * p.a_batch + m0 * p.a_row;
    let b0 = (bi * p.b_batch) / 4u + col4;
    let row4 = p.b_row / 4u;
    var acc: array<vec4<f32>, R>;
    for (var k = 0u; k < p.k; k++) {
        let w = b4[b0 + k * row4];
        let ak = a0 + k * p.a_col;
        for (var r = 0u; r < rows; r++) {
            acc[r] += a[ak + r * p.a_row] * w;
        }
    }
    var bj = vec4<f32>(0.0);
    if (p.has_bias == 1u) {
        let c = 4u * col4;
        bj = vec4<f32>(bias[c], bias[c + 1u], bias[c + 2u], bias[c + 3u]);
    }
    for (var r = 0u; r < rows; r++) {
        out4[((bi * p.m + m0 + r) * p.n) / 4u + col4] = acc[r] + bj;
    }
}

@compute @workgroup_size(64)
fn matmul_matvec_nt4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let t = wid.z * nwg.y + wid.y;
    let bi = t / p.tiles_m;
    let m0 = (t % p.tiles_m) * R;
    let col = wid.x * 64u + lid;
    if (bi >= p.batch || col >= p.n) { return; }
    let rows = min(R, p.m - m0);
    let a0 = (bi * p.a_batch + m0 * p.a_row) / 4u;
    let b0 = (bi * p.b_batch + col * p.b_col) / 4u;  // row col of the stored (N, K)
    let row4 = p.a_row / 4u;
    var acc: array<f32, R>;
    for (var k4 = 0u; k4 < p.k / 4u; k4++) {
        let w = b4[b0 + k4];
        for (var r = 0u; r < rows; r++) {
            acc[r] += dot(a4[a0 + r * row4 + k4], w);
        }
    }
    var bj = 0.0;
    if (p.has_bias == 1u) { bj = bias[col]; }
    for (var r = 0u; r < rows; r++) {
        out[(bi * p.m + m0 + r) * p.n + col] = acc[r] + bj;
    }
}
