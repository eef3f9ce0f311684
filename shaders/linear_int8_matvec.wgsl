// Fused int8 linear for few rows (decode: 1..8 rows of x), forward only:
//   y[r, o] = s_o · Σ_i x[r, i] · q[o, i],     s_o = row_stats[o] · inv_127
// (the row scale is constant along a W row, so it is applied once per output, after the sum).
// Bandwidth-bound: W is read once, 1 byte a weight (4× fewer bytes than f32).
// Three entry points, the same math, params and bindings:
//   linear_int8_matvec16   in % 16 == 0: one invocation per output o, all rows; a lane reads 16
//                          codes per load (vec4<u32>) and x as vec4, at the same address in every
//                          lane (a uniform, broadcast load on a CPU driver, where per-lane gathers
//                          are the cost: here one gather feeds 16 weights).
//   linear_int8_matvec     any in: the same with one u32 word (4 codes) per load when in % 4 == 0
//                          (W rows then start on a word), one code per load otherwise.
//   linear_int8_matvec_wg  one workgroup of 64 per output o: the invocations read consecutive
//                          words of W's row (coalesced on a GPU) and x, then a tree reduction.
// Byte order: code k of the flat weight is byte k % 4 of word k / 4 (unpack4xI8's component order).

struct Params {
    rows: u32,          // rows of x, 1..8
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    inv_127: f32,       // bitsandbytes' f32 constant 1/127
    tiles_m: u32,       // unused here
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

const R: u32 = 8u;  // rows at most
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;        // (out · in) int8, 4 per word
@group(0) @binding(2) var<storage, read> row_stats: array<f32>;    // (out)
@group(0) @binding(3) var<storage, read> x: array<f32>;            // (rows, in)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;      // (rows, out)
@group(0) @binding(1) var<storage, read> codes16: array<vec4<u32>>; // codes, 16 per element
@group(0) @binding(3) var<storage, read> x4: array<vec4<f32>>;      // x, 4 per element

var<workgroup> partial: array<array<f32, R>, WG>;  // (invocations, rows): the _wg reduction

// Code k of the flat weight, sign-extended.
fn code(k: u32) -> f32 {
    let byte = (codes[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
    return f32(bitcast<i32>(byte << 24u) >> 24u);
}

fn scale(o: u32) -> f32 {
    return row_stats[o] * p.inv_127;
}

// This invocation's share of Σ_i x[r, i] · q[o, i]: words (or codes) first, first + stride, ...
fn partial_sums(o: u32, first: u32, stride: u32) -> array<f32, R> {
    var acc: array<f32, R>;
    let k_in = p.in_features;
    if (k_in % 4u == 0u) {
        let row = o * (k_in / 4u);  // W row o's first word
        for (var w = first; w < k_in / 4u; w += stride) {
            let q = vec4<f32>(unpack4xI8(codes[row + w]));
            for (var r = 0u; r < p.rows; r++) {
                let xr = r * k_in + 4u * w;
                acc[r] += dot(vec4<f32>(x[xr], x[xr + 1u], x[xr + 2u], x[xr + 3u]), q);
            }
        }
    } else {
        for (var i = first; i < k_in; i += stride) {
            let q = code(o * k_in + i);
            for (var r = 0u; r < p.rows; r++) {
                acc[r] += x[r * k_in + i] * q;
            }
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn linear_int8_matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if (o >= p.out_features) { return; }
    let acc = partial_sums(o, 0u, 1u);
    let s = scale(o);
    for (var r = 0u; r < p.rows; r++) {
        y[r * p.out_features + o] = acc[r] * s;
    }
}

@compute @workgroup_size(64)
fn linear_int8_matvec16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if (o >= p.out_features) { return; }
    let k16 = p.in_features / 16u;
    let row = o * k16;  // W row o's first 16-code element
    var acc: array<vec4<f32>, R>;  // 4 partial sums per row, added up at the end
    for (var w = 0u; w < k16; w++) {
        let q = codes16[row + w];
        let q0 = vec4<f32>(unpack4xI8(q.x));
        let q1 = vec4<f32>(unpack4xI8(q.y));
        let q2 = vec4<f32>(unpack4xI8(q.z));
        let q3 = vec4<f32>(unpack4xI8(q.w));
        for (var r = 0u; r < p.rows; r++) {
            let xr = r * (p.in_features / 4u) + 4u * w;  // x[r, 16w] as a vec4 index
            acc[r] += x4[xr] * q0 + x4[xr + 1u] * q1 + x4[xr + 2u] * q2 + x4[xr + 3u] * q3;
        }
    }
    let s = scale(o);
    for (var r = 0u; r < p.rows; r++) {
        y[r * p.out_features + o] = dot(acc[r], vec4<f32>(1.0)) * s;
    }
}

@compute @workgroup_size(64)
fn linear_int8_matvec_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let o = wid.y * nwg.x + wid.x;  // uniform: the whole workgroup returns or none of it
    if (o >= p.out_features) { return; }
    partial[lid] = partial_sums(o, lid, WG);
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            for (var r = 0u; r < R; r++) {
                partial[lid][r] += partial[lid + half][r];
            }
        }
        workgroupBarrier();
    }
    if (lid < p.rows) {
        y[lid * p.out_features + o] = partial[0][lid] * scale(o);
    }
}
