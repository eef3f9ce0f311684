// Causal multi-head self-attention, backward (FlashAttention-2 split: deterministic, no atomics).
// With p_tj = e^{s_tj − lse_t} recomputed from the saved logsumexp and dy = dL/dy:
//   D_t   = Σ_d dy_t·y_t   (= Σ_j p_tj·(dy_t·v_j); row_stats in attention.wgsl writes (lse_t, D_t))
//   ds_tj = p_tj·(dy_t·v_j − D_t)
//   dq_t  = (1/√HS)·Σ_j ds_tj k_j              one invocation per query row   backward_dq
//   dk_j  = (1/√HS)·Σ_t ds_tj q_t              one invocation per key j       backward_dkv
//   dv_j  = Σ_t p_tj dy_t                      (prefix keys included: all t see them)
// Prefix gradients are written per batch row into dprefix (B, 2, P, C) and summed over b in a
// fixed order by prefix_sum (attention.wgsl, with row_stats). Layouts and Params as there.

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

const WG: u32 = 64u;
const MAX_HS: u32 = 128u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- backward_dq and backward_dkv share these inputs ----
@group(0) @binding(1) var<storage, read> qkv: array<f32>;        // (B, T, 3C)
@group(0) @binding(2) var<storage, read> prefix_k: array<f32>;   // (P, C)
@group(0) @binding(3) var<storage, read> prefix_v: array<f32>;   // (P, C)
@group(0) @binding(4) var<storage, read> mask: array<f32>;       // (B, P+T)
@group(0) @binding(5) var<storage, read> dy: array<f32>;         // (B, T, C)
@group(0) @binding(6) var<storage, read> stats: array<f32>;      // (B, NH, T, 2)
@group(0) @binding(7) var<storage, read_write> dqkv: array<f32>; // (B, T, 3C)
@group(0) @binding(8) var<storage, read_write> dprefix: array<f32>; // (B, 2, P, C)

var<private> a: array<f32, MAX_HS>;   // dq: the query (scaled);  dkv: k_j
var<private> g: array<f32, MAX_HS>;   // dq: dy_t;                dkv: v_j
var<private> da: array<f32, MAX_HS>;  // dq: Σ ds·k;              dkv: Σ ds·q
var<private> dg: array<f32, MAX_HS>;  //                          dkv: Σ p·dy

// Start of key/value j's head-h slice in prefix_k/prefix_v (j < P) or in qkv's q part (j ≥ P).
fn prefix_base(h: u32, j: u32) -> u32 { return j * p.n_head * p.head_size + h * p.head_size; }
fn token_base(b: u32, h: u32, j: u32) -> u32 {
    return (b * p.seq + j - p.n_prefix) * 3u * p.n_head * p.head_size + h * p.head_size;
}
fn mask_at(b: u32, j: u32) -> f32 {
    return select(0.0, mask[b * (p.n_prefix + p.seq) + j], p.has_mask != 0u);
}

@compute @workgroup_size(WG)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = flat(wid, nwg, lid);
    if (row >= p.batch * p.n_head * p.seq) { return; }
    let t = row % p.seq;
    let h = (row / p.seq) % p.n_head;
    let b = row / (p.seq * p.n_head);
    let c = p.n_head * p.head_size;
    let q_base = (b * p.seq + t) * 3u * c + h * p.head_size;
    let dy_base = (b * p.seq + t) * c + h * p.head_size;
    for (var d = 0u; d < p.head_size; d++) {
        a[d] = qkv[q_base + d] * p.scale;
        g[d] = dy[dy_base + d];
        da[d] = 0.0;
    }
    let lse_t = stats[2u * row];
    let d_t = stats[2u * row + 1u];
    for (var j = 0u; j < p.n_prefix + t + 1u; j++) {
        var s = mask_at(b, j);
        var dp = 0.0;
        if (j < p.n_prefix) {
            let base = prefix_base(h, j);
            for (var d = 0u; d < p.head_size; d++) {
                s += a[d] * prefix_k[base + d];
                dp += g[d] * prefix_v[base + d];
            }
            let ds = exp(s - lse_t) * (dp - d_t);
            for (var d = 0u; d < p.head_size; d++) { da[d] += ds * prefix_k[base + d]; }
        } else {
            let base = token_base(b, h, j);
            for (var d = 0u; d < p.head_size; d++) {
                s += a[d] * qkv[base + c + d];
                dp += g[d] * qkv[base + 2u * c + d];
            }
            let ds = exp(s - lse_t) * (dp - d_t);
            for (var d = 0u; d < p.head_size; d++) { da[d] += ds * qkv[base + c + d]; }
        }
    }
    for (var d = 0u; d < p.head_size; d++) { dqkv[q_base + d] = da[d] * p.scale; }
}

@compute @workgroup_size(WG)
fn backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let key = flat(wid, nwg, lid);  // ((b·NH + h)·(P+T) + j)
    let n_keys = p.n_prefix + p.seq;
    if (key >= p.batch * p.n_head * n_keys) { return; }
    let j = key % n_keys;
    let h = (key / n_keys) % p.n_head;
    let b = key / (n_keys * p.n_head);
    let is_prefix = j < p.n_prefix;
    if (is_prefix && p.prefix_grad == 0u) { return; }
    let c = p.n_head * p.head_size;
    for (var d = 0u; d < p.head_size; d++) {
        if (is_prefix) {
            a[d] = prefix_k[prefix_base(h, j) + d];
            g[d] = prefix_v[prefix_base(h, j) + d];
        } else {
            a[d] = qkv[token_base(b, h, j) + c + d];
            g[d] = qkv[token_base(b, h, j) + 2u * c + d];
        }
        da[d] = 0.0;
        dg[d] = 0.0;
    }
    let mask_j = mask_at(b, j);
    // Prefix keys are seen by every query; real key j − P by queries t ≥ j − P.
    for (var t = select(j - p.n_prefix, 0u, is_prefix); t < p.seq; t++) {
        let q_base = (b * p.seq + t) * 3u * c + h * p.head_size;
        let dy_base = (b * p.seq + t) * c + h * p.head_size;
        let row = (b * p.n_head + h) * p.seq + t;
        var qk = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < p.head_size; d++) {
            qk += qkv[q_base + d] * a[d];
            dp += dy[dy_base + d] * g[d];
        }
        let prob = exp(qk * p.scale + mask_j - stats[2u * row]);
        let ds = prob * (dp - stats[2u * row + 1u]);
        for (var d = 0u; d < p.head_size; d++) {
            da[d] += ds * qkv[q_base + d];
            dg[d] += prob * dy[dy_base + d];
        }
    }
    for (var d = 0u; d < p.head_size; d++) {
        if (is_prefix) {
            let base = (2u * b * p.n_prefix + j) * c + h * p.head_size;  // [b, 0, j, h·HS + d]
            dprefix[base + d] = da[d] * p.scale;
            dprefix[base + p.n_prefix * c + d] = dg[d];                // [b, 1, j, h·HS + d]
        } else {
            dqkv[token_base(b, h, j) + c + d] = da[d] * p.scale;
            dqkv[token_base(b, h, j) + 2u * c + d] = dg[d];
        }
    }
}
