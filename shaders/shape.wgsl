// Copy kernels that move elements between layouts: transpose of the last two dims, slice of one
// dim, its adjoint (pad with zeros), and the placement of one concat input. One thread per element
// of the tensor named in the comment; no arithmetic on values, so every result is exact.
//
// slice / pad / place view both tensors as [outer, D, inner] around the sliced dim: the big tensor
// has D = p.big, the small one D = p.len, and the small one sits at rows [start, start + len).

const WG: u32 = 256u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// ---- transpose: x (.., M, N) -> y (.., N, M) ----
struct TransposeParams {
    n: u32,     // numel
    rows: u32,  // M
    cols: u32,  // N
}

@group(0) @binding(0) var<uniform> tp: TransposeParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (.., M, N)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (.., N, M)

@compute @workgroup_size(256)
fn transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);   // index into y
    if (i >= tp.n) { return; }
    let mn = tp.rows * tp.cols;
    let b = i / mn;
    let r = i % mn;
    let col = r / tp.rows;         // y's row = x's column
    let row = r % tp.rows;         // y's column = x's row
    y[i] = x[b * mn + row * tp.cols + col];
}

// ---- slice / pad / place ----
struct SliceParams {
    n: u32,      // threads: numel of the small tensor (slice, place) or of the big one (pad)
    inner: u32,  // product of the dims after the sliced one
    big: u32,    // D of the big tensor
    start: u32,  // first row of the small tensor inside the big one
    len: u32,    // D of the small tensor
}

@group(0) @binding(0) var<uniform> sp: SliceParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;        // (outer, big|len, inner)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // (outer, len|big, inner)

// Index in the big tensor of element `i` of the small one.
fn big_index(i: u32) -> u32 {
    let block = sp.len * sp.inner;
    let o = i / block;
    return o * sp.big * sp.inner + sp.start * sp.inner + i % block;
}

// slice: dst (outer, len, inner) = src (outer, big, inner)[:, start:start+len, :]
@compute @workgroup_size(256)
fn slice(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= sp.n) { return; }
    dst[i] = src[big_index(i)];
}

// place: dst (outer, big, inner)[:, start:start+len, :] = src (outer, len, inner).
// One dispatch per concat input; together they cover dst.
@compute @workgroup_size(256)
fn place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= sp.n) { return; }
    dst[big_index(i)] = src[i];
}

// pad (slice backward): dst (outer, big, inner) = dout inside [start, start+len), 0 elsewhere.
// Writing the zeros here saves a separate fill dispatch.
@compute @workgroup_size(256)
fn pad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);   // index into the big tensor
    if (i >= sp.n) { return; }
    let block = sp.big * sp.inner;
    let o = i / block;
    let r = i % block;
    let d = r / sp.inner;
    if (d >= sp.start && d < sp.start + sp.len) {
        dst[i] = src[o * sp.len * sp.inner + (d - sp.start) * sp.inner + r % sp.inner];
    } else {
        dst[i] = 0.0;
    }
}

// ---- vec4 variants of slice / place / pad: the Rust side folds [outer, D, inner] to inner = 1
// with rows of D·inner/4 vec4s (needs len·inner, big·inner, start·inner % 4 == 0), so sp.len,
// sp.big and sp.start are in vec4s. Each invocation copies a run of up to RUN vec4s of one row
// (sp.n = outer · runs per row), so the row is found with one division per run, not per element.
@group(0) @binding(1) var<storage, read> src4: array<vec4<f32>>;        // (outer, big|len)
@group(0) @binding(2) var<storage, read_write> dst4: array<vec4<f32>>;  // (outer, len|big)

const RUN: u32 = 8u;

// (row, first vec4 in the row, vec4s in this run) of run t over rows of `width` vec4s.
fn run_of(t: u32, width: u32) -> vec3<u32> {
    let runs = (width + RUN - 1u) / RUN;
    let start = (t % runs) * RUN;
    return vec3<u32>(t / runs, start, min(RUN, width - start));
}

@compute @workgroup_size(256)
fn slice4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    if (t >= sp.n) { return; }
    let r = run_of(t, sp.len);
    let s = r.x * sp.big + sp.start + r.y;
    let d = r.x * sp.len + r.y;
    for (var k = 0u; k < r.z; k++) { dst4[d + k] = src4[s + k]; }
}

@compute @workgroup_size(256)
fn place4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    if (t >= sp.n) { return; }
    let r = run_of(t, sp.len);
    let s = r.x * sp.len + r.y;
    let d = r.x * sp.big + sp.start + r.y;
    for (var k = 0u; k < r.z; k++) { dst4[d + k] = src4[s + k]; }
}

@compute @workgroup_size(256)
fn pad4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);   // runs over the big tensor's rows
    if (t >= sp.n) { return; }
    let r = run_of(t, sp.big);
    for (var k = 0u; k < r.z; k++) {
        let c = r.y + k;  // vec4 column in the big row
        var v = vec4<f32>(0.0);
        if (c >= sp.start && c < sp.start + sp.len) { v = src4[r.x * sp.len + c - sp.start]; }
        dst4[r.x * sp.big + c] = v;
    }
}
