//! Tensors larger than one binding (src/gpu/binding.rs). GPT-2 small's wte is 154 MB against
//! lavapipe's and WebGPU's 128 MiB per binding, so the embedding, the tied LM head and the sum
//! of wte's two gradients run in windows of rows. Here a small limit is forced on the test's
//! thread (`limit_bindings_to`) so those split paths run at toy shapes:
//!   1. the gradient checks of `embedding` and `lm_head` against f64, split;
//!   2. split against unsplit on a tied toy head (embedding + LM head over one table), the fused
//!      head + loss against the unfused, and a toy GPT-2 whose wte and logits exceed the limit;
//!   3. cross-entropy over logits larger than one binding, against f64;
//!   4. an op that cannot split refuses a binding over the limit, naming kernel, size and limit.

use glassgrad::cpu::{Array, Rng};
use glassgrad::gpu::limit_bindings_to;
use glassgrad::ops::cross_entropy::{IGNORE, cpu as ce};
use glassgrad::ops::embedding::cpu as emb;
use glassgrad::ops::lm_head::cpu as head;
use glassgrad::ops::lm_head_loss::{chunks, cpu as fused};
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, check_with, compare, gpu};

/// Sums of C (here ≤ 37) products and of a few windows: f32 rounding ~√C·ε of the largest term.
const PRODUCTS: Tol = Tol { atol: 1e-6, rtol: 1e-5 };

/// A forced binding limit and shapes that make every split path take several windows with any
/// offset alignment up to 256 bytes (lavapipe's is 32), e.g. at 256: W (150, 37) = 22,200 bytes → vocabulary
/// windows of 64 rows; logits (65, 150) = 39,000 bytes → logits windows of 32 rows.
const LIMIT: u64 = 20_480;
const V: usize = 150;
const C: usize = 37;
const N: usize = 65;

/// The `lm_head` gradient checks (also run unsplit by ops::gradient_checks): W split only
/// (N = 3), and W and logits split (N = 65).
pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for (n, c) in [(3, 5), (N, C), (1, 1)] {
        let x = rng.array(&[n, c], -1.0, 1.0);
        let w = rng.array(&[V, c], -1.0, 1.0);
        cases.push(
            Case::new(
                "lm_head",
                vec![x, w],
                Box::new(|t| t[0].lm_head(&t[1])),
                Box::new(|x| head::lm_head(&x[0], &x[1])),
                Box::new(|x, d| head::lm_head_backward(&x[0], &x[1], d)),
            )
            .tol(PRODUCTS),
        );
    }
    // The fused head + cross-entropy: one chunk (N = 3), several (N = 65 under the forced limit),
    // ignored rows, a target in the last column.
    for (n, c) in [(3, 5), (N, C)] {
        let x = rng.array(&[n, c], -1.0, 1.0);
        let w = rng.array(&[V, c], -1.0, 1.0);
        let targets = Array::new(
            &[n],
            (0..n)
                .map(|i| match i % 4 {
                    1 => IGNORE as f64,
                    2 => (V - 1) as f64,
                    _ => rng.below(V) as f64,
                })
                .collect(),
        );
        cases.push(
            Case::new(
                "lm_head_loss",
                vec![x, w, targets],
                Box::new(|t| t[0].lm_head_loss(&t[1], &t[2])),
                Box::new(|x| fused::lm_head_loss(&x[0], &x[1], &x[2])),
                Box::new(|x, d| fused::lm_head_loss_backward(&x[0], &x[1], &x[2], d)),
            )
            .integer(&[2])
            .tol(PRODUCTS),
        );
    }
    cases
}

fn embedding_case(rng: &mut Rng) -> Case {
    let table = rng.array(&[V, C], -1.0, 1.0);
    // Ids in every window, the last row, and repeats (the scatter-add sums them).
    let ids: Vec<f64> =
        (0..N).map(|i| if i % 5 == 0 { 149.0 } else { rng.below(V) as f64 }).collect();
    Case::new(
        "embedding",
        vec![table, Array::new(&[N], ids)],
        Box::new(|t| t[0].embedding(&t[1])),
        Box::new(|x| emb::embedding(&x[0], &x[1])),
        Box::new(|x, d| emb::embedding_backward(&x[0], &x[1], d)),
    )
    .integer(&[1])
    .tol(PRODUCTS)
}

/// Cross-entropy over logits (130, 97) = 50,440 bytes: under a 32 KiB limit, several windows of
/// rows (with 256-byte offset alignment, steps of 64 rows for the targets and lse [N] beside the
/// logits; lavapipe's alignment is 32 bytes).
fn cross_entropy_case(rng: &mut Rng) -> Case {
    let logits = rng.array(&[130, 97], -4.0, 4.0);
    let targets: Vec<f64> =
        (0..130).map(|i| if i % 9 == 4 { IGNORE as f64 } else { rng.below(97) as f64 }).collect();
    Case::new(
        "cross_entropy",
        vec![logits, Array::new(&[130], targets)],
        Box::new(|t| t[0].cross_entropy(&t[1])),
        Box::new(|x| ce::cross_entropy(&x[0], &x[1])),
        Box::new(|x, d| ce::cross_entropy_backward(&x[0], &x[1], d)),
    )
    .integer(&[1])
    .tol(PRODUCTS)
}

