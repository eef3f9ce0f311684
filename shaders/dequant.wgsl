// 4-bit dequantization (bitsandbytes' NF4/FP4, optionally double-quantized absmax) to f32.
//   w[i]      = table[q_i] · absmax(i / blocksize)
//   q_i       = nibble i of the packed bytes: byte i/2, HIGH nibble for even i, low for odd i
//   absmax(b) = absmax_words[b] as f32 bits                             (nested == 0)
//             = dyn[c_b] · nested_absmax[b / 256] + offset, c_b = byte b (nested == 1)
// Bytes live four to a u32 word, little-endian: byte k is bits 8·(k%4).. of word k/4.
// NOTE: the nested product and the offset add are two separate f32 roundings in bitsandbytes;
// a compiler may fuse them into one fma here, so the GPU can differ from the host by an ulp.

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
@group(0) @binding(5) var<storage, read_write> w: array<f32>;       // (n)

fn byte_at(k: u32) -> u32 {
    return (packed[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
}

fn absmax_byte(k: u32) -> u32 {
    return (absmax_words[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
}

fn absmax_of(b: u32) -> f32 {
    if (p.nested == 0u) {
        return bitcast<f32>(absmax_words[b]);
    }
    let scaled = tables[16u + absmax_byte(b)] * nested_absmax[b / NESTED_BLOCKSIZE];
    return scaled + p.offset;
}

fn code_of(i: u32) -> u32 {
    let byte = byte_at(i >> 1u);
    return select(byte & 15u, byte >> 4u, (i & 1u) == 0u);
}

@compute @workgroup_size(256)
fn dequantize_4bit(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    w[i] = tables[code_of(i)] * absmax_of(i / p.blocksize);
}
