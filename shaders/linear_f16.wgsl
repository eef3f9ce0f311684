// Linear over a frozen f16 weight (`--base-dtype f16`): y = x · Wᵀ and its input gradient
// dx = dy · W, W read as f16 and computed in f32 (never written to memory in f32).
//   forward     y[r, o]  = Σ_i x[r, i]  · W[o, i]      x (rows, in)   → y (rows, out)
//   backward_x  dx[r, i] = Σ_o dy[r, o] · W[o, i]      dy (rows, out) → dx (rows, in)
// Layout: W [out, in] (nn.Linear), two halves per u32 word (unpack2x16float: element 2j in the
// LOW 16 bits, 2j + 1 in the high), each row padded with zeros to a multiple of 8 halves
// (row_words = ceil(in / 8) · 4 words), so a row is whole vec4<u32>s of 8 weights.
// unpack2x16float is core WGSL: no `enable f16;` (wgpu gates it on DownlevelFlags::
// SHADER_F16_IN_F32, which src/ops/linear_f16.rs checks).
// Two kernels here (src/ops/linear_f16.rs picks; linear_f16_subgroup.wgsl has lavapipe's):
//   linear_f16_forward / linear_f16_backward_x  one column × 4 rows per invocation, a weight
//       unpacked per use: the fused reference, runs everywhere (no optional feature);
//   linear_f16_matvec  1..=8 rows (decoding): one output column per invocation, the row of W
//       read 8 weights per vec4<u32> load, x read at addresses uniform over the workgroup.
// NOTE: f32 accumulation in order along K (the matvec: a dot of 4, then added): tests compare
// with a tolerance that scales with the values (see tests/gpu/base_f16.rs).

struct Params {
    rows: u32,          // rows of x (B·T)
    in_features: u32,   // C_in
    out_features: u32,  // C_out
    row_words: u32,     // u32 words per W row: ceil(in / 8) · 4
    tiles_m: u32,       // row tiles of 128 (subgroup kernels only)
}

const WG: u32 = 256u;
const R: u32 = 4u;   // rows per invocation of the simple kernels
const RV: u32 = 8u;  // rows the matvec takes at most

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;        // (out, row_words) f16 pairs
@group(0) @binding(2) var<storage, read> a: array<f32>;        // (rows, in) x | (rows, out) dy
@group(0) @binding(3) var<storage, read_write> c: array<f32>;  // (rows, out) y | (rows, in) dx

// W[o, i] in f32 (exact: every f16 is an f32).
fn weight(o: u32, i: u32) -> f32 {
    let pair = unpack2x16float(w[o * p.row_words + (i >> 1u)]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * size + lid;
}

// y[r, o] = Σ_i x[r, i] · w[o, i]; thread t: o = t % out, rows 4·(t / out) ..+4.
@compute @workgroup_size(256)
fn linear_f16_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid, WG);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.out_features) { return; }
    let o = t % p.out_features;
    let r0 = (t / p.out_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < p.in_features; i++) {
        let wv = weight(o, i);
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
fn linear_f16_backward_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid, WG);
    let groups = (p.rows + R - 1u) / R;
    if (t >= groups * p.in_features) { return; }
    let i = t % p.in_features;
    let r0 = (t / p.in_features) * R;
    let nr = min(R, p.rows - r0);
    var acc = vec4<f32>(0.0);
    for (var o = 0u; o < p.out_features; o++) {
        let wv = weight(o, i);
        for (var j = 0u; j < nr; j++) {
            acc[j] += a[(r0 + j) * p.out_features + o] * wv;
        }
    }
    for (var j = 0u; j < nr; j++) {
        c[(r0 + j) * p.in_features + i] = acc[j];
    }
}

@group(0) @binding(1) var<storage, read> w4: array<vec4<u32>>;  // w, 8 halves per element

// x[r, i .. i + 4], zeros past the row's end (only the last, padded chunk of a row reaches it).
fn x4(r: u32, i: u32) -> vec4<f32> {
    let base = r * p.in_features;
    if (i + 4u <= p.in_features) {
        return vec4<f32>(a[base + i], a[base + i + 1u], a[base + i + 2u], a[base + i + 3u]);
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (i + j < p.in_features) { v[j] = a[base + i + j]; }
    }
    return v;
}

@group(0) @binding(2) var<storage, read> a4: array<vec4<f32>>;  // a, 4 values per element

// y[r, o] for all rows (≤ 8) of one column o when in % 8 == 0 (every real layer): x read as
// two vec4 per chunk at addresses uniform over the workgroup, no bounds checks.
@compute @workgroup_size(64)
fn linear_f16_matvec8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid, 64u);
    if (o >= p.out_features) { return; }
    let chunks = p.row_words / 4u;  // = in / 8
    let row0 = o * chunks;
    var acc: array<f32, RV>;
    for (var q = 0u; q < chunks; q++) {
        let v = w4[row0 + q];
        let w_lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));  // W[o, 8q .. 8q + 4]
        let w_hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));  // W[o, 8q + 4 .. 8q + 8]
        for (var r = 0u; r < p.rows; r++) {
            let x0 = r * 2u * chunks + 2u * q;  // vec4 index of x[r, 8q]
            acc[r] += dot(a4[x0], w_lo) + dot(a4[x0 + 1u], w_hi);
        }
    }
    for (var r = 0u; r < p.rows; r++) {
        c[r * p.out_features + o] = acc[r];
    }
}

// y[r, o] for all rows (≤ 8) of one column o; thread t = o.
@compute @workgroup_size(64)
fn linear_f16_matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let o = flat(wid, nwg, lid, 64u);
    if (o >= p.out_features) { return; }
    let chunks = p.row_words / 4u;  // vec4<u32> per row: 8 weights each
    let row0 = o * chunks;
    var acc: array<f32, RV>;
    for (var q = 0u; q < chunks; q++) {
        let v = w4[row0 + q];
        let w_lo = vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y));  // W[o, 8q .. 8q + 4]
        let w_hi = vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w));  // W[o, 8q + 4 .. 8q + 8]
        for (var r = 0u; r < p.rows; r++) {
            acc[r] += dot(x4(r, 8u * q), w_lo) + dot(x4(r, 8u * q + 4u), w_hi);
        }
    }
    for (var r = 0u; r < p.rows; r++) {
        c[r * p.out_features + o] = acc[r];
    }
}
