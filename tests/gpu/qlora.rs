//! QLoRA: a quantized GPT-2 base (NF4/FP4 through `linear_4bit`, int8 rowwise through
//! `linear_int8`) with adapters trained in f32 on top. tests/data/qlora_ref was written by
//! scripts/make_qlora_reference.py with real `bitsandbytes.nn.Linear4bit` layers (and PEFT's LoRA
//! on them) on the CPU. Checked here: logits of our quantized base equal bitsandbytes' (quantized
//! by us, and loaded from bitsandbytes' saved Linear4bit state without re-quantizing); LoRA on
//! NF4 gives PEFT's logits, loss, adapter gradients and parameter counts; gradients through a
//! quantized layer agree with finite differences (input and LoRA's A, B); the base gets no
//! gradient and no optimizer state; the memory report's quantized bytes are the formula's; bad
//! input is refused by name; the int8 kernel matches its f64 reference at odd shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use glassgrad::cpu::{Array, Rng};
use glassgrad::io::{NamedTensor, TensorFile, write_safetensors};
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::model::layers::Linear;
use glassgrad::model::quantized::{QuantizeSpec, load_model};
use glassgrad::ops::linear_int8::{WeightInt8, cpu as int8_cpu};
use glassgrad::ops::matmul::cpu::matmul_t;
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::{LoraConfig, inject, load_adapter};
use glassgrad::quant::int8::quantize_int8_rowwise;
use glassgrad::quant::nf4::Format;
use glassgrad::{Category, Tensor};

use crate::gpu::harness::{Case, REDUCTION, gpu, temp_dir};
use crate::lora::{base, logits_and_loss, rel_err, set, tokens};

const QLORA_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/qlora_ref");
const GPT2_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

fn nf4(double_quant: bool) -> QuantizeSpec {
    QuantizeSpec::FourBit { format: Format::Nf4, blocksize: 64, double_quant }
}

fn case_dir(case: &str) -> PathBuf {
    Path::new(QLORA_REF).join(case)
}

fn expected(case: &str) -> TensorFile {
    TensorFile::read(case_dir(case).join("expected.safetensors")).unwrap()
}

/// f32 forward through 2 blocks on both sides, the same dequantized weights, sums in different
/// orders: a few ulps of the largest logit; 1e-4 of max |want| leaves room and catches any wrong
/// weight (one wrong 4-bit code moves a logit by ~1e-2 of its scale).
const LOGITS_RTOL: f64 = 1e-4;

#[test]
fn quantized_gpt2_matches_bitsandbytes_linear4bit() {
    for (case, spec) in [
        ("nf4", nf4(false)),
        ("nf4_dq", nf4(true)),
        ("fp4", QuantizeSpec::FourBit { format: Format::Fp4, blocksize: 64, double_quant: true }),
    ] {
        let want = expected(case);
        let (_, want_logits) = want.f32("logits").unwrap();
        let want_loss = want.f32("loss").unwrap().1[0];
        // Quantized here from the f32 base, and loaded from bitsandbytes' own saved state.
        let mut quantized = base();
        quantized.quantize_base(spec).unwrap();
        let loaded = load_model(&gpu(), &case_dir(case).join("model")).unwrap();
        assert_eq!(loaded.quantization(), Some(spec), "{case}: the loaded state's format");
        for (how, model) in [("quantize_base", &quantized), ("loaded Linear4bit state", &loaded)] {
            assert_eq!(model.quantized_layers().len(), 4 * model.config.n_layer);
            let (logits, loss) = logits_and_loss(model);
            let e = rel_err(&logits, &want_logits);
            println!("{case} ({how}): logits max rel err {e:.2e}, loss {loss} vs {want_loss}");
            assert!(e <= LOGITS_RTOL, "{case} ({how}): logits differ from bitsandbytes: {e:.3e}");
            assert!(((loss - want_loss) / want_loss).abs() <= 1e-4, "{case} ({how}): loss");
        }
    }
}

