//! The adapter options of the command line, run as a user would: `forward` with several named
//! adapters and `--adapter-per-row` (each row equals that adapter alone, and PEFT's
//! `adapter_names` logits), `generate --adapter-per-row`, `merge` combining adapters with
//! `--weights --combination` (PEFT's add_weighted_adapter logits), and bad adapter options
//! refused with nothing written. References: tests/data/combine_ref (PEFT 0.21.2).

use glassgrad::io::TensorFile;

use crate::cli::{REF, copy_model, fails_with, forward_json, glassgrad, s};
use crate::gpu::harness::temp_dir;

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
    merge(
        &[
            "--adapter",
            &a,
            "--adapter",
            &b,
            "--weights",
            "1,1",
            "--combination",
            "cat",
            "--svd-rank",
            "2",
        ],
        &["--svd-rank", "svd only"],
    );
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
