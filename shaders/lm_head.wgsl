// Moving a vocabulary window's columns between a chunk and the full logits (src/ops/lm_head.rs):
//   place: logits[n, col0 + j] = chunk[n, j]        take: chunk[n, j] = logits[n, col0 + j]
// for n in the logits' row window [row0, row0 + rows) and j < width. The logits (N, V) may be
// larger than one binding, so they are bound as that window of whole rows (src/gpu/binding.rs);
// the chunk (N, width) fits one binding and is bound whole. Exact copies: only indexing can be
// wrong, which the tests catch with odd shapes.

struct Params {
    rows: u32,   // rows of the logits window
    row0: u32,   // its first row in (N, V)
    cols: u32,   // V, the logits' row length
    col0: u32,   // v0, the chunk's first column in the logits
    width: u32,  // v1 − v0, the chunk's row length
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> chunk: array<f32>;           // (N, width)
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;    // (rows, V) window

@compute @workgroup_size(256)
fn lm_head_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.rows * p.width) { return; }
    let r = i / p.width;
    let j = i % p.width;
    logits[r * p.cols + p.col0 + j] = chunk[(p.row0 + r) * p.width + j];
}

@group(0) @binding(1) var<storage, read> dlogits: array<f32>;         // (rows, V) window
@group(0) @binding(2) var<storage, read_write> dchunk: array<f32>;    // (N, width)

@compute @workgroup_size(256)
fn lm_head_take(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.rows * p.width) { return; }
    let r = i / p.width;
    let j = i % p.width;
    dchunk[(p.row0 + r) * p.width + j] = dlogits[r * p.cols + p.col0 + j];
}
