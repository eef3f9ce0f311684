// Embedding lookup out[n, c] = table[ids[n], c] and its backward, a deterministic scatter-add
//   dtable[v, c] = Σ_{n : ids[n] = v} dout[n, c]     (n in increasing order)
// without float atomics: invocation (k, c) owns column c of every row v with v % buckets == k and
// walks all positions in order, so each dtable element is written by exactly one invocation.
// Work O(buckets·N + N·C) reads plus the O(V·C) zero fill; buckets only adds parallelism.
//
// NOTE: an id ≥ vocab is clamped to vocab − 1 here (a kernel cannot raise an error); ids uploaded
//       with `embedding_ids` are checked on the host first.

struct Params {
    n: u32,        // N, number of positions (numel of ids)
    vocab: u32,    // V, rows of the table
    cols: u32,     // C
    buckets: u32,  // K, invocations per column in the backward
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn clamped(id: u32) -> u32 {
    return min(id, p.vocab - 1u);
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: one invocation per output element ----
@group(0) @binding(1) var<storage, read> table: array<f32>;       // (V, C)
@group(0) @binding(2) var<storage, read> ids: array<u32>;         // (N)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // (N, C)

@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.cols) { return; }
    let n = i / p.cols;
    let c = i % p.cols;
    out[i] = table[clamped(ids[n]) * p.cols + c];
}

// vec4 variant for C % 4 == 0 (a CPU driver issues one store per lane: vec4 stores 4× the bytes).
@group(0) @binding(1) var<storage, read> table4: array<vec4<f32>>;      // (V, C / 4)
@group(0) @binding(2) var<storage, read> ids4: array<u32>;              // (N)
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;  // (N, C / 4)

@compute @workgroup_size(256)
fn embedding_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    let c4 = p.cols / 4u;
    if (i >= p.n * c4) { return; }
    out4[i] = table4[clamped(ids4[i / c4]) * c4 + i % c4];
}

// ---- backward ----
// Zero fill, four floats per invocation: the storage is a whole number of 16-byte vec4s (the
// buffer pool rounds sizes up), so the last vec4 may run past V·C into padding, never past the end.
@group(0) @binding(1) var<storage, read_write> zero_table: array<vec4<f32>>;  // (⌈V·C / 4⌉)

@compute @workgroup_size(256)
fn embedding_zero(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= (p.vocab * p.cols + 3u) / 4u) { return; }
    zero_table[i] = vec4<f32>(0.0);
}

@group(0) @binding(1) var<storage, read> bids: array<u32>;         // (N)
@group(0) @binding(2) var<storage, read> dout: array<f32>;         // (N, C)
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>; // (V, C), zeroed first

@compute @workgroup_size(256)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    if (t >= p.buckets * p.cols) { return; }
    let k = t / p.cols;   // bucket: rows v with v % buckets == k
    let c = t % p.cols;   // channel (adjacent invocations: adjacent addresses)
    for (var n = 0u; n < p.n; n++) {
        let v = clamped(bids[n]);
        if (v % p.buckets == k) {
            dtable[v * p.cols + c] += dout[n * p.cols + c];
        }
    }
}
