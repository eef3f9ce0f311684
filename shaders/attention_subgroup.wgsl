enable subgroups;
// Causal attention forward for CPU drivers (lavapipe), same math, Params, bindings and layouts as
// attention.wgsl (see there). A workgroup is one subgroup of 8 lanes = 8 consecutive queries
// t0..t0+7 of one (b, h); they all need the same key/value rows, so each row is loaded once per
// subgroup: lane l loads elements d0 + l (8 lanes, one contiguous 32-byte segment) and the others
// get them by subgroupBroadcast, instead of 8 per-lane gathers of the whole row.
// NOTE: needs subgroups of exactly 8 (the Rust side checks the adapter); every branch around a
// broadcast depends only on the workgroup id, so control flow is subgroup-uniform (tint checks).
// NOTE: keys past a lane's own query (causal) are masked with w = 0, never by an early exit.
// Online softmax one key at a time (m, l and acc rescaled by e^{m_old − m_new} per key, 1 unless
// the max grew): measured 2× faster here than attention.wgsl's blocks of keys with a score array.
// NOTE: on lavapipe a private array indexed by a run-time value is not kept in registers (every
// access goes through memory, per lane): with HS from Params this kernel ran 2.5× slower. So the
// head loops run to a compile-time bound HM (the
// head size rounded up to 32, 64 or 128: one entry point each, `forward_body` inlined with a
// constant), are fully unrolled, and q/acc live in registers; dims HS..HM hold zeros.

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

const L: u32 = 8u;         // lanes = queries per workgroup
const MAX_HS: u32 = 128u;  // = attention.rs MAX_HEAD_SIZE, a multiple of 8
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;       // (B, T, 3C)
@group(0) @binding(2) var<storage, read> prefix_k: array<f32>;  // (P, C)
@group(0) @binding(3) var<storage, read> prefix_v: array<f32>;  // (P, C)
@group(0) @binding(4) var<storage, read> mask: array<f32>;      // (B, P+T)
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (B, T, C)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>; // (B, NH, T)

var<private> q: array<f32, MAX_HS>;    // this lane's query · 1/√HS, zero past HS
var<private> acc: array<f32, MAX_HS>;  // Σ_j e^{s_j − m} v_j

// Element d0 + lane of key (part = 1) or value (part = 2) row j, head h; clamped inside the row.
fn load(b: u32, h: u32, j: u32, part: u32, d0: u32, lane: u32) -> f32 {
    let c = p.n_head * p.head_size;
    let d = min(d0 + lane, p.head_size - 1u);
    if (j < p.n_prefix) {
        let i = j * c + h * p.head_size + d;
        if (part == 1u) { return prefix_k[i]; }
        return prefix_v[i];
    }
    return qkv[(b * p.seq + j - p.n_prefix) * 3u * c + part * c + h * p.head_size + d];
}

@compute @workgroup_size(L)
fn forward_subgroup_32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(subgroup_invocation_id) lane: u32) { forward_body(wid, nwg, lane, 32u); }
@compute @workgroup_size(L)
fn forward_subgroup_64(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(subgroup_invocation_id) lane: u32) { forward_body(wid, nwg, lane, 64u); }
@compute @workgroup_size(L)
fn forward_subgroup_128(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(subgroup_invocation_id) lane: u32) { forward_body(wid, nwg, lane, 128u); }

// hm: HS rounded up to the entry point's bound, a constant once inlined.
fn forward_body(wid: vec3<u32>, nwg: vec3<u32>, lane: u32, hm: u32) {
    let g = wid.y * nwg.x + wid.x;  // (b·NH + h)·tiles + tile
    let tiles = (p.seq + L - 1u) / L;
    let bh = g / tiles;
    if (bh >= p.batch * p.n_head) { return; }  // the whole workgroup: uniform
    let h = bh % p.n_head;
    let b = bh / p.n_head;
    let t0 = (g % tiles) * L;
    let t = min(t0 + lane, p.seq - 1u);  // lanes past T compute a copy of row T − 1, store nothing
    let hs = p.head_size;
    let c = p.n_head * hs;
    let q_base = (b * p.seq + t) * 3u * c + h * hs;
    for (var d = 0u; d < hm; d++) {
        q[d] = select(0.0, qkv[q_base + min(d, hs - 1u)] * p.scale, d < hs);
        acc[d] = 0.0;
    }
    let n_keys = p.n_prefix + min(t0 + L, p.seq);  // the last lane's keys: uniform
    let my_keys = p.n_prefix + t + 1u;
    var m = NEG_BIG;
    var l = 0.0;
    for (var j = 0u; j < n_keys; j++) {
        var x = 0.0;
        for (var d0 = 0u; d0 < hm; d0 += L) {
            let k = load(b, h, j, 1u, d0, lane);
            x += q[d0] * subgroupBroadcast(k, 0u) + q[d0 + 1u] * subgroupBroadcast(k, 1u)
               + q[d0 + 2u] * subgroupBroadcast(k, 2u) + q[d0 + 3u] * subgroupBroadcast(k, 3u)
               + q[d0 + 4u] * subgroupBroadcast(k, 4u) + q[d0 + 5u] * subgroupBroadcast(k, 5u)
               + q[d0 + 6u] * subgroupBroadcast(k, 6u) + q[d0 + 7u] * subgroupBroadcast(k, 7u);
        }
        if (p.has_mask != 0u) { x += mask[b * (p.n_prefix + p.seq) + j]; }
        let seen = j < my_keys;
        let m_new = select(m, max(m, x), seen);
        let correction = exp(m - m_new);  // 1 unless the max grew
        let w = select(0.0, exp(x - m_new), seen);
        l = l * correction + w;
        m = m_new;
        for (var d0 = 0u; d0 < hm; d0 += L) {
            let v = load(b, h, j, 2u, d0, lane);
            acc[d0] = acc[d0] * correction + w * subgroupBroadcast(v, 0u);
            acc[d0 + 1u] = acc[d0 + 1u] * correction + w * subgroupBroadcast(v, 1u);
            acc[d0 + 2u] = acc[d0 + 2u] * correction + w * subgroupBroadcast(v, 2u);
            acc[d0 + 3u] = acc[d0 + 3u] * correction + w * subgroupBroadcast(v, 3u);
            acc[d0 + 4u] = acc[d0 + 4u] * correction + w * subgroupBroadcast(v, 4u);
            acc[d0 + 5u] = acc[d0 + 5u] * correction + w * subgroupBroadcast(v, 5u);
            acc[d0 + 6u] = acc[d0 + 6u] * correction + w * subgroupBroadcast(v, 6u);
            acc[d0 + 7u] = acc[d0 + 7u] * correction + w * subgroupBroadcast(v, 7u);
        }
    }
    if (t0 + lane >= p.seq) { return; }  // after the last broadcast
    let y_base = (b * p.seq + t) * c + h * hs;
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < hm; d++) {
        if (d < hs) { y[y_base + d] = acc[d] * inv_l; }
    }
    lse[bh * p.seq + t] = select(-NEG_BIG, m + log(l), l > 0.0);
}
