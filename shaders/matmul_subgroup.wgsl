enable subgroups;
// Register-tiled matrix product for CPU drivers (lavapipe) that shares operands through subgroup
// broadcasts: C = op(A)·op(B) (+ bias), batched, with the same Params, bindings and layout as
// shaders/matmul.wgsl (see there and src/ops/matmul.rs).
// Why: lavapipe runs the 8 invocations of a subgroup as the 8 lanes of one AVX2 register, and
// every storage-buffer load whose address differs per lane becomes a per-lane (scalarised) gather
// on CPUs without fast gathers (AMD), costing far more than the FMAs it feeds. Here each lane
// loads ONE element of a B row segment and the other lanes get it by subgroupBroadcast (a
// register permute), so 8 lanes share 64 B values for the price of 8 lane loads.
// Layout: a subgroup owns a 16×64 tile of C: lane l computes rows m0 + l and m0 + 8 + l, all 64
// columns (R = 2 rows × C = 8 blocks of 8 columns: 128 accumulators per lane). The 8 subgroups
// of a 64-invocation workgroup stack along M: 128×64 per workgroup.
// NOTE: needs a subgroup size of exactly 8 made of consecutive invocations (lavapipe's); the
// Rust side selects this kernel only when the adapter reports subgroup sizes 8..8.
// NOTE: no early return: every lane must reach every subgroupBroadcast, so edge rows/columns are
// clamped for loading and only the stores are bounds-checked.
// NOTE: `enable subgroups;` is what the WGSL spec and tint require; naga 30 does not parse it
// yet, so src/ops/matmul.rs strips that one line before handing the source to wgpu.

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

const R: u32 = 2u;  // rows per lane, 8 apart
const C: u32 = 8u;  // blocks of 8 columns per subgroup

@compute @workgroup_size(64)
fn matmul_subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let t = wid.z * nwg.y + wid.y;
    // Past the last (batch, row tile): clamp to a valid batch and store nothing (no early return).
    let bi = min(t / p.tiles_m, p.batch - 1u);
    let m0 = (t % p.tiles_m) * (64u * R) + (lid / 8u) * (8u * R);  // this subgroup's first row
    let n0 = wid.x * (8u * C);
    var b_at: array<u32, C>;  // where this lane's column of block c starts in b
    for (var c = 0u; c < C; c++) {
        b_at[c] = bi * p.b_batch + min(n0 + 8u * c + lane, p.n - 1u) * p.b_col;
    }
    var a_at: array<u32, R>;  // where this lane's row r starts in a
    for (var r = 0u; r < R; r++) {
        a_at[r] = bi * p.a_batch + min(m0 + 8u * r + lane, p.m - 1u) * p.a_row;
    }
    var acc: array<array<vec4<f32>, 16>, R>;  // (R, 64 columns as 16 vec4)
    for (var k = 0u; k < p.k; k++) {
        var bk: array<vec4<f32>, 16>;  // op(B)[k, n0 .. n0 + 64]
        for (var c = 0u; c < C; c++) {
            let v = b[b_at[c] + k * p.b_row];  // lane l holds column n0 + 8c + l
            bk[2u * c] = vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                                   subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
            bk[2u * c + 1u] = vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                                        subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
        }
        for (var r = 0u; r < R; r++) {
            let x = a[a_at[r] + k * p.a_col];  // op(A)[m0 + 8r + lane, k]
            for (var j = 0u; j < 16u; j++) {
                acc[r][j] += x * bk[j];
            }
        }
    }
    if (t >= p.batch * p.tiles_m) { return; }
    for (var r = 0u; r < R; r++) {
        let row = m0 + 8u * r + lane;
        if (row >= p.m) { continue; }
        let o = (bi * p.m + row) * p.n;
        for (var j = 0u; j < 64u; j++) {
            let col = n0 + j;
            if (col < p.n) {
                var bj = 0.0;
                if (p.has_bias == 1u) { bj = bias[col]; }
                out[o + col] = acc[r][j / 4u][j % 4u] + bj;
            }
        }
    }
}
