enable subgroups;
// Fused 4-bit linear for few rows (decode: 1..8 rows of x) on CPU drivers, forward only:
//   y[r, o] = Σ_i x[r, i] · W[o, i],   W[o, i] = table[q_e] · absmax(e / blocksize),  e = o·in + i
// (see dequant.wgsl for the decode). One invocation per output o; its row of W is read 32 codes
// (one vec4<u32>) per load. Bandwidth-bound in principle (4 bits a weight); on lavapipe the
// cost is in the per-lane work, which this kernel keeps off memory:
//   the code lookup  table[q] for a per-lane q is a subgroupShuffle from two registers (lane l
//                    holds table[l] and table[l + 8]): one vector permute, where `tables[q]`
//                    is a per-lane gather and a 15-select tree 15 blends;
//   the x values     each lane loads ONE vec4 of the 32 x values a step needs (8 lanes, 32
//                    consecutive values) and subgroupBroadcast hands every lane all 32: one
//                    gather per step instead of eight (lavapipe does not turn x[k], the same
//                    address in every lane, into one scalar load).
// Measured with `glassgrad bench dequant-matmul`: docs/nf4.md ("Kernels").
// The 32 codes of a load share one absmax block: blocksize ≥ 32 (a power of two) and the row
// starts at o·in, a multiple of 32 — so this kernel needs in % 32 == 0; src/ops/
// linear_4bit_kernels.rs runs shaders/linear_4bit_matvec.wgsl otherwise.
// Nibble order: element 8w + j is byte j/2 of the word (bits 8·(j/2)), HIGH nibble for even j.
// NOTE: needs subgroups of exactly 8 consecutive invocations (lavapipe), every lane active at
// every shuffle and broadcast: lanes past the last output compute a clamped row, store nothing.

struct Params {
    n: u32,             // numel of W = out · in
    blocksize: u32,     // elements per absmax block
    nested: u32,        // 1: double-quantized absmax
    offset: f32,        // mean of the absmax (double quantization only)
    rows: u32,          // rows of x, 1..8
    in_features: u32,   // C_in, a multiple of 32
    out_features: u32,  // C_out
    tiles_m: u32,       // unused here
}

const NESTED_BLOCKSIZE: u32 = 256u;
const R: u32 = 8u;  // rows at most

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<vec4<u32>>;  // (n / 32): 32 codes each
@group(0) @binding(2) var<storage, read> absmax_words: array<u32>;  // (blocks) f32 bits or bytes
@group(0) @binding(3) var<storage, read> nested_absmax: array<f32>; // (ceil(blocks/256)) or (1)
@group(0) @binding(4) var<storage, read> tables: array<f32>;        // (16 + 256)
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;       // (rows, in / 4)
@group(0) @binding(6) var<storage, read_write> y: array<f32>;       // (rows, out)

fn absmax_of(b: u32) -> f32 {
    if (p.nested == 0u) {
        return bitcast<f32>(absmax_words[b]);
    }
    let code = (absmax_words[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
    return tables[16u + code] * nested_absmax[b / NESTED_BLOCKSIZE] + p.offset;
}

// table[q], q in 0..15 per lane, from lut = (table[lane], table[lane + 8]).
fn lookup(lut: vec2<f32>, q: u32) -> f32 {
    return select(subgroupShuffle(lut.x, q & 7u), subgroupShuffle(lut.y, q & 7u), q >= 8u);
}

// The weights of codes 8w + 4h .. 8w + 4h + 3 of one word (h = 0: bytes 0, 1; h = 1: bytes 2, 3).
fn decode4(lut: vec2<f32>, word: u32, h: u32) -> vec4<f32> {
    let s = 16u * h;
    return vec4<f32>(lookup(lut, (word >> (s + 4u)) & 15u), lookup(lut, (word >> s) & 15u),
                     lookup(lut, (word >> (s + 12u)) & 15u), lookup(lut, (word >> (s + 8u)) & 15u));
}

@compute @workgroup_size(64)
fn linear_4bit_matvec_subgroup(@builtin(workgroup_id) wid: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32,
                               @builtin(subgroup_invocation_id) lane: u32) {
    let o_lane = (wid.y * nwg.x + wid.x) * 64u + lid;
    let o = min(o_lane, p.out_features - 1u);
    let lut = vec2<f32>(tables[lane], tables[lane + 8u]);
    let steps = p.in_features / 32u;  // vec4<u32> loads per row of W
    let x_row = p.in_features / 4u;   // vec4 of x per row of x
    var acc: array<f32, R>;
    var blk = 0xffffffffu;
    var scale = 0.0;
    for (var k = 0u; k < steps; k++) {
        let b = (o * p.in_features + 32u * k) / p.blocksize;
        if (b != blk) {
            blk = b;
            scale = absmax_of(b);
        }
        let q = packed[o * steps + k];
        // w[2c + h]: the weights of word c's half h, in the order of x[32k ..].
        let w = array<vec4<f32>, 8>(decode4(lut, q.x, 0u), decode4(lut, q.x, 1u),
                                    decode4(lut, q.y, 0u), decode4(lut, q.y, 1u),
                                    decode4(lut, q.z, 0u), decode4(lut, q.z, 1u),
                                    decode4(lut, q.w, 0u), decode4(lut, q.w, 1u));
        for (var r = 0u; r < R; r++) {
            if (r < p.rows) {
                let xl = x[r * x_row + 8u * k + lane];  // lane l: x[r, 32k + 4l .. 32k + 4l + 4]
                let s = dot(w[0], subgroupBroadcast(xl, 0u)) + dot(w[1], subgroupBroadcast(xl, 1u))
                      + dot(w[2], subgroupBroadcast(xl, 2u)) + dot(w[3], subgroupBroadcast(xl, 3u))
                      + dot(w[4], subgroupBroadcast(xl, 4u)) + dot(w[5], subgroupBroadcast(xl, 5u))
                      + dot(w[6], subgroupBroadcast(xl, 6u)) + dot(w[7], subgroupBroadcast(xl, 7u));
                acc[r] += s * scale;
            }
        }
    }
    if (o_lane < p.out_features) {
        for (var r = 0u; r < p.rows; r++) {
            y[r * p.out_features + o] = acc[r];
        }
    }
}
