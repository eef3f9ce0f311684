//! The 4-bit dequantization kernel (shaders/dequant.wgsl) against the host: bit-exact against
//! `quant::dequantize_4bit` where bitsandbytes' result is one f32 product, within a few ulps of
//! the f64 reference where the nested absmax is decoded (an fma may fuse its two roundings).

use glassgrad::cpu::{Array, Rng};
use glassgrad::ops::dequant::{Weight4bit, cpu};
use glassgrad::ops::matmul::cpu::matmul_t;
use glassgrad::quant::{Format, Quantized4, dequantize_4bit, quantize_4bit};
use glassgrad::{Category, Tensor};

use crate::gpu::harness::{Case, REDUCTION, gpu};

/// Normal-ish weights with a few rows scaled up and down (absmax varies a lot between blocks),
/// no subnormals (WGSL may flush them).
fn weights(rng: &mut Rng, shape: &[usize]) -> Vec<f32> {
    let cols = shape[1];
    (0..shape.iter().product::<usize>())
        .map(|i| {
            let row_scale = [1.0, 30.0, 1e-3, 0.2][(i / cols) % 4];
            (rng.normal() * row_scale) as f32
        })
        .collect()
}

/// |got − want| ≤ atol + rtol·|want| per element; returns (max diff, first bad index).
fn compare(got: &[f32], want: &[f64], atol: f64, rtol: f64) -> (f64, Option<usize>) {
    assert_eq!(got.len(), want.len());
    let mut max = 0.0f64;
    let mut bad = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        max = max.max(d);
        if d > atol + rtol * w.abs() && bad.is_none() {
            bad = Some(i);
        }
    }
    (max, bad)
}

fn check(q: &Quantized4, label: &str) {
    let gpu = gpu();
    let w = Weight4bit::upload(&gpu, q).unwrap();
    let got = w.dequantize().unwrap().to_vec().unwrap();
    let nested = matches!(q.absmax, glassgrad::quant::Absmax::Nested { .. });
    if !nested {
        // One f32 product, correctly rounded in WGSL: identical to the host (= bitsandbytes).
        let host = dequantize_4bit(q);
        let first = got.iter().zip(&host).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(first.is_none(), "{label}: GPU differs from host at {first:?}");
    }
    // vs the f64 reference: the f32 product rounds once (2⁻²⁴ relative); a nested absmax decoded
    // with an fma may be one f32 ulp off before that: 3 ulps of headroom, no absolute slack.
    let want = cpu::dequantize_4bit(q);
    let (max, bad) = compare(&got, &want, 0.0, 3.0 * f32::EPSILON as f64);
    assert!(bad.is_none(), "{label}: first mismatch at {bad:?}, max diff {max:e}");
}

#[test]
fn dequantize_4bit_matches_the_host_at_odd_shapes() {
    let mut rng = Rng::new(16);
    let shapes: &[&[usize]] = &[&[1, 1], &[1, 3], &[17, 1], &[5, 13], &[3, 70], &[65, 17]];
    for shape in shapes {
        let x = weights(&mut rng, shape);
        for format in [Format::Nf4, Format::Fp4] {
            for blocksize in [32, 64, 4096] {
                for dq in [false, true] {
                    let q = quantize_4bit("w", &x, shape, format, blocksize, dq).unwrap();
                    check(&q, &format!("{shape:?} {format:?} b{blocksize} dq={dq}"));
                }
            }
        }
    }
}

#[test]
fn dequantize_4bit_past_the_workgroup_fold() {
    // 4097·4096 = 16,781,312 elements > 65,535 workgroups · 256: grid_1d folds into 2-D.
    let shape = [4097, 4096];
    let mut rng = Rng::new(17);
    let x = weights(&mut rng, &shape);
    let q = quantize_4bit("w", &x, &shape, Format::Nf4, 64, true).unwrap();
    check(&q, "[4097, 4096] nf4 b64 dq");
}

#[test]
fn quantized_weight_is_counted_as_quantized() {
    let gpu = gpu();
    let before = gpu.memory();
    let mut rng = Rng::new(3);
    let shape = [64, 256]; // 16,384 params: 8,192 code bytes, 256 blocks
    let q = quantize_4bit("w", &weights(&mut rng, &shape), &shape, Format::Nf4, 64, true).unwrap();
    let w = Weight4bit::upload(&gpu, &q).unwrap();
    // codes + 256 absmax bytes + one nested f32: ≈ 0.516 bytes per parameter (4.127 bits)
    assert_eq!(w.bytes(), 8192 + 256 + 4);
    for t in [&w.packed, &w.absmax, w.nested_absmax.as_ref().unwrap(), &w.tables] {
        assert_eq!(t.category(), Category::Quantized);
        assert!(!t.requires_grad());
    }
    // + the 272-entry tables and a one-float placeholder, all under `quantized`
    let added = gpu.memory().live(Category::Quantized) - before.live(Category::Quantized);
    assert_eq!(added, 8192 + 256 + 4 + 272 * 4 + 4);
}

/// A quantized [out, in] weight and its dequantized values as an f64 Array.
fn weight_case(
    rng: &mut Rng,
    out: usize,
    inp: usize,
    format: Format,
    dq: bool,
) -> (Quantized4, Array) {
    let x = weights(rng, &[out, inp]);
    let q = quantize_4bit("w", &x, &[out, inp], format, 64, dq).unwrap();
    let w = Array::new(&[out, inp], cpu::dequantize_4bit(&q));
    (q, w)
}

