// Fused LM head + cross-entropy over vocabulary windows and row blocks (src/ops/lm_head_loss.rs):
// the logits (N, V) never exist at once, only a chunk of rows [row0, row0 + rows) and columns
// [col0, col0 + width), stored transposed: chunk_t (width, rows) = W[col0..]·x[row0..]ᵀ, so that
// the invocations of consecutive rows read consecutive addresses. Per-row vectors (targets,
// state, lse) are indexed by the global row row0 + i.
//   update:   a running log-sum-exp per row, merged chunk by chunk (online softmax):
//               m' = max(m, max_j chunk[n, j])     s' = s·exp(m − m') + Σ_j exp(chunk[n, j] − m')
//             and the target's logit, picked by the chunk that holds it;
//   finish:   lse = m + log s, loss = Σ_counted (lse − x_t) / count   (one invocation);
//   dlogits:  chunk[n, j] ← dout · (exp(chunk[n, j] − lse_n) − [col0 + j = t_n]) / count, in place.
// NOTE: m starts at −∞ (first chunk: s·exp(m − m') is skipped, never exp(−∞ − −∞) = NaN).
// NOTE: IGNORE targets contribute nothing and get a zero gradient row; count 0 gives loss 0.
// NOTE: a target ≥ V other than IGNORE is clamped to V − 1 (a kernel cannot raise an error).

struct Params {
    rows: u32,        // rows of this chunk (Nr)
    width: u32,       // columns of this chunk (Vi)
    col0: u32,        // first column (vocabulary id) of this chunk
    vocab: u32,       // V
    first: u32,       // 1 for a row block's first chunk: its running state starts empty
    row0: u32,        // first row of this chunk in (N, ..)
    total_rows: u32,  // N
    _pad: u32,
}

const IGNORE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;

fn target_of(t: u32) -> u32 {
    return min(t, p.vocab - 1u);
}

// ---- update: one invocation per row ----
@group(0) @binding(1) var<storage, read> chunk: array<f32>;         // (width, rows)
@group(0) @binding(2) var<storage, read> targets: array<u32>;       // (N)
@group(0) @binding(3) var<storage, read_write> state: array<f32>;   // (3, N): m, s, x_t

@compute @workgroup_size(64)
fn lm_head_loss_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * 64u + lid;  // row in the chunk
    if (i >= p.rows) { return; }
    let n = p.row0 + i;                             // row in (N, ..)
    var chunk_max = chunk[i];
    for (var j = 1u; j < p.width; j++) { chunk_max = max(chunk_max, chunk[j * p.rows + i]); }
    var m = chunk_max;
    var s = 0.0;
    if (p.first == 0u) {
        m = max(state[n], chunk_max);
        s = state[p.total_rows + n] * exp(state[n] - m);
    }
    for (var j = 0u; j < p.width; j++) { s += exp(chunk[j * p.rows + i] - m); }
    state[n] = m;
    state[p.total_rows + n] = s;
    let t = targets[n];
    if (t != IGNORE) {
        let v = target_of(t);
        if (v >= p.col0 && v - p.col0 < p.width) { state[2u * p.total_rows + n] = chunk[(v - p.col0) * p.rows + i]; }
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
    for (var n = 0u; n < p.total_rows; n++) {
        let l = fstate[n] + log(fstate[p.total_rows + n]);
        lse[n] = l;
        if (ftargets[n] != IGNORE) {
            total += l - fstate[2u * p.total_rows + n];
            count += 1.0;
        }
    }
    loss[0] = select(total / count, 0.0, count == 0.0);
    loss[1] = count;
}

// ---- dlogits of one chunk, in place: invocation (i, j0) does row i, columns j0 .. j0 + 8 ----
// x over rows in workgroups of 64, (y, z) over blocks of 8 columns (no division per element).
@group(0) @binding(1) var<storage, read> btargets: array<u32>;      // (N)
@group(0) @binding(2) var<storage, read> blse: array<f32>;          // (N)
@group(0) @binding(3) var<storage, read> bloss: array<f32>;         // (2): loss, count
@group(0) @binding(4) var<storage, read> dout: array<f32>;          // (1)
@group(0) @binding(5) var<storage, read_write> dchunk: array<f32>;  // (width, rows): logits in, dlogits out

@compute @workgroup_size(64)
fn lm_head_loss_dlogits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let i = wid.x * 64u + lid;                 // row in the chunk
    let j0 = (wid.z * nwg.y + wid.y) * 8u;     // first column of this invocation
    if (i >= p.rows || j0 >= p.width) { return; }
    let n = p.row0 + i;                        // row in (N, ..)
    let t = btargets[n];
    let j1 = min(j0 + 8u, p.width);
    if (t == IGNORE) {
        for (var j = j0; j < j1; j++) { dchunk[j * p.rows + i] = 0.0; }
        return;
    }
    let scale = dout[0] / bloss[1];
    let l = blse[n];
    let target_col = target_of(t);
    for (var j = j0; j < j1; j++) {
        let onehot = select(0.0, 1.0, p.col0 + j == target_col);
        let at = j * p.rows + i;
        dchunk[at] = scale * (exp(dchunk[at] - l) - onehot);
    }
}
