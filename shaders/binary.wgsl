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

// ---- vec4 variants, chosen by the Rust side when n % 4 == 0 and nb % 4 == 0 (so no vec4 of a
// straddles two copies of b). Sizes are then in vec4 units (n4 = n/4, nb4 = nb/4), and `op` picks
// the operation (a uniform branch). Each invocation handles V vec4s, so the per-invocation cost
// of a CPU driver is spread; the 8 lanes of a lavapipe subgroup touch 8 consecutive vec4s. ----
struct Params4 {
    n4: u32,   // numel(a) / 4
    nb4: u32,  // numel(b) / 4, divides n4
    op: u32,   // 0 add, 1 sub, 2 mul, 3 div
    rows: u32, // n4 / nb4 (broadcast copies of b)
}

@group(0) @binding(0) var<uniform> q: Params4;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;         // (n4)
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;         // (nb4)
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>; // (n4)

const V: u32 = 4u;

fn apply4(x: vec4<f32>, y: vec4<f32>) -> vec4<f32> {
    switch q.op {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        default: { return x / y; }
    }
}

// Same shapes: vec4s i0 + k·WG of a block of WG·V, no index arithmetic on b.
@compute @workgroup_size(256)
fn same4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i0 = (wid.y * nwg.x + wid.x) * WG * V + lid;
    for (var k = 0u; k < V; k++) {
        let i = i0 + k * WG;
        if (i < q.n4) { out4[i] = apply4(a4[i], b4[i]); }
    }
}

// Broadcast: thread t owns column j = t % nb4 of rows [V·r, V·r + V), r = t / nb4, so b4[j] is
// loaded once and no modulo runs per element.
@compute @workgroup_size(256)
fn bcast4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let j = t % q.nb4;
    let r0 = (t / q.nb4) * V;
    if (r0 >= q.rows) { return; }
    let y = b4[j];
    for (var r = r0; r < min(r0 + V, q.rows); r++) {
        let i = r * q.nb4 + j;
        out4[i] = apply4(a4[i], y);
    }
}
