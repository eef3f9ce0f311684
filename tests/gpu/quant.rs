//! The 4-bit dequantization kernel (shaders/dequant.wgsl) against the host: bit-exact against
//! `quant::dequantize_4bit` where bitsandbytes' result is one f32 product, within a few ulps of
//! the f64 reference where the nested absmax is decoded (an fma may fuse its two roundings).

use glassgrad::Category;
use glassgrad::cpu::Rng;
use glassgrad::ops::dequant::{Weight4bit, cpu};
use glassgrad::quant::{Format, Quantized4, dequantize_4bit, quantize_4bit};

use crate::gpu::harness::gpu;

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
