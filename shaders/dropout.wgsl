// Inverted dropout with a counter-based mask: y[i] = keep(i) ? x[i] · scale : 0, scale = 1/(1 − p).
// keep(i) = hash(seed, i) ≥ threshold, threshold = round(p · 2³²). The hash uses only u32
// multiply, add, xor and shifts (wrapping), so every backend and the Rust reference in
// src/ops/dropout.rs compute the same bits. Backward is this same kernel applied to dout: the
// mask is recomputed from (seed, i), nothing else is saved.

struct Params {
    n: u32,          // numel
    seed_lo: u32,    // low 32 bits of the u64 seed
    seed_hi: u32,    // high 32 bits
    threshold: u32,  // round(p · 2³²): an element is dropped when its hash is below it
    scale: f32,      // 1 / (1 − p)
}

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (n) x forward, dout backward
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (n) y forward, dx backward

// PCG hash (Jarzynski & Olano, "Hash Functions for GPU Rendering", 2020): one LCG step, then
// PCG's RXS-M-XS output permutation. A bijection on u32.
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// hash(seed, i) = pcg(i ^ pcg(seed_lo ^ pcg(seed_hi))).
fn mask_hash(i: u32) -> u32 {
    let key = pcg(p.seed_lo ^ pcg(p.seed_hi));
    return pcg(i ^ key);
}

@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    y[i] = select(0.0, x[i] * p.scale, mask_hash(i) >= p.threshold);
}
