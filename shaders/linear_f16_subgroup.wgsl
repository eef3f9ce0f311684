enable subgroups;
// Linear over a frozen f16 weight for CPU drivers (lavapipe), training shapes: register tiles
// shared through subgroup broadcasts, as shaders/matmul_subgroup.wgsl does for f32 and
// linear_4bit_subgroup.wgsl for 4 bits (read their headers first).
//   forward     y[r, o]  = Σ_i x[r, i]  · W[o, i]      (M = rows, N = out, K = in)
//   backward_x  dx[r, i] = Σ_o dy[r, o] · W[o, i]      (M = rows, N = in,  K = out)
// W [out, in] f16 pairs in u32 words, rows padded to 8 halves (see linear_f16.wgsl): a lane reads
// 8 weights with one vec4<u32> load, where the f32 kernel needs 8 loads. That is the whole gain:
// per-lane loads are lavapipe's bottleneck, the unpack is a few register instructions.
//   forward:   lane l reads W[o_c, k0 .. k0 + 8] for its 8 columns o_c = n0 + 8c + l;
//   backward:  lane l reads W[o, n0 + 8l .. n0 + 8l + 8]: 8 consecutive columns of one K step,
//              accumulated in slot 8j + l (column n0 + 8l + j); `store` undoes the permutation.
// A subgroup owns a 16×64 tile of the output (lane l: rows m0 + l and m0 + 8 + l); 8 subgroups
// stack along M: 128×64 per workgroup. Row tiles are folded over (y, z) like grid_1d folds.
// NOTE: needs subgroups of exactly 8 consecutive invocations (lavapipe); no early return before
// the last subgroupBroadcast: edge rows/columns are clamped for loads, only stores are checked.

struct Params {
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    row_words: u32,     // u32 words per W row: ceil(in / 8) · 4
    tiles_m: u32,       // row tiles of 128
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w4: array<vec4<u32>>;  // (out, row_words / 4) 8 halves each
@group(0) @binding(2) var<storage, read> a: array<f32>;         // (rows, in) x | (rows, out) dy
@group(0) @binding(3) var<storage, read_write> c: array<f32>;   // (rows, out) y | (rows, in) dx

// The 8 weights of one vec4<u32>, in order.
fn unpack8(v: vec4<u32>) -> array<f32, 8> {
    let lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
    let hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
    return array<f32, 8>(lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w);
}

// Writes this lane's 2 rows × 64 columns; slot s is column n0 + s, or n0 + 8(s % 8) + s / 8
// when `permuted` (the backward).
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
fn linear_f16_subgroup_forward(@builtin(workgroup_id) wid: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32,
                               @builtin(subgroup_invocation_id) lane: u32) {
    let t = wid.z * nwg.y + wid.y;
    let m0 = min(t, p.tiles_m - 1u) * 128u + (lid / 8u) * 16u;  // this subgroup's first row
    let n0 = wid.x * 64u;                                       // first output column o
    let k_in = p.in_features;
    let chunks = p.row_words / 4u;
    var a_at: array<u32, 2>;  // x row starts of this lane's two rows
    for (var r = 0u; r < 2u; r++) {
        a_at[r] = min(m0 + 8u * r + lane, p.rows - 1u) * k_in;
    }
    var w_at: array<u32, 8>;  // vec4 index of W[o_c, 0], o_c = n0 + 8c + lane (clamped)
    for (var cc = 0u; cc < 8u; cc++) {
        w_at[cc] = min(n0 + 8u * cc + lane, p.out_features - 1u) * chunks;
    }
    var acc: array<array<vec4<f32>, 16>, 2>;  // (2 rows, 64 columns as 16 vec4)
    for (var q = 0u; q < chunks; q++) {
        var wv: array<array<f32, 8>, 8>;  // (column cc, K step j): W[o_cc, 8q + j]
        for (var cc = 0u; cc < 8u; cc++) {
            wv[cc] = unpack8(w4[w_at[cc] + q]);
        }
        let k0 = 8u * q;
        // A fixed 8 steps (unrolled: wv stays in registers; a loop bound that varies made it
        // stack memory and the kernel 2× slower); the padded tail reads x as 0 (its W is 0).
        for (var j = 0u; j < 8u; j++) {
            var bk: array<vec4<f32>, 16>;  // W[n0 .. n0 + 64, k0 + j], as the f32 kernel's op(B)
            for (var cc = 0u; cc < 8u; cc++) {
                let v = wv[cc][j];  // lane l holds column n0 + 8cc + l
                bk[2u * cc] = vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u),
                                        subgroupBroadcast(v, 2u), subgroupBroadcast(v, 3u));
                bk[2u * cc + 1u] = vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
                                             subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
            }
            for (var r = 0u; r < 2u; r++) {
                let k = k0 + j;
                let xr = select(0.0, a[a_at[r] + min(k, k_in - 1u)], k < k_in);
                for (var jj = 0u; jj < 16u; jj++) {
                    acc[r][jj] += xr * bk[jj];
                }
            }
        }
    }
    store(&acc, t, m0, n0, lane, p.out_features, false);
}

