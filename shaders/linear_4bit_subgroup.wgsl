enable subgroups;
// Fused 4-bit linear for CPU drivers (lavapipe), training shapes: register tiles shared through
// subgroup broadcasts, as shaders/matmul_subgroup.wgsl does for f32 (read its header first).
//   forward     y[r, o]  = Σ_i x[r, i]  · W[o, i]      (M = rows, N = out, K = in)
//   backward_x  dx[r, i] = Σ_o dy[r, o] · W[o, i]      (M = rows, N = in,  K = out)
//   W[o, i] = table[q_e] · absmax(e / blocksize),  e = o·in + i  (see dequant.wgsl for the decode)
// A subgroup owns a 16×64 tile of the output (lane l: rows m0 + l and m0 + 8 + l, 64 columns);
// 8 subgroups stack along M: 128×64 per workgroup. W is decoded once per tile per K step and
// shared by all 16 rows through subgroupBroadcast; it never reaches memory.
// Word path (in % 8 == 0, every real layer): one u32 holds the 8 codes e = 8w .. 8w + 7, all in
// one absmax block (blocksize is a multiple of 8), so a lane decodes 8 weights per load and the
// absmax once per block (cached while the block does not change):
//   forward:   lane l decodes W[o_c, k0 .. k0+8] for its 8 columns o_c = n0 + 8c + l (K steps of 8);
//   backward:  lane l decodes W[o, n0 + 8l .. n0 + 8l + 8]: 8 consecutive columns of one K step.
// Element path (in % 8 != 0): one weight per load, the simple kernel's decode.
// Nibble order: element 8w + j is byte j/2 of the word (bits 8·(j/2)), HIGH nibble for even j.
// NOTE: needs subgroups of exactly 8 consecutive invocations (lavapipe); no early return before
// the last subgroupBroadcast: edge rows/columns are clamped for loads, only stores are checked.

struct Params {
    n: u32,             // numel of W = out · in
    blocksize: u32,     // elements per absmax block
    nested: u32,        // 1: double-quantized absmax
    offset: f32,        // mean of the absmax (double quantization only)
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    tiles_m: u32,       // row tiles of 128
}

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

// W's flat element e, decoded on its own (the element path).
fn weight(e: u32) -> f32 {
    let byte = (packed[e >> 3u] >> (((e >> 1u) & 3u) * 8u)) & 0xffu;
    let q = select(byte & 15u, byte >> 4u, (e & 1u) == 0u);
    return tables[q] * absmax_of(e / p.blocksize);
}

// Code j (0..8) of a packed word: byte j/2, high nibble for even j.
fn code(word: u32, j: u32) -> u32 {
    return (word >> (8u * (j >> 1u) + 4u * (1u - (j & 1u)))) & 15u;
}

// The 8 unscaled table values of a word, looked up in registers: lane l holds table[l] and
// table[l + 8] (`lut`), and a shuffle reads lane q % 8 of one of them (a register permute on a CPU
// driver, where a lookup in `tables` would be a per-lane gather). Every lane must call it.
fn decode8(word: u32, lut: vec2<f32>) -> array<f32, 8> {
    var t: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        let q = code(word, j);
        let lo = subgroupShuffle(lut.x, q & 7u);
        let hi = subgroupShuffle(lut.y, q & 7u);
        t[j] = select(lo, hi, q >= 8u);
    }
    return t;
}

fn tile_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.z * nwg.y + wid.y;
}

// Writes this lane's 2 rows × 64 columns; slot s is column n0 + s, or n0 + 8(s % 8) + s / 8
// when `permuted` (the backward's word path).
fn store(acc: ptr<function, array<array<vec4<f32>, 16>, 2>>, t: u32, m0: u32, n0: u32, lane: u32,
         cols: u32, permuted: bool) {
    if (t >= p.tiles_m) { return; }
    for (var r = 0u; r < 2u; r++) {
        let row = m0 + 8u * r + lane;
        if (row >= p.rows) { continue; }
        for (var j = 0u; j < 64u; j++) {
            let col = n0 + select(j, 8u * (j % 8u) + j / 8u, permuted);
            if (col < cols) {
                c[row * cols + col] = (*acc)[r][j / 4u][j % 4u];
            }
        }
    }
}

