// Sparse update of a dense tensor at K distinct flat indices, and its adjoint:
//   scatter_add:  out[idx[k]] += values[k]      (out already holds a copy of the base)
//   gather:       dvalues[k]   = dout[idx[k]]
// One invocation per k. The indices are distinct (checked on the host by `scatter_indices`), so
// no two invocations write the same element: no atomics, and the result is deterministic.
//
// A dense tensor larger than one binding is bound as a window [row0, row0 + rows) of its flat
// elements, and indices/values beyond one binding as windows of k, one dispatch per pair of
// windows (src/gpu/binding.rs); an invocation whose index falls in another window of the dense
// tensor does nothing. Unsplit, the one window is the whole tensor and all of k.
// NOTE: an index ≥ the tensor's size falls in no window and is skipped (a kernel cannot raise an
//       error); `scatter_indices` refuses it on the host.

struct Params {
    k: u32,     // indices in this dispatch's window of k
    row0: u32,  // first flat element in this dispatch's window
    rows: u32,  // elements in the window
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward: out[idx[k]] += values[k] ----
@group(0) @binding(1) var<storage, read> idx: array<u32>;          // (K)
@group(0) @binding(2) var<storage, read> values: array<f32>;       // (K)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;    // (rows) window of (N)

@compute @workgroup_size(256)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let k = flat(wid, nwg, lid);
    if (k >= p.k) { return; }
    let i = idx[k];
    if (i < p.row0 || i - p.row0 >= p.rows) { return; }  // another window's element
    out[i - p.row0] += values[k];
}

// ---- backward: dvalues[k] = dout[idx[k]] ----
@group(0) @binding(1) var<storage, read> gidx: array<u32>;             // (K)
@group(0) @binding(2) var<storage, read> dout: array<f32>;             // (rows) window of (N)
@group(0) @binding(3) var<storage, read_write> dvalues: array<f32>;    // (K), zeroed

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let k = flat(wid, nwg, lid);
    if (k >= p.k) { return; }
    let i = gidx[k];
    if (i < p.row0 || i - p.row0 >= p.rows) { return; }  // another window's element
    dvalues[k] = dout[i - p.row0];
}
