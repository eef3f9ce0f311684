//! The command line, run as a user would: `forward` reproduces transformers' loss and writes every
//! gradient; bad input (corrupt or truncated safetensors, a config that disagrees with the
//! tensors, a token id ≥ vocab_size, a sequence longer than n_positions, an empty dataset) gives
//! a clear message and a non-zero exit, never a panic.

use std::path::Path;
use std::process::Command;

use glassgrad::io::{TensorFile, TokenFile};

use crate::gpu::harness::temp_dir;

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// Runs `glassgrad args…`; returns (success, stdout, stderr).
fn glassgrad(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_glassgrad")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Asserts a clean failure whose message contains every one of `expect`.
fn fails_with(args: &[&str], expect: &[&str]) {
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

fn copy_model(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(REF).join("model").join(f), to.join(f)).unwrap();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `glassgrad forward --grads --json` on the reference tokens with `extra` options, writing to
/// `out`: (the last-line JSON summary, the written file). Fails the test if the command fails.
fn forward_json(model: &str, extra: &[&str], out: &Path) -> (serde_json::Value, TensorFile) {
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
    fails_with(&["bench", "dequant-matmul"], &["4-bit"]);
}

/// `forward --grads --checkpointing [K]` writes the same loss and every gradient as without it
/// (the recompute runs the same kernels on the same values), and reports less activation memory.
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
    for (summary, file) in &runs[1..] {
        assert_eq!(plain.tensors.len(), file.tensors.len());
        for name in plain.tensors.keys() {
            assert_eq!(plain.f32(name).unwrap(), file.f32(name).unwrap(), "{name} differs");
        }
        let act = |s: &serde_json::Value| s["memory"]["activations"].as_u64().unwrap();
        assert!(act(summary) < act(plain_summary), "{summary} vs {plain_summary}");
    }
    fails_with(
        &["forward", "--model", &model, "--tokens", &tokens, "--out", "x", "--checkpointing", "0"],
        &["--checkpointing"],
    );
}

/// `forward --adapter DIR --grads` on a PEFT LoRA adapter (tests/data/lora_ref, written by PEFT):
/// PEFT's logits and loss, and exactly the adapter's gradients under their adapter-file keys.
#[test]
fn forward_with_a_peft_adapter_matches_peft_and_writes_only_adapter_gradients() {
    let dir = temp_dir("cli-forward-adapter");
    let lora = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lora_ref/lora");
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
        assert!(d <= 1e-4 * scale, "{name}: max diff {d} (scale {scale})");
    }
}

