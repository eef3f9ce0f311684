// Fused int8 linear for real GPUs, training shapes: 64×64 output tiles in workgroup memory,
// 4×4 register tiles per invocation (the shape of shaders/linear_4bit_tiled.wgsl).
//   forward     y[r, o]  = s_o · Σ_i x[r, i] · q[o, i]        (M = rows, N = out, K = in)
//   backward_x  dx[r, i] = Σ_o (dy[r, o] · s_o) · q[o, i]     (M = rows, N = in,  K = out)
//   s_o = row_stats[o] · inv_127 (one scale per W row): the forward scales each output column
//   once at the store, the backward scales dy as it loads the dy tile.
// Per K step of 32, each of the 256 invocations unpacks 8 codes (two words) into the
// workgroup's W tile, which then serves all 64 rows of the tile: W is converted once per row
// tile, never per row, and never reaches global memory.
//   forward:   W tile = q[n0 .. n0+64, k0 .. k0+32]: invocation t unpacks row n0 + t/4, codes 8(t%4)..;
//   backward:  W tile = q[k0 .. k0+32, n0 .. n0+64]: invocation t unpacks row k0 + t/8, codes 8(t%8)...
// Word path when in % 4 == 0 (every word inside one W row); otherwise 8 single codes.

struct Params {
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    inv_127: f32,       // bitsandbytes' f32 constant 1/127
    tiles_m: u32,       // row tiles of 64
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

const TK: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;        // (out · in) int8, 4 per word
@group(0) @binding(2) var<storage, read> row_stats: array<f32>;    // (out)
@group(0) @binding(3) var<storage, read> a: array<f32>;            // (rows, in) x | (rows, out) dy
@group(0) @binding(4) var<storage, read_write> c: array<f32>;      // (rows, out) y | (rows, in) dx

var<workgroup> a_tile: array<array<f32, 64>, TK>;  // (k, m)
var<workgroup> w_tile: array<array<f32, 64>, TK>;  // (k, n)

fn code(k: u32) -> f32 {
    let byte = (codes[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
    return f32(bitcast<i32>(byte << 24u) >> 24u);
}

fn scale(o: u32) -> f32 {
    return row_stats[o] * p.inv_127;
}

// q[o, i0 .. i0 + 8], zero past the edges (o ≥ out, i ≥ in).
fn unpack8(o: u32, i0: u32) -> array<f32, 8> {
    var v: array<f32, 8>;
    if (o >= p.out_features) { return v; }
    let e0 = o * p.in_features + i0;
    if (p.in_features % 4u == 0u) {
        for (var h = 0u; h < 2u; h++) {
            if (i0 + 4u * h < p.in_features) {
                let q = vec4<f32>(unpack4xI8(codes[(e0 >> 2u) + h]));
                for (var j = 0u; j < 4u; j++) { v[4u * h + j] = q[j]; }
            }
        }
    } else {
        for (var j = 0u; j < 8u; j++) {
            if (i0 + j < p.in_features) { v[j] = code(e0 + j); }
        }
    }
    return v;
}

// a_tile[k][m] = a[m0 + m, k0 + k] (· s_{k0+k} when `scaled`; a has `cols` columns), zero past
// the edges.
fn load_a(lid: u32, m0: u32, k0: u32, cols: u32, scaled: bool) {
    for (var s = 0u; s < 8u; s++) {
        let idx = lid + 256u * s;  // 0 .. 2048 = 64 m × 32 k, k fastest
        let m = idx / TK;
        let k = idx % TK;
        var v = 0.0;
        if (m0 + m < p.rows && k0 + k < cols) {
            v = a[(m0 + m) * cols + k0 + k];
            if (scaled) { v *= scale(k0 + k); }
        }
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

fn store(acc: ptr<function, array<vec4<f32>, 4>>, m0: u32, n0: u32, ty: u32, tx: u32, cols: u32,
         scaled: bool) {
    for (var i = 0u; i < 4u; i++) {
        let row = m0 + 4u * ty + i;
        for (var j = 0u; j < 4u; j++) {
            let col = n0 + 4u * tx + j;
            if (row < p.rows && col < cols) {
                var s = 1.0;
                if (scaled) { s = scale(col); }
                c[row * cols + col] = (*acc)[i][j] * s;
            }
        }
    }
}

@compute @workgroup_size(256)
fn linear_int8_tiled_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let m0 = tile_row0(wid, nwg);  // uniform; past the last row tile nothing is stored
    let n0 = wid.x * 64u;
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.in_features; k0 += TK) {
        load_a(lid, m0, k0, p.in_features, false);
        let o = lid / 4u;
        let v = unpack8(n0 + o, k0 + 8u * (lid % 4u));  // q[n0 + o, k0 + 8(t%4) ..+8]
        for (var j = 0u; j < 8u; j++) {
            w_tile[8u * (lid % 4u) + j][o] = v[j];
        }
        workgroupBarrier();
        multiply(&acc, ty, tx);
        workgroupBarrier();
    }
    store(&acc, m0, n0, ty, tx, p.out_features, true);
}

@compute @workgroup_size(256)
fn linear_int8_tiled_backward_x(@builtin(workgroup_id) wid: vec3<u32>,
                                @builtin(num_workgroups) nwg: vec3<u32>,
                                @builtin(local_invocation_index) lid: u32) {
    let m0 = tile_row0(wid, nwg);
    let n0 = wid.x * 64u;  // first input column i
    let ty = lid / 16u;
    let tx = lid % 16u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.out_features; k0 += TK) {
        load_a(lid, m0, k0, p.out_features, true);
        let k = lid / 8u;
        let v = unpack8(k0 + k, n0 + 8u * (lid % 8u));  // q[k0 + k, n0 + 8(t%8) ..+8]
        for (var j = 0u; j < 8u; j++) {
            w_tile[k][8u * (lid % 8u) + j] = v[j];
        }
        workgroupBarrier();
        multiply(&acc, ty, tx);
        workgroupBarrier();
    }
    store(&acc, m0, n0, ty, tx, p.in_features, false);
}
