//! An f16 frozen base (`--base-dtype f16`): the projection weights held in f16 through
//! `linear_f16`, computed in f32, adapters trained in f32 on top. Checked here: the GPU unpacks
//! exactly the f16 values the host's `half` rounding gives (bit for bit, subnormals included);
//! every kernel variant matches the f64 reference and the composed path at odd shapes, forward and
//! dx, also with the dispatch folded; the op's gradient checks (ops.rs's every-op list); a GPT-2
//! with an f16 base gives the logits of the f32 model whose weights were rounded on the host;
//! LoRA on it trains the adapter only (every adapter tensor a nonzero gradient, the base none, the
//! loss goes down); the converted weights take half the bytes in the memory report; bad weights
//! are refused by name; and the command line (`forward --base-dtype f16`, its refusals).

use std::path::Path;

use glassgrad::cpu::{Array, Rng};
use glassgrad::gpu::fold_dispatches_at;
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::model::quantized::{QuantizeSpec, projection_shapes};
use glassgrad::ops::linear_f16::{LinearF16Kernel, MATVEC_ROWS, WeightF16, cpu as f16_cpu};
use glassgrad::ops::matmul::cpu::matmul_t;
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::peft::{LoraConfig, LoraInit, inject};
use glassgrad::{Category, Tensor};

use crate::cli::{REF, fails_with, forward_json, s};
use crate::gpu::harness::{Case, REDUCTION, Tol, compare, gpu, temp_dir};
use crate::lora::{logits_and_loss, rel_err, tokens};

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().iter().map(|v| *v as f64).collect()
}

/// Fills the pool's free buffers of these shapes' size classes with NaN: an output buffer comes
/// from the pool (last freed, first reused), and one holding the previous kernel's right answer
/// would hide a kernel that leaves part of its output unwritten (found by planting a fold bug).
fn poison_pool(gpu: &std::rc::Rc<glassgrad::Gpu>, shapes: &[&[usize]]) {
    let held: Vec<Tensor> = shapes
        .iter()
        .flat_map(|s| (0..3).map(|_| Tensor::full(gpu, s, f32::NAN).unwrap()))
        .collect();
    drop(held);
}

/// Values f16 rounds in every way: normal, ties, subnormal (|w| < 2⁻¹⁴), ±0, the largest.
fn awkward_values(n: usize, rng: &mut Rng) -> Vec<f32> {
    let special = [0.0, -0.0, 65504.0, -65504.0, 1.0 + 2f32.powi(-11), 3e-6, -5.96e-8, 6.1e-5];
    (0..n)
        .map(|k| match k % 3 {
            0 => special[(k / 3) % special.len()],
            1 => (rng.normal() * 1e-5) as f32, // mostly subnormal in f16
            _ => rng.normal() as f32,
        })
        .collect()
}