#[test]
fn cross_entropy_over_logits_larger_than_a_binding_matches_f64() {
    let gpu = gpu();
    let case = cross_entropy_case(&mut Rng::new(97));
    let _limit = limit_bindings_to(32 << 10);
    assert!(gpu.rows_with_vectors("logits", 130, 4 * 97).unwrap().len() > 1);
    let report = check_with(&gpu, &case, 98, false).unwrap_or_else(|e| panic!("split: {e}"));
    println!("split: {report}");
}

#[test]
fn split_ops_match_f64_under_a_forced_binding_limit() {
    let gpu = gpu();
    println!(
        "adapter limit {} bytes, offset alignment {}, forced {LIMIT}",
        gpu.limits.max_storage_buffer_binding_size, gpu.limits.min_storage_buffer_offset_alignment
    );
    let mut rng = Rng::new(18);
    let mut cases = cases(&mut rng);
    cases.push(embedding_case(&mut rng));
    let _limit = limit_bindings_to(LIMIT);
    // The shapes really split: more than one window each.
    assert!(gpu.row_windows("W", V, 4 * C).unwrap().len() > 1);
    assert!(gpu.row_windows("logits", N, 4 * V).unwrap().len() > 1);
    for (i, case) in cases.iter().enumerate() {
        match check_with(&gpu, case, 77 + i as u64, i == 0) {
            Ok(report) => println!("split: {report}"),
            Err(e) => panic!("split under a {LIMIT}-byte limit: {e}"),
        }
    }
}

/// logits = lm_head(embedding(wte, ids), wte), backward seeded with dL/dlogits = w: the tied
/// pattern of GPT-2, so wte's gradient is the sum of two [V, C] gradients (the windowed `add`).
/// Returns (logits, d wte).
fn tied_step(table: &[f32], ids: &[u32], weights: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let wte = Tensor::parameter(&gpu, table, &[V, C], true).unwrap();
    let ids = Tensor::from_u32(&gpu, ids, &[N]).unwrap();
    let w = Tensor::from_f32(&gpu, weights, &[N, V]).unwrap();
    let x = wte.embedding(&ids).unwrap(); // (N, C)
    let logits = x.lm_head(&wte).unwrap(); // (N, V)
    let out = logits.to_vec().unwrap();
    logits.backward_with(&w).unwrap();
    (out, wte.grad().unwrap().to_vec().unwrap())
}

#[test]
fn tied_embedding_and_head_split_equal_unsplit() {
    let mut rng = Rng::new(1818);
    let table = rng.array(&[V, C], -1.0, 1.0).to_f32();
    let ids: Vec<u32> = (0..N).map(|i| if i % 7 == 0 { 0 } else { rng.below(V) as u32 }).collect();
    let weights = rng.array(&[N, V], -1.0, 1.0).to_f32();
    let (logits, grad) = tied_step(&table, &ids, &weights);
    let (split_logits, split_grad) = {
        let _limit = limit_bindings_to(LIMIT);
        tied_step(&table, &ids, &weights)
    };
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    // The same dot products in the same order: the logits agree to the bit.
    assert_eq!(split_logits, logits, "split logits differ from unsplit");
    // The gradient sums windows (dx) and two gradients in another grouping: f32 rounding.
    let diff = compare("d wte split vs unsplit", &f64s(&split_grad), &f64s(&grad), PRODUCTS)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("tied head: logits bit-identical, d wte max |diff| {diff:.2e}");
}

#[test]
fn an_op_that_cannot_split_names_the_kernel_and_the_limit() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[N, V]).unwrap(); // 39,000 bytes
    let _limit = limit_bindings_to(LIMIT);
    // Row sums bind the whole tensor: refused before anything runs.
    let e = a.sum_rows().unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Limit { .. })
            && msg.contains("39000 bytes")
            && msg.contains(&LIMIT.to_string())
            && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
}

