// Causal multi-head self-attention, forward, flash-style: one invocation per query row (b, h, t).
// q, k, v are read straight out of c_attn's output qkv (B, T, 3C) = [q | k | v] along the last
// dim, head h at channels h·HS..(h+1)·HS inside each, and y is written with heads merged (B, T, C):
// no head split or merge copies. Keys 0..P are the prefix (shared over the batch, seen by every
// query), keys P..P+T the real tokens (query t sees real tokens 0..t).
//   s_j = (q·k_j)/√HS + mask[b, j]     y = Σ_j e^{s_j − lse} v_j     lse = log Σ_j e^{s_j}
// Online softmax over blocks of KB keys: running max m and sum l; the accumulator is rescaled by
// e^{m_old − m_new} once per block, not once per key. No workgroup memory, no barriers: on a CPU
// driver (lavapipe) each invocation is one SIMD lane and private arrays stay in its registers/stack.
// Also here: row_stats and prefix_sum, the two small backward kernels (see attention_backward.wgsl).
// NOTE: m starts at −3e38 (finite), so a block of fully masked scores never computes
// −inf − (−inf) = NaN; a row with no weight at all writes y = 0 and lse = +3e38 (p = 0 in backward).

struct Params {
    batch: u32,
    seq: u32,          // T
    n_head: u32,       // NH
    head_size: u32,    // HS ≤ MAX_HS
    n_prefix: u32,     // P
    has_mask: u32,     // 1: add mask[b, j] to every score of key column j
    prefix_grad: u32,  // backward only: 1 when the prefix keys/values need gradients
    scale: f32,        // 1/√HS
}

const WG: u32 = 64u;
const KB: u32 = 16u;       // keys per online-softmax block
const MAX_HS: u32 = 128u;  // = attention.rs MAX_HEAD_SIZE
const NEG_BIG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;       // (B, T, 3C)
@group(0) @binding(2) var<storage, read> prefix_k: array<f32>;  // (P, C); any buffer when P = 0
@group(0) @binding(3) var<storage, read> prefix_v: array<f32>;  // (P, C)
@group(0) @binding(4) var<storage, read> mask: array<f32>;      // (B, P+T); any buffer if unused
@group(0) @binding(5) var<storage, read_write> y: array<f32>;   // (B, T, C)
@group(0) @binding(6) var<storage, read_write> lse: array<f32>; // (B, NH, T)

var<private> q: array<f32, MAX_HS>;    // this row's query, pre-multiplied by 1/√HS
var<private> acc: array<f32, MAX_HS>;  // Σ_j e^{s_j − m} v_j

// Start of key/value j's head-h slice: (row of prefix_k/prefix_v) for j < P, else (row of qkv).
fn prefix_base(h: u32, j: u32) -> u32 {
    return j * p.n_head * p.head_size + h * p.head_size;
}
fn token_base(b: u32, h: u32, j: u32) -> u32 {
    let c = p.n_head * p.head_size;
    return (b * p.seq + j - p.n_prefix) * 3u * c + h * p.head_size;  // + C for k, + 2C for v
}

fn score(b: u32, h: u32, j: u32) -> f32 {
    let c = p.n_head * p.head_size;
    var s = 0.0;
    if (j < p.n_prefix) {
        let base = prefix_base(h, j);
        for (var d = 0u; d < p.head_size; d++) { s += q[d] * prefix_k[base + d]; }
    } else {
        let base = token_base(b, h, j) + c;
        for (var d = 0u; d < p.head_size; d++) { s += q[d] * qkv[base + d]; }
    }
    if (p.has_mask != 0u) { s += mask[b * (p.n_prefix + p.seq) + j]; }
    return s;
}

