enable subgroups;
// Fused int8 linear for CPU drivers (lavapipe), training shapes: register tiles shared through
// subgroup broadcasts, as shaders/matmul_subgroup.wgsl does for f32 (read its header first).
//   forward     y[r, o]  = s_o · Σ_i x[r, i] · q[o, i]        (M = rows, N = out, K = in)
//   backward_x  dx[r, i] = Σ_o (dy[r, o] · s_o) · q[o, i]     (M = rows, N = in,  K = out)
//   s_o = row_stats[o] · inv_127: W[o, i] = q[o, i] · s_o, one scale per W row, so the forward
//   applies it once per output column after the sum, and the backward folds it into dy.
// A subgroup owns a 16×64 tile of the output (lane l: rows m0 + l and m0 + 8 + l, 64 columns);
// 8 subgroups stack along M: 128×64 per workgroup. The codes are converted once per tile per K
// step and shared by all 16 rows through subgroupBroadcast; W never reaches memory.
// Word path (in % 4 == 0, every real layer): a u32 holds 4 consecutive codes of one W row,
// unpacked by unpack4xI8:
//   forward:   lane l unpacks W[o_c, k0 .. k0+4] for its 8 columns o_c = n0 + 8c + l (K steps of 4),
//              and reads its x rows 4 values per load;
//   backward:  lane l unpacks W[o, n0 + 8l .. n0 + 8l + 8] (two words): 8 consecutive columns.
// Code path (in % 4 != 0): one code per load.
// linear_int8_subgroup_matvec (1..8 rows, in % 32 == 0, decode): one invocation per output o, as
// linear_int8_matvec16, but x is read once per subgroup instead of once per lane: lane l loads
// x[r, 32c + 4l .. +4] and subgroupBroadcast hands all 32 values of the chunk to every lane
// (measured on lavapipe: the per-lane x loads, not the codes, were the matvec's cost).
// NOTE: needs subgroups of exactly 8 consecutive invocations (lavapipe); no early return before
// the last subgroupBroadcast: edge rows/columns are clamped for loads, only stores are checked.

