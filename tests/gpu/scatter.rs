//! `scatter_add`, selective fine-tuning's W + scatter(indices, values): the gradient check at odd
//! shapes (in `ops::all_cases`, so it also runs with dispatches folded), the split path over a
//! base larger than one binding, and the host-side checks of the indices.

use glassgrad::cpu::{Array, Rng};
use glassgrad::gpu::limit_bindings_to;
use glassgrad::ops::scatter::{cpu, scatter_indices};

use crate::gpu::harness::{Case, ELEMENTWISE, check_with, gpu};

/// `k` distinct sorted flat indices of a tensor of `n` elements (the first and last included
/// when k ≥ 2, so the edges are covered).
fn indices(rng: &mut Rng, n: usize, k: usize) -> Vec<f64> {
    let mut picked: Vec<usize> = (0..n).collect();
    for i in 0..n {
        picked.swap(i, i + rng.below(n - i));
    }
    let mut chosen: Vec<usize> = picked[..k].to_vec();
    if k >= 2 && !chosen.contains(&0) {
        chosen[0] = 0;
    }
    if k >= 2 && !chosen.contains(&(n - 1)) {
        chosen[1] = n - 1;
    }
    chosen.sort();
    chosen.into_iter().map(|i| i as f64).collect()
}

fn case(rng: &mut Rng, shape: &[usize], k: usize) -> Case {
    let n: usize = shape.iter().product();
    let base = rng.array(shape, -1.0, 1.0);
    let idx = Array::new(&[k], indices(rng, n, k));
    let values = rng.array(&[k], -1.0, 1.0);
    // Tolerance: the forward is one f32 add per element, the backward a copy: a few ulps.
    Case::new(
        "scatter_add",
        vec![base, idx, values],
        Box::new(|t| t[0].scatter_add(&t[1], &t[2])),
        Box::new(|x| cpu::scatter_add(&x[0], &x[1], &x[2])),
        Box::new(|x, d| cpu::scatter_add_backward(&x[0], &x[1], &x[2], d)),
    )
    .integer(&[1])
    .tol(ELEMENTWISE)
}

/// Odd shapes: one element, a row, every element of 65, a sparse few of 17×65 (and more than
/// one workgroup of k: 300 of 1105).
pub fn cases(rng: &mut Rng) -> Vec<Case> {
    vec![
        case(rng, &[1], 1),
        case(rng, &[3, 17], 5),
        case(rng, &[65], 65),
        case(rng, &[17, 65], 11),
        case(rng, &[17, 65], 300),
    ]
}

/// A base of 17×65 floats = 4,420 bytes under a 256-byte binding limit: 18 windows of 64
/// elements, indices in every window (and in the short last one); the 400 indices and values
/// are split too (7 windows of k).
#[test]
fn scatter_over_a_base_larger_than_a_binding_matches_f64() {
    let gpu = gpu();
    let case = case(&mut Rng::new(7), &[17, 65], 400);
    let _limit = limit_bindings_to(256);
    assert!(gpu.row_windows("base", 17 * 65, 4).unwrap().len() > 10);
    assert!(gpu.row_windows("indices", 400, 4).unwrap().len() > 5);
    let report = check_with(&gpu, &case, 8, false).unwrap_or_else(|e| panic!("split: {e}"));
    println!("{report}");
}

#[test]
fn bad_indices_are_refused_on_the_host_with_the_index_named() {
    let gpu = gpu();
    let err = |r: glassgrad::Result<glassgrad::Tensor>| r.unwrap_err().to_string();
    let e = err(scatter_indices(&gpu, &[0, 5, 9], 9));
    assert!(e.contains("index 9") && e.contains("9 elements"), "{e}");
    let e = err(scatter_indices(&gpu, &[0, 4, 4], 9));
    assert!(e.contains("strictly increasing") && e.contains("position 1"), "{e}");
    let e = err(scatter_indices(&gpu, &[3, 1], 9));
    assert!(e.contains("strictly increasing"), "{e}");
    assert!(err(scatter_indices(&gpu, &[], 9)).contains("no indices"));
    // The op itself: values that do not match the indices.
    let base = glassgrad::Tensor::zeros(&gpu, &[4]).unwrap();
    let idx = scatter_indices(&gpu, &[1, 2], 4).unwrap();
    let values = glassgrad::Tensor::zeros(&gpu, &[3]).unwrap();
    let e = base.scatter_add(&idx, &values).unwrap_err().to_string();
    assert!(e.contains("scatter_add") && e.contains("[3]"), "{e}");
}