#[test]
fn lora_on_nf4_matches_peft_on_bitsandbytes() {
    let want = expected("lora_nf4_dq");
    let mut model = load_model(&gpu(), &case_dir("nf4_dq").join("model")).unwrap();
    let lora = load_adapter(&mut model, case_dir("lora_nf4_dq").join("adapter")).unwrap();
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    loss.backward().unwrap();
    let e = rel_err(&out.logits.to_vec().unwrap(), &want.f32("logits").unwrap().1);
    assert!(e <= LOGITS_RTOL, "logits differ from PEFT on Linear4bit: {e:.3e}");
    let (got, want_loss) = (loss.item().unwrap(), want.f32("loss").unwrap().1[0]);
    println!("lora_nf4_dq: logits max rel err {e:.2e}, loss {got} vs PEFT {want_loss}");
    assert!(((got - want_loss) / want_loss).abs() <= 1e-4);
    // PEFT's get_nb_trainable_parameters on the real Params4bit (2 × packed bytes each).
    let counts = want.get("trainable_params").unwrap().to_i64("counts").unwrap();
    let ours = [model.num_trainable_parameters() as i64, model.num_parameters() as i64];
    assert_eq!(ours, counts[..2], "{} vs PEFT {counts:?}", model.trainable_summary());
    println!("{}", model.trainable_summary());
    let params = lora.named_parameters(&model);
    assert_eq!(params.len(), want.tensors.keys().filter(|k| k.starts_with("grad.")).count());
    for (key, p) in &params {
        let got = p.grad().unwrap_or_else(|| panic!("{key}: no gradient")).to_vec().unwrap();
        // One more backward than the logits: the same 1e-4 of the tensor's max |want|.
        let e = rel_err(&got, &want.f32(&format!("grad.{key}")).unwrap().1);
        assert!(e <= 1e-4, "gradient of {key} differs from PEFT: rel err {e:.3e}");
    }
    println!("lora_nf4_dq: {} adapter gradients OK", params.len());
}

/// One quantized layer y = (x·dequant(Wq)ᵀ + b) + s·x·Aᵀ·Bᵀ (LoRA on top), L = Σ y ⊙ r. The
/// analytic directional derivative along random directions of x, A and B against a central
/// difference with Richardson extrapolation, on the GPU in f32. The layer is linear in each of
/// them, so the difference is exact up to f32 rounding of L (≈1e-6 of |L|).
#[test]
fn gradients_through_a_quantized_layer_agree_with_finite_differences() {
    let gpu = gpu();
    for spec in [nf4(true), QuantizeSpec::Int8] {
        let mut rng = Rng::new(11);
        let (rows, inp, out) = (5, 65, 17);
        let w = rng.array(&[inp, out], -0.5, 0.5).to_f32(); // Conv1D [in, out]
        let b = rng.array(&[out], -0.1, 0.1).to_f32();
        let mut layer = Linear::new(
            Tensor::parameter(&gpu, &w, &[inp, out], false).unwrap(),
            Some(Tensor::parameter(&gpu, &b, &[out], false).unwrap()),
        );
        layer.quantize("layer.weight", spec).unwrap();
        let x0 = rng.array(&[rows, inp], -1.0, 1.0).to_f32();
        let a0 = rng.array(&[3, inp], -0.3, 0.3).to_f32();
        let b0 = rng.array(&[out, 3], -0.3, 0.3).to_f32();
        let r = Tensor::from_f32(&gpu, &rng.array(&[rows, out], -1.0, 1.0).to_f32(), &[rows, out])
            .unwrap();
        let x = Tensor::parameter(&gpu, &x0, &[rows, inp], true).unwrap();
        let a = Tensor::parameter(&gpu, &a0, &[3, inp], true).unwrap();
        let bb = Tensor::parameter(&gpu, &b0, &[out, 3], true).unwrap();
        let loss = || {
            let term = x.matmul_t(&a, false, true).unwrap().matmul_t(&bb, false, true).unwrap();
            let y = layer.project(&x).unwrap().add(&term.scale(2.0).unwrap()).unwrap();
            y.mul(&r).unwrap().sum_all().unwrap()
        };
        loss().backward().unwrap();
        let tensors = [(&x, &x0), (&a, &a0), (&bb, &b0)];
        for (which, (t, t0)) in ["x", "lora_A", "lora_B"].iter().zip(tensors) {
            let g = t.grad().unwrap().to_vec().unwrap();
            assert!(g.iter().any(|v| *v != 0.0), "{which}: zero gradient");
            let d: Vec<f32> = (0..t0.len()).map(|_| rng.normal() as f32).collect();
            let analytic: f64 = g.iter().zip(&d).map(|(g, d)| *g as f64 * *d as f64).sum();
            let at = |h: f32| {
                set(t, &t0.iter().zip(&d).map(|(v, d)| v + h * d).collect::<Vec<_>>());
                let _no_grad = glassgrad::autograd::no_grad();
                loss().item().unwrap() as f64
            };
            let central = |h: f32| (at(h) - at(-h)) / (2.0 * h as f64);
            let h = 1e-2;
            let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
            set(t, t0);
            println!("{spec:?} d/d{which}: analytic {analytic:.6} vs numeric {numeric:.6}");
            assert!(
                (numeric - analytic).abs() <= 1e-3 * analytic.abs().max(1.0),
                "{spec:?} d/d{which}: {analytic} vs {numeric}"
            );
        }
        assert!(layer.weight.numel() == 0, "no f32 copy of the quantized weight is kept");
    }
}