/// `merge` folds a PEFT adapter into the base: the merged directory is a plain GPT-2 (the base's
/// keys, nothing more) whose logits are PEFT's adapter logits; a model in --out is not replaced
/// without --overwrite.
#[test]
fn merge_writes_a_plain_model_with_the_adapters_logits() {
    let dir = temp_dir("cli-merge");
    let (model, tokens) = (format!("{REF}/model"), format!("{REF}/tokens.safetensors"));
    for case in ["lora", "bias_all"] {
        let lora = format!("{}/tests/data/lora_ref/{case}", env!("CARGO_MANIFEST_DIR"));
        let merged = dir.join(case);
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
        let out = dir.join(format!("{case}.safetensors"));
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

const COMBINE_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/combine_ref");

/// Rows `b` of logits (B, T, V) flattened: the slice of row b.
fn row(logits: &[f32], b: usize, rows: usize) -> &[f32] {
    let n = logits.len() / rows;
    &logits[b * n..(b + 1) * n]
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale
}

/// `forward` with several named adapters and `--adapter-per-row`: each row's logits equal those
/// of a forward with that row's adapter alone (or none for `__base__`), and PEFT's
/// `adapter_names` logits; with --grads, the gradients of the adapters in use under PEFT's model
/// names.
#[test]
fn forward_with_adapters_per_row_equals_each_adapter_alone() {
    let dir = temp_dir("cli-forward-per-row");
    let model = format!("{REF}/model");
    let (a, b) = (format!("{COMBINE_REF}/a"), format!("{COMBINE_REF}/b"));
    let named = ["--adapter", &a, "--adapter-name", "a", "--adapter", &b, "--adapter-name", "b"];
    let alone = |extra: &[&str], name: &str| {
        let (_, f) = forward_json(&model, extra, &dir.join(format!("{name}.safetensors")));
        f.f32("logits").unwrap().1
    };
    let single = [("a", alone(&["--adapter", &a], "a")), ("b", alone(&["--adapter", &b], "b"))];
    let base = alone(&[], "base");
    let expected = TensorFile::read(format!("{COMBINE_REF}/expected.safetensors")).unwrap();
    for rows in [["b", "__base__"], ["a", "b"]] {
        let per_row = rows.join(",");
        let mut extra = named.to_vec();
        extra.extend(["--adapter-per-row", &per_row]);
        let (summary, written) = forward_json(&model, &extra, &dir.join("mixed.safetensors"));
        let mixed = written.f32("logits").unwrap().1;
        for (i, name) in rows.iter().enumerate() {
            let want = match single.iter().find(|(n, _)| n == name) {
                Some((_, l)) => row(l, i, 2),
                None => row(&base, i, 2),
            };
            // The same kernels on a one-row slice of the batch: measured bit-identical here;
            // 1e-6 of the scale allows a kernel whose tiling depends on the row count.
            let e = max_rel(row(&mixed, i, 2), want);
            assert!(e <= 1e-6, "{per_row}: row {i} ({name}) differs from {name} alone: {e:.2e}");
        }
        let peft = expected.f32(&format!("logits.mixed.{per_row}")).unwrap().1;
        let e = max_rel(&mixed, &peft);
        println!("--adapter-per-row {per_row}: vs PEFT adapter_names max rel err {e:.2e}");
        assert!(e <= 1e-4, "{per_row}: PEFT's mixed logits differ by {e:.2e}");
        let grads: Vec<&String> =
            written.tensors.keys().filter(|k| k.starts_with("grad.")).collect();
        for name in ["a", "b"] {
            let key =
                format!("grad.base_model.model.transformer.h.0.attn.c_attn.lora_A.{name}.weight");
            assert_eq!(
                grads.contains(&&key),
                rows.contains(&name),
                "{per_row}: {key} in {grads:?}"
            );
        }
        assert!(summary["trainable_params"].as_u64().unwrap() > 0);
    }
}

/// `merge` with several adapters, --weights and --combination: the merged model's logits are
/// those of PEFT's add_weighted_adapter adapter.
#[test]
fn merge_combines_weighted_adapters_as_peft() {
    let dir = temp_dir("cli-merge-weighted");
    let (model, tokens) = (format!("{REF}/model"), format!("{REF}/tokens.safetensors"));
    let expected = TensorFile::read(format!("{COMBINE_REF}/expected.safetensors")).unwrap();
    for (case, first, second, weights) in [
        ("linear", "a", "b", "0.7,-0.4"),
        ("cat", "a", "c", "0.5,0.8"),
        ("svd", "a", "b", "0.7,0.5"),
    ] {
        let (x, y) = (format!("{COMBINE_REF}/{first}"), format!("{COMBINE_REF}/{second}"));
        let merged = dir.join(case);
        let (ok, _, err) = glassgrad(&[
            "merge",
            "--model",
            &model,
            "--adapter",
            &x,
            "--adapter",
            &y,
            "--weights",
            weights,
            "--combination",
            case,
            "--out",
            s(&merged),
        ]);
        assert!(ok, "{case}: {err}");
        let out = dir.join(format!("{case}.safetensors"));
        let (ok, _, err) =
            glassgrad(&["forward", "--model", s(&merged), "--tokens", &tokens, "--out", s(&out)]);
        assert!(ok, "{case}: {err}");
        let got = TensorFile::read(&out).unwrap().f32("logits").unwrap().1;
        let e = max_rel(&got, &expected.f32(&format!("logits.{case}")).unwrap().1);
        println!("merge --combination {case}: vs PEFT max rel err {e:.2e}");
        // One f32 rounding of W + ΔW, then the plain forward: as the single-adapter merge.
        assert!(e <= 1e-4, "{case}: merged logits differ from PEFT's combined adapter by {e:.2e}");
    }
}

/// Bad adapter options: each a clear error naming the problem, and nothing written.
#[test]
fn bad_adapter_options_are_refused_and_write_nothing() {
    let dir = temp_dir("cli-bad-adapters");
    let (model, tokens) = (format!("{REF}/model"), format!("{REF}/tokens.safetensors"));
    let (a, b, c) =
        (format!("{COMBINE_REF}/a"), format!("{COMBINE_REF}/b"), format!("{COMBINE_REF}/c"));
    let out = dir.join("out.safetensors");
    let forward = |extra: &[&str], expect: &[&str]| {
        let mut args = vec!["forward", "--model", &model, "--tokens", &tokens, "--out", s(&out)];
        args.extend(extra);
        fails_with(&args, expect);
        assert!(!out.exists(), "{extra:?}: wrote {}", out.display());
    };
    forward(
        &["--adapter", &a, "--adapter-name", "x", "--adapter", &b, "--adapter-name", "x"],
        &["\"x\"", "twice"],
    );
    forward(&["--adapter", &a, "--adapter", &b], &["2 --adapter but 0 --adapter-name"]);
    forward(
        &["--adapter", &a, "--adapter-name", "a", "--adapter-per-row", "a,zz"],
        &["\"zz\"", "no --adapter-name"],
    );
    forward(
        &["--adapter", &a, "--adapter-name", "a", "--adapter-per-row", "a,a,a"],
        &["3 names for a batch of 2 rows"],
    );
    // An adapter made for another base (n_embd 12, not 24): its shapes do not fit.
    let other = dir.join("other");
    let config = glassgrad::model::Gpt2Config::read(format!("{model}/config.json")).unwrap();
    let config = glassgrad::model::Gpt2Config { n_embd: 12, ..config };
    let small = glassgrad::model::gpt2::Gpt2::new_random(&crate::gpu::harness::gpu(), config, 1);
    small.unwrap().to_weights().unwrap().save(&other).unwrap();
    let mut wrong = vec!["forward", "--model", s(&other), "--tokens", &tokens, "--out", s(&out)];
    wrong.extend(["--adapter", &a, "--adapter-name", "a", "--adapter", &b, "--adapter-name", "b"]);
    fails_with(&wrong, &["adapter \"a\"", "shape", "different base", "gpt2_ref"]);
    assert!(!out.exists());

    let merged = dir.join("merged");
    let merge = |extra: &[&str], expect: &[&str]| {
        let mut args = vec!["merge", "--model", &model, "--out", s(&merged)];
        args.extend(extra);
        fails_with(&args, expect);
        assert!(!merged.exists(), "{extra:?}: wrote {}", merged.display());
    };
    merge(&["--adapter", &a, "--adapter", &b], &["--weights"]);
    merge(
        &["--adapter", &a, "--adapter", &b, "--weights", "0.5", "--combination", "cat"],
        &["1 weights for 2 adapters"],
    );
    merge(
        &["--adapter", &a, "--adapter", &c, "--weights", "0.5,0.5", "--combination", "linear"],
        &["linear", "equal rank", "[4, 2]"],
    );
    merge(&["--adapter", &a, "--adapter", &b, "--weights", "0.5,0.5"], &["--combination"]);
}

/// `generate --adapter-per-row`: one greedy sample per name, each the text that adapter alone
/// (or the base, for `__base__`) generates.
#[test]
fn generate_per_row_samples_each_adapter_as_alone() {
    let dir = temp_dir("cli-generate-per-row");
    let base = dir.join("base");
    copy_model(&base);
    let vocab: Vec<String> =
        ['\t', '\n'].into_iter().chain(' '..='~').map(|c| c.to_string()).collect();
    let json = serde_json::json!({"type": "char", "vocab": vocab}).to_string();
    std::fs::write(base.join("tokenizer.json"), json).unwrap();
    let (a, b) = (format!("{COMBINE_REF}/a"), format!("{COMBINE_REF}/b"));
    let greedy = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", s(&base), "--prompt", "To be", "--temperature"];
        args.extend(["0", "--max-new-tokens", "16"]);
        args.extend(extra);
        let (ok, out, err) = glassgrad(&args);
        assert!(ok, "{err}");
        out
    };
    let rows = greedy(&[
        "--adapter",
        &a,
        "--adapter-name",
        "a",
        "--adapter",
        &b,
        "--adapter-name",
        "b",
        "--adapter-per-row",
        "b,__base__,a",
    ]);
    let want = format!(
        "[b]\n{}[__base__]\n{}[a]\n{}",
        greedy(&["--adapter", &b]),
        greedy(&[]),
        greedy(&["--adapter", &a])
    );
    assert_eq!(rows, want);
    assert_ne!(greedy(&["--adapter", &a]), greedy(&["--adapter", &b]), "the adapters differ");
}
