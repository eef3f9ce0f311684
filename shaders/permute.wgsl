// Permutation of the dimensions of a contiguous tensor (up to 8 dims): out = x.permute(perm).
// For output index i with multi-index (o_0 … o_{r−1}) over out_shape, the input offset is
// Σ_d o_d · stride_in[perm[d]]; the Rust side passes those permuted strides directly.
// The backward of a permutation is the inverse permutation (the same kernel).

struct Params {
    n: u32,                              // numel
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    out_shape: array<vec4<u32>, 2>,      // dims 0..8 of the output (unused: 1)
    in_strides: array<vec4<u32>, 2>,     // input stride of the dim that lands at output dim d
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // (n)

const WG: u32 = 256u;

// Input offset of output element i (in elements of x and out).
fn source_offset(i: u32) -> u32 {
    var rest = i;
    var offset = 0u;
    // Peel dimensions from the last (fastest) to the first.
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let size = p.out_shape[d / 4][d % 4];
        let o = rest % size;
        rest = rest / size;
        offset += o * p.in_strides[d / 4][d % 4];
    }
    return offset;
}

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = x[source_offset(i)];
}

// The same in vec4 units, when the innermost dim stays innermost and has a size % 4 == 0 (the
// Rust side divides its size and the outer strides by 4). Each invocation copies a run of up to
// RUN vec4s of the innermost dim, contiguous on both sides, so the multi-index (divisions, the
// slow part on a CPU driver) is computed once per run instead of once per element.
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;          // (n/4)
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;  // (n/4)

const RUN: u32 = 8u;

@compute @workgroup_size(256)
fn permute4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * WG + lid;
    let last = p.rank - 1u;
    let inner = p.out_shape[last / 4u][last % 4u];  // innermost run, in vec4s
    let runs = (inner + RUN - 1u) / RUN;            // runs per innermost row
    let row = t / runs;
    let start = (t % runs) * RUN;
    if (row * inner >= p.n) { return; }
    let dst = row * inner + start;
    let src = source_offset(row * inner) + start;
    for (var k = 0u; k < min(RUN, inner - start); k++) {
        out4[dst + k] = x4[src + k];
    }
}
