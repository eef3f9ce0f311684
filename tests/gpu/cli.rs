//! The command line, run as a user would: `forward` reproduces transformers' loss and writes every
//! gradient; bad input (corrupt or truncated safetensors, a config that disagrees with the
//! tensors, a token id ≥ vocab_size, a sequence longer than n_positions, an empty dataset) gives
//! a clear message and a non-zero exit, never a panic.

use std::path::Path;
use std::process::Command;

use glassgrad::io::{TensorFile, TokenFile};

use crate::gpu::harness::temp_dir;

pub const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// Runs `glassgrad args…`; returns (success, stdout, stderr).
pub fn glassgrad(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glassgrad")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Asserts a clean failure whose message contains every one of `expect`.
pub fn fails_with(args: &[&str], expect: &[&str]) {
    let (ok, _, err) = glassgrad(args);
    assert!(!ok, "{args:?} should fail");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{args:?} panicked:\n{err}"
    );
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: message lacks {e:?}:\n{err}");
    }
}

pub fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(REF).join("model").join(f), to.join(f)).unwrap();
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `glassgrad forward --grads --json` on the reference tokens with `extra` options, writing to
/// `out`: (the last-line JSON summary, the written file). Fails the test if the command fails.
pub fn forward_json(model: &str, extra: &[&str], out: &Path) -> (serde_json::Value, TensorFile) {
    let tokens = format!("{REF}/tokens.safetensors");
    let mut args = vec!["forward", "--model", model, "--tokens", &tokens, "--out", s(out)];
    args.extend(["--grads", "--json"]);
    args.extend(extra);
    let (ok, stdout, stderr) = glassgrad(&args);
    assert!(ok, "{args:?}: {stderr}");
    let summary = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (summary, TensorFile::read(out).unwrap())
}