/// x = one-hot rows picks single weights: y[r, o] = 1·W[o, i] + Σ 0·…, exact in f32, so y must
/// hold the host's f16 rounding bit for bit (also `dequantize`). A swapped half, a wrong pad or a
/// driver that flushes subnormals fails here.
#[test]
fn the_gpu_unpacks_the_hosts_f16_rounding_bit_for_bit() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    for (inp, out) in [(1, 1), (3, 5), (17, 9), (24, 70)] {
        let w = awkward_values(out * inp, &mut rng);
        let wq = WeightF16::upload(&gpu, "w", &w, [out, inp]).unwrap();
        let want: Vec<f32> = f16_cpu::round(&w).iter().map(|v| *v as f32).collect(); // (out, in)
        assert_eq!(wq.dequantize().unwrap().to_vec().unwrap(), want, "[{out}, {inp}] dequantize");
        for kernel in LinearF16Kernel::available(&gpu) {
            // One-hot rows for inputs i0 .. i0 + rows (the matvecs take 8 rows, or 1, at a time).
            let step = match kernel {
                LinearF16Kernel::Matvec => MATVEC_ROWS,
                LinearF16Kernel::MatvecSubgroup if inp % 8 != 0 => continue,
                LinearF16Kernel::MatvecSubgroup => 1,
                _ => inp,
            };
            for i0 in (0..inp).step_by(step) {
                let rows = step.min(inp - i0);
                let mut x = vec![0.0f32; rows * inp];
                for r in 0..rows {
                    x[r * inp + i0 + r] = 1.0;
                }
                let xt = Tensor::from_f32(&gpu, &x, &[rows, inp]).unwrap();
                poison_pool(&gpu, &[&[rows, out]]);
                let y = xt.linear_f16_with_kernel(&wq, kernel).unwrap().to_vec().unwrap();
                for r in 0..rows {
                    for o in 0..out {
                        let (got, want) = (y[r * out + o], want[o * inp + i0 + r]);
                        assert!(
                            got == want,
                            "{} [{out}, {inp}]: W[{o}, {}] unpacked as {got:e}, host f16 {want:e}",
                            kernel.name(),
                            i0 + r
                        );
                    }
                }
            }
        }
    }
    println!("OK every kernel unpacks the host's f16 bits (subnormals, ±0, ±65504, ties)");
}

/// f32 sums of up to 130 products of values in [-1, 1] in each kernel's order: error ~√K·ε of
/// the largest output (measured ≤ 1e-6 of max|want|); REDUCTION's 1e-4 leaves room. A wrong
/// weight moves an output by ~1/K of the scale, far above it.
const SUM_TOL: Tol = REDUCTION;

/// Every kernel variant, forward y and backward dx, against the f64 reference x·round(W)ᵀ and
/// against the composed path (unpack, then matmul_t) at odd shapes; `fold` lowers the fold point.
fn every_kernel_matches_the_reference(fold: Option<u32>) {
    let gpu = gpu();
    let _fold = fold.map(fold_dispatches_at);
    let mut rng = Rng::new(3);
    let shapes = [
        (1, 1, 1),
        (1, 64, 130),
        (3, 17, 5),
        (8, 65, 130),
        (17, 64, 33),
        (65, 33, 67),
        (130, 9, 3),
    ];
    for (rows, inp, out) in shapes {
        let w = rng.array(&[out, inp], -1.0, 1.0).to_f32();
        let wq = WeightF16::upload(&gpu, "w", &w, [out, inp]).unwrap();
        let w64 = Array::new(&[out, inp], f16_cpu::round(&w));
        let x = rng.array(&[rows, inp], -1.0, 1.0);
        let dy = rng.array(&[rows, out], -1.0, 1.0);
        let want_y = matmul_t(&x, &w64, false, true);
        let want_dx = matmul_t(&dy, &w64, false, false);
        let dyt = Tensor::from_f32(&gpu, &dy.to_f32(), &[rows, out]).unwrap();
        let run = |f: &dyn Fn(&Tensor) -> Tensor| {
            poison_pool(&gpu, &[&[rows, inp], &[rows, out]]);
            let xt = Tensor::parameter(&gpu, &x.to_f32(), &[rows, inp], true).unwrap();
            let y = f(&xt);
            y.backward_with(&dyt).unwrap();
            (f64s(&y), f64s(&xt.grad().unwrap()))
        };
        let (composed_y, composed_dx) = run(&|x| x.linear_f16_composed(&wq).unwrap());
        for kernel in LinearF16Kernel::available(&gpu) {
            let takes = match kernel {
                LinearF16Kernel::Matvec => rows <= MATVEC_ROWS,
                LinearF16Kernel::MatvecSubgroup => rows == 1 && inp % 8 == 0,
                _ => true,
            };
            if !takes {
                continue;
            }
            let (y, dx) = run(&|x| x.linear_f16_with_kernel(&wq, kernel).unwrap());
            let label =
                format!("{} ({rows}, {inp}) · [{out}, {inp}]ᵀ fold {fold:?}", kernel.name());
            let ey = compare(&format!("{label} y"), &y, &want_y.data, SUM_TOL).unwrap();
            let edx = compare(&format!("{label} dx"), &dx, &want_dx.data, SUM_TOL).unwrap();
            compare(&format!("{label} y vs composed"), &y, &composed_y, SUM_TOL).unwrap();
            compare(&format!("{label} dx vs composed"), &dx, &composed_dx, SUM_TOL).unwrap();
            println!("{label}: OK (max diff y {ey:.2e}, dx {edx:.2e})");
        }
    }
}

