//! QLoRA from the command line, as a user would run it: `finetune --quantize nf4 --double-quant
//! --method lora` writes a PEFT adapter trained on the quantized base, with the engine's own
//! quantized bytes in its summary; `forward --quantize` and `forward` on a directory holding
//! bitsandbytes' Linear4bit state give bitsandbytes' loss and logits; `merge` onto a quantized base
//! dequantizes, merges, says so, and the merged f32 model gives PEFT's loss.

use std::path::Path;

use glassgrad::io::TensorFile;

use crate::cli::{REF, fails_with, forward_json, glassgrad, s};
use crate::finetune::tiny_base;
use crate::gpu::harness::temp_dir;
use crate::lora::rel_err;

const QLORA_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/qlora_ref");

/// Quantized bytes of a 4-bit [out, in] weight with double quantization at blocksize 64: packed
/// codes, one byte per block, 4 per 256 blocks, the 272-entry f32 table and a 4-byte placeholder.
fn nf4_dq_bytes(out: usize, inp: usize) -> u64 {
    let (n, blocks) = (out * inp, (out * inp).div_ceil(64));
    (n.div_ceil(2) + blocks + 4 * blocks.div_ceil(256) + 272 * 4 + 4) as u64
}

#[test]
fn finetune_quantize_nf4_double_quant_lora_writes_a_peft_adapter() {
    let dir = temp_dir("qlora-finetune");
    let base = dir.join("base");
    tiny_base(&base); // 1 layer, C = 16
    let out = dir.join("qlora");
    let mut args = vec!["finetune", "--model", s(&base), "--out", s(&out), "--steps", "3"];
    args.extend(["--batch-size", "4", "--eval-batches", "1", "--json", "--method", "lora"]);
    args.extend(["--quantize", "nf4", "--double-quant"]);
    let (ok, stdout, stderr) = glassgrad(&args);
    assert!(ok, "{args:?}: {stderr}");
    let j: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(j["quantize"], "nf4 (blocksize 64, double quant)");
    let want: u64 =
        [(48, 16), (16, 16), (64, 16), (16, 64)].iter().map(|&(o, i)| nf4_dq_bytes(o, i)).sum();
    assert_eq!(j["memory"]["quantized"].as_u64().unwrap(), want, "the engine's quantized bytes");
    let trainable = j["trainable_params"].as_u64().unwrap();
    assert_eq!(trainable, 512, "r 8 on c_attn (16 → 48)");
    assert_eq!(j["memory"]["optimizer"].as_u64().unwrap(), 8 * trainable, "adapter moments only");
    assert!(j["val_loss"].as_f64().is_some_and(f64::is_finite));
    // PEFT's layout: the adapter loads onto the f32 base, with PEFT's keys and shapes.
    let gpu = crate::gpu::harness::gpu();
    let weights = glassgrad::model::Gpt2Weights::load(&base).unwrap();
    let f32_params = weights.num_params() as u64;
    let all = j["all_params"].as_u64().unwrap();
    assert_eq!(all, f32_params + trainable, "4-bit counted as PEFT counts it, + the adapter");
    let mut model = glassgrad::model::gpt2::Gpt2::from_weights(&gpu, &weights).unwrap();
    let adapter = glassgrad::peft::files::load(&mut model, &out).unwrap();
    assert_eq!(adapter.peft_type(), "LORA");
    let file = TensorFile::read(out.join("adapter_model.safetensors")).unwrap();
    let a = file.get("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight").unwrap();
    assert_eq!(a.shape, [8, 16]);
    let b = file.get("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight").unwrap();
    assert_eq!(b.shape, [48, 8]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["fan_in_fan_out"], false, "PEFT's value on a Linear4bit layer");
    // A method that trains the base is refused with a quantized one.
    let mut bad = args.clone();
    let full_out = dir.join("full");
    bad[4] = s(&full_out);
    let at = bad.iter().position(|a| *a == "lora").unwrap();
    bad[at] = "full";
    fails_with(&bad, &["--quantize", "full"]);
}