/// Bytes the memory report counts for one quantized [out, in] weight, from the format alone.
fn expected_bytes(spec: QuantizeSpec, out: usize, inp: usize) -> u64 {
    let n = out * inp;
    let bytes = match spec {
        QuantizeSpec::Int8 => n + 4 * out, // codes + row absmax
        QuantizeSpec::F16 => unreachable!("the f16 base is tested in base_f16.rs"),
        QuantizeSpec::FourBit { blocksize, double_quant, .. } => {
            let blocks = n.div_ceil(blocksize);
            let absmax = if double_quant { blocks + 4 * blocks.div_ceil(256) } else { 4 * blocks };
            n.div_ceil(2) + absmax + 272 * 4 + 4 // + the 16 + 256 f32 tables, the placeholder
        }
    };
    bytes as u64
}

/// A fresh LoRA on a quantized base: after two AdamW steps every adapter tensor has a nonzero
/// gradient, nothing else has one, the optimizer holds moments for the adapter alone, and the
/// memory report's quantized bytes are exactly the formula's while the f32 weights are gone.
#[test]
fn only_the_adapter_trains_and_the_quantized_bytes_are_the_formulas() {
    let gpu = gpu();
    for spec in [nf4(true), nf4(false), QuantizeSpec::Int8] {
        let mut model = base();
        let (q0, p0) =
            (gpu.memory().live(Category::Quantized), gpu.memory().live(Category::Parameters));
        model.quantize_base(spec).unwrap();
        let config = model.config.clone();
        let (c, h) = (config.n_embd, config.mlp_hidden());
        let per_block: u64 = [(3 * c, c), (c, c), (h, c), (c, h)]
            .iter()
            .map(|&(o, i)| expected_bytes(spec, o, i))
            .sum();
        let quantized = gpu.memory().live(Category::Quantized) - q0;
        assert_eq!(quantized, per_block * config.n_layer as u64, "{spec:?}: quantized bytes");
        let f32_bytes = (config.n_layer * (3 * c * c + c * c + 2 * h * c) * 4) as u64;
        let freed = p0 - gpu.memory().live(Category::Parameters);
        assert_eq!(freed, f32_bytes, "{spec:?}: the f32 projection weights are released");
        let n = (config.n_layer * (3 * c * c + c * c + 2 * h * c)) as f64;
        println!("{spec:?}: {quantized} quantized bytes, {:.4} bytes/param", quantized as f64 / n);

        let lora_config = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            target_modules: vec!["c_attn".into(), "c_fc".into(), "c_proj".into()],
            ..LoraConfig::default()
        };
        let lora = inject(&mut model, &lora_config, 42).unwrap();
        let params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
        let before = gpu.memory().live(Category::Optimizer);
        let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
        let trainable = model.num_trainable_parameters();
        let moments = gpu.memory().live(Category::Optimizer) - before;
        assert_eq!(moments, (2 * 4 * trainable) as u64, "{spec:?}: moments for the adapter only");
        for _ in 0..2 {
            opt.zero_grad();
            let (ids, targets) = tokens();
            let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
            Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
            opt.step().unwrap();
        }
        let adapter = lora.named_parameters(&model);
        assert_eq!(opt.state().unwrap().len(), 1 + 2 * adapter.len(), "{spec:?}: step + m, v");
        for (name, t) in model.named_parameters() {
            let is_adapter = name.contains(".lora_");
            match t.grad() {
                Some(g) => {
                    assert!(is_adapter, "{spec:?}: frozen {name} got a gradient");
                    assert!(g.to_vec().unwrap().iter().any(|v| *v != 0.0), "{name}: zero grad");
                }
                None => assert!(!is_adapter, "{spec:?}: {name} got no gradient"),
            }
        }
        // The quantized weights are not parameters: nothing can give them a gradient or moments.
        let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
        for (name, _) in model.quantized_layers() {
            assert!(!names.contains(&name), "{name} is a frozen buffer, not a parameter");
        }
        println!("{spec:?}: {}", model.trainable_summary());
    }
}

