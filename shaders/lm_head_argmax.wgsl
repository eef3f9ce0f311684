// Greedy decoding's pick on the GPU (src/ops/lm_head.rs, `Tensor::argmax`): the index of the
// largest of V logits, the first one among equal values (torch.argmax's rule), so one u32 comes
// back per decoded token instead of the whole row.
// One workgroup of 256: invocation i scans columns i, i + 256, … keeping its first maximum, then
// a tree over workgroup memory merges pairs; a tie goes to the lower column.
// NOTE: NaN logits give an unspecified pick (comparisons with NaN are false, and WGSL
// implementations may assume no NaNs).

struct Params {
    cols: u32,  // V
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;  // no column seen (an invocation past V)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;     // (V)
@group(0) @binding(2) var<storage, read_write> best: array<u32>; // (1)

var<workgroup> values: array<f32, WG>;
var<workgroup> columns: array<u32, WG>;

@compute @workgroup_size(256)
fn lm_head_argmax(@builtin(local_invocation_index) lid: u32) {
    var value = 0.0;
    var column = NONE;
    for (var j = lid; j < p.cols; j += WG) {
        let x = logits[j];
        if (column == NONE || x > value) {
            value = x;
            column = j;
        }
    }
    values[lid] = value;
    columns[lid] = column;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (lid < half) {
            let other = columns[lid + half];
            let mine = columns[lid];
            let v = values[lid + half];
            let wins = other != NONE
                && (mine == NONE || v > values[lid] || (v == values[lid] && other < mine));
            if (wins) {
                values[lid] = v;
                columns[lid] = other;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        best[0] = columns[0];
    }
}