#[test]
fn forward_quantize_and_linear4bit_dirs_give_bitsandbytes_loss_and_logits() {
    let dir = temp_dir("qlora-forward");
    let want = TensorFile::read(Path::new(QLORA_REF).join("nf4_dq/expected.safetensors")).unwrap();
    let (_, want_logits) = want.f32("logits").unwrap();
    let model = format!("{REF}/model");
    let bnb_dir = format!("{QLORA_REF}/nf4_dq/model");
    let runs: [(&str, &[&str]); 2] =
        [(&model, &["--quantize", "nf4", "--double-quant"]), (&bnb_dir, &[])];
    for (i, (model, extra)) in runs.iter().enumerate() {
        let out = dir.join(format!("out{i}.safetensors"));
        let (j, file) = forward_json(model, extra, &out);
        assert_eq!(j["quantize"], "nf4 (blocksize 64, double quant)");
        assert!(j["memory"]["quantized"].as_u64().unwrap() > 0);
        let e = rel_err(&file.f32("logits").unwrap().1, &want_logits);
        let loss = j["loss"].as_f64().unwrap();
        println!("forward {extra:?} on {model}: loss {loss}, logits rel err {e:.2e}");
        // The same 2-block f32 forward as tests/gpu/qlora.rs: 1e-4 of max |logit|.
        assert!(e <= 1e-4, "{extra:?}: logits differ from bitsandbytes: {e:.3e}");
        assert!((loss - want.f32("loss").unwrap().1[0] as f64).abs() <= 1e-4 * loss);
        // --grads on a quantized base writes the remaining f32 parameters' gradients only.
        assert!(!file.tensors.contains_key("grad.transformer.h.0.attn.c_attn.weight"));
        assert!(file.tensors.contains_key("grad.transformer.h.0.attn.c_attn.bias"));
    }
    let tokens = format!("{REF}/tokens.safetensors");
    let out = dir.join("bad.safetensors");
    let base = ["forward", "--model", &model, "--tokens", &tokens, "--out", s(&out)];
    fails_with(&[&base[..], &["--double-quant"]].concat(), &["--double-quant", "--quantize"]);
    let bs = [&base[..], &["--quantize", "nf4", "--blocksize", "48"]].concat();
    fails_with(&bs, &["blocksize 48", "powers of two"]);
    let twice = ["forward", "--model", &bnb_dir, "--tokens", &tokens, "--out", s(&out)];
    fails_with(&[&twice[..], &["--quantize", "nf4"]].concat(), &["already holds", "nf4"]);
}

#[test]
fn merge_onto_a_quantized_base_dequantizes_and_gives_pefts_loss() {
    let dir = temp_dir("qlora-merge");
    let merged = dir.join("merged");
    let adapter = format!("{QLORA_REF}/lora_nf4_dq/adapter");
    let bnb_dir = format!("{QLORA_REF}/nf4_dq/model");
    let (ok, stdout, err) =
        glassgrad(&["merge", "--model", &bnb_dir, "--adapter", &adapter, "--out", s(&merged)]);
    assert!(ok, "{err}");
    assert!(stdout.contains("dequantized") && stdout.contains("nf4"), "{stdout}");
    let (j, file) = forward_json(s(&merged), &[], &dir.join("out.safetensors"));
    assert!(j["quantize"].is_null() && j["memory"]["quantized"] == 0, "the merged model is f32");
    let want =
        TensorFile::read(Path::new(QLORA_REF).join("lora_nf4_dq/expected.safetensors")).unwrap();
    let e = rel_err(&file.f32("logits").unwrap().1, &want.f32("logits").unwrap().1);
    println!(
        "merged: loss {} (PEFT {}), logits rel err {e:.2e}",
        j["loss"],
        want.f32("loss").unwrap().1[0]
    );
    // Merging rounds W + ΔW once in f32: still within 1e-4 of max |logit| of PEFT's unmerged.
    assert!(e <= 1e-4, "merged logits differ from PEFT's LoRA on Linear4bit: {e:.3e}");
}