/// Copies the `nf4_dq` reference model into a temporary directory with `edit` applied to its
/// tensors, and returns the error `load_model` gives.
fn load_edited(label: &str, edit: impl Fn(&mut BTreeMap<String, NamedTensor>)) -> String {
    let dir = temp_dir(&format!("qlora_bad_{label}"));
    let src = case_dir("nf4_dq").join("model");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = TensorFile::read(src.join("model.safetensors")).unwrap().tensors;
    edit(&mut tensors);
    let path = dir.join("model.safetensors");
    write_safetensors(&path, tensors.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    match load_model(&gpu(), &dir) {
        Ok(_) => panic!("{label}: the edited model loaded"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(label: &str, message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{label}: '{message}' lacks '{part}'");
    }
    println!("{label}: {message}");
}

const W: &str = "transformer.h.1.mlp.c_fc.weight";

#[test]
fn bad_quantized_input_is_refused_by_name() {
    // A blocksize bitsandbytes does not accept, at the command line's parse and in a JSON state.
    let e = QuantizeSpec::parse("nf4", 48, false).unwrap_err().to_string();
    assert_names("blocksize 48", &e, &["blocksize 48", "powers of two"]);
    let e = QuantizeSpec::parse("nf4", 8192, true).unwrap_err().to_string();
    assert_names("blocksize 8192", &e, &["blocksize 8192"]);
    let e = QuantizeSpec::parse("int8", 64, true).unwrap_err().to_string();
    assert_names("int8 + double quant", &e, &["int8", "--double-quant"]);
    let state = format!("{W}.quant_state.bitsandbytes__nf4");
    let json =
        |t: &BTreeMap<String, NamedTensor>| String::from_utf8(t[&state].data.clone()).unwrap();
    let set_json = |t: &mut BTreeMap<String, NamedTensor>, s: String| {
        t.insert(state.clone(), NamedTensor::from_u8(&[s.len()], s.as_bytes()));
    };
    let e = load_edited("json blocksize", |t| {
        let s = json(t).replace("\"blocksize\": 64", "\"blocksize\": 48");
        set_json(t, s);
    });
    assert_names("json blocksize", &e, &[W, "blocksize 48"]);
    // A quant_state whose JSON does not parse, or whose shape disagrees with the data.
    let e = load_edited("json", |t| set_json(t, "{\"quant_type\": ".into()));
    assert_names("json", &e, &[W, "JSON does not parse"]);
    let e = load_edited("json shape", |t| {
        let s = json(t).replace("[96, 24]", "[96, 32]");
        set_json(t, s);
    });
    assert_names("json shape", &e, &[W, "expected U8 with 1536 elements"]);
    let e = load_edited("absmax length", |t| {
        let key = format!("{W}.absmax");
        t.insert(key, NamedTensor::from_u8(&[35], &[0; 35]));
    });
    assert_names("absmax length", &e, &[W, "absmax (double-quantized)", "36 elements"]);
    // Not 2-D: a weight quantized as a flat vector is not the layer's [out, in].
    let e = load_edited("1-D", |t| {
        let s = json(t).replace("[96, 24]", "[2304]");
        set_json(t, s);
    });
    assert_names("1-D", &e, &[W, "[2304]", "[out, in] = [96, 24]"]);
    // The Conv1D layout [in, out] instead of bitsandbytes' [out, in].
    let e = load_edited("Conv1D layout", |t| {
        let s = json(t).replace("[96, 24]", "[24, 96]");
        set_json(t, s);
    });
    assert_names("Conv1D layout", &e, &[W, "[24, 96]", "transpose"]);
    // NaN in a stored absmax (nested), and in an f32 weight to quantize.
    let e = load_edited("NaN absmax", |t| {
        let key = format!("{W}.nested_absmax");
        t.insert(key, NamedTensor::from_f32(&[1], &[f32::NAN]));
    });
    assert_names("NaN absmax", &e, &[W, "NaN"]);
    let mut weights = Gpt2Weights::load(Path::new(GPT2_REF).join("model")).unwrap();
    weights.params.get_mut(W).unwrap().data[5] = f32::INFINITY;
    let mut model = Gpt2::from_weights(&gpu(), &weights).unwrap();
    let e = model.quantize_base(nf4(true)).unwrap_err().to_string();
    assert_names("Inf weight", &e, &[W, "inf"]);
    assert!(model.quantized_layers().is_empty(), "a failed quantize_base changes nothing");
    let e = model.quantize_base(QuantizeSpec::Int8).unwrap_err().to_string();
    assert_names("Inf weight (int8)", &e, &[W, "inf"]);
    // 4-bit state on a tensor that must stay f32.
    let e = load_edited("wte", |t| {
        let q =
            glassgrad::quant::quantize_4bit("wte", &[0.5; 64], &[2, 32], Format::Nf4, 64, false);
        for (k, v) in glassgrad::quant::state_tensors("transformer.wte.weight", &q.unwrap()) {
            t.insert(k, v);
        }
    });
    assert_names("wte", &e, &["transformer.wte.weight", "only the projection weights"]);
    // A merge into a quantized layer is refused by name (glassgrad merge dequantizes first).
    let mut model = base();
    model.quantize_base(QuantizeSpec::Int8).unwrap();
    let lora = inject(&mut model, &LoraConfig::default(), 1).unwrap();
    let e = lora.merge().unwrap_err().to_string();
    assert_names("merge", &e, &["transformer.h.0.attn.c_attn", "int8 rowwise", "glassgrad merge"]);
}

/// The int8 kernel against the f64 reference (dequantize in f64, matmul) at odd shapes, forward
/// and dx; the gradient-check cases below put `linear_int8` on ops.rs's every-op list.
#[test]
fn linear_int8_matches_the_f64_reference_at_odd_shapes() {
    let gpu = gpu();
    let mut rng = Rng::new(3);
    for (rows, inp, out) in [(1, 1, 1), (3, 17, 5), (6, 65, 130), (17, 64, 33), (2, 4097, 3)] {
        let w = rng.array(&[out, inp], -1.0, 1.0).to_f32();
        let q = quantize_int8_rowwise("w", &w, &[out, inp]).unwrap();
        let wq = WeightInt8::upload(&gpu, "w", &q).unwrap();
        let w64 = Array::new(&[out, inp], int8_cpu::dequantize(&q));
        let x = rng.array(&[rows, inp], -1.0, 1.0);
        let dy = rng.array(&[rows, out], -1.0, 1.0);
        let xt =
            Tensor::from_f32(&gpu, &x.to_f32(), &[rows, inp]).unwrap().with_requires_grad(true);
        let y = xt.linear_int8(&wq).unwrap();
        y.backward_with(&Tensor::from_f32(&gpu, &dy.to_f32(), &[rows, out]).unwrap()).unwrap();
        let want_y = matmul_t(&x, &w64, false, true);
        let want_dx = matmul_t(&dy, &w64, false, false);
        let got_y: Vec<f64> = y.to_vec().unwrap().iter().map(|v| *v as f64).collect();
        let got_dx: Vec<f64> =
            xt.grad().unwrap().to_vec().unwrap().iter().map(|v| *v as f64).collect();
        let label = format!("({rows}, {inp}) · [{out}, {inp}]ᵀ int8");
        let ey =
            crate::gpu::harness::compare(&format!("{label} y"), &got_y, &want_y.data, REDUCTION)
                .unwrap();
        let edx =
            crate::gpu::harness::compare(&format!("{label} dx"), &got_dx, &want_dx.data, REDUCTION)
                .unwrap();
        // Dequantized values: bit-exact with the host's (bitsandbytes' arithmetic).
        let host = glassgrad::quant::int8::dequantize_int8_rowwise(&q);
        assert_eq!(wq.dequantize().unwrap().to_vec().unwrap(), host, "{label}: dequantize");
        println!("{label}: OK (max diff y {ey:.2e}, dx {edx:.2e})");
    }
}

/// Gradient checks of `linear_int8` (for ops.rs's every-op list): x only, W is frozen.
pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for (rows, inp, out) in [(1, 1, 1), (3, 17, 5), (5, 65, 3)] {
        let w = rng.array(&[out, inp], -1.0, 1.0).to_f32();
        let q = quantize_int8_rowwise("w", &w, &[out, inp]).unwrap();
        let w64 = Array::new(&[out, inp], int8_cpu::dequantize(&q));
        let w64b = w64.clone();
        cases.push(
            Case::new(
                "linear_int8",
                vec![rng.array(&[rows, inp], -1.0, 1.0)],
                Box::new(move |t| t[0].linear_int8(&WeightInt8::upload(t[0].gpu(), "w", &q)?)),
                Box::new(move |x| matmul_t(&x[0], &w64, false, true)),
                Box::new(move |_x, d| vec![matmul_t(d, &w64b, false, false)]),
            )
            .tol(REDUCTION),
        );
    }
    cases
}

/// A quantized Linear's output equals x·W'ᵀ + b with W' the host's (bitsandbytes') dequantized
/// [out, in] weight, at GPT-2-like shapes: blocks spanning rows (in < 64), one block per row
/// (in = 64), several per row, and 256+ blocks (a second nested block).
#[test]
fn a_quantized_linear_computes_with_the_dequantized_weight() {
    let gpu = gpu();
    let mut rng = Rng::new(9);
    for (rows, inp, out) in
        [(18, 24, 72), (18, 64, 192), (18, 64, 256), (18, 256, 64), (7, 96, 700)]
    {
        for spec in [nf4(false), nf4(true), QuantizeSpec::Int8] {
            let w = rng.array(&[inp, out], -0.5, 0.5).to_f32(); // Conv1D [in, out]
            let b = rng.array(&[out], -0.1, 0.1).to_f32();
            let mut layer = Linear::new(
                Tensor::parameter(&gpu, &w, &[inp, out], false).unwrap(),
                Some(Tensor::parameter(&gpu, &b, &[out], false).unwrap()),
            );
            let w_t: Vec<f32> = (0..out * inp).map(|k| w[(k % inp) * out + k / inp]).collect();
            let host: Vec<f64> = match spec {
                QuantizeSpec::Int8 => {
                    int8_cpu::dequantize(&quantize_int8_rowwise("w", &w_t, &[out, inp]).unwrap())
                }
                QuantizeSpec::F16 => unreachable!("the f16 base is tested in base_f16.rs"),
                QuantizeSpec::FourBit { format, blocksize, double_quant } => {
                    let q = glassgrad::quant::quantize_4bit(
                        "w",
                        &w_t,
                        &[out, inp],
                        format,
                        blocksize,
                        double_quant,
                    )
                    .unwrap();
                    glassgrad::quant::dequantize_4bit(&q).iter().map(|v| *v as f64).collect()
                }
            };
            layer.quantize("w", spec).unwrap();
            let x = rng.array(&[rows, inp], -1.0, 1.0);
            let xt = Tensor::from_f32(&gpu, &x.to_f32(), &[rows, inp]).unwrap();
            let got: Vec<f64> =
                layer.project(&xt).unwrap().to_vec().unwrap().iter().map(|v| *v as f64).collect();
            let mut want = matmul_t(&x, &Array::new(&[out, inp], host), false, true);
            for (k, v) in want.data.iter_mut().enumerate() {
                *v += b[k % out] as f64;
            }
            let label = format!("({rows}, {inp}) → {out} {spec:?}");
            let e = crate::gpu::harness::compare(&label, &got, &want.data, REDUCTION).unwrap();
            println!("{label}: OK ({e:.2e})");
        }
    }
}

#[test]
fn decoding_on_a_quantized_base_with_the_kv_cache_gives_the_full_forwards_logits() {
    // Decoding runs every quantized projection on ONE row: the matvec kernels (lavapipe: the
    // subgroup matvec, which needs in % 32 == 0, hence C = 64); a forward of more than 8 rows
    // runs the training kernels. Same weights, sums in other orders: a few ulps of the largest
    // logit; 1e-4 of it catches a wrong code, nibble, absmax or row (each moves logits by ~1e-2).
    use glassgrad::model::Gpt2Config;
    use glassgrad::model::gpt2::LayerPrefix;
    let gpu = gpu();
    let _g = glassgrad::autograd::no_grad();
    let seq: Vec<u32> = (0..12).map(|i| (i * 17 + 3) % 50).collect();
    for spec in [
        nf4(true),
        QuantizeSpec::FourBit { format: Format::Fp4, blocksize: 128, double_quant: false },
        QuantizeSpec::Int8,
    ] {
        let mut model = Gpt2::new_random(&gpu, Gpt2Config::new(50, 32, 64, 2, 4), 7).unwrap();
        model.quantize_base(spec).unwrap();
        let (c, v) = (model.config.n_embd, model.config.vocab_size);
        let ids = |s: &[u32]| Tensor::from_u32(&gpu, s, &[1, s.len()]).unwrap();
        let full = model.forward(&ids(&seq), &ForwardOptions::default()).unwrap();
        let full = full.logits.to_vec().unwrap(); // (1, 12, V)
        let keep = ForwardOptions { keep_qkv: true, ..Default::default() };
        let first = model.forward(&ids(&seq[..9]), &keep).unwrap(); // 9 rows: training kernels
        let mut cache: Vec<LayerPrefix> = first
            .qkv
            .iter()
            .map(|qkv| LayerPrefix {
                keys: qkv.slice(2, c, 2 * c).unwrap().reshape(&[9, c]).unwrap(),
                values: qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[9, c]).unwrap(),
            })
            .collect();
        for pos in 9..12 {
            let opts = ForwardOptions {
                prefix: Some(&cache),
                position_offset: pos,
                keep_qkv: true,
                ..Default::default()
            };
            let step = model.forward(&ids(&seq[pos..pos + 1]), &opts).unwrap(); // 1 row
            let e = rel_err(&step.logits.to_vec().unwrap(), &full[pos * v..(pos + 1) * v]);
            println!(
                "{}: position {pos}: decoded vs full forward, rel err {e:.2e}",
                spec.describe()
            );
            assert!(e < 1e-4, "{}: position {pos}: rel err {e:e}", spec.describe());
            for (layer, qkv) in cache.iter_mut().zip(&step.qkv) {
                let k = qkv.slice(2, c, 2 * c).unwrap().reshape(&[1, c]).unwrap();
                let val = qkv.slice(2, 2 * c, 3 * c).unwrap().reshape(&[1, c]).unwrap();
                layer.keys = Tensor::concat(&[&layer.keys, &k], 0).unwrap();
                layer.values = Tensor::concat(&[&layer.values, &val], 0).unwrap();
            }
        }
    }
}
