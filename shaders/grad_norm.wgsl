// Global gradient norm and clipping (torch.nn.utils.clip_grad_norm_), without read-back:
//   sumsq_slots:  partial[offset + j] = Σ_{k<K} g[j-th chunk]²   (one dispatch per bucket: chunk j
//                 lies in the slot whose chunk range holds it, and starts at that slot's start +
//                 (j − chunk_start)·K, so chunks never straddle two gradients)
//   sumsq_chunks: partial[offset + j] = Σ_{k<K} g[j·K + k]²     (one gradient; the reference the
//                 slot form is compared with, tests/gpu/optim_multi_tensor.rs)
//   sum_chunks:   out[j] = Σ_{k<K} x[j·K + k]                    (repeated until one value)
//   finish_norm:  norm[0] = √total[0]
//   clip_scale:   g *= min(1, max_norm / (norm + 1e-6))          (one dispatch per bucket arena)
// Every partial sum is taken by one invocation in a fixed order: deterministic, and the same
// partials in the same places whichever of the two sumsq forms wrote them.

struct Params {
    n: u32,         // elements read (sumsq_slots: chunks written)
    k: u32,         // chunk length
    offset: u32,    // first output slot (sumsq_chunks, sumsq_slots)
    max_norm: f32,  // clip_scale
    slots: u32,     // sumsq_slots
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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

// Slots as in adamw.wgsl (only the ranges are read here).
struct Slot {
    start: u32,
    end: u32,
    chunk_start: u32,
    chunk_end: u32,
    lr: f32,
    weight_decay: f32,
    has_grad: u32,
    _pad: u32,
}

@group(0) @binding(1) var<storage, read> slots: array<Slot>;          // (slots)
@group(0) @binding(2) var<storage, read> grad_arena: array<f32>;      // (arena elements)
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;   // (offset + n)

@compute @workgroup_size(256)
fn sumsq_slots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = flat(wid, nwg, lid);
    if (j >= p.n) { return; }
    // The slot whose chunk range holds j: the first whose chunk_end is past j.
    var lo = 0u;
    var hi = p.slots;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (slots[mid].chunk_end > j) { hi = mid; } else { lo = mid + 1u; }
    }
    let s = slots[lo];
    let start = s.start + (j - s.chunk_start) * p.k;
    let end = min(start + p.k, s.end);
    var acc = 0.0;
    for (var i = start; i < end; i++) { acc += grad_arena[i] * grad_arena[i]; }
    partial[p.offset + j] = acc;
}
