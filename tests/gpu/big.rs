//! Tensors larger than one binding (src/gpu/binding.rs). GPT-2 small's wte is 154 MB against
//! lavapipe's and WebGPU's 128 MiB per binding, so the embedding, the tied LM head and the sum
//! of wte's two gradients run in windows of rows. Here a small limit is forced on the test's
//! thread (`limit_bindings_to`) so those split paths run at toy shapes:
//!   1. the gradient checks of `embedding` and `lm_head` against f64, split;
//!   2. split against unsplit on a tied toy head (embedding + LM head over one table);
//!   3. an op that cannot split refuses a binding over the limit, naming kernel, size and limit.

use glassgrad::cpu::{Array, Rng};
use glassgrad::gpu::limit_bindings_to;
use glassgrad::ops::embedding::cpu as emb;
use glassgrad::ops::lm_head::cpu as head;
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, check_with, compare, gpu};

/// Sums of C (here ≤ 37) products and of a few windows: f32 rounding ~√C·ε of the largest term.
const PRODUCTS: Tol = Tol { atol: 1e-6, rtol: 1e-5 };

/// A forced binding limit and shapes that make every split path take several windows with
/// lavapipe's and most GPUs' 256-byte offset alignment: W (150, 37) = 22,200 bytes → vocabulary
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