@compute @workgroup_size(64)
fn linear_f16_subgroup_backward_x(@builtin(workgroup_id) wid: vec3<u32>,
                                  @builtin(num_workgroups) nwg: vec3<u32>,
                                  @builtin(local_invocation_index) lid: u32,
                                  @builtin(subgroup_invocation_id) lane: u32) {
    let t = wid.z * nwg.y + wid.y;
    let m0 = min(t, p.tiles_m - 1u) * 128u + (lid / 8u) * 16u;
    let n0 = wid.x * 64u;  // first input column i
    let k_out = p.out_features;
    let chunks = p.row_words / 4u;
    var a_at: array<u32, 2>;  // dy row starts of this lane's two rows
    for (var r = 0u; r < 2u; r++) {
        a_at[r] = min(m0 + 8u * r + lane, p.rows - 1u) * k_out;
    }
    // lane l reads columns n0 + 8l .. n0 + 8l + 8: chunk n0 / 8 + l of a row (clamped; a clamped
    // lane's columns are past `in` and never stored)
    let q = min(n0 / 8u + lane, chunks - 1u);
    var acc: array<array<vec4<f32>, 16>, 2>;
    for (var o = 0u; o < k_out; o++) {
        let v = unpack8(w4[o * chunks + q]);  // W[o, 8q .. 8q + 8]
        var x: array<f32, 2>;
        for (var r = 0u; r < 2u; r++) {
            x[r] = a[a_at[r] + o];
        }
        // Slot 8j + l of acc holds column n0 + 8l + j (value j of lane l): lane indices stay
        // constant, as subgroupBroadcast requires.
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
    store(&acc, t, m0, n0, lane, p.in_features, true);
}

@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;  // a, 4 values per element

// Decoding, one row of x, in % 8 == 0: y[0, o] = Σ_i x[i] · W[o, i]. A subgroup owns 8 output
// columns o0 .. o0 + 8 and its lanes split each row of W: lane l reads chunks l, l + 8, … (8
// weights each), so the 8 lanes read 128 consecutive bytes at a time (one row), where one column
// per lane (linear_f16_matvec) reads 8 rows 8 KB apart; a chunk of x is loaded once for all 8
// columns. subgroupAdd sums the lanes' partial sums; lane j stores column o0 + j.
@compute @workgroup_size(64)
fn linear_f16_subgroup_matvec(@builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32,
                              @builtin(subgroup_invocation_id) lane: u32) {
    let g = wid.y * nwg.x + wid.x;              // workgroup index, folded as grid_1d folds
    let o0 = (g * 8u + lid / 8u) * 8u;          // this subgroup's first column
    let chunks = p.row_words / 4u;              // = in / 8
    var w_at: array<u32, 8>;                    // vec4 index of W[o0 + j, 0] (clamped)
    for (var j = 0u; j < 8u; j++) {
        w_at[j] = min(o0 + j, p.out_features - 1u) * chunks;
    }
    var acc: array<f32, 8>;  // (column j) this lane's partial sum
    for (var q = lane; q < chunks; q += 8u) {
        let x_lo = a4[2u * q];       // x[8q .. 8q + 4]
        let x_hi = a4[2u * q + 1u];  // x[8q + 4 .. 8q + 8]
        for (var j = 0u; j < 8u; j++) {
            let v = w4[w_at[j] + q];
            let w_lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));
            let w_hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));
            acc[j] += dot(x_lo, w_lo) + dot(x_hi, w_hi);
        }
    }
    var mine = 0.0;
    for (var j = 0u; j < 8u; j++) {
        let total = subgroupAdd(acc[j]);
        if (lane == j) { mine = total; }
    }
    if (o0 + lane < p.out_features) {
        c[o0 + lane] = mine;
    }
}