/// (loss, dx, dW) of the head + cross-entropy, fused or through the full logits, for x [N, C]
/// and W [V, C] (`shape` = (N, V, C)).
fn head_loss(
    x: &[f32],
    w: &[f32],
    targets: &[u32],
    shape: (usize, usize, usize),
    fused: bool,
) -> (f32, Vec<f32>, Vec<f32>) {
    let (n, v, c) = shape;
    let gpu = gpu();
    let xt = Tensor::parameter(&gpu, x, &[n, c], true).unwrap();
    let wt = Tensor::parameter(&gpu, w, &[v, c], true).unwrap();
    let t = Tensor::from_u32(&gpu, targets, &[n]).unwrap();
    let loss = if fused {
        xt.lm_head_loss(&wt, &t).unwrap()
    } else {
        xt.lm_head(&wt).unwrap().cross_entropy(&t).unwrap() // (N, V) logits, then the loss
    };
    loss.backward().unwrap();
    let grad = |p: &Tensor| p.grad().unwrap().to_vec().unwrap();
    (loss.item().unwrap(), grad(&xt), grad(&wt))
}

#[test]
fn fused_head_loss_equals_the_unfused_head_and_cross_entropy() {
    let mut rng = Rng::new(1819);
    let x = rng.array(&[N, C], -1.0, 1.0).to_f32();
    let w = rng.array(&[V, C], -1.0, 1.0).to_f32();
    let targets: Vec<u32> =
        (0..N).map(|i| if i % 6 == 1 { IGNORE } else { rng.below(V) as u32 }).collect();
    let (loss, dx, dw) = head_loss(&x, &w, &targets, (N, V, C), false);
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    // Fused in one chunk (everything fits), and in several (the forced limit: 2 vocabulary
    // windows × 4 row blocks of at most 20 rows).
    for limit in [None, Some(LIMIT)] {
        let _limit = limit.map(limit_bindings_to);
        let (windows, blocks) = chunks(&gpu(), N, V, C).unwrap();
        assert_eq!(
            limit.is_some(),
            windows.len() > 1 && blocks.len() > 1,
            "{windows:?} {blocks:?}"
        );
        let (fused_loss, fused_dx, fused_dw) = head_loss(&x, &w, &targets, (N, V, C), true);
        // The loss is a mean of N log-sum-exps over V = 150 terms: f32 rounding ~1e-6 relative.
        let rel = ((fused_loss - loss) / loss).abs();
        assert!(rel < 1e-5, "limit {limit:?}: fused loss {fused_loss} vs unfused {loss}");
        let ddx = compare("dx fused vs unfused", &f64s(&fused_dx), &f64s(&dx), PRODUCTS)
            .unwrap_or_else(|e| panic!("limit {limit:?}: {e}"));
        let ddw = compare("dW fused vs unfused", &f64s(&fused_dw), &f64s(&dw), PRODUCTS)
            .unwrap_or_else(|e| panic!("limit {limit:?}: {e}"));
        println!(
            "limit {limit:?}: loss {fused_loss} vs {loss} (rel {rel:.1e}), dx {ddx:.1e}, dW {ddw:.1e}"
        );
    }
}

/// The fused head's working set is bounded for any N: under a 64 KiB limit, x (150, 37) splits
/// into row blocks of 64, 64 and 22 rows (the first two take the W·xᵀ product, the last the
/// few-rows x·Wᵀ one) and W (600, 37) into vocabulary windows; loss, dx and dW still equal the
/// unfused head + cross-entropy computed without a limit.
#[test]
fn fused_head_loss_over_row_blocks_and_vocabulary_windows_equals_the_unfused() {
    let (n, v, c) = (150, 600, 37);
    let mut rng = Rng::new(1820);
    let x = rng.array(&[n, c], -1.0, 1.0).to_f32();
    let w = rng.array(&[v, c], -1.0, 1.0).to_f32();
    let targets: Vec<u32> = (0..n)
        .map(|i| match i % 7 {
            3 => IGNORE,
            5 => (v - 1) as u32,
            _ => rng.below(v) as u32,
        })
        .collect();
    let (loss, dx, dw) = head_loss(&x, &w, &targets, (n, v, c), false);
    let _limit = limit_bindings_to(64 << 10);
    let (windows, blocks) = chunks(&gpu(), n, v, c).unwrap();
    let sizes: Vec<usize> = blocks.iter().map(|b| b.len()).collect();
    assert_eq!(sizes, [64, 64, 22], "row blocks");
    assert!(windows.len() > 1 && windows.iter().all(|w| w.len() * 64 * 4 <= 64 << 10));
    let (fused_loss, fused_dx, fused_dw) = head_loss(&x, &w, &targets, (n, v, c), true);
    // A mean of 150 log-sum-exps over 600 terms, summed in other groupings: ~1e-6 relative.
    let rel = ((fused_loss - loss) / loss).abs();
    assert!(rel < 1e-5, "fused loss {fused_loss} vs unfused {loss}");
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let ddx =
        compare("dx", &f64s(&fused_dx), &f64s(&dx), PRODUCTS).unwrap_or_else(|e| panic!("{e}"));
    let ddw =
        compare("dW", &f64s(&fused_dw), &f64s(&dw), PRODUCTS).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} windows × {sizes:?} rows: loss rel {rel:.1e}, dx {ddx:.1e}, dW {ddw:.1e}",
        windows.len()
    );
}

