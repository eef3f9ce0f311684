enable f16;
// 4-bit dequantization (bitsandbytes' NF4/FP4, optionally double-quantized absmax) to f16, for
// adapters with SHADER_F16 (the Rust side checks; dequant.wgsl is the portable f32 path).
//   w[i] = f16(table[q_i] · absmax(i / blocksize))     the product in f32, then one rounding
// (see dequant.wgsl for q_i, absmax and the byte order). Invocation k writes elements 2k and
// 2k + 1 as one vec2<f16> (4 bytes: a U32 tensor on the host, element 2k in the low half).
// NOTE: WGSL leaves the f32 → f16 rounding direction to the implementation (one of the two
// neighbours); tests allow one f16 ulp. Values past ±65504 become ±inf.

struct Params {
    n: u32,          // numel of the weight
    blocksize: u32,  // elements per absmax block (32..4096)
    nested: u32,     // 1: double-quantized absmax
    offset: f32,     // mean of the absmax (double quantization only)
}

const WG: u32 = 256u;
const NESTED_BLOCKSIZE: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> packed: array<u32>;        // (ceil(n/2) bytes) codes
@group(0) @binding(2) var<storage, read> absmax_words: array<u32>;  // (blocks) f32 bits or bytes
@group(0) @binding(3) var<storage, read> nested_absmax: array<f32>; // (ceil(blocks/256)) or (1)
@group(0) @binding(4) var<storage, read> tables: array<f32>;        // (16 + 256) code, dyn map
@group(0) @binding(5) var<storage, read_write> w: array<vec2<f16>>; // (ceil(n/2)) f16 pairs

fn absmax_of(b: u32) -> f32 {
    if (p.nested == 0u) {
        return bitcast<f32>(absmax_words[b]);
    }
    let code = (absmax_words[b >> 2u] >> ((b & 3u) * 8u)) & 0xffu;
    return tables[16u + code] * nested_absmax[b / NESTED_BLOCKSIZE] + p.offset;
}

fn value(i: u32) -> f32 {
    if (i >= p.n) { return 0.0; }  // the pad half of an odd count
    let byte = (packed[i >> 3u] >> (((i >> 1u) & 3u) * 8u)) & 0xffu;
    let q = select(byte & 15u, byte >> 4u, (i & 1u) == 0u);
    return tables[q] * absmax_of(i / p.blocksize);
}

@compute @workgroup_size(256)
fn dequantize_4bit_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let k = (wid.y * nwg.x + wid.x) * WG + lid;
    if (2u * k >= p.n) { return; }
    w[k] = vec2<f16>(f16(value(2u * k)), f16(value(2u * k + 1u)));  // the one rounding
}