@compute @workgroup_size(64)
fn linear_4bit_subgroup_forward(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32,
                                @builtin(subgroup_invocation_id) lane: u32) {
    let t = tile_index(wid, nwg);
    let m0 = min(t, p.tiles_m - 1u) * 128u + (lid / 8u) * 16u;  // this subgroup's first row
    let n0 = wid.x * 64u;                                       // first output column o
    let k_in = p.in_features;
    var a_at: array<u32, 2>;  // x row starts of this lane's two rows
    for (var r = 0u; r < 2u; r++) {
        a_at[r] = min(m0 + 8u * r + lane, p.rows - 1u) * k_in;
    }
    var w_at: array<u32, 8>;  // flat index of W[o_c, 0], o_c = n0 + 8c + lane (clamped)
    for (var cc = 0u; cc < 8u; cc++) {
        w_at[cc] = min(n0 + 8u * cc + lane, p.out_features - 1u) * k_in;
    }
    let lut = vec2<f32>(tables[lane], tables[lane + 8u]);  // see decode8
    var acc: array<array<vec4<f32>, 16>, 2>;  // (2 rows, 64 columns as 16 vec4)
    if (k_in % 8u == 0u) {
        // When in % blocksize == 0 every W row starts a block, so all 8 columns change block
        // together at k0 % blocksize == 0 (a uniform branch); otherwise decode per word.
        let per_word = k_in % p.blocksize != 0u;
        var scale: array<f32, 8>;  // absmax of column cc's current block
        for (var k0 = 0u; k0 < k_in; k0 += 8u) {
            var wv: array<array<f32, 8>, 8>;  // (column cc, K step j): W[o_cc, k0 + j]
            for (var cc = 0u; cc < 8u; cc++) {
                let e = w_at[cc] + k0;
                if (per_word || k0 % p.blocksize == 0u) {
                    scale[cc] = absmax_of(e / p.blocksize);
                }
                let t8 = decode8(packed[e >> 3u], lut);
                for (var j = 0u; j < 8u; j++) {
                    wv[cc][j] = t8[j] * scale[cc];
                }
            }
            for (var j = 0u; j < 8u; j++) {
                var bk: array<vec4<f32>, 16>;  // op(B)[k0 + j, n0 .. n0 + 64], as the f32 kernel
                for (var cc = 0u; cc < 8u; cc++) {
                    let v = wv[cc][j];  // lane l holds column n0 + 8cc + l
                    bk[2u * cc] = vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                                            subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
                    bk[2u * cc + 1u] = vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                                                 subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
                }
                for (var r = 0u; r < 2u; r++) {
                    let xr = a[a_at[r] + k0 + j];
                    for (var jj = 0u; jj < 16u; jj++) {
                        acc[r][jj] += xr * bk[jj];
                    }
                }
            }
        }
    } else {
        for (var k = 0u; k < k_in; k++) {
            for (var cc = 0u; cc < 8u; cc++) {
                let v = weight(w_at[cc] + k);  // lane l: W[n0 + 8cc + l, k]
                let lo = vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                                   subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
                let hi = vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                                   subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
                for (var r = 0u; r < 2u; r++) {
                    let x = a[a_at[r] + k];
                    acc[r][2u * cc] += x * lo;
                    acc[r][2u * cc + 1u] += x * hi;
                }
            }
        }
    }
    store(&acc, t, m0, n0, lane, p.out_features, false);
}

@compute @workgroup_size(64)
fn linear_4bit_subgroup_backward_x(@builtin(workgroup_id) wid: vec3<u32>,
                                   @builtin(num_workgroups) nwg: vec3<u32>,
                                   @builtin(local_invocation_index) lid: u32,
                                   @builtin(subgroup_invocation_id) lane: u32) {
    let t = tile_index(wid, nwg);
    let m0 = min(t, p.tiles_m - 1u) * 128u + (lid / 8u) * 16u;
    let n0 = wid.x * 64u;  // first input column i
    let k_in = p.in_features;
    let k_out = p.out_features;
    var a_at: array<u32, 2>;  // dy row starts of this lane's two rows
    for (var r = 0u; r < 2u; r++) {
        a_at[r] = min(m0 + 8u * r + lane, p.rows - 1u) * k_out;
    }
    let lut = vec2<f32>(tables[lane], tables[lane + 8u]);  // see decode8
    var acc: array<array<vec4<f32>, 16>, 2>;
    if (k_in % 8u == 0u) {
        // lane l decodes columns n0 + 8l .. n0 + 8l + 8 (clamped to the last word of the row)
        let i0 = min(n0 + 8u * lane, k_in - 8u);
        for (var o = 0u; o < k_out; o++) {
            let e = o * k_in + i0;
            let s = absmax_of(e / p.blocksize);
            let wv = decode8(packed[e >> 3u], lut);  // W[o, i0 .. i0 + 8] / absmax
            var v: array<f32, 8>;
            for (var j = 0u; j < 8u; j++) {
                v[j] = wv[j] * s;
            }
            var x: array<f32, 2>;
            for (var r = 0u; r < 2u; r++) {
                x[r] = a[a_at[r] + o];
            }
            // Slot 8j + l of acc holds column n0 + 8l + j (value j of lane l): lane indices stay
            // constant, as subgroupBroadcast requires; `store` undoes the permutation.
            for (var j = 0u; j < 8u; j++) {
                let lo = vec4<f32>(subgroupBroadcast(v[j], 0u), subgroupBroadcast(v[j], 1u),
                                   subgroupBroadcast(v[j], 2u), subgroupBroadcast(v[j], 3u));
                let hi = vec4<f32>(subgroupBroadcast(v[j], 4u), subgroupBroadcast(v[j], 5u),
                                   subgroupBroadcast(v[j], 6u), subgroupBroadcast(v[j], 7u));
                for (var r = 0u; r < 2u; r++) {
                    acc[r][2u * j] += x[r] * lo;
                    acc[r][2u * j + 1u] += x[r] * hi;
                }
            }
        }
    } else {
        for (var o = 0u; o < k_out; o++) {
            var x: array<f32, 2>;
            for (var r = 0u; r < 2u; r++) {
                x[r] = a[a_at[r] + o];
            }
            for (var cc = 0u; cc < 8u; cc++) {
                let v = weight(o * k_in + min(n0 + 8u * cc + lane, k_in - 1u));
                let lo = vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                                   subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
                let hi = vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                                   subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
                for (var r = 0u; r < 2u; r++) {
                    acc[r][2u * cc] += x[r] * lo;
                    acc[r][2u * cc + 1u] += x[r] * hi;
                }
            }
        }
    }
    store(&acc, t, m0, n0, lane, k_in, k_in % 8u == 0u);
}
