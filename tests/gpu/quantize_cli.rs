//! `glassgrad quantize --gpt2` on a GPT-2 checkpoint, and `finetune --resume` on a quantized base,
//! run as a user would.
//! - `quantize --gpt2` writes, byte for byte, the state bitsandbytes' `Linear4bit` layers saved
//!   for the same model (tests/data/qlora_ref/nf4_dq/model, made by scripts/make_qlora_reference.py:
//!   the projections transposed to [out, in], the rest f32), from `GPT2LMHeadModel` keys and from
//!   bare `GPT2Model` keys alike; a model directory holding the output loads as a quantized base
//!   and gives the logits of `forward --quantize nf4 --double-quant` on the f32 model.
//! - A QLoRA fine-tune (nf4 + double quant) killed after its first checkpoint and resumed ends
//!   with the same adapter and optimizer state as an uninterrupted run.

use std::path::Path;
use std::process::Command;

use glassgrad::io::TensorFile;

use crate::cli::{REF, fails_with, forward_json, glassgrad, s};
use crate::finetune::tiny_base;
use crate::gpu::harness::temp_dir;

const BNB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/qlora_ref/nf4_dq/model");

#[test]
fn quantize_gpt2_writes_bitsandbytes_state_that_loads_as_a_quantized_base() {
    let dir = temp_dir("quantize-gpt2");
    let want = TensorFile::read(Path::new(BNB_DIR).join("model.safetensors")).unwrap();
    // model_bare: bare GPT2Model keys, plus the causal-mask buffers old checkpoints carry
    // (h.N.attn.bias, h.N.attn.masked_bias), copied as they are (the loader skips them).
    for (i, (model, copied)) in [("model", 20), ("model_bare", 24)].into_iter().enumerate() {
        let input = format!("{REF}/{model}/model.safetensors");
        let out_dir = dir.join(format!("q{i}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::copy(format!("{REF}/model/config.json"), out_dir.join("config.json")).unwrap();
        let output = out_dir.join("model.safetensors");
        let args = ["quantize", "--gpt2", "--format", "nf4", "--double-quant", &input, s(&output)];
        let (ok, stdout, err) = glassgrad(&args);
        assert!(ok, "{model}: {err}");
        // 2 blocks × 4 projections quantized, the other tensors copied.
        let counts = "8 tensors quantized";
        assert!(
            stdout.contains(counts) && stdout.contains(&format!("{copied} copied")),
            "{stdout}"
        );
        let got = TensorFile::read(&output).unwrap();
        let mask = |k: &str| k.ends_with(".attn.bias") || k.ends_with(".attn.masked_bias");
        let keys =
            |f: &TensorFile| f.tensors.keys().filter(|k| !mask(k)).cloned().collect::<Vec<_>>();
        assert_eq!(keys(&got), keys(&want), "{model}: the keys bitsandbytes saved");
        for (key, w) in &want.tensors {
            let g = &got.tensors[key];
            assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{model}: {key}");
            assert!(g.data == w.data, "{model}: {key}: bytes differ from bitsandbytes'");
        }
        // The directory loads as a quantized base (no --quantize), as --quantize on the f32 model.
        let (j, file) = forward_json(s(&out_dir), &[], &dir.join(format!("out{i}.safetensors")));
        assert_eq!(j["quantize"], "nf4 (blocksize 64, double quant)");
        let quantized = &["--quantize", "nf4", "--double-quant"][..];
        let f32_model = format!("{REF}/model");
        let (j_ref, file_ref) = forward_json(&f32_model, quantized, &dir.join("ref.safetensors"));
        assert_eq!(j["memory"]["quantized"], j_ref["memory"]["quantized"], "{model}");
        // The same state, the same kernels, the same order: the same bits.
        assert_eq!(file.f32("logits").unwrap(), file_ref.f32("logits").unwrap(), "{model}");
        assert_eq!(j["loss"], j_ref["loss"], "{model}");
    }
    // A file with no GPT-2 projection is refused by name; the existing interface is unchanged.
    let not_gpt2 = dir.join("not_gpt2.safetensors");
    let t = glassgrad::io::NamedTensor::from_f32(&[2, 64], &[0.5; 128]);
    glassgrad::io::write_safetensors(&not_gpt2, [("w", &t)]).unwrap();
    let out = dir.join("x.safetensors");
    let args = ["quantize", "--gpt2", "--format", "nf4", s(&not_gpt2), s(&out)];
    fails_with(&args, &["--gpt2", "no GPT-2 projection weight"]);
    assert!(!out.exists(), "nothing written");
}

/// `finetune` on the tiny base with QLoRA (nf4 + double quant) and LoRA, a checkpoint every step.
fn qlora(base: &Path, out: &Path, extra: &[&str], fail_at: Option<usize>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassgrad"));
    c.args(["finetune", "--model", s(base), "--out", s(out), "--steps", "3", "--eval-every", "1"]);
    c.args(["--batch-size", "4", "--eval-batches", "1", "--method", "lora"]);
    c.args(["--quantize", "nf4", "--double-quant"]).args(extra);
    c.env_remove("GLASSGRAD_FAIL_AT").env_remove("GLASSGRAD_FAIL_MODE");
    if let Some(k) = fail_at {
        c.env("GLASSGRAD_FAIL_AT", k.to_string());
    }
    c.output().unwrap()
}

#[test]
fn a_resumed_qlora_finetune_ends_where_an_uninterrupted_one_does() {
    let dir = temp_dir("qlora-resume");
    let base = dir.join("base");
    tiny_base(&base);
    let straight = dir.join("straight");
    let o = qlora(&base, &straight, &[], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The write points of one run (count mode); kill at the first point after the first commit:
    // the directory then holds the checkpoint of an early step, short of 3.
    let o = qlora(&base, &dir.join("count"), &[], Some(0));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let points: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("write point ")).collect();
    let commits: Vec<usize> =
        (0..points.len()).filter(|&i| points[i].contains(": commit")).collect();
    assert!(commits.len() >= 2, "a checkpoint per step: {points:?}");
    let interrupted = dir.join("interrupted");
    let o = qlora(&base, &interrupted, &[], Some(commits[0] + 2)); // 1-based, after the commit
    assert!(o.status.code().is_none(), "aborted by the hook");
    let step = glassgrad::train::manifest::open(&interrupted).unwrap().unwrap().step;
    assert!(step < 3, "the kill left an early checkpoint (step {step})");
    let o = qlora(&base, &interrupted, &["--resume"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut compared = 0;
    for e in std::fs::read_dir(&straight).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") {
            let a = std::fs::read(straight.join(&name)).unwrap();
            let b = std::fs::read(interrupted.join(&name)).unwrap();
            assert!(a == b, "{name}: the resumed run (from step {step}) differs");
            compared += 1;
        }
    }
    assert!(straight.join("adapter_model.safetensors").is_file() && compared >= 2, "{compared}");
    println!("QLoRA resumed from step {step}: {compared} safetensors files identical");
}