#[test]
fn forward_writes_logits_loss_and_every_gradient_matching_transformers() {
    let dir = temp_dir("cli-forward");
    let (summary, written) =
        forward_json(&format!("{REF}/model"), &[], &dir.join("out.safetensors"));
    let expected = TensorFile::read(format!("{REF}/expected.safetensors")).unwrap();
    let want = expected.f32("loss").unwrap().1[0] as f64;
    let got = summary["loss"].as_f64().unwrap();
    assert!(((got - want) / want).abs() < 1e-5, "loss {got} vs transformers {want}");
    assert!(
        summary["peak_bytes"].as_u64().unwrap() > 0
            && summary["memory"]["gradients"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(summary["trainable_params"], summary["all_params"]);
    for name in expected.tensors.keys() {
        assert!(written.tensors.contains_key(name), "output lacks {name}");
    }
}

#[test]
fn bad_input_gives_a_clear_error_and_a_nonzero_exit() {
    let dir = temp_dir("cli-bad");
    let tokens = format!("{REF}/tokens.safetensors");
    let out = dir.join("out.safetensors");

    // A truncated safetensors file.
    let truncated = dir.join("truncated");
    copy_model(&truncated);
    let bytes = std::fs::read(truncated.join("model.safetensors")).unwrap();
    std::fs::write(truncated.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["forward", "--model", s(&truncated), "--tokens", &tokens, "--out", s(&out)],
        &["model.safetensors"],
    );

    // A corrupt header.
    let corrupt = dir.join("corrupt");
    copy_model(&corrupt);
    let mut bytes = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    bytes[8..24].copy_from_slice(b"not json at all!");
    std::fs::write(corrupt.join("model.safetensors"), &bytes).unwrap();
    fails_with(
        &["forward", "--model", s(&corrupt), "--tokens", &tokens, "--out", s(&out)],
        &["model.safetensors"],
    );

    // A config that disagrees with the tensor shapes.
    let mismatch = dir.join("mismatch");
    copy_model(&mismatch);
    let config = std::fs::read_to_string(mismatch.join("config.json"))
        .unwrap()
        .replace("\"n_embd\": 24", "\"n_embd\": 48");
    assert!(config.contains("\"n_embd\": 48"), "the reference config spells n_embd as expected");
    std::fs::write(mismatch.join("config.json"), config).unwrap();
    fails_with(
        &["forward", "--model", s(&mismatch), "--tokens", &tokens, "--out", s(&out)],
        &["shape"],
    );

    // A token id ≥ vocab_size (97), and a sequence longer than n_positions (32).
    let model = format!("{REF}/model");
    let big_id = dir.join("big_id.safetensors");
    TokenFile { batch: 1, seq_len: 3, input_ids: vec![1, 200, 3], labels: vec![1, 200, 3] }
        .write(&big_id)
        .unwrap();
    fails_with(
        &["forward", "--model", &model, "--tokens", s(&big_id), "--out", s(&out)],
        &["200", "97"],
    );
    let long = dir.join("long.safetensors");
    TokenFile { batch: 1, seq_len: 40, input_ids: vec![1; 40], labels: vec![1; 40] }
        .write(&long)
        .unwrap();
    fails_with(
        &["forward", "--model", &model, "--tokens", s(&long), "--out", s(&out)],
        &["40", "n_positions"],
    );
    assert!(!out.exists(), "nothing was written by the failed runs");

    // An empty dataset.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(&["train", "--data", s(&empty), "--out", s(&dir.join("run"))], &["empty"]);
    // A missing model directory.
    fails_with(&["generate", "--model", s(&dir.join("nowhere"))], &["nowhere"]);
}

#[test]
fn train_then_generate_as_a_user_would() {
    let dir = temp_dir("cli-train");
    let out = dir.join("run");
    let args = [
        "train",
        "--steps",
        "3",
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--n-head",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--eval-every",
        "3",
        "--eval-batches",
        "1",
        "--out",
        s(&out),
        "--json",
    ];
    let (ok, stdout, stderr) = glassgrad(&args);
    assert!(ok, "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["steps", "train_loss", "val_loss", "tokens_per_s", "seconds", "out"] {
        assert!(summary.get(key).is_some(), "--json lacks {key}: {summary}");
    }
    assert_eq!(summary["steps"], 3);
    // Full training: parameters, their gradients, AdamW's two moments and activations all held.
    let mem = &summary["memory"];
    for cat in ["parameters", "gradients", "optimizer", "activations"] {
        assert!(mem[cat].as_u64().unwrap() > 0, "--json memory lacks {cat}: {summary}");
    }
    assert!(mem["optimizer"].as_u64() >= mem["parameters"].as_u64(), "{summary}"); // m and v
    assert!(summary["peak_bytes"].as_u64() >= mem["parameters"].as_u64(), "{summary}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
        "train_log.jsonl",
        "loss.svg",
    ] {
        assert!(out.join(f).exists(), "the checkpoint lacks {f}");
    }
    let (ok, stdout, stderr) = glassgrad(&[
        "generate",
        "--model",
        s(&out),
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "20",
        "--seed",
        "3",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("ROMEO:") && stdout.trim_end().chars().count() >= "ROMEO:".len() + 10,
        "{stdout:?}"
    );
    // A character outside the model's vocabulary is an error that names it.
    fails_with(&["generate", "--model", s(&out), "--prompt", "Ω"], &["Ω"]);
}

#[test]
fn bench_json_is_one_object_per_line_with_adapter_and_rate() {
    let (ok, stdout, stderr) = glassgrad(&["bench", "matmul", "--size", "16", "--json"]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows.len() >= 3, "every matmul variant and the backward layouts: {stdout}");
    for r in &rows {
        assert!(
            r["kernel"].as_str().unwrap().starts_with("matmul")
                && r["shape"].as_str().unwrap().starts_with("16x16x16"),
            "{r}"
        );
        assert!(
            r["ms"].as_f64().unwrap() > 0.0
                && r["gflops"].as_f64().unwrap() > 0.0
                && !r["adapter"].as_str().unwrap().is_empty(),
            "{r}"
        );
    }
}

/// finetune-step: a full and a LoRA row per model, each with tokens/s, dispatches and the
/// engine's byte counts; LoRA's gradients and moments are the adapter's alone (r = 8 on c_attn:
/// A (8, C) + B (3C, 8) per layer), the full step's every parameter's.
#[test]
fn bench_finetune_step_rows_carry_method_speed_and_the_adapters_bytes() {
    let (ok, stdout, stderr) = glassgrad(&["bench", "finetune-step", "--size", "1", "--json"]);
    assert!(ok, "{stderr}");
    let rows: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["full", "lora", "full", "lora"]);
    for (pair, (layers, c)) in rows.chunks(2).zip([(2u64, 64u64), (4, 128)]) {
        let adapter = layers * (8 * c + 3 * c * 8) * 4; // bytes of A and B over the layers
        assert_eq!(pair[1]["gradient_bytes"], adapter, "{}", pair[1]);
        assert_eq!(pair[1]["optimizer_bytes"], 2 * adapter, "{}", pair[1]);
        let full = pair[0]["gradient_bytes"].as_u64().unwrap();
        assert_eq!(pair[0]["optimizer_bytes"].as_u64().unwrap(), 2 * full);
        assert!(full > 20 * adapter, "{}", pair[0]);
        for r in pair {
            assert!(
                r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["dispatches"].as_u64().unwrap() > 0
            );
        }
    }
}

/// `forward --grads --checkpointing [K]` writes the same loss and every gradient as without it
/// (the recompute runs the same kernels on the same values), and with K = 1 on the 2-layer model
/// reports less activation memory (K = 2 is one segment, the last, which runs plainly).
#[test]
fn forward_with_checkpointing_writes_the_same_gradients() {
    let dir = temp_dir("cli-forward-checkpointing");
    let model = format!("{REF}/model");
    let tokens = format!("{REF}/tokens.safetensors");
    let mut runs = vec![];
    for extra in [&[][..], &["--checkpointing"], &["--checkpointing", "2"]] {
        let out = dir.join(format!("out{}.safetensors", runs.len()));
        runs.push(forward_json(&model, extra, &out));
    }
    let (plain_summary, plain) = &runs[0];
    for (i, (summary, file)) in runs.iter().enumerate().skip(1) {
        assert_eq!(plain.tensors.len(), file.tensors.len());
        for name in plain.tensors.keys() {
            assert_eq!(plain.f32(name).unwrap(), file.f32(name).unwrap(), "{name} differs");
        }
        let act = |s: &serde_json::Value| s["memory"]["activations"].as_u64().unwrap();
        match i {
            1 => assert!(act(summary) < act(plain_summary), "{summary} vs {plain_summary}"),
            _ => assert_eq!(act(summary), act(plain_summary), "{summary} vs {plain_summary}"),
        }
    }
    fails_with(
        &["forward", "--model", &model, "--tokens", &tokens, "--out", "x", "--checkpointing", "0"],
        &["--checkpointing"],
    );
    // Alone before another option, it means K = 1 and leaves the option alone.
    let out = dir.join("first.safetensors");
    let args = ["forward", "--checkpointing", "--model", &model, "--tokens", &tokens, "--grads"];
    let (ok, _, stderr) = glassgrad(&[&args[..], &["--out", s(&out)]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(TensorFile::read(&out).unwrap().f32("loss").unwrap(), plain.f32("loss").unwrap());
}

/// `forward --adapter … --grads --checkpointing K` on every kind of adapter file PEFT writes
/// (LoRA, DoRA, VeRA, IA3, prefix tuning with and without the projection, prompt tuning) and on
/// two named adapters mixed per row: the frozen base means nothing entering a segment requires
/// grad, and still every tensor of the file (logits, loss, each adapter gradient) is the one
/// written without checkpointing, to 1e-6 of its largest entry.
#[test]
fn forward_with_checkpointing_writes_each_adapters_gradients_unchanged() {
    let dir = temp_dir("cli-forward-adapter-checkpointing");
    let model = format!("{REF}/model");
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let cases = [
        "lora_ref/lora",
        "lora_ref/dora",
        "vera_ref/vera",
        "ia3_ref/ia3",
        "prefix_ref/prefix",
        "prefix_ref/prefix_projection",
        "prompt_ref/prompt",
    ];
    let mut runs: Vec<(String, Vec<String>)> = cases
        .iter()
        .map(|c| (c.to_string(), vec!["--adapter".into(), format!("{data}/{c}/adapter")]))
        .collect();
    let (a, b) = (format!("{data}/combine_ref/a"), format!("{data}/combine_ref/b"));
    let mixed = ["--adapter", &a, "--adapter-name", "a", "--adapter", &b, "--adapter-name", "b"];
    let mut mixed: Vec<String> = mixed.iter().map(|x| x.to_string()).collect();
    mixed.extend(["--adapter-per-row".into(), "b,a".into()]);
    runs.push(("per-row a,b".into(), mixed));
    for (case, adapter) in &runs {
        let mut extra: Vec<&str> = adapter.iter().map(String::as_str).collect();
        let (_, plain) = forward_json(&model, &extra, &dir.join("plain.safetensors"));
        extra.extend(["--checkpointing", "1"]);
        let (_, ckpt) = forward_json(&model, &extra, &dir.join("ckpt.safetensors"));
        let names: Vec<&String> = plain.tensors.keys().collect();
        assert_eq!(names, ckpt.tensors.keys().collect::<Vec<_>>(), "{case}");
        assert!(names.iter().filter(|n| n.starts_with("grad.")).count() > 0, "{case}: no grads");
        for name in names {
            let (want, got) = (plain.f32(name).unwrap().1, ckpt.f32(name).unwrap().1);
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "{case}: {name} is all zeros");
            let d = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-6 * scale, "{case}: {name} differs by {d} (scale {scale})");
        }
        println!("{case}: every tensor the same with --checkpointing 1");
    }
}

/// `forward --no-logits`: no logits written, the loss and every gradient from the fused head +
/// loss equal to the unfused run's (f32 rounding: the fused head sums over vocabulary chunks),
/// and a smaller activation peak.
#[test]
fn forward_without_logits_takes_the_fused_head_and_writes_the_same_loss_and_gradients() {
    let dir = temp_dir("cli-forward-no-logits");
    let model = format!("{REF}/model");
    let (plain_summary, plain) = forward_json(&model, &[], &dir.join("a.safetensors"));
    let (summary, fused) = forward_json(&model, &["--no-logits"], &dir.join("b.safetensors"));
    assert!(!fused.tensors.contains_key("logits") && plain.tensors.contains_key("logits"));
    assert_eq!(fused.tensors.len() + 1, plain.tensors.len());
    let (want, got) = (plain_summary["loss"].as_f64().unwrap(), summary["loss"].as_f64().unwrap());
    assert!(((got - want) / want).abs() < 1e-5, "loss {got} vs {want}");
    for name in fused.tensors.keys() {
        let (g, w) = (fused.f32(name).unwrap().1, plain.f32(name).unwrap().1);
        let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let worst = g.iter().zip(&w).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        // Through the model in f32, summed in another order: ~1e-7 of the largest entry.
        assert!(worst <= 1e-7 + 1e-4 * scale, "{name}: differs by {worst} (largest {scale})");
    }
    let act = |s: &serde_json::Value| s["memory"]["activations"].as_u64().unwrap();
    assert!(act(&summary) < act(&plain_summary), "{summary} vs {plain_summary}");
}

/// `forward --adapter DIR --grads` on a PEFT LoRA adapter (tests/data/lora_ref, written by PEFT):
/// PEFT's logits and loss, and exactly the adapter's gradients under their adapter-file keys.
#[test]
fn forward_with_a_peft_adapter_matches_peft_and_writes_only_adapter_gradients() {
    forward_adapter_matches_peft("lora_ref/lora");
}

/// The same through `files::load` for every other method PEFT has: IA3, VeRA (with its saved
/// projections), prompt tuning (the real tokens' logits only), prefix tuning (positions from Vt).
#[test]
fn forward_with_every_methods_peft_adapter_matches_peft() {
    for case in ["ia3_ref/ia3", "vera_ref/vera", "prompt_ref/prompt", "prefix_ref/prefix"] {
        forward_adapter_matches_peft(case);
    }
}

/// `forward --adapter tests/data/<case>/adapter --grads` against `<case>/expected.safetensors`.
fn forward_adapter_matches_peft(case: &str) {
    let dir = temp_dir("cli-forward-adapter");
    let lora = format!("{}/tests/data/{case}", env!("CARGO_MANIFEST_DIR"));
    let adapter = format!("{lora}/adapter");
    let (summary, written) = forward_json(
        &format!("{REF}/model"),
        &["--adapter", &adapter],
        &dir.join("out.safetensors"),
    );
    assert!(summary["trainable_params"].as_u64() < summary["all_params"].as_u64(), "{summary}");
    let expected = TensorFile::read(format!("{lora}/expected.safetensors")).unwrap();
    let grads: Vec<&String> = written.tensors.keys().filter(|k| k.starts_with("grad.")).collect();
    let want: Vec<&String> = expected.tensors.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(grads, want, "exactly the adapter's gradients, under PEFT's keys");
    let counts = expected.get("trainable_params").unwrap().to_i64("trainable_params").unwrap();
    assert_eq!(summary["trainable_params"].as_i64(), Some(counts[0]), "PEFT's trainable count");
    assert_eq!(summary["all_params"].as_i64(), Some(counts[1]), "PEFT's total count");
    for name in expected.tensors.keys().filter(|k| *k != "trainable_params") {
        let (got, want) = (written.f32(name).unwrap().1, expected.f32(name).unwrap().1);
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // f32 against PEFT's f32 on another summation order: measured ≤ 1.1e-5 of the scale.
        assert!(d <= 1e-4 * scale, "{case} {name}: max diff {d} (scale {scale})");
    }
}

/// `merge` folds a PEFT adapter into the base: the merged directory is a plain GPT-2 (the base's
/// keys, nothing more) whose logits are PEFT's adapter logits; a model in --out is not replaced
/// without --overwrite.
#[test]
fn merge_writes_a_plain_model_with_the_adapters_logits() {
    let dir = temp_dir("cli-merge");
    let (model, tokens) = (format!("{REF}/model"), format!("{REF}/tokens.safetensors"));
    // LoRA, and the other methods that fold into the weights (IA3, VeRA).
    for case in ["lora_ref/lora", "lora_ref/bias_all", "ia3_ref/ia3", "vera_ref/vera"] {
        let lora = format!("{}/tests/data/{case}", env!("CARGO_MANIFEST_DIR"));
        let merged = dir.join(case.replace('/', "-"));
        let merge = |extra: &[&str]| {
            let adapter = format!("{lora}/adapter");
            let mut args = vec!["merge", "--model", &model, "--adapter", &adapter];
            args.extend(["--out", s(&merged)]);
            args.extend(extra);
            glassgrad(&args)
        };
        let (ok, _, stderr) = merge(&[]);
        assert!(ok, "{case}: {stderr}");
        let base = TensorFile::read(format!("{model}/model.safetensors")).unwrap();
        let file = TensorFile::read(merged.join("model.safetensors")).unwrap();
        let keys = |f: &TensorFile| f.tensors.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&file), keys(&base), "{case}: the base's keys and no adapter keys");
        let out = dir.join(format!("{}.safetensors", case.replace('/', "-")));
        let (ok, _, stderr) =
            glassgrad(&["forward", "--model", s(&merged), "--tokens", &tokens, "--out", s(&out)]);
        assert!(ok, "{case}: {stderr}");
        let got = TensorFile::read(&out).unwrap().f32("logits").unwrap().1;
        let want = TensorFile::read(format!("{lora}/expected.safetensors")).unwrap();
        let want = want.f32("logits").unwrap().1;
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        // The merged f32 weight rounds W + ΔW once: measured ~3e-6 of the logit scale.
        assert!(d <= 1e-4 * scale, "{case}: merged logits differ from PEFT's by {d}");
        let (ok, _, stderr) = merge(&[]);
        assert!(!ok && stderr.contains("--overwrite"), "{case}: {stderr}");
        assert!(merge(&["--overwrite"]).0, "{case}: --overwrite replaces it");
    }
    // Prompt tuning changes the input, not a weight: refused by name, nothing written.
    let prompt = format!("{}/tests/data/prompt_ref/prompt/adapter", env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("prompt");
    let args = ["merge", "--model", &model, "--adapter", &prompt, "--out", s(&out)];
    fails_with(&args, &["PROMPT_TUNING", "cannot be merged"]);
    assert!(!out.join("model.safetensors").exists(), "nothing written");
}

/// `generate --adapter` samples with the adapter: greedy text from base + adapter equals greedy
/// text from the merged model, and differs from the base's own.
#[test]
fn generate_with_an_adapter_equals_the_merged_model() {
    let dir = temp_dir("cli-generate-adapter");
    let base = dir.join("base");
    copy_model(&base);
    // gpt2_ref has 97 tokens: a char vocabulary of tab, newline and printable ASCII.
    let vocab: Vec<String> =
        ['\t', '\n'].into_iter().chain(' '..='~').map(|c| c.to_string()).collect();
    assert_eq!(vocab.len(), 97);
    let json = serde_json::json!({"type": "char", "vocab": vocab}).to_string();
    std::fs::write(base.join("tokenizer.json"), json).unwrap();
    let adapter = format!("{}/tests/data/lora_ref/lora/adapter", env!("CARGO_MANIFEST_DIR"));
    let merged = dir.join("merged");
    let (ok, _, err) =
        glassgrad(&["merge", "--model", s(&base), "--adapter", &adapter, "--out", s(&merged)]);
    assert!(ok, "{err}");
    let greedy = |model: &Path, adapter: Option<&str>| {
        let mut args = vec!["generate", "--model", s(model), "--prompt", "To be", "--temperature"];
        args.extend(["0", "--max-new-tokens", "24"]);
        if let Some(a) = adapter {
            args.extend(["--adapter", a]);
        }
        let (ok, out, err) = glassgrad(&args);
        assert!(ok, "{err}");
        out
    };
    let with_adapter = greedy(&base, Some(&adapter));
    assert_eq!(with_adapter, greedy(&merged, None));
    assert_ne!(with_adapter, greedy(&base, None), "the adapter changes what is generated");
}
