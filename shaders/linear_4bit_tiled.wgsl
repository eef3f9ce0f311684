// Fused 4-bit linear for real GPUs, training shapes: 64×64 output tiles in workgroup memory,
// 4×4 register tiles per invocation (the shape of shaders/matmul_tiled.wgsl).
//   forward     y[r, o]  = Σ_i x[r, i]  · W[o, i]      (M = rows, N = out, K = in)
//   backward_x  dx[r, i] = Σ_o dy[r, o] · W[o, i]      (M = rows, N = in,  K = out)
//   W[o, i] = table[q_e] · absmax(e / blocksize),  e = o·in + i  (see dequant.wgsl for the decode)
// Per K step of 32, each of the 256 invocations decodes ONE packed word (8 weights, one absmax)
// into the workgroup's W tile, which then serves all 64 rows of the tile: W is decoded once per
// row tile, never per row, and never reaches global memory.
//   forward:   W tile = W[n0 .. n0+64, k0 .. k0+32]: invocation t decodes row n0 + t/4, word t%4;
//   backward:  W tile = W[k0 .. k0+32, n0 .. n0+64]: invocation t decodes row k0 + t/8, word t%8.
// Word path when in % 8 == 0 (every word inside one W row); otherwise 8 single elements.
// Nibble order: element 8w + j is byte j/2 of the word (bits 8·(j/2)), HIGH nibble for even j.

struct Params {
    n: u32,             // numel of W = out · in
    blocksize: u32,     // elements per absmax block
    nested: u32,        // 1: double-quantized absmax
    offset: f32,        // mean of the absmax (double quantization only)
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    tiles_m: u32,       // row tiles of 64
}

const NESTED_BLOCKSIZE: u32 = 256u;
const TK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;        // (ceil(n/2) bytes)
@group(0) @binding(2) var<storage, read> absmax_words: array<u32>;  // (blocks) f32 bits or bytes
@group(0) @binding(3) var<storage, read> nested_absmax: array<f32>; // (ceil(blocks/256)) or (1)
@group(0) @binding(4) var<storage, read> tables: array<f32>;        // (16 + 256)
@group(0) @binding(5) var<storage, read> a: array<f32>;             // (rows, in) x | (rows, out) dy
@group(0) @binding(6) var<storage, read_write> c: array<f32>;       // (rows, out) y | (rows, in) dx

var<workgroup> a_tile: array<array<f32, 64>, TK>;  // (k, m)
var<workgroup> w_tile: array<array<f32, 64>, TK>;  // (k, n)

fn absmax_of(b: u32) -> f32 {
    if (p.nested == 0u) {
        return bitcast<f32>(absmax_words[b]);
    }
    let code = (absmax_words[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
    return tables[16u + code] * nested_absmax[b / NESTED_BLOCKSIZE] + p.offset;
}

fn weight(e: u32) -> f32 {
    let byte = (packed[e >> 3u] >> (((e >> 1u) & 3u) * 8u)) & 0xffu;
    let q = select(byte & 15u, byte >> 4u, (e & 1u) == 0u);
    return tables[q] * absmax_of(e / p.blocksize);
}

// W[o, i0 .. i0 + 8], zero past the edges (o ≥ out, i ≥ in).
fn decode8(o: u32, i0: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (o >= p.out_features) { return v; }
    let e0 = o * p.in_features + i0;
    if (p.in_features % 8u == 0u) {
        if (i0 >= p.in_features) { return v; }
        let word = packed[e0 >> 3u];
        let s = absmax_of(e0 / p.blocksize);
        for (var j = 0u; j < 8u; j++) {
            v[j] = tables[(word >> (8u * (j >> 1u) + 4u * (1u - (j & 1u)))) & 15u] * s;
        }
    } else {
        for (var j = 0u; j < 8u; j++) {
            if (i0 + j < p.in_features) { v[j] = weight(e0 + j); }
        }
    }
    return v;
}

// a_tile[k][m] = a[m0 + m, k0 + k] (a has `cols` columns), zero past the edges.
fn load_a(lid: u32, m0: u32, k0: u32, cols: u32) {
    for (var s = 0u; s < 8u; s++) {
        let idx = lid + 256u * s;  // 0 .. 2048 = 64 m × 32 k, k fastest
        let m = idx / TK;
        let k = idx % TK;
        var v = 0.0;
        if (m0 + m < p.rows && k0 + k < cols) { v = a[(m0 + m) * cols + k0 + k]; }
        a_tile[k][m] = v;
    }
}

fn tile_row0(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.z * nwg.y + wid.y) * 64u;
}

// acc (4×4 at rows m0 + 4ty, columns n0 + 4tx) += a_tile · w_tile over one K step.
fn multiply(acc: ptr<function, array<vec4<f32>, 4>>, ty: u32, tx: u32) {
    for (var k = 0u; k < TK; k++) {
        let b = vec4<f32>(w_tile[k][4u * tx], w_tile[k][4u * tx + 1u], w_tile[k][4u * tx + 2u],
                          w_tile[k][4u * tx + 3u]);
        for (var i = 0u; i < 4u; i++) {
            (*acc)[i] += a_tile[k][4u * ty + i] * b;
        }
    }
}

fn store(acc: ptr<function, array<vec4<f32>, 4>>, m0: u32, n0: u32, ty: u32, tx: u32, cols: u32) {
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + 4u * ty + i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + 4u * tx + j;
            if (row < p.rows && col < cols) { c[row * cols + col] = (*acc)[i][j]; }
        }
    }
}

@compute @workgroup_size(256)
fn linear_4bit_tiled_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let m0 = tile_row0(wid, nwg);  // uniform; past the last row tile nothing is stored
    let n0 = wid.x * 64u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.in_features; k0 += TK) {
        load_a(lid, m0, k0, p.in_features);
        let o = lid / 4u;
        let v = decode8(n0 + o, k0 + 8u * (lid % 4u));  // W[n0 + o, k0 + 8(t%4) ..+8]
        for (var j = 0u; j < 8u; j++) {
            w_tile[8u * (lid % 4u) + j][o] = v[j];
        }
        workgroupBarrier();
        multiply(&acc, ty, tx);
        workgroupBarrier();
    }
    store(&acc, m0, n0, ty, tx, p.out_features);
}

@compute @workgroup_size(256)
fn linear_4bit_tiled_backward_x(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let m0 = tile_row0(wid, nwg);
    let n0 = wid.x * 64u;  // first input column i
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.out_features; k0 += TK) {
        load_a(lid, m0, k0, p.out_features);
        let k = lid / 8u;
        let v = decode8(k0 + k, n0 + 8u * (lid % 8u));  // W[k0 + k, n0 + 8(t%8) ..+8]
        for (var j = 0u; j < 8u; j++) {
            w_tile[k][8u * (lid % 8u) + j] = v[j];
        }
        workgroupBarrier();
        multiply(&acc, ty, tx);
        workgroupBarrier();
    }
    store(&acc, m0, n0, ty, tx, p.in_features);
}
