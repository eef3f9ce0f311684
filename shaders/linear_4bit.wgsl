// Fused 4-bit linear: y = x · dequant(Wq)ᵀ and its input gradient dx = dy · dequant(Wq), with W
// decoded in registers (never written to memory). W is [out, in] (nn.Linear), bitsandbytes' NF4/FP4
// state (see dequant.wgsl for the decode): w[o, i] = table[q_{o·in+i}] · absmax((o·in+i) / blocksize).
// Each invocation owns R = 4 rows of x/dy and one column, so each decoded weight is used 4 times.
// The plain reference is dequantize_4bit then matmul_t (src/ops/linear_4bit.rs, tests compare).
// This is the simple fused kernel, the reference of the per-regime ones (linear_4bit_*.wgsl).

struct Params {
    n: u32,             // numel of W = out · in
    blocksize: u32,     // elements per absmax block
    nested: u32,        // 1: double-quantized absmax
    offset: f32,        // mean of the absmax (double quantization only)
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    tiles_m: u32,       // unused here
}

const WG: u32 = 256u;
const R: u32 = 4u;
const NESTED_BLOCKSIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;        // (ceil(n/2) bytes)
@group(0) @binding(2) var<storage, read> absmax_words: array<u32>;  // (blocks) f32 bits or bytes
@group(0) @binding(3) var<storage, read> nested_absmax: array<f32>; // (ceil(blocks/256)) or (1)
@group(0) @binding(4) var<storage, read> tables: array<f32>;        // (16 + 256)
@group(0) @binding(5) var<storage, read> a: array<f32>;             // (rows, in) x | (rows, out) dy
@group(0) @binding(6) var<storage, read_write> c: array<f32>;       // (rows, out) y | (rows, in) dx

fn absmax_of(b: u32) -> f32 {
    if (p.nested == 0u) {
        return bitcast<f32>(absmax_words[b]);
    }
    let code = (absmax_words[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
    return tables[16u + code] * nested_absmax[b / NESTED_BLOCKSIZE] + p.offset;
}

// W's flat element k, decoded.
fn weight(k: u32) -> f32 {
    let byte = (packed[k >> 3u] >> (((k >> 1u) & 3u) * 8u)) & 0xffu;
    let q = select(byte & 15u, byte >> 4u, (k & 1u) == 0u);
    return tables[q] * absmax_of(k / p.blocksize);
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// y[r, o] = Σ_i x[r, i] · w[o, i]; thread t: o = t % out, rows 4·(t / out) ..+4.
@compute @workgroup_size(256)
fn linear_4bit_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.out_features) { return; }
    let o = t % p.out_features;
    let r0 = (t / p.out_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < p.in_features; i++) {
        let wv = weight(o * p.in_features + i);
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
fn linear_4bit_backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.in_features) { return; }
    let i = t % p.in_features;
    let r0 = (t / p.in_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var o = 0u; o < p.out_features; o++) {
        let wv = weight(o * p.in_features + i);
        for (var j = 0u; j < nr; j++) {
            acc[j] += a[(r0 + j) * p.out_features + o] * wv;
        }
    }
    for (var j = 0u; j < nr; j++) {
        c[(r0 + j) * p.in_features + i] = acc[j];
    }
}
