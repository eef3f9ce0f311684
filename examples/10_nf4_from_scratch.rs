//! 10 — NF4 from scratch: the 16 values, the packing, double quantization, and what 4 bits cost.
//!
//! NF4 (QLoRA, Dettmers et al. 2023) stores a weight as 4-bit codes into a table of 16 values,
//! one absmax scale per block of 64. The table holds quantiles of a standard normal: trained
//! weights are roughly normal, so each code is used about equally often. bitsandbytes builds it
//! as (create_normal_map, offset δ = 0.9677083 ≈ 1 − ½(1/30 + 1/32), so no quantile is ±∞):
//!   positive: Φ⁻¹(p) for 8 probabilities p evenly from δ down to ½ (½ excluded)
//!   negative: −Φ⁻¹(p) for 7 probabilities evenly from δ down to ½ (½ excluded)
//!   plus an exact 0, sorted, divided by the largest: 16 values in [−1, 1].
//! Here Φ⁻¹ is computed from scratch (erf by its Taylor series, Φ⁻¹ by bisection, f64) and
//! compared with the table in src/quant/codes.rs. Then: how two codes share a byte (the FIRST
//! element in the HIGH nibble) and four bytes a u32 on the GPU; how double quantization shrinks
//! the f32 absmax to one byte each; and the reconstruction error against bits per parameter for
//! NF4, FP4 and int8 rowwise on GPT-2 weights: the committed test model's c_fc, and the tour's
//! trained one when `runs/shakespeare-char/model.safetensors` exists (run `cargo run --release`
//! first; nothing is downloaded). Last, the GPU kernel decodes the same bits as the host.
//!
//! Run: cargo run --release --example 10_nf4_from_scratch
//! Expected output (the tour's rows appear only when its model exists; measured 2026-12-07):
//!   NF4 table from Φ⁻¹: max |ours − bitsandbytes| = 0e0 (the same f32 steps)
//!     code  0: -1.0000000  table -1.0000000
//!     … (16 codes; every one equal)
//!     code 15: +1.0000000  table +1.0000000
//!   packing: w[0..4] → codes [15, 0, 7, 8] → bytes [f0, 78] (first element in the high nibble)
//!   c_fc (test model) [96, 24], 2304 params: absmax 36 blocks × 4 B = 144 B; double-quant 36 B + 4 B + offset 4 B
//!     format        bits/param   rel. RMS error   max |err|/max|w|
//!     nf4/64            4.500           0.0924             0.1114
//!     nf4/64 dq         4.127           0.0924             0.1123
//!     fp4/64            4.500           0.1220             0.1522
//!     fp4/64 dq         4.127           0.1220             0.1529
//!     nf4/256           4.125           0.0964             0.1114
//!     int8 rowwise      9.333           0.0050             0.0039
//!   c_fc (tour, trained) [256, 64], 16384 params: absmax 256 blocks × 4 B = 1024 B; double-quant 256 B + 4 B + offset 4 B
//!     nf4/64            4.500           0.0916             0.1100
//!     nf4/64 dq         4.127           0.0916             0.1114
//!     fp4/64            4.500           0.1222             0.1202
//!     fp4/64 dq         4.127           0.1223             0.1193
//!     nf4/256           4.125           0.1004             0.1272
//!     int8 rowwise      8.500           0.0059             0.0038
//!   GPU dequantize == host: true (2304 values, bit for bit)
//! Reading it: at the same 4.5 bits NF4's error is 25% below FP4's (its values sit where normal
//! weights are dense); double quantization saves 3 of every 4 absmax bytes (0.373 bits/param) at
//! almost no error; int8 is 15–18× more accurate for about twice the bits.

use glassgrad::io::TensorFile;
use glassgrad::ops::dequant::Weight4bit;
use glassgrad::quant::int8::{dequantize_int8_rowwise, quantize_int8_rowwise};
use glassgrad::quant::{Absmax, Format, bits_per_parameter, dequantize_4bit, quantize_4bit};
use glassgrad::{Gpu, Result};

const TEST_MODEL: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref/model/model.safetensors");
const TOUR_MODEL: &str = "runs/shakespeare-char/model.safetensors";

/// erf(x) by its Taylor series 2/√π · Σ (−1)ⁿ x²ⁿ⁺¹ / (n!(2n+1)); |x| ≤ 4 keeps f64 accurate
/// to ~1e-13 (the largest term is e^{x²}-ish, the sum ≤ 1).
fn erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x); // n = 0: x
    for n in 1..200 {
        term *= -x * x / n as f64; // (−1)ⁿ x²ⁿ⁺¹ / n!
        let add = term / (2 * n + 1) as f64;
        sum += add;
        if add.abs() < 1e-17 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// Φ⁻¹(p): the standard normal quantile, by bisection on Φ(x) = ½(1 + erf(x/√2)) over [−4, 4].
fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-4.0f64, 4.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * (1.0 + erf(mid / std::f64::consts::SQRT_2)) < p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// `n` values evenly from `a` to `b` in f32, the last dropped: torch.linspace(a, b, n)[:-1], which
/// bitsandbytes feeds to Φ⁻¹ (torch steps from the start for the first half, from the end after).
fn linspace_open(a: f32, b: f32, n: usize) -> Vec<f64> {
    let step = (b - a) / (n - 1) as f32;
    let at = |i: usize| if i < n / 2 { a + step * i as f32 } else { b - step * (n - 1 - i) as f32 };
    (0..n - 1).map(|i| at(i) as f64).collect()
}

fn nf4_from_quantiles() -> Vec<f64> {
    // bitsandbytes' literal; 1 − ½(1/30 + 1/32) = 0.96770833… moves the table by up to 2e-7.
    let delta = 0.9677083f32;
    let mut v: Vec<f64> = linspace_open(delta, 0.5, 9).into_iter().map(normal_quantile).collect();
    v.extend(linspace_open(delta, 0.5, 8).into_iter().map(|p| -normal_quantile(p)));
    v.push(0.0);
    v.sort_by(f64::total_cmp);
    // torch.Tensor(v) is f32, and the division by its max happens in f32.
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs())) as f32;
    v.iter().map(|&x| ((x as f32) / max) as f64).collect()
}

