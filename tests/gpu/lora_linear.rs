//! lora_linear (LoRA's term in the base matmul's epilogue): gradient checks for every fused
//! variant at odd shapes and across its tile edges (the register-tiled 4×256 and the subgroup
//! 128×64 output tiles), the fused op against its composed reference (outputs and the gradients
//! of x, A and B, A reaching the op through down = x·Aᵀ), and a LoRA GPT-2 fused vs composed.

use glassgrad::cpu::{Array, Rng};
use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::ops::lora_linear::{LoraLinearKernel, cpu, force_composed, lora_linear_composed};
use glassgrad::peft::config::LoraConfig;
use glassgrad::peft::lora::inject;
use glassgrad::{Error, Tensor};

use crate::gpu::harness::{Case, Tol, compare, gpu};

/// f32 dot products of up to ~260 terms of magnitude ≤ 1 (K ≤ 257 rows in dW): rounding grows
/// like √n·ε·Σ|a·b|, ~1e-6 of the largest; rtol 1e-4 for other summation orders (as matmul's).
const TOL: Tol = Tol { atol: 1e-7, rtol: 1e-4 };

/// x [.., in], W [in, out], (b [out]), x_d [.., in], A [R, in], B [out, R]; s = 0.75.
fn case(
    rng: &mut Rng,
    kernel: LoraLinearKernel,
    lead: &[usize],
    dims: [usize; 3],
    bias: bool,
) -> Case {
    let [inp, out, r] = dims;
    let x_shape: Vec<usize> = lead.iter().copied().chain([inp]).collect();
    let mut inputs = vec![rng.array(&x_shape, -1.0, 1.0), rng.array(&[inp, out], -1.0, 1.0)];
    if bias {
        inputs.push(rng.array(&[out], -1.0, 1.0));
    }
    inputs.push(rng.array(&x_shape, -1.0, 1.0));
    inputs.push(rng.array(&[r, inp], -1.0, 1.0));
    inputs.push(rng.array(&[out, r], -1.0, 1.0));
    let s = 0.75;
    let l = if bias { 3 } else { 2 }; // x_d, then A, B
    Case::new(
        "lora_linear",
        inputs,
        Box::new(move |t| {
            let bias = if bias { Some(&t[2]) } else { None };
            t[0].lora_linear_with_kernel(&t[1], bias, &t[l], &t[l + 1], &t[l + 2], s as f32, kernel)
        }),
        Box::new(move |x| {
            cpu::lora_linear(&x[0], &x[1], bias.then(|| &x[2]), &x[l], &x[l + 1], &x[l + 2], s)
        }),
        Box::new(move |x, dy| {
            let b = bias.then(|| &x[2]);
            cpu::lora_linear_backward(&x[0], &x[1], b, &x[l], &x[l + 1], &x[l + 2], s, dy)
        }),
    )
    .tol(TOL)
}

pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for kernel in LoraLinearKernel::available(&gpu()) {
        cases.push(case(rng, kernel, &[1], [1, 1, 1], true));
        cases.push(case(rng, kernel, &[3], [17, 5, 2], true));
        cases.push(case(rng, kernel, &[2, 3], [17, 5, 3], false)); // leading dims, no bias
        cases.push(case(rng, kernel, &[17], [65, 3, 8], true));
        cases.push(case(rng, kernel, &[5], [33, 257, 4], true)); // over 256 columns
        cases.push(case(rng, kernel, &[129], [3, 65, 1], true)); // over 128 rows and 64 columns
        cases.push(case(rng, kernel, &[7], [5, 3, 16], true)); // the largest fused rank
    }
    cases
}

/// Forward sweeps across both kernels' tile edges (rows 4·k ± 1 and 128 ± 1, columns 64 ± 1 and
/// 256 ± 1) against the f64 reference.
#[test]
fn every_variant_matches_the_reference_across_tile_edges() {
    let gpu = gpu();
    let mut rng = Rng::new(14);
    for kernel in LoraLinearKernel::available(&gpu) {
        for (m, n) in [(3, 63), (5, 65), (127, 255), (129, 257), (4, 64), (128, 256)] {
            let (inp, r) = (9, 3);
            let [x, w, b, xl, a, lb] = [[m, inp], [inp, n], [1, n], [m, inp], [r, inp], [n, r]]
                .map(|s| rng.array(&s, -1.0, 1.0));
            let b = Array::new(&[n], b.data);
            let up = |a: &Array| Tensor::from_f32(&gpu, &a.to_f32(), &a.shape).unwrap();
            let got = up(&x)
                .lora_linear_with_kernel(
                    &up(&w),
                    Some(&up(&b)),
                    &up(&xl),
                    &up(&a),
                    &up(&lb),
                    2.0,
                    kernel,
                )
                .unwrap();
            let got: Vec<f64> = got.to_vec().unwrap().iter().map(|&v| v as f64).collect();
            let want = cpu::lora_linear(&x, &w, Some(&b), &xl, &a, &lb, 2.0);
            compare(&format!("{kernel:?} [{m}, {n}]"), &got, &want.data, TOL).unwrap();
        }
        println!("OK lora_linear {kernel:?} across tile edges");
    }
}