#[test]
fn every_kernel_matches_the_f64_reference_at_odd_shapes() {
    every_kernel_matches_the_reference(None);
}

/// Fold at 1: a kernel ignoring wid.y repeats group 0; at 2: one dropping wid.x repeats every
/// other group (as tests/gpu/fold.rs explains).
#[test]
fn every_kernel_is_right_when_its_dispatch_folds() {
    for fold in [1, 2] {
        every_kernel_matches_the_reference(Some(fold));
    }
}

/// Gradient checks of `linear_f16` (for ops.rs's every-op list): x only, W is frozen. 17 rows
/// take the training kernel forward, 1 and 3 the matvec, (1, 16) the subgroup matvec.
pub fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for (rows, inp, out) in [(1, 1, 1), (1, 16, 9), (3, 17, 5), (17, 65, 3)] {
        let w = rng.array(&[out, inp], -1.0, 1.0).to_f32();
        let w64 = Array::new(&[out, inp], f16_cpu::round(&w));
        let w64b = w64.clone();
        cases.push(
            Case::new(
                "linear_f16",
                vec![rng.array(&[rows, inp], -1.0, 1.0)],
                Box::new(move |t| {
                    t[0].linear_f16(&WeightF16::upload(t[0].gpu(), "w", &w, [out, inp])?)
                }),
                Box::new(move |x| matmul_t(&x[0], &w64, false, true)),
                Box::new(move |_x, d| vec![matmul_t(d, &w64b, false, false)]),
            )
            .tol(SUM_TOL),
        );
    }
    cases
}

fn reference_weights() -> Gpt2Weights {
    Gpt2Weights::load(Path::new(REF).join("model")).unwrap()
}

/// The reference GPT-2 with its four projection weights per block rounded to f16 on the host
/// (the f32 model an f16 base must reproduce).
fn host_rounded() -> Gpt2 {
    let mut weights = reference_weights();
    let n_layer = weights.config.n_layer;
    for (module, _) in projection_shapes(&weights.config) {
        let w = weights.params.get_mut(&format!("{module}.weight")).unwrap();
        w.data = f16_cpu::round(&w.data).iter().map(|v| *v as f32).collect();
    }
    assert_eq!(projection_shapes(&weights.config).len(), 4 * n_layer);
    Gpt2::from_weights(&gpu(), &weights).unwrap()
}

fn f16_base() -> Gpt2 {
    let mut model = Gpt2::from_weights(&gpu(), &reference_weights()).unwrap();
    model.base_to_f16().unwrap();
    model
}

/// The same weights (f16 values), f32 sums in other orders through 2 blocks: a few ulps of the
/// largest logit; 1e-5 of max |want| catches any wrong weight (one f16 ulp off in one weight
/// moves logits by ~1e-4 of their scale here).
#[test]
fn an_f16_base_gives_the_logits_of_the_host_rounded_f32_model() {
    let (want, want_loss) = logits_and_loss(&host_rounded());
    let model = f16_base();
    assert_eq!(model.quantization(), Some(QuantizeSpec::F16));
    assert_eq!(model.quantized_layers().len(), 4 * model.config.n_layer);
    let (got, loss) = logits_and_loss(&model);
    let e = rel_err(&got, &want);
    let (f32_logits, f32_loss) =
        logits_and_loss(&Gpt2::from_weights(&gpu(), &reference_weights()).unwrap());
    let rounding = rel_err(&want, &f32_logits);
    println!(
        "f16 base: logits rel err {e:.2e} vs the host-rounded model (f16 rounding itself \
              moves them by {rounding:.2e}); loss {loss} vs {want_loss} (f32 base {f32_loss})"
    );
    assert!(e <= 1e-5, "logits differ from the host-rounded f32 model: {e:.3e}");
    assert!(((loss - want_loss) / want_loss).abs() <= 1e-5);
}

