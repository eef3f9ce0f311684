//! transpose, slice, concat, dropout: gradient checks at odd shapes, shape errors, and the dropout
//! mask (GPU bits == CPU bits, kept fraction, same seed → same mask).

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::dropout::cpu as drop;
use glassgrad::ops::shape::{self, cpu as sh};
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, gpu};

/// Copies move f32 values unchanged; dropout is one f32 multiply (x · f32(1/(1−p)) vs the f64 product): a few ulps.
/// Copies: only the f32 rounding of the f64 inputs (2⁻²⁴ ≈ 6e-8 of the largest; measured 3.6e-8).
const COPY: Tol = Tol { atol: 0.0, rtol: 1e-7 };
/// Dropout: one or two roundings of the largest (measured 1.1e-7 of it).
const DROPOUT: Tol = Tol { atol: 0.0, rtol: 1e-6 };

fn transpose_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for shape in [&[1usize, 1][..], &[3, 17], &[17, 3], &[2, 5, 65], &[2, 3, 1, 7]] {
        let x = rng.array(shape, -1.0, 1.0);
        cases.push(
            Case::new(
                "transpose",
                vec![x],
                Box::new(|t| t[0].transpose()),
                Box::new(|x| sh::transpose(&x[0])),
                Box::new(|x, d| vec![sh::transpose_backward(&x[0], d)]),
            )
            .tol(COPY),
        );
    }
    cases
}

fn slice_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // (shape, dim, start, end): first/middle/last dim, a single row, the whole dim.
    let specs: &[(&[usize], usize, usize, usize)] = &[
        (&[1], 0, 0, 1),
        (&[17], 0, 3, 10),
        (&[3, 17], 0, 1, 3),
        (&[3, 17], 1, 16, 17),
        (&[2, 65, 3], 1, 5, 64),
        (&[2, 5, 65], 2, 0, 65),
        (&[5, 3, 7, 2], 2, 2, 5),
        // vec4 kernels (len·inner, D·inner, start·inner % 4 == 0): short rows, rows of 18 vec4s
        // (runs of 8, 8, 2), and a slice of the first dim.
        (&[3, 8, 5], 1, 4, 8),
        (&[2, 3, 100], 2, 20, 92),
        (&[6, 4], 0, 1, 5),
    ];
    for &(shape, dim, start, end) in specs {
        let x = rng.array(shape, -1.0, 1.0);
        cases.push(
            Case::new(
                "slice",
                vec![x],
                Box::new(move |t| t[0].slice(dim, start, end)),
                Box::new(move |x| sh::slice(&x[0], dim, start, end)),
                Box::new(move |x, d| vec![sh::slice_backward(&x[0], d, dim, start, end)]),
            )
            .tol(COPY),
        );
    }
    cases
}

fn concat_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // (shapes, dim): two and three inputs, every position of dim, unequal lengths.
    let specs: &[(&[&[usize]], usize)] = &[
        (&[&[1], &[1]], 0),
        (&[&[3, 17], &[1, 17], &[5, 17]], 0),
        (&[&[3, 17], &[3, 1], &[3, 4]], 1),
        (&[&[2, 3, 65], &[2, 7, 65]], 1),
        (&[&[2, 5, 3], &[2, 5, 17]], 2),
        // vec4 place: every input starts on a vec4 of rows of 52; then one input of each kind.
        (&[&[3, 8], &[3, 4], &[3, 40]], 1),
        (&[&[2, 4], &[2, 3]], 1),
    ];
    for &(shapes, dim) in specs {
        let xs: Vec<Array> = shapes.iter().map(|s| rng.array(s, -1.0, 1.0)).collect();
        cases.push(
            Case::new(
                "concat",
                xs,
                Box::new(move |t| {
                    let refs: Vec<&Tensor> = t.iter().collect();
                    shape::concat(&refs, dim)
                }),
                Box::new(move |x| sh::concat(x, dim)),
                Box::new(move |x, d| sh::concat_backward(x, d, dim)),
            )
            .tol(COPY),
        );
    }
    cases
}

fn dropout_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for (shape, p, seed) in [
        (&[1usize][..], 0.3f32, 7u64),
        (&[3, 17], 0.5, 42),
        (&[2, 65], 0.1, u64::MAX - 3),
        (&[130, 3], 0.9, 1 << 40),
    ] {
        let x = rng.array(shape, -2.0, 2.0);
        cases.push(
            Case::new(
                "dropout",
                vec![x],
                Box::new(move |t| t[0].dropout(p, seed, true)),
                Box::new(move |x| drop::dropout(&x[0], p, seed)),
                Box::new(move |x, d| vec![drop::dropout_backward(&x[0], d, p, seed)]),
            )
            .tol(DROPOUT),
        );
    }
    cases
}

pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = transpose_cases(rng);
    cases.extend(slice_cases(rng));
    cases.extend(concat_cases(rng));
    cases.extend(dropout_cases(rng));
    cases
}

