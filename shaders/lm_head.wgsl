// Moving a vocabulary window's columns between a chunk and the full logits (src/ops/lm_head.rs):
//   place:   logits[n, col0 + j] = chunk[n, j]         take: chunk[n, j] = logits[n, col0 + j]
//   place_t: logits[n, col0 + j] = chunk_t[j, n]       (the chunk computed transposed, W·xᵀ)
// for n in the logits' row window [row0, row0 + rows) and j < width. The logits (N, V) may be
// larger than one binding, so they are bound as that window of whole rows (src/gpu/binding.rs);
// the chunk (N, width) or (width, N) fits one binding and is bound whole.
// Invocation (j, r): x over the window's columns in workgroups of 64, (y, z) over its rows
// (r = z·ny + y, so no dimension exceeds 65,535): no division per element, which a CPU driver
// scalarises. Exact copies: only indexing can be wrong, which the tests catch with odd shapes.

struct Params {
    rows: u32,   // rows of the logits window
    row0: u32,   // its first row in (N, V)
    cols: u32,   // V, the logits' row length
    col0: u32,   // v0, the chunk's first column in the logits
    width: u32,  // v1 − v0, the chunk's row length
    n: u32,      // N, rows of the whole chunk (place_t's row stride)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// (j, r) of this invocation, or none past the window.
fn at(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec3<u32> {
    let j = wid.x * 64u + lid;
    let r = wid.z * nwg.y + wid.y;
    return vec3<u32>(j, r, u32(j < p.width && r < p.rows));
}

@group(0) @binding(1) var<storage, read> chunk: array<f32>;           // (N, width) or (width, N)
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;    // (rows, V) window

@compute @workgroup_size(64)
fn lm_head_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = at(wid, nwg, lid);
    if (i.z == 0u) { return; }
    logits[i.y * p.cols + p.col0 + i.x] = chunk[(p.row0 + i.y) * p.width + i.x];
}

@compute @workgroup_size(64)
fn lm_head_place_t(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = at(wid, nwg, lid);
    if (i.z == 0u) { return; }
    logits[i.y * p.cols + p.col0 + i.x] = chunk[i.x * p.n + p.row0 + i.y];
}

@group(0) @binding(1) var<storage, read> dlogits: array<f32>;         // (rows, V) window
@group(0) @binding(2) var<storage, read_write> dchunk: array<f32>;    // (N, width)

@compute @workgroup_size(64)
fn lm_head_take(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = at(wid, nwg, lid);
    if (i.z == 0u) { return; }
    dchunk[(p.row0 + i.y) * p.width + i.x] = dlogits[i.y * p.cols + p.col0 + i.x];
}