/// (relative RMS error, max |error| / max |w|) of a reconstruction.
fn errors(w: &[f32], back: &[f32]) -> (f64, f64) {
    let sq = |it: &mut dyn Iterator<Item = f64>| it.map(|x| x * x).sum::<f64>();
    let err = sq(&mut w.iter().zip(back).map(|(a, b)| (a - b) as f64));
    let rms = (err / sq(&mut w.iter().map(|&a| a as f64))).sqrt();
    let max_w = w.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
    let max_e = w.iter().zip(back).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) as f64;
    (rms, max_e / max_w)
}

/// The byte counts of one weight and its error table (NF4/FP4 at blocksize 64 without and with
/// double quantization, NF4 at 256, int8 rowwise).
fn report(label: &str, w: &[f32], shape: [usize; 2]) -> Result<()> {
    let q = quantize_4bit(label, w, &shape, Format::Nf4, 64, false)?;
    let dq = quantize_4bit(label, w, &shape, Format::Nf4, 64, true)?;
    let Absmax::Nested { codes, nested_absmax, .. } = &dq.absmax else { unreachable!() };
    println!(
        "{label} {shape:?}, {} params: absmax {} blocks × 4 B = {} B; double-quant {} B + {} B + offset 4 B",
        w.len(),
        q.blocks(),
        q.blocks() * 4,
        codes.len(),
        nested_absmax.len() * 4
    );
    println!("  format        bits/param   rel. RMS error   max |err|/max|w|");
    for (format, blocksize, double) in [
        (Format::Nf4, 64, false),
        (Format::Nf4, 64, true),
        (Format::Fp4, 64, false),
        (Format::Fp4, 64, true),
        (Format::Nf4, 256, false),
    ] {
        let q = quantize_4bit(label, w, &shape, format, blocksize, double)?;
        let (rms, max) = errors(w, &dequantize_4bit(&q));
        let name = format!("{}/{blocksize}{}", format.name(), if double { " dq" } else { "" });
        let bits = bits_per_parameter(blocksize, double);
        println!("  {name:<13} {bits:>9.3}   {rms:>14.4}   {max:>16.4}");
    }
    let q8 = quantize_int8_rowwise(label, w, &shape)?;
    let (rms, max) = errors(w, &dequantize_int8_rowwise(&q8));
    let bits = 8.0 + 32.0 / shape[1] as f64;
    println!("  {:<13} {bits:>9.3}   {rms:>14.4}   {max:>16.4}", "int8 rowwise");
    Ok(())
}

/// The weight `key` of a model file in nn.Linear layout [out, in] (Conv1D stores [in, out]).
fn linear_weight(path: &str, key: &str) -> Result<(Vec<f32>, [usize; 2])> {
    let file = TensorFile::read(path)?;
    let t = file.get(key)?;
    let (inp, out) = (t.shape[0], t.shape[1]);
    let conv = t.to_f32(key)?; // (in, out)
    let w = (0..out * inp).map(|k| conv[(k % inp) * out + k / inp]).collect(); // (out, in)
    Ok((w, [out, inp]))
}

fn main() -> Result<()> {
    // 1. The 16 values from the normal quantile function.
    let ours = nf4_from_quantiles();
    let table = Format::Nf4.code();
    let max_diff = ours.iter().zip(table).map(|(a, b)| (a - b as f64).abs()).fold(0.0, f64::max);
    println!("NF4 table from Φ⁻¹: max |ours − bitsandbytes| = {max_diff:e} (the same f32 steps)");
    for (i, (a, b)) in ours.iter().zip(table).enumerate() {
        println!("  code {i:>2}: {a:>+.7}  table {b:>+.7}");
    }

    // 2. Packing: code of element 2k in the high nibble of byte k, 2k + 1 in the low one.
    let w = [1.0f32, -1.0, 0.0, 0.1];
    let q = quantize_4bit("packing", &w, &[1, 4], Format::Nf4, 64, false)?;
    let codes: Vec<u8> = (0..4).map(|i| q.code_index(i)).collect();
    println!(
        "packing: w[0..4] → codes {codes:?} → bytes [{:02x}, {:02x}] (first element in the high nibble)",
        q.packed[0], q.packed[1]
    );

    // 3 and 4. Bytes and errors, on the test model and (if present) the tour's trained model.
    let key = "transformer.h.0.mlp.c_fc.weight";
    let (w, shape) = linear_weight(TEST_MODEL, key)?;
    report("c_fc (test model)", &w, shape)?;
    if std::path::Path::new(TOUR_MODEL).exists() {
        let (w, shape) = linear_weight(TOUR_MODEL, key)?;
        report("c_fc (tour, trained)", &w, shape)?;
    }

    // 5. The GPU decodes the same bits (one f32 product per weight, correctly rounded).
    let gpu = Gpu::new()?;
    let q = quantize_4bit("c_fc", &w, &shape, Format::Nf4, 64, false)?;
    let on_gpu = Weight4bit::upload(&gpu, &q)?.dequantize()?.to_vec()?;
    let host = dequantize_4bit(&q);
    let same = on_gpu.iter().zip(&host).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("GPU dequantize == host: {same} ({} values, bit for bit)", host.len());
    Ok(())
}