/// Greedy decoding's argmax on the GPU against the CPU rule (first maximum) at odd lengths, with
/// ties, all-equal rows, negative rows and the maximum in the last column; a [2, V] is refused.
#[test]
fn argmax_on_the_gpu_picks_the_first_maximum() {
    let gpu = gpu();
    let mut rng = Rng::new(1821);
    let mut rows: Vec<Vec<f32>> = vec![vec![-3.0], vec![2.0, 2.0, 2.0], vec![-1.0; 257]];
    for len in [3, 17, 255, 257, 1000, 50257] {
        let row = rng.array(&[len], -10.0, 10.0).to_f32();
        let mut tied = row.clone(); // the maximum twice, far apart (different invocations)
        let (at, best) = (len / 3, 11.0);
        tied[at] = best;
        tied[len - 1] = best;
        let mut last = row.iter().map(|x| x - 20.0).collect::<Vec<_>>();
        last[len - 1] = 0.0;
        rows.extend([row, tied, last]);
    }
    for row in &rows {
        let want = head::argmax(row);
        let got = Tensor::from_f32(&gpu, row, &[1, row.len()]).unwrap().argmax().unwrap();
        assert_eq!(got as usize, want, "argmax of a row of {}", row.len());
    }
    // The CPU rule itself: the first of equal maxima.
    assert_eq!(head::argmax(&[1.0, 5.0, 5.0]), 1);
    let two = Tensor::from_f32(&gpu, &[0.0; 6], &[2, 3]).unwrap();
    let e = two.argmax().unwrap_err().to_string();
    assert!(e.contains("argmax") && e.contains("[2, 3]"), "{e}");
}

/// A toy GPT-2 whose wte (1000, 24) = 96 KB and logits (32, 1000) = 128 KB exceed a forced
/// 32 KiB binding limit while every other tensor fits: a forward that asked for a larger binding
/// anywhere would be refused, so these runs show that the model splits whatever is too large.
#[test]
fn a_toy_gpt2_under_a_forced_limit_equals_it_unsplit_and_the_fused_loss_equals_the_unfused() {
    let gpu = gpu();
    let config = glassgrad::model::config::Gpt2Config::new(1000, 32, 24, 1, 3);
    let model = glassgrad::model::gpt2::Gpt2::new_random(&gpu, config, 5).unwrap();
    let mut rng = Rng::new(7);
    let ids: Vec<u32> = (0..32).map(|_| rng.below(1000) as u32).collect();
    let targets: Vec<u32> =
        (0..32).map(|i| if i == 5 { IGNORE } else { rng.below(1000) as u32 }).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 16]).unwrap();
    let targets = Tensor::from_u32(&gpu, &targets, &[2, 16]).unwrap();
    let opts = glassgrad::model::gpt2::ForwardOptions::default();
    let grads = |model: &glassgrad::model::gpt2::Gpt2| -> Vec<(String, Vec<f32>)> {
        let mut out = vec![];
        for (name, p) in model.named_parameters() {
            let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
            out.push((name, g.to_vec().unwrap()));
            p.zero_grad();
        }
        out
    };
    // Reference: unsplit logits, unfused loss.
    let logits = model.forward(&ids, &opts).unwrap().logits;
    let loss = glassgrad::model::gpt2::Gpt2::loss(&logits, &targets).unwrap();
    loss.backward().unwrap();
    let (want_logits, want_loss, want_grads) =
        (logits.to_vec().unwrap(), loss.item().unwrap(), grads(&model));

    let _limit = limit_bindings_to(32 << 10);
    let split_logits = model.forward(&ids, &opts).unwrap().logits.to_vec().unwrap();
    assert_eq!(split_logits, want_logits, "split logits differ from unsplit");
    let fused = model.forward_loss(&ids, &targets, &opts).unwrap();
    fused.backward().unwrap();
    let got_loss = fused.item().unwrap();
    assert!(((got_loss - want_loss) / want_loss).abs() < 1e-5, "{got_loss} vs {want_loss}");
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for ((name, got), (_, want)) in grads(&model).iter().zip(&want_grads) {
        assert!(got.iter().any(|g| *g != 0.0), "{name}: zero gradient");
        // Through one block and back in f32 with chunks summed in another order: the measured
        // differences are ~1e-7 of the largest entry; 1e-4 leaves room for other drivers.
        compare(name, &f64s(got), &f64s(want), Tol { atol: 1e-7, rtol: 1e-4 })
            .unwrap_or_else(|e| panic!("fused + split vs reference: {e}"));
    }
    println!("toy GPT-2 at a 32 KiB limit: logits bit-identical, loss {got_loss} vs {want_loss}");
}
