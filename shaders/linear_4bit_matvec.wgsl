// Fused 4-bit linear for few rows (decode: 1..8 rows of x), forward only:
//   y[r, o] = Σ_i x[r, i] · W[o, i] = Σ_blocks absmax_b · Σ_{i in block} table[q_{o·in+i}] · x[r, i]
// (see dequant.wgsl for the decode). Bandwidth-bound: W is read once, 4 bits a weight.
// Two layouts, the same math and params:
//   linear_4bit_matvec       one invocation per output o, all rows: lanes walk their W rows in
//                            lock-step, so x[r, i] is the same address in every lane; codes are
//                            decoded by a tree of selects (a per-lane `tables[q]` is a gather on
//                            a CPU driver: 90 ms against 78 at the decode shape on lavapipe).
//                            The portable kernel; shaders/linear_4bit_matvec_subgroup.wgsl is
//                            lavapipe's (it also shares x, which lavapipe reads per lane).
//   linear_4bit_matvec_wg    one workgroup of 64 per output o: the invocations read consecutive
//                            words of W's row (coalesced on a GPU) and x, then a tree reduction.
// Word path (in % 8 == 0): a u32 holds the 8 codes e = 8w .. 8w + 7, all in one absmax block, so
// the absmax is decoded once per block (cached while the block does not change) and each word's
// 8 products are summed before the one multiply by it. Element path (in % 8 != 0): per element.
// Nibble order: element 8w + j is byte j/2 of the word (bits 8·(j/2)), HIGH nibble for even j.

struct Params {
    n: u32,             // numel of W = out · in
    blocksize: u32,     // elements per absmax block
    nested: u32,        // 1: double-quantized absmax
    offset: f32,        // mean of the absmax (double quantization only)
    rows: u32,          // rows of x, 1..8
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    tiles_m: u32,       // unused here
}

const NESTED_BLOCKSIZE: u32 = 256u;
const R: u32 = 8u;  // rows at most
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;        // (ceil(n/2) bytes)
@group(0) @binding(2) var<storage, read> absmax_words: array<u32>;  // (blocks) f32 bits or bytes
@group(0) @binding(3) var<storage, read> nested_absmax: array<f32>; // (ceil(blocks/256)) or (1)
@group(0) @binding(4) var<storage, read> tables: array<f32>;        // (16 + 256)
@group(0) @binding(5) var<storage, read> x: array<f32>;             // (rows, in)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // (rows, out)

var<workgroup> partial: array<array<f32, R>, WG>;  // (invocations, rows): the _wg reduction

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

// The 16 code values as four uniform vec4 (loaded once per invocation, the same address in
// every lane: no gather).
struct Codes {
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
}

fn load_codes() -> Codes {
    return Codes(vec4<f32>(tables[0], tables[1], tables[2], tables[3]),
                 vec4<f32>(tables[4], tables[5], tables[6], tables[7]),
                 vec4<f32>(tables[8], tables[9], tables[10], tables[11]),
                 vec4<f32>(tables[12], tables[13], tables[14], tables[15]));
}

// table[q] for a per-lane code q, by a tree of 15 selects on q's 4 bits: every step is one
// vector blend on a CPU driver, where `tables[q]` would be a per-lane gather (8 scalar loads).
fn lookup(c: Codes, q: u32) -> f32 {
    let b0 = (q & 1u) != 0u;
    let b1 = (q & 2u) != 0u;
    let b2 = (q & 4u) != 0u;
    let l0 = select(select(c.c0.x, c.c0.y, b0), select(c.c0.z, c.c0.w, b0), b1);  // q = 0..3
    let l1 = select(select(c.c1.x, c.c1.y, b0), select(c.c1.z, c.c1.w, b0), b1);  // q = 4..7
    let l2 = select(select(c.c2.x, c.c2.y, b0), select(c.c2.z, c.c2.w, b0), b1);  // 8..11
    let l3 = select(select(c.c3.x, c.c3.y, b0), select(c.c3.z, c.c3.w, b0), b1);  // 12..15
    return select(select(l0, l1, b2), select(l2, l3, b2), q >= 8u);
}

// Code j (0..7) of a packed word: byte j/2, the HIGH nibble for even j.
fn nibble(word: u32, j: u32) -> u32 {
    return (word >> (8u * (j >> 1u) + 4u * (1u - (j & 1u)))) & 15u;
}

// acc[r] += Σ over word w of W's row o (in % 8 == 0), the absmax applied once per word.
fn add_word(acc: ptr<function, array<f32, R>>, c: Codes, o: u32, w: u32, scale: f32) {
    let word = packed[(o * p.in_features) / 8u + w];
    var t: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        t[j] = lookup(c, nibble(word, j));
    }
    for (var r = 0u; r < p.rows; r++) {
        let xr = r * p.in_features + 8u * w;
        var s = 0.0;
        for (var j = 0u; j < 8u; j++) {
            s += t[j] * x[xr + j];
        }
        (*acc)[r] += s * scale;
    }
}

// This invocation's share of y[., o]: words (or elements) first, first + stride, ...
fn partial_sums(o: u32, first: u32, stride: u32) -> array<f32, R> {
    var acc: array<f32, R>;
    let k_in = p.in_features;
    let row = o * k_in;
    if (k_in % 8u == 0u) {
        let c = load_codes();
        var blk = 0xffffffffu;
        var scale = 0.0;
        for (var w = first; w < k_in / 8u; w += stride) {
            let b = (row + 8u * w) / p.blocksize;
            if (b != blk) {
                blk = b;
                scale = absmax_of(b);
            }
            add_word(&acc, c, o, w, scale);
        }
    } else {
        for (var i = first; i < k_in; i += stride) {
            let wv = weight(row + i);
            for (var r = 0u; r < p.rows; r++) {
                acc[r] += wv * x[r * k_in + i];
            }
        }
    }
    return acc;
}

@compute @workgroup_size(64)
fn linear_4bit_matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = (wid.y * nwg.x + wid.x) * WG + lid;
    if (o >= p.out_features) { return; }
    let acc = partial_sums(o, 0u, 1u);
    for (var r = 0u; r < p.rows; r++) {
        y[r * p.out_features + o] = acc[r];
    }
}

@compute @workgroup_size(64)
fn linear_4bit_matvec_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
        y[lid * p.out_features + o] = partial[0][lid];
    }
}

