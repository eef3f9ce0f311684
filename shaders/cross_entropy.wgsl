// Cross-entropy of logits [N, V] against u32 targets [N], fused with its log-softmax:
//   lse_r  = m_r + log Σ_v exp(x[r, v] − m_r)            (m_r = max_v x[r, v])
//   loss_r = lse_r − x[r, t_r]     on counted rows (t_r ≠ IGNORE), 0 on ignored rows
//   loss   = Σ_r loss_r / count    (0 when count = 0)
//   dx[r, v] = dout · (exp(x[r, v] − lse_r) − [v = t_r]) / count   on counted rows, 0 otherwise
//
// NOTE: max-subtraction inside the log-sum-exp; the loss is lse − x_t, never −log(softmax).
// NOTE: a target ≥ V (other than IGNORE) is clamped to V − 1: a kernel cannot raise an error.

struct Params {
    rows: u32,  // N
    cols: u32,  // V
}

const IGNORE: u32 = 0xffffffffu;
const WG: u32 = 64u;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- forward, per row ----
@group(0) @binding(1) var<storage, read> logits: array<f32>;          // (N, V)
@group(0) @binding(2) var<storage, read> targets: array<u32>;         // (N)
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;       // (N)
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;  // (N)

@compute @workgroup_size(64)
fn cross_entropy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = flat(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var m = logits[base];
    for (var i = 1u; i < p.cols; i++) { m = max(m, logits[base + i]); }
    var s = 0.0;
    for (var i = 0u; i < p.cols; i++) { s += exp(logits[base + i] - m); }
    let l = m + log(s);
    lse[r] = l;
    let t = targets[r];
    row_loss[r] = select(l - logits[base + min(t, p.cols - 1u)], 0.0, t == IGNORE);
}

// GPU variant: one 256-wide workgroup per row, partial max / sum combined by a barrier tree.
const WGT: u32 = 256u;
var<workgroup> red: array<f32, 256>;

fn tree(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WGT / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), is_max);
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier();
    return out;
}

@compute @workgroup_size(256)
fn cross_entropy_wg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = wid.y * nwg.x + wid.x;
    if (r >= p.rows) { return; } // uniform across the workgroup
    let base = r * p.cols;
    var m = -3.402823e38;
    for (var i = lid; i < p.cols; i += WGT) { m = max(m, logits[base + i]); }
    m = tree(lid, m, true);
    var s = 0.0;
    for (var i = lid; i < p.cols; i += WGT) { s += exp(logits[base + i] - m); }
    let l = m + log(tree(lid, s, false));
    if (lid == 0u) {
        lse[r] = l;
        let t = targets[r];
        row_loss[r] = select(l - logits[base + min(t, p.cols - 1u)], 0.0, t == IGNORE);
    }
}

// ---- forward, the mean over counted rows: one invocation, rows in order ----
@group(0) @binding(1) var<storage, read> mtargets: array<u32>;        // (N)
@group(0) @binding(2) var<storage, read> mrow_loss: array<f32>;       // (N)
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;      // (1)
@group(0) @binding(4) var<storage, read_write> count: array<f32>;     // (1)

@compute @workgroup_size(1)
fn cross_entropy_mean() {
    var total = 0.0;
    var n = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        total += mrow_loss[r];
        n += select(1.0, 0.0, mtargets[r] == IGNORE);
    }
    loss[0] = select(total / n, 0.0, n == 0.0);
    count[0] = n;
}

// ---- backward, one invocation per logit ----
@group(0) @binding(1) var<storage, read> blogits: array<f32>;         // (N, V)
@group(0) @binding(2) var<storage, read> btargets: array<u32>;        // (N)
@group(0) @binding(3) var<storage, read> blse: array<f32>;            // (N)
@group(0) @binding(4) var<storage, read> bcount: array<f32>;          // (1)
@group(0) @binding(5) var<storage, read> dout: array<f32>;            // (1)
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;   // (N, V)

@compute @workgroup_size(256)
fn cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.rows * p.cols) { return; }
    let r = i / p.cols;
    let v = i % p.cols;
    let t = btargets[r];
    if (t == IGNORE) {
        dlogits[i] = 0.0;
        return;
    }
    let onehot = select(0.0, 1.0, v == min(t, p.cols - 1u));
    dlogits[i] = dout[0] * (exp(blogits[i] - blse[r]) - onehot) / bcount[0];
}
