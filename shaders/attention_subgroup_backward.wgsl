enable subgroups;
// Causal attention backward, dq, for CPU drivers (lavapipe): the math, Params, bindings and
// layouts of attention_backward.wgsl's backward_dq (see there), with the row sharing of
// attention_subgroup.wgsl. A workgroup is one subgroup of 8 lanes = 8 consecutive queries of one
// (b, h), looping over their keys. Each k_j, v_j row is loaded once: lane l loads elements d0 + l
// and subgroupBroadcast hands them to the others, which keep k_j in `row_a` for the second use
// (da += ds·k_j). Causality is a ds = 0 mask. dk, dv: attention_subgroup_dkv.wgsl.
// NOTE: subgroups of exactly 8; every branch around a broadcast depends only on the workgroup id.
// NOTE: head loops run to a compile-time bound hm (32, 64 or 128; one entry point each) so they
// unroll and the private arrays stay in registers (why: attention_subgroup.wgsl).

struct Params {
    batch: u32,
    seq: u32,
    n_head: u32,
    head_size: u32,
    n_prefix: u32,
    has_mask: u32,
    prefix_grad: u32,
    scale: f32,
}

const L: u32 = 8u;
const MAX_HS: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;           // (B, T, 3C)
@group(0) @binding(2) var<storage, read> prefix_k: array<f32>;      // (P, C)
@group(0) @binding(3) var<storage, read> prefix_v: array<f32>;      // (P, C)
@group(0) @binding(4) var<storage, read> mask: array<f32>;          // (B, P+T)
@group(0) @binding(5) var<storage, read> dy: array<f32>;            // (B, T, C)
@group(0) @binding(6) var<storage, read> stats: array<f32>;         // (B, NH, T, 2): (lse, D)
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>;    // (B, T, 3C)

var<private> a: array<f32, MAX_HS>;      // the lane's query · 1/√HS, zero past HS
var<private> g: array<f32, MAX_HS>;      // the lane's dy_t
var<private> da: array<f32, MAX_HS>;     // Σ ds·k
var<private> row_a: array<f32, MAX_HS>;  // the shared rows: k_j
var<private> row_g: array<f32, MAX_HS>;  //                  v_j

// Index of key/value row j's element d (part 1 = k, 2 = v) in prefix_k/prefix_v (j < P) or qkv.
fn kv_index(b: u32, h: u32, j: u32, part: u32, d: u32) -> u32 {
    let c = p.n_head * p.head_size;
    if (j < p.n_prefix) { return j * c + h * p.head_size + d; }
    return (b * p.seq + j - p.n_prefix) * 3u * c + part * c + h * p.head_size + d;
}
fn kv_load(b: u32, h: u32, j: u32, part: u32, d: u32) -> f32 {
    let i = kv_index(b, h, j, part, d);
    if (j >= p.n_prefix) { return qkv[i]; }
    if (part == 1u) { return prefix_k[i]; }
    return prefix_v[i];
}
fn mask_at(b: u32, j: u32) -> f32 {
    return select(0.0, mask[b * (p.n_prefix + p.seq) + j], p.has_mask != 0u);
}

// row[d0 .. d0 + 8] = the 8 lanes' x (lane l holds element d0 + l); returns Σ mine[d]·row[d].
fn share(x: f32, d0: u32, to_a: bool) -> f32 {
    var r: array<f32, L>;
    r[0] = subgroupBroadcast(x, 0u); r[1] = subgroupBroadcast(x, 1u);
    r[2] = subgroupBroadcast(x, 2u); r[3] = subgroupBroadcast(x, 3u);
    r[4] = subgroupBroadcast(x, 4u); r[5] = subgroupBroadcast(x, 5u);
    r[6] = subgroupBroadcast(x, 6u); r[7] = subgroupBroadcast(x, 7u);
    var s = 0.0;
    for (var i = 0u; i < L; i++) {
        if (to_a) { row_a[d0 + i] = r[i]; s += a[d0 + i] * r[i]; }
        else { row_g[d0 + i] = r[i]; s += g[d0 + i] * r[i]; }
    }
    return s;
}

// da[d0 .. d0 + 8] += x·row_a[..], written out: a loop to hm would not be unrolled for hm = 64
// (lavapipe's unroll limit), and run-time indices leave registers.
fn update8(d0: u32, x: f32) {
    da[d0] += x * row_a[d0]; da[d0 + 1u] += x * row_a[d0 + 1u];
    da[d0 + 2u] += x * row_a[d0 + 2u]; da[d0 + 3u] += x * row_a[d0 + 3u];
    da[d0 + 4u] += x * row_a[d0 + 4u]; da[d0 + 5u] += x * row_a[d0 + 5u];
    da[d0 + 6u] += x * row_a[d0 + 6u]; da[d0 + 7u] += x * row_a[d0 + 7u];
}

// Flat workgroup index → (b·NH + h, first row of the tile); tiles of 8 over n rows.
fn tile(wid: vec3<u32>, nwg: vec3<u32>, n: u32) -> vec2<u32> {
    let grp = wid.y * nwg.x + wid.x;
    let tiles = (n + L - 1u) / L;
    return vec2<u32>(grp / tiles, (grp % tiles) * L);
}

@compute @workgroup_size(L)
fn backward_dq_subgroup_32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(subgroup_invocation_id) lane: u32) { dq_body(wid, nwg, lane, 32u); }
@compute @workgroup_size(L)
fn backward_dq_subgroup_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(subgroup_invocation_id) lane: u32) { dq_body(wid, nwg, lane, 64u); }
@compute @workgroup_size(L)
fn backward_dq_subgroup_128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(subgroup_invocation_id) lane: u32) { dq_body(wid, nwg, lane, 128u); }
fn dq_body(wid: vec3<u32>, nwg: vec3<u32>, lane: u32, hm: u32) {
    let tl = tile(wid, nwg, p.seq);
    let bh = tl.x;
    if (bh >= p.batch * p.n_head) { return; }  // the whole workgroup
    let h = bh % p.n_head;
    let b = bh / p.n_head;
    let t = min(tl.y + lane, p.seq - 1u);  // lanes past T redo row T − 1, store nothing
    let hs = p.head_size;
    let c = p.n_head * hs;
    let q_base = (b * p.seq + t) * 3u * c + h * hs;
    let dy_base = (b * p.seq + t) * c + h * hs;
    for (var d = 0u; d < hm; d++) {
        let dd = min(d, hs - 1u);
        a[d] = select(0.0, qkv[q_base + dd] * p.scale, d < hs);
        g[d] = select(0.0, dy[dy_base + dd], d < hs);
        da[d] = 0.0;
    }
    let row = bh * p.seq + t;
    let lse_t = stats[2u * row];
    let d_t = stats[2u * row + 1u];
    let my_keys = p.n_prefix + t + 1u;
    for (var j = 0u; j < p.n_prefix + min(tl.y + L, p.seq); j++) {
        var s = mask_at(b, j);
        var dp = 0.0;
        for (var d0 = 0u; d0 < hm; d0 += L) {
            let d = min(d0 + lane, hs - 1u);
            s += share(kv_load(b, h, j, 1u, d), d0, true);
            dp += share(kv_load(b, h, j, 2u, d), d0, false);
        }
        let ds = select(0.0, exp(s - lse_t) * (dp - d_t), j < my_keys);
        for (var d0 = 0u; d0 < hm; d0 += L) { update8(d0, ds); }
    }
    if (tl.y + lane >= p.seq) { return; }  // after the last broadcast
    for (var d = 0u; d < hm; d++) {
        if (d < hs) { dqkv[q_base + d] = da[d] * p.scale; }
    }
}
