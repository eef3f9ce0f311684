// Global gradient norm and clipping (torch.nn.utils.clip_grad_norm_), without read-back:
//   sumsq_chunks: partial[offset + j] = Σ_{k<K} g[j·K + k]²       (one dispatch per gradient)
//   sum_chunks:   out[j] = Σ_{k<K} x[j·K + k]                      (repeated until one value)
//   finish_norm:  norm[0] = √total[0]
//   clip_scale:   g *= min(1, max_norm / (norm + 1e-6))            (one dispatch per gradient)
// Every partial sum is taken by one invocation in a fixed order: deterministic.

struct Params {
    n: u32,         // elements read
    k: u32,         // chunk length
    offset: u32,    // first output slot (sumsq_chunks)
    max_norm: f32,  // clip_scale
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;           // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;   // (⌈n / k⌉ + offset)

@compute @workgroup_size(256)
fn sumsq_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let j = flat(wid, nwg, lid);
    let start = j * p.k;
    if (start >= p.n) { return; }
    let end = min(start + p.k, p.n);
    var acc = 0.0;
    for (var i = start; i < end; i++) { acc += x[i] * x[i]; }
    out[p.offset + j] = acc;
}

@compute @workgroup_size(256)
fn sum_chunks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let j = flat(wid, nwg, lid);
    let start = j * p.k;
    if (start >= p.n) { return; }
    let end = min(start + p.k, p.n);
    var acc = 0.0;
    for (var i = start; i < end; i++) { acc += x[i]; }
    out[p.offset + j] = acc;
}

@compute @workgroup_size(1)
fn finish_norm() {
    out[0] = sqrt(x[0]);
}

@group(0) @binding(1) var<storage, read> norm: array<f32>;        // (1)
@group(0) @binding(2) var<storage, read_write> g: array<f32>;     // (n) scaled in place

@compute @workgroup_size(256)
fn clip_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    g[i] *= min(1.0, p.max_norm / (norm[0] + 1e-6));
}
