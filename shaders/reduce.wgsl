// Sums and their adjoints (broadcasts). Deterministic: every output is summed by one thread in a
// fixed order, no atomics.
//   sum_chunks:  out[j] = Σ_{k<K} x[j·K + k]   (the last chunk may be short)   — sum over last dim
//   sum_rows:    out[c] = Σ_r x[r·K + c]        (x viewed as [rows, K])         — bias gradient
//   expand_div:  out[i] = x[i / K]                                             — adjoint of sum_chunks
//   expand_mod:  out[i] = x[i % K]                                             — adjoint of sum_rows

struct Params {
    n: u32,  // numel of the larger side (input of a sum, output of an expand)
    k: u32,  // chunk length / row length
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn sum_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let j = flat(wid, nwg, lid);
    let start = j * p.k;
    if (start >= p.n) { return; }
    let end = min(start + p.k, p.n);
    var acc = 0.0;
    for (var i = start; i < end; i++) {
        acc += x[i];
    }
    out[j] = acc;
}

@compute @workgroup_size(256)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= p.k) { return; }
    var acc = 0.0;
    for (var i = c; i < p.n; i += p.k) {
        acc += x[i];
    }
    out[c] = acc;
}

@compute @workgroup_size(256)
fn expand_div(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = x[i / p.k];
}

@compute @workgroup_size(256)
fn expand_mod(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = x[i % p.k];
}

// ---- sum_rows4: column sums in vec4s (C % 4 == 0), over chunks of rows for parallelism ----
// out[g, j] = Σ_{r in chunk g} x[r, j]  (x viewed as [rows, c4] vec4s, chunks of `chunk` rows).
// Thread t owns column j = t % c4 of chunk g = t / c4; consecutive threads read consecutive vec4s
// of a row. The Rust side runs it twice: chunks of 64 rows into partial sums, then one chunk over
// those partials (fixed order both times, so results are deterministic).
struct Params4 {
    rows: u32,
    c4: u32,     // C / 4
    chunk: u32,  // rows per chunk
    _pad: u32,
}

@group(0) @binding(0) var<uniform> q: Params4;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;          // (rows, c4)
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;  // (ceil(rows/chunk), c4)

@compute @workgroup_size(256)
fn sum_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let j = t % q.c4;
    let g = t / q.c4;
    let r0 = g * q.chunk;
    if (r0 >= q.rows) { return; }
    var acc = vec4<f32>(0.0);
    for (var r = r0; r < min(r0 + q.chunk, q.rows); r++) {
        acc += x4[r * q.c4 + j];
    }
    out4[g * q.c4 + j] = acc;
}
