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

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if (i >= p.n) { return; }
    var rest = i;
    var offset = 0u;
    // Peel dimensions from the last (fastest) to the first.
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let size = p.out_shape[d / 4][d % 4];
        let o = rest % size;
        rest = rest / size;
        offset += o * p.in_strides[d / 4][d % 4];
    }
    out[i] = x[offset];
}