/// Gradient checks of `linear_4bit` (for ops.rs's every-op list): x only, W is frozen.
/// dy/dx = dy · W, the reference is matmul_t against the f64 dequantized W.
pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for (rows, inp, out, format, dq) in [
        (1, 1, 1, Format::Nf4, false),
        (3, 17, 5, Format::Fp4, true),
        (5, 65, 3, Format::Nf4, true),
    ] {
        let (q, w) = weight_case(rng, out, inp, format, dq);
        let w2 = w.clone();
        cases.push(
            Case::new(
                "linear_4bit",
                vec![rng.array(&[rows, inp], -1.0, 1.0)],
                Box::new(move |t| t[0].linear_4bit(&Weight4bit::upload(t[0].gpu(), &q)?)),
                Box::new(move |x| matmul_t(&x[0], &w, false, true)),
                Box::new(move |_x, d| vec![matmul_t(d, &w2, false, false)]),
            )
            .tol(REDUCTION),
        );
    }
    cases
}

/// |got − want| ≤ atol + rtol·max|want|, both f32 sums over in (or out) of the same products in
/// different orders: rtol 1e-5 of the largest value covers the reassociation for K ≤ 4097.
fn close(got: &[f32], want: &[f32], label: &str) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let (atol, rtol) = (1e-6, 1e-5);
    let mut max = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= atol + rtol * scale,
            "{label}: index {i}: fused {g}, composed {w}, diff {d:e}"
        );
        max = max.max(d);
    }
    max
}

#[test]
fn fused_linear_4bit_matches_dequantize_then_matmul() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    // (rows, in, out): ones, odd sizes, rows not a multiple of 4, a row of 4097 inputs
    for (rows, inp, out) in [(1, 1, 1), (3, 17, 5), (6, 65, 130), (17, 64, 33), (2, 4097, 3)] {
        for (format, dq) in [(Format::Nf4, false), (Format::Nf4, true), (Format::Fp4, true)] {
            let label = format!("({rows}, {inp}) · [{out}, {inp}]ᵀ {format:?} dq={dq}");
            let (q, _) = weight_case(&mut rng, out, inp, format, dq);
            let w = Weight4bit::upload(&gpu, &q).unwrap();
            let x_host = rng.array(&[rows, inp], -1.0, 1.0).to_f32();
            let dy_host = rng.array(&[rows, out], -1.0, 1.0).to_f32();
            let dy = Tensor::from_f32(&gpu, &dy_host, &[rows, out]).unwrap();
            let run = |fused: bool| {
                let x =
                    Tensor::from_f32(&gpu, &x_host, &[rows, inp]).unwrap().with_requires_grad(true);
                let y = if fused { x.linear_4bit(&w) } else { x.linear_4bit_composed(&w) }.unwrap();
                y.backward_with(&dy).unwrap();
                (y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap())
            };
            let (y_fused, dx_fused) = run(true);
            let (y_composed, dx_composed) = run(false);
            let dy_max = close(&y_fused, &y_composed, &format!("{label} y"));
            let dx_max = close(&dx_fused, &dx_composed, &format!("{label} dx"));
            println!("{label}: OK (maxdiff y {dy_max:.2e}, dx {dx_max:.2e})");
        }
    }
}

/// f16 dequantization where the adapter has SHADER_F16: each value within one f16 rounding of
/// the host's f32 product (WGSL lets the conversion pick either neighbour), i.e. |got − want| ≤
/// 2⁻¹⁰·|want| (one ulp at that exponent, generous by 2×) + 2⁻²⁴ (an f16 subnormal step). Without
/// the feature it must refuse by name (and this test says which case ran).
#[test]
fn dequantize_4bit_f16_where_the_adapter_has_it() {
    let gpu = gpu();
    let mut rng = Rng::new(18);
    let shape = [17, 13]; // 221 values: odd, so the last u32 holds one value and a zero pad
    let x = weights(&mut rng, &shape);
    for (format, dq) in [(Format::Nf4, true), (Format::Fp4, false)] {
        let q = quantize_4bit("w", &x, &shape, format, 64, dq).unwrap();
        let w = Weight4bit::upload(&gpu, &q).unwrap();
        if !Weight4bit::f16_supported(&gpu) {
            let err = w.dequantize_f16().err().unwrap().to_string();
            assert!(err.contains("SHADER_F16"), "{err}");
            println!(
                "adapter {} has no SHADER_F16: the refusal was checked, not the kernel",
                gpu.info.name
            );
            return;
        }
        let words = w.dequantize_f16().unwrap().to_vec_u32().unwrap();
        assert_eq!(words.len(), q.numel().div_ceil(2));
        let halves: Vec<f32> = words
            .iter()
            .flat_map(|&u| [u as u16, (u >> 16) as u16])
            .map(|h| half::f16::from_bits(h).to_f32())
            .collect();
        assert_eq!(halves[q.numel()..], [0.0][..q.numel() % 2], "the pad half is zero");
        let want = dequantize_4bit(&q);
        for (i, (g, w)) in halves.iter().zip(&want).enumerate() {
            let tol = w.abs() as f64 / 1024.0 + 2f64.powi(-24);
            assert!(
                ((g - w) as f64).abs() <= tol,
                "{format:?} dq={dq} element {i}: f16 {g}, f32 {w}"
            );
        }
        println!("{format:?} dq={dq}: f16 dequantization ran on {} and matched", gpu.info.name);
    }
}