struct Params {
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    inv_127: f32,       // bitsandbytes' f32 constant 1/127
    tiles_m: u32,       // row tiles of 128
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;        // (out · in) int8, 4 per word
@group(0) @binding(2) var<storage, read> row_stats: array<f32>;    // (out)
@group(0) @binding(3) var<storage, read> a: array<f32>;            // (rows, in) x | (rows, out) dy
@group(0) @binding(4) var<storage, read_write> c: array<f32>;      // (rows, out) y | (rows, in) dx
@group(0) @binding(1) var<storage, read> codes16: array<vec4<u32>>; // codes, 16 per element
@group(0) @binding(3) var<storage, read> a4: array<vec4<f32>>;      // a, 4 per element

const R: u32 = 8u;  // rows at most (matvec)

// Code k of the flat weight, sign-extended (the code path).
fn code(k: u32) -> f32 {
    let byte = (codes[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu;
    return f32(bitcast<i32>(byte << 24u) >> 24u);
}

fn scale(o: u32) -> f32 {
    return row_stats[o] * p.inv_127;
}

// vec4(v from lanes 0..4) and vec4(v from lanes 4..8). Every lane must call it.
fn lanes(v: f32) -> array<vec4<f32>, 2> {
    return array<vec4<f32>, 2>(
        vec4<f32>(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
                  subgroupBroadcast(v, 3u)),
        vec4<f32>(subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u), subgroupBroadcast(v, 6u),
                  subgroupBroadcast(v, 7u)));
}

fn tile_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.z * nwg.y + wid.y;
}

// Writes this lane's 2 rows × 64 columns; slot s is column n0 + s, or n0 + 8(s % 8) + s / 8
// when `permuted` (the backward's word path); the forward (`scaled`) multiplies by s_col.
fn store(acc: ptr<function, array<array<vec4<f32>, 16>, 2>>, t: u32, m0: u32, n0: u32, lane: u32,
         cols: u32, permuted: bool, scaled: bool) {
    if (t >= p.tiles_m) { return; }
    for (var r = 0u; r < 2u; r++) {
        let row = m0 + 8u * r + lane;
        if (row >= p.rows) { continue; }
        for (var j = 0u; j < 64u; j++) {
            let col = n0 + select(j, 8u * (j % 8u) + j / 8u, permuted);
            if (col < cols) {
                var s = 1.0;
                if (scaled) { s = scale(col); }
                c[row * cols + col] = (*acc)[r][j / 4u][j % 4u] * s;
            }
        }
    }
}

@compute @workgroup_size(64)
fn linear_int8_subgroup_forward(@builtin(workgroup_id) wid: vec3<u32>,
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
    var acc: array<array<vec4<f32>, 16>, 2>;  // (2 rows, 64 columns as 16 vec4), unscaled
    if (k_in % 4u == 0u) {
        for (var k0 = 0u; k0 < k_in; k0 += 4u) {
            var wq: array<vec4<f32>, 8>;  // (column cc): q[o_cc, k0 .. k0 + 4]
            for (var cc = 0u; cc < 8u; cc++) {
                wq[cc] = vec4<f32>(unpack4xI8(codes[(w_at[cc] + k0) >> 2u]));
            }
            var xv: array<vec4<f32>, 2>;  // x[row r, k0 .. k0 + 4]
            for (var r = 0u; r < 2u; r++) {
                let i = a_at[r] + k0;
                xv[r] = vec4<f32>(a[i], a[i + 1u], a[i + 2u], a[i + 3u]);
            }
            for (var j = 0u; j < 4u; j++) {
                var bk: array<vec4<f32>, 16>;  // q[n0 .. n0 + 64, k0 + j]
                for (var cc = 0u; cc < 8u; cc++) {
                    let v = lanes(wq[cc][j]);  // lane l holds column n0 + 8cc + l
                    bk[2u * cc] = v[0];
                    bk[2u * cc + 1u] = v[1];
                }
                for (var r = 0u; r < 2u; r++) {
                    let xr = xv[r][j];
                    for (var jj = 0u; jj < 16u; jj++) {
                        acc[r][jj] += xr * bk[jj];
                    }
                }
            }
        }
    } else {
        for (var k = 0u; k < k_in; k++) {
            for (var cc = 0u; cc < 8u; cc++) {
                let v = lanes(code(w_at[cc] + k));  // lane l: q[n0 + 8cc + l, k]
                for (var r = 0u; r < 2u; r++) {
                    let x = a[a_at[r] + k];
                    acc[r][2u * cc] += x * v[0];
                    acc[r][2u * cc + 1u] += x * v[1];
                }
            }
        }
    }
    store(&acc, t, m0, n0, lane, p.out_features, false, true);
}

@compute @workgroup_size(64)
fn linear_int8_subgroup_backward_x(@builtin(workgroup_id) wid: vec3<u32>,
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
    var acc: array<array<vec4<f32>, 16>, 2>;
    let word_path = k_in % 4u == 0u;
    // Word path: lane l unpacks columns i0 .. i0 + 8 as two words; a word past the row's end
    // (in % 8 == 4, or past the last column) reads word 0 and counts as zeros.
    let i0 = n0 + 8u * lane;
    var live: vec2<bool>;
    for (var h = 0u; h < 2u; h++) {
        live[h] = i0 + 4u * h < k_in;
    }
    for (var o = 0u; o < k_out; o++) {
        let s = scale(o);
        var x: array<f32, 2>;  // dy[row r, o] · s_o
        for (var r = 0u; r < 2u; r++) {
            x[r] = a[a_at[r] + o] * s;
        }
        if (word_path) {
            var v: array<vec4<f32>, 2>;  // q[o, i0 .. i0 + 8]
            for (var h = 0u; h < 2u; h++) {
                let word = codes[select(0u, (o * k_in + i0) / 4u + h, live[h])];
                v[h] = select(vec4<f32>(0.0), vec4<f32>(unpack4xI8(word)), live[h]);
            }
            // Slot 8j + l of acc holds column n0 + 8l + j (value j of lane l): lane indices stay
            // constant, as subgroupBroadcast requires; `store` undoes the permutation.
            for (var j = 0u; j < 8u; j++) {
                let b = lanes(v[j / 4u][j % 4u]);
                for (var r = 0u; r < 2u; r++) {
                    acc[r][2u * j] += x[r] * b[0];
                    acc[r][2u * j + 1u] += x[r] * b[1];
                }
            }
        } else {
            for (var cc = 0u; cc < 8u; cc++) {
                let b = lanes(code(o * k_in + min(n0 + 8u * cc + lane, k_in - 1u)));
                for (var r = 0u; r < 2u; r++) {
                    acc[r][2u * cc] += x[r] * b[0];
                    acc[r][2u * cc + 1u] += x[r] * b[1];
                }
            }
        }
    }
    store(&acc, t, m0, n0, lane, k_in, word_path, false);
}

@compute @workgroup_size(64)
fn linear_int8_subgroup_matvec(@builtin(workgroup_id) wid: vec3<u32>,
                               @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32,
                               @builtin(subgroup_invocation_id) lane: u32) {
    let o_lane = (wid.y * nwg.x + wid.x) * 64u + lid;
    let o = min(o_lane, p.out_features - 1u);  // past the end: computed, not stored
    let k4 = p.in_features / 4u;
    let row16 = o * (p.in_features / 16u);  // W row o's first 16-code element
    var acc: array<vec4<f32>, R>;  // 4 partial sums per row, added up at the end
    for (var ch = 0u; ch < p.in_features / 32u; ch++) {
        let qa = codes16[row16 + 2u * ch];
        let qb = codes16[row16 + 2u * ch + 1u];
        let q = array<vec4<f32>, 8>(
            vec4<f32>(unpack4xI8(qa.x)), vec4<f32>(unpack4xI8(qa.y)),
            vec4<f32>(unpack4xI8(qa.z)), vec4<f32>(unpack4xI8(qa.w)),
            vec4<f32>(unpack4xI8(qb.x)), vec4<f32>(unpack4xI8(qb.y)),
            vec4<f32>(unpack4xI8(qb.z)), vec4<f32>(unpack4xI8(qb.w)));  // q[o, 32ch + 4j ..+4]
        for (var r = 0u; r < R; r++) {
            if (r < p.rows) {  // uniform
                let xl = a4[r * k4 + 8u * ch + lane];  // lane l: x[r, 32ch + 4l .. +4]
                var s = acc[r];
                s += subgroupBroadcast(xl, 0u) * q[0];
                s += subgroupBroadcast(xl, 1u) * q[1];
                s += subgroupBroadcast(xl, 2u) * q[2];
                s += subgroupBroadcast(xl, 3u) * q[3];
                s += subgroupBroadcast(xl, 4u) * q[4];
                s += subgroupBroadcast(xl, 5u) * q[5];
                s += subgroupBroadcast(xl, 6u) * q[6];
                s += subgroupBroadcast(xl, 7u) * q[7];
                acc[r] = s;
            }
        }
    }
    if (o_lane >= p.out_features) { return; }
    let s = scale(o);
    for (var r = 0u; r < p.rows; r++) {
        c[r * p.out_features + o] = dot(acc[r], vec4<f32>(1.0)) * s;
    }
}