/// LoRA (B ≠ 0: random init) on an f16 base: every adapter tensor gets a nonzero gradient,
/// nothing else one, the optimizer holds moments for the adapter alone, a step lowers the loss;
/// the converted weights take exactly half their f32 bytes, and the f32 copies are released.
#[test]
fn lora_on_an_f16_base_trains_the_adapter_only_and_the_base_takes_half_the_bytes() {
    let gpu = gpu();
    let mut model = Gpt2::from_weights(&gpu, &reference_weights()).unwrap();
    let (q0, p0) =
        (gpu.memory().live(Category::Quantized), gpu.memory().live(Category::Parameters));
    model.base_to_f16().unwrap();
    let config = model.config.clone();
    let (c, h) = (config.n_embd, config.mlp_hidden());
    let n = (config.n_layer * (3 * c * c + c * c + 2 * h * c)) as u64;
    let f16_bytes = gpu.memory().live(Category::Quantized) - q0;
    let freed = p0 - gpu.memory().live(Category::Parameters);
    assert_eq!(freed, 4 * n, "the f32 projection weights are released");
    assert_eq!(f16_bytes, 2 * n, "half of {} f32 bytes (C = {c}: rows of whole 8s)", 4 * n);
    println!("f16 base: {f16_bytes} bytes for {n} weights (f32: {freed})");
    assert_eq!(model.num_parameters(), reference_weights().num_params(), "PEFT counts f16 as n");

    let lora_config = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: vec!["c_attn".into(), "c_fc".into(), "c_proj".into()],
        init_lora_weights: LoraInit::Random,
        ..LoraConfig::default()
    };
    let lora = inject(&mut model, &lora_config, 42).unwrap();
    let params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    let before = gpu.memory().live(Category::Optimizer);
    let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
    let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
    let moments = gpu.memory().live(Category::Optimizer) - before;
    assert_eq!(moments, (8 * model.num_trainable_parameters()) as u64, "moments for the adapter");
    let (ids, targets) = tokens();
    let mut losses = vec![];
    for step in 0..2 {
        opt.zero_grad();
        let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
        let loss = Gpt2::loss(&out.logits, &targets).unwrap();
        loss.backward().unwrap();
        losses.push(loss.item().unwrap());
        if step == 0 {
            for (name, t) in model.named_parameters() {
                let is_adapter = name.contains(".lora_");
                match t.grad() {
                    Some(g) => {
                        assert!(is_adapter, "frozen {name} got a gradient");
                        let g = g.to_vec().unwrap();
                        assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient");
                    }
                    None => assert!(!is_adapter, "{name} got no gradient"),
                }
            }
        }
        opt.step().unwrap();
    }
    assert_eq!(lora.named_parameters(&model).len(), 2 * 4 * config.n_layer);
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    for (name, _) in model.quantized_layers() {
        assert!(!names.contains(&name), "{name} is a frozen buffer, not a parameter");
    }
    println!("LoRA on the f16 base: loss {} -> {} after one AdamW step", losses[0], losses[1]);
    assert!(losses[1] < losses[0], "one step did not lower the loss: {losses:?}");
}

