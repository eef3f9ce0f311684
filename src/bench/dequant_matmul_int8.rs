//! The int8 rows of `glassgrad bench dequant-matmul`: the fused int8 linear beside the f32
//! products the engine runs for the same layer, timed alternately in their own set (the same
//! method as the 4-bit rows, src/bench/dequant_matmul.rs).
//!
//! Shapes (W [out, in] int8 rowwise: n code bytes + 4 bytes of scale per row; the f32 weight is
//! GPT-2's Conv1D [in, out], what `linear` multiplies):
//!   decode    1 × 4096 · [4096, 4096]ᵀ: GB/s of weight bytes read (int8 `WeightInt8::bytes`,
//!             ≈ 1 B/param; f32 4 B/param);
//!   training  512 × 768 · [3072, 768]ᵀ (rows = `size` when given), forward y = x·Wᵀ and dx = dy·W:
//!             GFLOPS = 2·rows·in·out / time. (The 4-bit rows' 2048 × 4096 shape is left out: the
//!             products scale alike and it costs minutes on a CPU driver.)
//! Rows: the adapter's int8 kernel (`Int8Kernel::for_gpu`), the other matvec variants at the decode
//! shape, the composed reference (dequantize, then matmul_t) and the f32 products, labelled
//! "(int8 set)" so they are not confused with the 4-bit set's.

use std::rc::Rc;

use super::BenchResult;
use super::dequant_matmul::{Call, time_alternating, values};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::linear_int8::{Int8Kernel, WeightInt8};
use crate::ops::linear_int8_kernels::launch;
use crate::quant::int8::quantize_int8_rowwise;
use crate::tensor::Tensor;

/// The int8 weight [out, in] and its f32 Conv1D twin [in, out] (the same values).
fn weights(gpu: &Rc<Gpu>, out: usize, inp: usize) -> Result<(WeightInt8, Tensor)> {
    let w = values(out * inp, 1); // (out, in)
    let q = quantize_int8_rowwise("bench.weight", &w, &[out, inp])?;
    let mut t = vec![0.0; out * inp]; // (in, out)
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    Ok((WeightInt8::upload(gpu, "bench.weight", &q)?, Tensor::from_f32(gpu, &t, &[inp, out])?))
}

/// The decode rows and the training rows (`size` replaces the rows of the training shape).
pub fn rows(gpu: &Rc<Gpu>, size: Option<usize>) -> Result<Vec<BenchResult>> {
    let mut results = decode(gpu)?;
    results.extend(training(gpu, size.unwrap_or(512), 768, 3072)?);
    Ok(results)
}

const F32_LINEAR: &str = "f32 linear (int8 set)";

/// 1 × 4096 · [4096, 4096]ᵀ: every matvec variant, the composed reference, the f32 `linear`.
fn decode(gpu: &Rc<Gpu>) -> Result<Vec<BenchResult>> {
    let (out, inp) = (4096, 4096);
    let (w8, w32) = weights(gpu, out, inp)?;
    let x = Tensor::from_f32(gpu, &values(inp, 2), &[1, inp])?; // (1, in)
    let fast = Int8Kernel::for_gpu(gpu, 1);
    let mut kernels = vec![fast];
    kernels.extend(Int8Kernel::available(gpu).into_iter().filter(|k| {
        *k != fast
            && matches!(
                k,
                Int8Kernel::Matvec | Int8Kernel::MatvecWorkgroup | Int8Kernel::MatvecSubgroup
            )
    }));
    let mut calls: Vec<Call> = vec![];
    for &k in &kernels {
        let (x, w8) = (&x, &w8);
        calls.push((
            format!("linear_int8_{}", k.name()),
            Box::new(move || x.linear_int8_with_kernel(w8, k).map(drop)),
        ));
    }
    let (x, w8, w32) = (&x, &w8, &w32);
    calls.push((
        "int8 dequantize+matmul_t".into(),
        Box::new(move || x.linear_int8_composed(w8).map(drop)),
    ));
    calls.push((F32_LINEAR.into(), Box::new(move || x.linear(w32, None).map(drop))));
    let ms = time_alternating(gpu, &mut calls, 5)?;
    let shape = format!("1x{inp} · [{out},{inp}]t");
    let mut results = vec![];
    for ((name, _), ms) in calls.iter().zip(ms) {
        let bytes = if name == F32_LINEAR { out * inp * 4 } else { w8.bytes() };
        let mut r = BenchResult::new(gpu, name, shape.clone(), ms);
        r.gbps = Some(bytes as f64 / (ms * 1e-3) / 1e9);
        results.push(r);
    }
    Ok(results)
}

/// rows × in · [out, in]ᵀ forward and dx = dy·W: the adapter's int8 kernels, the f32 products
/// (`linear`, and dy·Wᵀ with the Conv1D weight) and the composed reference.
fn training(gpu: &Rc<Gpu>, rows: usize, inp: usize, out: usize) -> Result<Vec<BenchResult>> {
    let (w8, w32) = weights(gpu, out, inp)?;
    let x = Tensor::from_f32(gpu, &values(rows * inp, 3), &[rows, inp])?; // (rows, in)
    let dy = Tensor::from_f32(gpu, &values(rows * out, 4), &[rows, out])?; // (rows, out)
    let fast = Int8Kernel::for_gpu(gpu, rows);
    let bk = fast.backward(gpu);
    let (x, dy, w8, w32) = (&x, &dy, &w8, &w32);
    let calls: &mut [Call] = &mut [
        (
            format!("linear_int8_{}", fast.name()),
            Box::new(move || x.linear_int8_with_kernel(w8, fast).map(drop)),
        ),
        (F32_LINEAR.into(), Box::new(move || x.linear(w32, None).map(drop))),
        (
            format!("linear_int8_{} dx", bk.name()),
            Box::new(move || launch(bk, true, w8, dy, &[rows, inp]).map(drop)),
        ),
        (
            "f32 matmul_t dx (int8 set)".into(),
            Box::new(move || dy.matmul_t(w32, false, true).map(drop)),
        ),
        ("int8 dequantize+matmul_t".into(), Box::new(move || x.linear_int8_composed(w8).map(drop))),
    ];
    let ms = time_alternating(gpu, calls, 5)?;
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
