// Attention probabilities from raw scores, for the composed attention path:
//   y[r, j] = softmax_j( scale·x[r, j] + mask[b, j] ),  over the keys row r may see:
//   keys j < P (prefix) always; keys j ≥ P only when j − P ≤ t (causal).
// Row r = (b·NH + h)·T + t of x (B, NH, T, P+T). Keys a row may not see get probability 0.
// Backward: dx = scale · y ⊙ (dy − Σ_j dy⊙y)   (softmax backward, masked entries have y = 0).
// NOTE: max-subtraction before exp; a row that sees no key at all (masked out) outputs zeros.

struct Params {
    rows: u32,      // B·NH·T
    cols: u32,      // P + T
    seq: u32,       // T
    n_head: u32,    // NH
    n_prefix: u32,  // P
    has_mask: u32,  // 1 if mask holds (B, P+T) additive values
    scale: f32,     // 1/√HS
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const WG: u32 = 64u;
const NEG_INF: f32 = -3.0e38;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// ---- forward ----
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (B, NH, T, P+T)
@group(0) @binding(2) var<storage, read> mask: array<f32>;       // (B, P+T) or unused
@group(0) @binding(3) var<storage, read_write> y: array<f32>;    // (B, NH, T, P+T)

// The score of key j in row r, or NEG_INF when the row may not see it.
fn score(r: u32, j: u32) -> f32 {
    let t = r % p.seq;
    if (j >= p.n_prefix && j - p.n_prefix > t) { return NEG_INF; }
    var s = p.scale * x[r * p.cols + j];
    if (p.has_mask == 1u) {
        let b = r / (p.seq * p.n_head);
        s += mask[b * p.cols + j];
    }
    return s;
}

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    var m = NEG_INF;
    for (var j = 0u; j < p.cols; j++) { m = max(m, score(r, j)); }
    var sum = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let s = score(r, j);
        var e = 0.0;
        if (s > NEG_INF) { e = exp(s - m); }
        y[r * p.cols + j] = e;
        sum += e;
    }
    var inv = 0.0;
    if (sum > 0.0) { inv = 1.0 / sum; }
    for (var j = 0u; j < p.cols; j++) { y[r * p.cols + j] *= inv; }
}

// ---- backward ----
@group(0) @binding(1) var<storage, read> probs: array<f32>;     // y (B, NH, T, P+T)
@group(0) @binding(2) var<storage, read> dy: array<f32>;        // (B, NH, T, P+T)
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;  // (B, NH, T, P+T)

@compute @workgroup_size(64)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var dot = 0.0;
    for (var j = 0u; j < p.cols; j++) { dot += dy[base + j] * probs[base + j]; }
    for (var j = 0u; j < p.cols; j++) {
        dx[base + j] = p.scale * probs[base + j] * (dy[base + j] - dot);
    }
}
