// Embedding lookup out[n, c] = table[ids[n], c] and its backward, a deterministic scatter-add
//   dtable[v, c] = Σ_{n : ids[n] = v} dout[n, c]     (n in increasing order)
// without float atomics: invocation (k, c) owns column c of every row v with v % buckets == k and
// walks all positions in order, so each dtable element is written by exactly one invocation.
// Work O(buckets·N + N·C) reads; dtable is zeroed first by a buffer clear.
//
// A table larger than one binding is bound as a window of rows [row0, row0 + rows) (one dispatch
// per window, see src/gpu/binding.rs); each dispatch handles the ids that fall in its window.
// Unsplit, the one window is the whole table (row0 = 0, rows = vocab).
//
// NOTE: an id ≥ vocab is clamped to vocab − 1 here (a kernel cannot raise an error); ids uploaded
//       with `embedding_ids` are checked on the host first.

struct Params {
    n: u32,        // N, number of positions (numel of ids)
    vocab: u32,    // V, rows of the table
    cols: u32,     // C
    buckets: u32,  // K, invocations per column in the backward
    row0: u32,     // first table row in this dispatch's window
    rows: u32,     // rows in the window
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn clamped(id: u32) -> u32 {
    return min(id, p.vocab - 1u);
}

// The row of the window holding table row v, or rows (= none) when v lies outside the window.
fn local_row(v: u32) -> u32 {
    if (v < p.row0 || v - p.row0 >= p.rows) { return p.rows; }
    return v - p.row0;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: one invocation per output element ----
@group(0) @binding(1) var<storage, read> table: array<f32>;       // (rows, C) window of (V, C)
@group(0) @binding(2) var<storage, read> ids: array<u32>;         // (N)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // (N, C)

@compute @workgroup_size(256)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n * p.cols) { return; }
    let n = i / p.cols;
    let c = i % p.cols;
    let r = local_row(clamped(ids[n]));
    if (r == p.rows) { return; }  // another window's row
    out[i] = table[r * p.cols + c];
}

// vec4 variant for C % 4 == 0 (a CPU driver issues one store per lane: vec4 stores 4× the bytes).
@group(0) @binding(1) var<storage, read> table4: array<vec4<f32>>;      // (rows, C / 4) window
@group(0) @binding(2) var<storage, read> ids4: array<u32>;              // (N)
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;  // (N, C / 4)

@compute @workgroup_size(256)
fn embedding_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    let c4 = p.cols / 4u;
    if (i >= p.n * c4) { return; }
    let r = local_row(clamped(ids4[i / c4]));
    if (r == p.rows) { return; }  // another window's row
    out4[i] = table4[r * c4 + i % c4];
}

// ---- backward ----
@group(0) @binding(1) var<storage, read> bids: array<u32>;         // (N)
@group(0) @binding(2) var<storage, read> dout: array<f32>;         // (N, C)
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>; // (rows, C) window, zeroed

@compute @workgroup_size(256)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    if (t >= p.buckets * p.cols) { return; }
    let k = t / p.cols;   // bucket: rows v with v % buckets == k
    let c = t % p.cols;   // channel (adjacent invocations: adjacent addresses)
    for (var n = 0u; n < p.n; n++) {
        let v = clamped(bids[n]);
        let r = local_row(v);
        if (r != p.rows && v % p.buckets == k) {
            dtable[r * p.cols + c] += dout[n * p.cols + c];
        }
    }
}