#[test]
fn weights_f16_cannot_hold_are_refused_by_name() {
    let gpu = gpu();
    let name = "transformer.h.1.mlp.c_fc.weight";
    for (bad, what) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (70000.0, "70000")] {
        let mut weights = reference_weights();
        weights.params.get_mut(name).unwrap().data[5] = bad;
        let mut model = Gpt2::from_weights(&gpu, &weights).unwrap();
        let e = model.base_to_f16().unwrap_err().to_string();
        for part in [name, what, "65504"] {
            assert!(e.contains(part), "{what}: '{e}' lacks '{part}'");
        }
        assert!(model.quantized_layers().is_empty(), "a failed base_to_f16 changes nothing");
        println!("{what}: {e}");
    }
}

/// `forward --base-dtype f16` gives the host-rounded model's loss and logits, reports the f16
/// bytes, and writes no gradient for the frozen weights; with --quantize it is refused.
#[test]
fn forward_base_dtype_f16_from_the_command_line() {
    let dir = temp_dir("base-f16-forward");
    let model = format!("{REF}/model");
    let (j, file) = forward_json(&model, &["--base-dtype", "f16"], &dir.join("out.safetensors"));
    assert_eq!(j["quantize"], "f16");
    let c = 3 * 24 * 24 + 24 * 24 + 2 * 96 * 24; // weights per block, C = 24
    assert_eq!(j["memory"]["quantized"].as_u64().unwrap(), (2 * 2 * c) as u64, "2 B/weight");
    let (want, want_loss) = logits_and_loss(&host_rounded());
    let e = rel_err(&file.f32("logits").unwrap().1, &want);
    let loss = j["loss"].as_f64().unwrap();
    println!("forward --base-dtype f16: loss {loss} (host-rounded {want_loss}), logits {e:.2e}");
    assert!(e <= 1e-5, "logits differ from the host-rounded model: {e:.3e}");
    assert!((loss - want_loss as f64).abs() <= 1e-5 * loss.abs());
    assert!(!file.tensors.contains_key("grad.transformer.h.0.attn.c_attn.weight"));
    assert!(file.tensors.contains_key("grad.transformer.h.0.attn.c_attn.bias"));
    let tokens = format!("{REF}/tokens.safetensors");
    let out = dir.join("bad.safetensors");
    let base = ["forward", "--model", &model, "--tokens", &tokens, "--out", s(&out)];
    let both = [&base[..], &["--base-dtype", "f16", "--quantize", "nf4"]].concat();
    fails_with(&both, &["--base-dtype f16", "--quantize", "nf4"]);
    fails_with(&[&base[..], &["--base-dtype", "bf16"]].concat(), &["bf16"]);
}

