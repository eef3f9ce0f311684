//! `glassgrad bench dequant-matmul`: the fused 4-bit linear beside the f32 products the engine
//! runs for the same layer, in the same run, timed alternately (one call of each per repetition,
//! medians) so load on the machine hits all alike.
//!
//! Shapes (W is [out, in] 4-bit NF4 with double quantization, blocksize 64; the f32 weight is
//! GPT-2's Conv1D [in, out], what `linear` multiplies):
//!   decode    1 × 4096 · [4096, 4096]ᵀ    bandwidth-bound: GB/s of weight bytes read
//!             (NF4: `Weight4bit::bytes`, ≈ 0.516 B/param; f32: 4 B/param);
//!   training  512 × 768 · [3072, 768]ᵀ and 2048 × 4096 · [4096, 4096]ᵀ, forward y = x·Wᵀ and
//!             input gradient dx = dy·W (the second forward only: minutes on a CPU driver):
//!             GFLOPS = 2·rows·in·out / time. `size` replaces the rows of the training shapes.
//! Rows: the adapter's fused kernel (`Linear4bitKernel::for_gpu`), the other fused variants at
//! the decode shape, the composed reference (dequantize, then matmul_t) and the f32 `linear`.
//! Every call records its dispatches; one wait per repetition, nothing read back per op.
//! f16 rows (`--base-dtype f16`'s `linear_f16`, the same values rounded to f16, [out, in]) run
//! beside them in the same rounds: decode GB/s counts its 2 B/param.

use std::rc::Rc;
use std::time::Instant;

use super::BenchResult;
use crate::autograd::no_grad;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::dequant::Weight4bit;
use crate::ops::linear_4bit::Linear4bitKernel;
use crate::ops::linear_4bit_kernels::launch;
use crate::ops::linear_f16::{self, LinearF16Kernel, WeightF16};
use crate::quant::{Format, quantize_4bit};
use crate::tensor::Tensor;

pub(super) type Call<'a> = (String, Box<dyn FnMut() -> Result<()> + 'a>);

/// Median ms per call of each of `calls`, alternating: warm-up, then `reps` rounds of one
/// call each (each call waited for on its own).
pub(super) fn time_alternating(gpu: &Gpu, calls: &mut [Call<'_>], reps: usize) -> Result<Vec<f64>> {
    for (_, call) in calls.iter_mut() {
        call()?; // pipeline compilation, buffer pool
        gpu.synchronize()?;
    }
    let mut ms = vec![vec![]; calls.len()];
    for _ in 0..reps {
        for ((_, call), times) in calls.iter_mut().zip(&mut ms) {
            let start = Instant::now();
            call()?;
            gpu.synchronize()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ms
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

/// Seeded normal-ish values (the bench does not depend on them).
pub(super) fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed) % 1000) as f32 - 500.0) / 5000.0).collect()
}

/// The 4-bit weight [out, in] and its f32 Conv1D twin [in, out] (the same values).
fn weights(gpu: &Rc<Gpu>, out: usize, inp: usize) -> Result<(Weight4bit, Tensor)> {
    let w = values(out * inp, 1); // (out, in)
    let q = quantize_4bit("bench.weight", &w, &[out, inp], Format::Nf4, 64, true)?;
    let mut t = vec![0.0; out * inp]; // (in, out)
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    Ok((Weight4bit::upload(gpu, &q)?, Tensor::from_f32(gpu, &t, &[inp, out])?))
}

/// The same values as `weights` in f16, [out, in].
fn weight_f16(gpu: &Rc<Gpu>, out: usize, inp: usize) -> Result<WeightF16> {
    WeightF16::upload(gpu, "bench.weight", &values(out * inp, 1), [out, inp])
}

pub fn dequant_matmul(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let _g = no_grad();
    let mut results = decode(gpu)?;
    for (rows, inp, out, backward) in [(512, 768, 3072, true), (2048, 4096, 4096, false)] {
        results.extend(training(gpu, size.unwrap_or(rows), inp, out, backward)?);
    }
    results.extend(super::dequant_matmul_int8::rows(gpu, size)?);
    Ok(results)
}

