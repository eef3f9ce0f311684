// Fused LM head + cross-entropy over vocabulary windows (src/ops/lm_head_loss.rs): the logits
// (N, V) never exist at once, only a chunk (N, width) of columns [col0, col0 + width).
//   update:   a running log-sum-exp per row, merged chunk by chunk (online softmax):
//               m' = max(m, max_j chunk[n, j])     s' = s·exp(m − m') + Σ_j exp(chunk[n, j] − m')
//             and the target's logit, picked by the chunk that holds it;
//   finish:   lse = m + log s, loss = Σ_counted (lse − x_t) / count   (one invocation);
//   dlogits:  chunk[n, j] ← dout · (exp(chunk[n, j] − lse_n) − [col0 + j = t_n]) / count, in place.
// NOTE: m starts at −∞ (first chunk: s·exp(m − m') is skipped, never exp(−∞ − −∞) = NaN).
// NOTE: IGNORE targets contribute nothing and get a zero gradient row; count 0 gives loss 0.
// NOTE: a target ≥ V other than IGNORE is clamped to V − 1 (a kernel cannot raise an error).

struct Params {
    rows: u32,   // N
    width: u32,  // columns of this chunk
    col0: u32,   // first column (vocabulary id) of this chunk
    vocab: u32,  // V
    first: u32,  // 1 for the first chunk: the running state starts empty
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const IGNORE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;

fn target_of(t: u32) -> u32 {
    return min(t, p.vocab - 1u);
}

// ---- update: one invocation per row ----
@group(0) @binding(1) var<storage, read> chunk: array<f32>;         // (N, width)
@group(0) @binding(2) var<storage, read> targets: array<u32>;       // (N)
@group(0) @binding(3) var<storage, read_write> state: array<f32>;   // (3, N): m, s, x_t

@compute @workgroup_size(64)
fn lm_head_loss_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let n = (wid.y * nwg.x + wid.x) * 64u + lid;
    if (n >= p.rows) { return; }
    let row = n * p.width;
    var chunk_max = chunk[row];
    for (var j = 1u; j < p.width; j++) { chunk_max = max(chunk_max, chunk[row + j]); }
    var m = chunk_max;
    var s = 0.0;
    if (p.first == 0u) {
        m = max(state[n], chunk_max);
        s = state[p.rows + n] * exp(state[n] - m);
    }
    for (var j = 0u; j < p.width; j++) { s += exp(chunk[row + j] - m); }
    state[n] = m;
    state[p.rows + n] = s;
    let t = targets[n];
    if (t != IGNORE) {
        let v = target_of(t);
        if (v >= p.col0 && v - p.col0 < p.width) { state[2u * p.rows + n] = chunk[row + v - p.col0]; }
    }
}

// ---- finish: lse per row, then the mean over counted rows (one invocation, in row order) ----
@group(0) @binding(1) var<storage, read> ftargets: array<u32>;      // (N)
@group(0) @binding(2) var<storage, read> fstate: array<f32>;        // (3, N)
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;     // (N)
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;    // (2): loss, count

@compute @workgroup_size(1)
fn lm_head_loss_finish() {
    var total = 0.0;
    var count = 0.0;
    for (var n = 0u; n < p.rows; n++) {
        let l = fstate[n] + log(fstate[p.rows + n]);
        lse[n] = l;
        if (ftargets[n] != IGNORE) {
            total += l - fstate[2u * p.rows + n];
            count += 1.0;
        }
    }
    loss[0] = select(total / count, 0.0, count == 0.0);
    loss[1] = count;
}

// ---- dlogits of one chunk, in place: one invocation per element ----
@group(0) @binding(1) var<storage, read> btargets: array<u32>;      // (N)
@group(0) @binding(2) var<storage, read> blse: array<f32>;          // (N)
@group(0) @binding(3) var<storage, read> bloss: array<f32>;         // (2): loss, count
@group(0) @binding(4) var<storage, read> dout: array<f32>;          // (1)
@group(0) @binding(5) var<storage, read_write> dchunk: array<f32>;  // (N, width): logits in, dlogits out

@compute @workgroup_size(256)
fn lm_head_loss_dlogits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 256u + lid;
    if (i >= p.rows * p.width) { return; }
    let n = i / p.width;
    let t = btargets[n];
    if (t == IGNORE) {
        dchunk[i] = 0.0;
        return;
    }
    let onehot = select(0.0, 1.0, p.col0 + i % p.width == target_of(t));
    dchunk[i] = dout[0] * (exp(dchunk[i] - blse[n]) - onehot) / bloss[1];
}
