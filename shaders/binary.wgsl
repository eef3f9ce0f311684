// Elementwise binary ops with suffix broadcasting: out[i] = a[i] ∘ b[i % nb].
// b's shape is a's shape or a suffix of it (a bias row [C] over [.., C]); nb = numel(b).
// The backward passes are compositions of these same kernels (see src/ops/binary.rs).

struct Params {
    n: u32,   // numel(a) = numel(out)
    nb: u32,  // numel(b), divides n
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read> b: array<f32>;        // (nb)
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n)

const WG: u32 = 256u;

// Flat thread index over a dispatch folded into 2-D (more than 65,535 workgroups).
fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] + b[i % p.nb];
}

@compute @workgroup_size(256)
fn sub(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] - b[i % p.nb];
}

@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] * b[i % p.nb];
}

@compute @workgroup_size(256)
fn div(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = a[i] / b[i % p.nb];
}