/// The fused op against its composed definition, without dropout (x_d is x: two gradients into
/// one input) and with it: y, dx, dA, dB agree, and the frozen W and b get no gradient.
#[test]
fn fused_matches_composed_outputs_and_gradients() {
    let gpu = gpu();
    let mut rng = Rng::new(15);
    let (rows, inp, out, r) = (37, 24, 72, 8);
    let mut data = |s: &[usize]| rng.array(s, -1.0, 1.0).to_f32();
    let (xd, wd, bd, ad, bbd) =
        (data(&[rows, inp]), data(&[inp, out]), data(&[out]), data(&[r, inp]), data(&[out, r]));
    let dy = Tensor::from_f32(&gpu, &data(&[rows, out]), &[rows, out]).unwrap();
    let run = |fused: Option<LoraLinearKernel>, dropout: bool| {
        let x = Tensor::parameter(&gpu, &xd, &[rows, inp], true).unwrap();
        let w = Tensor::parameter(&gpu, &wd, &[inp, out], false).unwrap();
        let b = Tensor::parameter(&gpu, &bd, &[out], false).unwrap();
        let a = Tensor::parameter(&gpu, &ad, &[r, inp], true).unwrap();
        let lb = Tensor::parameter(&gpu, &bbd, &[out, r], true).unwrap();
        let xl = if dropout { x.dropout(0.25, 99, true).unwrap() } else { x.clone() }; // (rows, in)
        let y = match fused {
            Some(k) => x.lora_linear_with_kernel(&w, Some(&b), &xl, &a, &lb, 0.5, k),
            None => lora_linear_composed(&x, &w, Some(&b), &xl, &a, &lb, 0.5),
        };
        let y = y.unwrap();
        y.backward_with(&dy).unwrap();
        assert!(w.grad().is_none() && b.grad().is_none(), "frozen W and b get no gradient");
        [y, x.grad().unwrap(), a.grad().unwrap(), lb.grad().unwrap()].map(|t| t.to_vec().unwrap())
    };
    for dropout in [false, true] {
        let want = run(None, dropout);
        for kernel in LoraLinearKernel::available(&gpu) {
            let got = run(Some(kernel), dropout);
            for (what, (g, w)) in ["y", "dx", "dA", "dB"].iter().zip(got.iter().zip(&want)) {
                let f64s = |v: &Vec<f32>| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
                let label = format!("{kernel:?} dropout {dropout} {what}");
                let d = compare(&label, &f64s(g), &f64s(w), TOL).unwrap();
                println!("OK lora_linear {label}: fused vs composed maxdiff {d:.1e}");
            }
        }
    }
}

#[test]
fn a_lora_model_gives_the_composed_logits_and_gradients() {
    let gpu = gpu();
    let mut model = Gpt2::new_random(&gpu, Gpt2Config::new(65, 16, 32, 2, 2), 3).unwrap();
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: vec!["c_attn".into(), "c_proj".into()],
        ..LoraConfig::default()
    };
    let lora = inject(&mut model, &config, 7).unwrap();
    let mut rng = Rng::new(16);
    for (_, t) in lora.named_parameters(&model) {
        gpu.upload(t.storage(), bytemuck::cast_slice(&rng.array(t.shape(), -0.3, 0.3).to_f32()))
            .unwrap();
    }
    let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 7 % 65) as u32).collect();
    let targets: Vec<u32> = (0..2 * 16).map(|i| (i * 11 % 65) as u32).collect();
    let ids = Tensor::from_u32(&gpu, &ids, &[2, 16]).unwrap();
    let targets = Tensor::from_u32(&gpu, &targets, &[2, 16]).unwrap();
    let run = || {
        let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        let mut values = vec![out.logits.to_vec().unwrap()];
        for (name, t) in lora.named_parameters(&model) {
            values
                .push(t.grad().unwrap_or_else(|| panic!("{name}: no gradient")).to_vec().unwrap());
            t.zero_grad();
        }
        values
    };
    let fused = run();
    let composed = {
        let _composed = force_composed();
        run()
    };
    // Logits and gradients through 2 blocks: sums of ≤ 96 terms each, f32 (see TOL).
    for (k, (g, w)) in fused.iter().zip(&composed).enumerate() {
        let f64s = |v: &Vec<f32>| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        compare(&format!("LoRA GPT-2 value {k}"), &f64s(g), &f64s(w), TOL).unwrap();
    }
    println!("OK LoRA GPT-2: fused logits and {} adapter gradients = composed", fused.len() - 1);
}

#[test]
fn mismatched_shapes_are_refused_by_name() {
    let gpu = gpu();
    let t = |s: &[usize]| Tensor::zeros(&gpu, s).unwrap();
    let x = t(&[3, 4]);
    let shape_error =
        |r: glassgrad::Result<Tensor>| matches!(r, Err(Error::Shape { op: "lora_linear", .. }));
    let err = x.lora_linear(&t(&[4, 5]), None, &x, &t(&[2, 4]), &t(&[6, 2]), 1.0);
    assert!(shape_error(err), "B of 6 rows for 5 outputs");
    let err = x.lora_linear(&t(&[4, 5]), None, &t(&[2, 4]), &t(&[2, 4]), &t(&[5, 2]), 1.0);
    assert!(shape_error(err), "x_d of 2 rows for 3");
}