fn add_value(b: u32, h: u32, j: u32, w: f32) {
    let c = p.n_head * p.head_size;
    if (j < p.n_prefix) {
        let base = prefix_base(h, j);
        for (var d = 0u; d < p.head_size; d++) { acc[d] += w * prefix_v[base + d]; }
    } else {
        let base = token_base(b, h, j) + 2u * c;
        for (var d = 0u; d < p.head_size; d++) { acc[d] += w * qkv[base + d]; }
    }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = (wid.y * nwg.x + wid.x) * WG + lid;  // ((b·NH + h)·T + t)
    if (row >= p.batch * p.n_head * p.seq) { return; }
    let t = row % p.seq;
    let h = (row / p.seq) % p.n_head;
    let b = row / (p.seq * p.n_head);
    let c = p.n_head * p.head_size;
    let q_base = (b * p.seq + t) * 3u * c + h * p.head_size;
    for (var d = 0u; d < p.head_size; d++) {
        q[d] = qkv[q_base + d] * p.scale;
        acc[d] = 0.0;
    }
    let n_keys = p.n_prefix + t + 1u;  // every prefix key, then real tokens 0..t
    var m = NEG_BIG;
    var l = 0.0;
    var s: array<f32, KB>;
    for (var j0 = 0u; j0 < n_keys; j0 += KB) {
        let kb = min(KB, n_keys - j0);
        var m_new = m;
        for (var i = 0u; i < kb; i++) {
            s[i] = score(b, h, j0 + i);
            m_new = max(m_new, s[i]);
        }
        let correction = exp(m - m_new);  // 0 on the first block
        l *= correction;
        for (var d = 0u; d < p.head_size; d++) { acc[d] *= correction; }
        m = m_new;
        for (var i = 0u; i < kb; i++) {
            let w = exp(s[i] - m);
            l += w;
            add_value(b, h, j0 + i, w);
        }
    }
    let y_base = (b * p.seq + t) * c + h * p.head_size;
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var d = 0u; d < p.head_size; d++) { y[y_base + d] = acc[d] * inv_l; }
    lse[row] = select(-NEG_BIG, m + log(l), l > 0.0);
}

// Two small backward kernels live here to keep attention_backward.wgsl short.
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// ---- row_stats: stats[r] = (lse_r, D_r), r = (b·NH + h)·T + t ----
@group(0) @binding(1) var<storage, read> y_in: array<f32>;           // (B, T, C)
@group(0) @binding(2) var<storage, read> dy_in: array<f32>;          // (B, T, C)
@group(0) @binding(3) var<storage, read> lse_in: array<f32>;         // (B, NH, T)
@group(0) @binding(4) var<storage, read_write> stats_out: array<f32>; // (B, NH, T, 2)

@compute @workgroup_size(WG)
fn row_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = flat(wid, nwg, lid);
    if (row >= p.batch * p.n_head * p.seq) { return; }
    let t = row % p.seq;
    let h = (row / p.seq) % p.n_head;
    let b = row / (p.seq * p.n_head);
    let base = (b * p.seq + t) * p.n_head * p.head_size + h * p.head_size;
    var dsum = 0.0;
    for (var d = 0u; d < p.head_size; d++) { dsum += dy_in[base + d] * y_in[base + d]; }
    stats_out[2u * row] = lse_in[row];
    stats_out[2u * row + 1u] = dsum;
}

// ---- prefix_sum: d_keys[i] = Σ_b dprefix[b, 0, i], d_values[i] = Σ_b dprefix[b, 1, i] ----
@group(0) @binding(1) var<storage, read> dprefix_in: array<f32>;      // (B, 2, P, C)
@group(0) @binding(2) var<storage, read_write> d_keys: array<f32>;    // (P, C)
@group(0) @binding(3) var<storage, read_write> d_values: array<f32>;  // (P, C)

@compute @workgroup_size(WG)
fn prefix_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    let pc = p.n_prefix * p.n_head * p.head_size;
    if (i >= pc) { return; }
    var dk = 0.0;
    var dv = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        dk += dprefix_in[2u * b * pc + i];
        dv += dprefix_in[(2u * b + 1u) * pc + i];
    }
    d_keys[i] = dk;
    d_values[i] = dv;
}