/// `finetune --base-dtype f16 --method lora` writes a PEFT adapter without the base (only lora_A
/// and lora_B; fan_in_fan_out true: transformers keeps an f16 GPT-2's Conv1D), its summary counts
/// the f16 bytes; `merge --base-dtype f16` rounds the base as the fine-tune did, says so, and its
/// f32 model gives the logits of the adapter on the f16 base; `generate --base-dtype f16` runs
/// with the adapter; `--method full` is refused.
#[test]
fn finetune_and_merge_on_an_f16_base_from_the_command_line() {
    let dir = temp_dir("base-f16-finetune");
    let base = dir.join("base");
    crate::finetune::tiny_base(&base); // 1 layer, C = 16
    let out = dir.join("lora");
    let mut args = vec!["finetune", "--model", s(&base), "--out", s(&out), "--steps", "3"];
    args.extend(["--batch-size", "4", "--eval-batches", "1", "--json", "--method", "lora"]);
    args.extend(["--base-dtype", "f16"]);
    let (ok, stdout, stderr) = crate::cli::glassgrad(&args);
    assert!(ok, "{args:?}: {stderr}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["quantize"], "f16");
    let weights = (3 * 16 * 16 + 16 * 16 + 2 * 64 * 16) as u64;
    assert_eq!(j["memory"]["quantized"].as_u64().unwrap(), 2 * weights, "2 bytes per weight");
    let file = glassgrad::io::TensorFile::read(out.join("adapter_model.safetensors")).unwrap();
    for key in file.tensors.keys() {
        assert!(key.contains(".lora_A.") || key.contains(".lora_B."), "the adapter holds {key}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["fan_in_fan_out"], true, "PEFT's value on an f16 Conv1D");
    let merged = dir.join("merged");
    let merge = ["merge", "--model", s(&base), "--adapter", s(&out), "--out", s(&merged)];
    let (ok, stdout, err) = crate::cli::glassgrad(&[&merge[..], &["--base-dtype", "f16"]].concat());
    assert!(ok, "{err}");
    assert!(stdout.contains("f16") && stdout.contains("wrote the merged model in f32"), "{stdout}");
    // The merged f32 model against the adapter on the f16 base, on the same tokens.
    let tokens = dir.join("tokens.safetensors");
    let ids: Vec<i64> = (0..2 * 8).map(|k| (k * 7 % 60) as i64).collect();
    let t = glassgrad::io::NamedTensor::from_i64(&[2, 8], &ids);
    glassgrad::io::write_safetensors(&tokens, [("input_ids", &t)]).unwrap();
    let forward = |model: &Path, extra: &[&str], name: &str| {
        let o = dir.join(name);
        let mut a = vec!["forward", "--model", s(model), "--tokens", s(&tokens), "--out", s(&o)];
        a.extend(extra);
        let (ok, _, err) = crate::cli::glassgrad(&a);
        assert!(ok, "{a:?}: {err}");
        glassgrad::io::TensorFile::read(&o).unwrap().f32("logits").unwrap().1
    };
    let unmerged = forward(&base, &["--base-dtype", "f16", "--adapter", s(&out)], "a.safetensors");
    let e = rel_err(&forward(&merged, &[], "m.safetensors"), &unmerged);
    println!("merged onto the f16 base: logits rel err {e:.2e} vs the unmerged adapter");
    // W16 + ΔW rounded once in f32 instead of two products summed: 1e-4 of max |logit|.
    assert!(e <= 1e-4, "merged logits differ from the adapter on the f16 base: {e:.3e}");
    // generate on the f16 base with the adapter: runs, and continues the prompt.
    let mut sample =
        vec!["generate", "--model", s(&base), "--adapter", s(&out), "--prompt", "ROMEO:"];
    sample.extend(["--max-new-tokens", "8", "--temperature", "0", "--base-dtype", "f16"]);
    let (ok, text, err) = crate::cli::glassgrad(&sample);
    assert!(ok && text.starts_with("ROMEO:") && text.trim_end().chars().count() > 6, "{err}");
    let full_out = dir.join("full");
    let full = [&args[..4], &[s(&full_out), "--method", "full", "--base-dtype", "f16"]];
    fails_with(&full.concat(), &["--base-dtype f16", "full"]);
}

/// The memory report at GPT-2 small's shapes (C = 768, one block of its 12; a small vocabulary):
/// the four projections' f16 bytes are exactly half their f32 bytes, and the f32 copies are gone.
#[test]
fn at_gpt2_small_shapes_the_base_takes_half_its_f32_bytes() {
    let gpu = gpu();
    let config = glassgrad::model::Gpt2Config::new(97, 32, 768, 1, 12);
    let mut model = Gpt2::new_random(&gpu, config, 1).unwrap();
    let (q0, p0) =
        (gpu.memory().live(Category::Quantized), gpu.memory().live(Category::Parameters));
    model.base_to_f16().unwrap();
    let weights = (3 * 768 * 768 + 768 * 768 + 2 * 3072 * 768) as u64; // one block
    let f16_bytes = gpu.memory().live(Category::Quantized) - q0;
    let freed = p0 - gpu.memory().live(Category::Parameters);
    assert_eq!((f16_bytes, freed), (2 * weights, 4 * weights));
    println!(
        "GPT-2 small shapes: a block's projections take {f16_bytes} bytes in f16 ({freed} in f32); \
         12 blocks: {} instead of {}",
        12 * f16_bytes,
        12 * freed
    );
}