/// 1 × 4096 · [4096, 4096]ᵀ: every fused variant that takes one row, the composed reference
/// and the f32 `linear`.
fn decode(gpu: &Rc<Gpu>) -> Result<Vec<BenchResult>> {
    let (out, inp) = (4096, 4096);
    let (w4, w32) = weights(gpu, out, inp)?;
    let x = Tensor::from_f32(gpu, &values(inp, 2), &[1, inp])?; // (1, in)
    let w16 = weight_f16(gpu, out, inp)?;
    let fast = Linear4bitKernel::for_gpu(gpu, 1);
    let mut kernels = vec![fast];
    kernels.extend(
        Linear4bitKernel::available(gpu)
            .into_iter()
            // the tiled kernels would leave 63 of 64 (127 of 128) rows idle
            .filter(|k| {
                *k != fast && !matches!(k, Linear4bitKernel::Tiled | Linear4bitKernel::Subgroup)
            }),
    );
    let mut calls: Vec<Call> = vec![];
    for &k in &kernels {
        let (x, w4) = (&x, &w4);
        calls.push((
            format!("linear_4bit_{}", k.name()),
            Box::new(move || x.linear_4bit_with_kernel(w4, k).map(drop)),
        ));
    }
    let k16 = LinearF16Kernel::for_gpu(gpu, 1, inp);
    let (x, w4, w32, w16r) = (&x, &w4, &w32, &w16);
    calls.push((
        format!("linear_f16_{}", k16.name()),
        Box::new(move || x.linear_f16_with_kernel(w16r, k16).map(drop)),
    ));
    calls.push((
        "dequantize+matmul_t".into(),
        Box::new(move || x.linear_4bit_composed(w4).map(drop)),
    ));
    calls.push(("f32 linear".into(), Box::new(move || x.linear(w32, None).map(drop))));
    let ms = time_alternating(gpu, &mut calls, 5)?;
    let shape = format!("1x{inp} · [{out},{inp}]t");
    let mut results = vec![];
    for ((name, _), ms) in calls.iter().zip(ms) {
        let bytes = match name.as_str() {
            "f32 linear" => out * inp * 4,
            n if n.starts_with("linear_f16") => w16.bytes(),
            _ => w4.bytes(),
        };
        let mut r = BenchResult::new(gpu, name, shape.clone(), ms);
        r.gbps = Some(bytes as f64 / (ms * 1e-3) / 1e9);
        results.push(r);
    }
    Ok(results)
}

/// rows × in · [out, in]ᵀ forward (and dx = dy·W when `backward`): the adapter's fused kernel,
/// the composed reference and the f32 products (`linear`, and dy·Wᵀ with the Conv1D weight).
fn training(
    gpu: &Rc<Gpu>,
    rows: usize,
    inp: usize,
    out: usize,
    backward: bool,
) -> Result<Vec<BenchResult>> {
    let (w4, w32) = weights(gpu, out, inp)?;
    let x = Tensor::from_f32(gpu, &values(rows * inp, 3), &[rows, inp])?; // (rows, in)
    let dy = Tensor::from_f32(gpu, &values(rows * out, 4), &[rows, out])?; // (rows, out)
    let fast = Linear4bitKernel::for_gpu(gpu, rows);
    let w16 = weight_f16(gpu, out, inp)?;
    let k16 = LinearF16Kernel::for_gpu(gpu, rows, inp);
    let (x, dy, w4, w32, w16) = (&x, &dy, &w4, &w32, &w16);
    let mut calls: Vec<Call> = vec![
        (
            format!("linear_4bit_{}", fast.name()),
            Box::new(move || x.linear_4bit_with_kernel(w4, fast).map(drop)),
        ),
        ("f32 linear".into(), Box::new(move || x.linear(w32, None).map(drop))),
        (
            format!("linear_f16_{}", k16.name()),
            Box::new(move || x.linear_f16_with_kernel(w16, k16).map(drop)),
        ),
    ];
    if backward {
        let bk16 = k16.backward(gpu);
        calls.push((
            format!("linear_f16_{} dx", bk16.name()),
            Box::new(move || linear_f16::launch(bk16, true, w16, dy, &[rows, inp]).map(drop)),
        ));
        let bk = fast.backward(gpu);
        calls.push((
            format!("linear_4bit_{} dx", bk.name()),
            Box::new(move || launch(bk, true, w4, dy, &[rows, inp]).map(drop)),
        ));
        calls.push((
            "f32 matmul_t dx".into(),
            Box::new(move || dy.matmul_t(w32, false, true).map(drop)),
        ));
        calls.push((
            "dequantize+matmul_t".into(),
            Box::new(move || x.linear_4bit_composed(w4).map(drop)),
        ));
    }
    let reps = if rows * inp * out > 1 << 30 { 3 } else { 5 };
    let ms = time_alternating(gpu, &mut calls, reps)?;
    let flops = 2.0 * (rows * inp * out) as f64;
    Ok(calls
        .iter()
        .zip(ms)
        .map(|((name, _), ms)| {
            let mut r = BenchResult::new(gpu, name, format!("{rows}x{inp} · [{out},{inp}]t"), ms);
            r.gflops = Some(flops / (ms * 1e-3) / 1e9);
            r
        })
        .collect())
}
