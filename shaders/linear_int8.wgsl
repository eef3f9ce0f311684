// Int8 rowwise linear (LLM.int8's simple baseline, no outliers): y = x · dequant(Wq)ᵀ and its
// input gradient dx = dy · dequant(Wq), W decoded in registers (never written to memory).
// W is [out, in] (nn.Linear), int8 codes row-major, four to a u32 word (byte k of the flat weight
// is bits 8·(k mod 4) of word k / 4), with one f32 absmax per row (bitsandbytes' SCB):
//   w[o, i] = f32(q[o, i]) · row_stats[o] · inv_127        (in that order, as the host does)
// Each invocation owns R = 4 rows of x/dy and one column, so each decoded weight is used 4 times.
// The reference is the f64 host dequantization then matmul (src/ops/linear_int8.rs, tests compare).
// This is the simple fused kernel, the reference of the per-regime ones (linear_int8_*.wgsl).

struct Params {
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    inv_127: f32,       // bitsandbytes' f32 constant 1/127
    tiles_m: u32,       // unused here
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

const WG: u32 = 256u;
const R: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;         // (out · in) int8, 4 per word
@group(0) @binding(2) var<storage, read> row_stats: array<f32>;     // (out)
@group(0) @binding(3) var<storage, read> a: array<f32>;             // (rows, in) x | (rows, out) dy
@group(0) @binding(4) var<storage, read_write> c: array<f32>;       // (rows, out) y | (rows, in) dx

// W[o, i], decoded: the byte sign-extended to i32 (shift it to the top, arithmetic shift back).
fn weight(o: u32, i: u32) -> f32 {
    let k = o * p.in_features + i;
    let byte = (codes[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
    let q = bitcast<i32>(byte << 24u) >> 24u;
    return f32(q) * row_stats[o] * p.inv_127;
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// y[r, o] = Σ_i x[r, i] · w[o, i]; thread t: o = t % out, rows 4·(t / out) ..+4.
@compute @workgroup_size(256)
fn linear_int8_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.out_features) { return; }
    let o = t % p.out_features;
    let r0 = (t / p.out_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < p.in_features; i++) {
        let wv = weight(o, i);
        for (var j = 0u; j < nr; j++) {
            acc[j] += a[(r0 + j) * p.in_features + i] * wv;
        }
    }
    for (var j = 0u; j < nr; j++) {
        c[(r0 + j) * p.out_features + o] = acc[j];
    }
}

// dx[r, i] = Σ_o dy[r, o] · w[o, i]; thread t: i = t % in, rows 4·(t / in) ..+4.
@compute @workgroup_size(256)
fn linear_int8_backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.in_features) { return; }
    let i = t % p.in_features;
    let r0 = (t / p.in_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var o = 0u; o < p.out_features; o++) {
        let wv = weight(o, i);
        for (var j = 0u; j < nr; j++) {
            acc[j] += a[(r0 + j) * p.out_features + o] * wv;
        }
    }
    for (var j = 0u; j < nr; j++) {
        c[(r0 + j) * p.in_features + i] = acc[j];
    }
}