/// GPU keep-mask of `n` elements (dropout of ones: kept elements are nonzero).
fn gpu_mask(n: usize, p: f32, seed: u64) -> Vec<bool> {
    let gpu = gpu();
    let ones = Tensor::full(&gpu, &[n], 1.0).unwrap();
    ones.dropout(p, seed, true).unwrap().to_vec().unwrap().iter().map(|&v| v != 0.0).collect()
}

#[test]
fn dropout_mask_is_bit_identical_to_the_cpu_hash_and_keeps_one_minus_p() {
    let n = 100_000;
    for (p, seed) in [(0.1f32, 1u64), (0.5, 0xDEAD_BEEF_0000_0001), (0.9, 12345)] {
        let got = gpu_mask(n, p, seed);
        let want = drop::mask(n, p, seed);
        let first_diff = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(
            first_diff, None,
            "p={p} seed={seed}: GPU and CPU masks differ first at index {first_diff:?}"
        );
        let kept = want.iter().filter(|&&k| k).count() as f64 / n as f64;
        // Binomial: σ = √(p(1−p)/n) ≤ 0.0016 at n = 100k; 5σ = 0.008 fails a biased hash, not luck.
        let sigma = ((p * (1.0 - p)) as f64 / n as f64).sqrt();
        println!("dropout p={p}: kept {kept:.4} (want {:.4} ± {:.4})", 1.0 - p, 5.0 * sigma);
        assert!(
            (kept - (1.0 - p) as f64).abs() <= 5.0 * sigma,
            "p={p}: kept fraction {kept} vs {}",
            1.0 - p
        );
    }
}

#[test]
fn dropout_same_seed_same_mask_other_seed_other_mask_and_identity_cases() {
    let gpu = gpu();
    let n = 4097;
    assert_eq!(
        gpu_mask(n, 0.5, 99),
        gpu_mask(n, 0.5, 99),
        "re-running with the same seed must give the same mask"
    );
    let a = drop::mask(n, 0.5, 99);
    for other in [100u64, 99 | (1 << 32)] {
        let b = drop::mask(n, 0.5, other);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        // Independent masks agree on ~half the positions; far from n.
        assert!(same < n * 6 / 10, "seed 99 and {other}: masks agree on {same} of {n}");
    }
    // p = 0 and eval mode are the identity: the very same tensor comes back.
    let x = Tensor::from_f32(&gpu, &[1.0, -2.0, 3.0], &[3]).unwrap();
    assert_eq!(x.dropout(0.0, 5, true).unwrap().id(), x.id());
    assert_eq!(x.dropout(0.5, 5, false).unwrap().id(), x.id());
    assert!(matches!(x.dropout(1.0, 5, true), Err(Error::Input(_))));
    assert!(matches!(x.dropout(-0.1, 5, true), Err(Error::Input(_))));
}

#[test]
fn shape_errors_name_the_op_and_the_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(&gpu, &[4, 5]).unwrap();
    let v = Tensor::zeros(&gpu, &[7]).unwrap();
    let cases: Vec<(glassgrad::Result<Tensor>, &str, &str)> = vec![
        (v.transpose(), "transpose", "[7]"),
        (a.slice(1, 2, 4), "slice", "[2, 3]"),
        (a.slice(2, 0, 1), "slice", "[2, 3]"),
        (a.slice(0, 1, 1), "slice", "[2, 3]"),
        (shape::concat(&[&a, &b], 0), "concat", "[[2, 3], [4, 5]]"),
        (Tensor::concat(&[&a, &v], 0), "concat", "[[2, 3], [7]]"),
        (shape::concat(&[&a, &b], 2), "concat", "[[2, 3], [4, 5]]"),
        (shape::concat(&[], 0), "concat", "at least one"),
    ];
    for (result, op, shapes) in cases {
        let e = result.expect_err("must be a shape error");
        let msg = e.to_string();
        assert!(matches!(e, Error::Shape { .. }), "{msg}");
        assert!(
            msg.starts_with(op) && msg.contains(shapes),
            "error `{msg}` should name {op} and {shapes}"
        );
    }
}

#[test]
fn concat_of_slices_is_the_input_and_passes_gradients_back() {
    // x → [x[:, :5], x[:, 5:]] → concat = x; d/dx Σ w ⊙ concat(slices) = w.
    let gpu = gpu();
    let mut rng = Rng::new(3);
    let x = rng.array(&[3, 17], -1.0, 1.0);
    let w = rng.array(&[3, 17], -1.0, 1.0);
    let xt = Tensor::parameter(&gpu, &x.to_f32(), &[3, 17], true).unwrap();
    let left = xt.slice(1, 0, 5).unwrap(); // (3, 5)
    let right = xt.slice(1, 5, 17).unwrap(); // (3, 12)
    let y = Tensor::concat(&[&left, &right], 1).unwrap(); // (3, 17)
    assert_eq!(y.to_vec().unwrap(), x.to_f32());
    let wt = Tensor::from_f32(&gpu, &w.to_f32(), &[3, 17]).unwrap();
    y.mul(&wt).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(xt.grad().unwrap().to_vec().unwrap(), w.to_f32());
}
