//! `glassgrad finetune` run as a user would: a tiny char model trained for a few steps, then
//! fine-tuned with LoRA and its variants on the bundled sentiment task; the adapter directory it
//! writes loads with `files::load` (PEFT's layout), `--resume` continues it, and bad input is
//! one line. Also the task's rows: one target a row, at the answer's deciding token.

use std::path::Path;

use glassgrad::data::{Sentiment, movie_sentences};
use glassgrad::ops::cross_entropy::IGNORE;
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::tasks::{self, Examples};

use crate::cli::{fails_with, glassgrad, s};
use crate::gpu::harness::temp_dir;

/// A 1-layer char model on the bundled Shakespeare, 2 steps: a base to fine-tune.
pub fn tiny_base(dir: &Path) {
    let args = ["train", "--out", s(dir), "--steps", "2", "--n-layer", "1", "--n-embd", "16"];
    let args = [&args[..], &["--n-head", "2", "--batch-size", "2", "--eval-batches", "1"]].concat();
    let (ok, _, err) = glassgrad(&args);
    assert!(ok, "{err}");
}

fn finetune_json(base: &Path, out: &Path, steps: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["finetune", "--model", s(base), "--out", s(out), "--steps", steps];
    args.extend(["--batch-size", "4", "--eval-batches", "1", "--json"]);
    args.extend(extra);
    let (ok, stdout, stderr) = glassgrad(&args);
    assert!(ok, "{args:?}: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn finetune_writes_a_peft_adapter_that_loads_and_resumes() {
    let dir = temp_dir("finetune");
    let base = dir.join("base");
    tiny_base(&base);
    let methods = [
        ("lora", "LORA"),
        ("lora-fa", "LORA"),
        ("lora-plus", "LORA"),
        ("delta-lora", "LORA"),
        ("dylora", "LORA"),
        ("dora", "LORA"),
        ("vera", "VERA"),
        ("prefix", "PREFIX_TUNING"),
        ("prompt", "PROMPT_TUNING"),
        ("ia3", "IA3"),
        ("bitfit", "BITFIT"),
        ("adapter", "BOTTLENECK"),
    ];
    for (method, peft_type) in methods {
        let out = dir.join(method);
        let j = finetune_json(&base, &out, "3", &["--method", method]);
        assert_eq!(j["method"], method);
        assert_eq!(j["steps"], 3);
        let trainable = j["trainable_params"].as_u64().unwrap();
        // Default LoRA: r 8 on c_attn (16 → 48): A 8·16 + B 48·8 = 512; LoRA-FA trains B alone;
        // DoRA adds a magnitude per output feature (48).
        let want = match method {
            "lora-fa" => Some(384),
            "dora" => Some(560),
            "lora" | "lora-plus" | "delta-lora" | "dylora" => Some(512),
            _ => None,
        };
        if let Some(want) = want {
            assert_eq!(trainable, want, "{method}");
        }
        assert!(trainable > 0 && trainable < j["all_params"].as_u64().unwrap(), "{method}");
        for key in ["accuracy", "accuracy_tweets", "val_loss", "val_loss_before"] {
            assert!(j[key].as_f64().is_some_and(f64::is_finite), "{method}: {key} = {}", j[key]);
        }
        // Gradient and optimizer bytes are the adapter's alone.
        assert_eq!(j["memory"]["optimizer"].as_u64().unwrap(), 8 * trainable, "{method}");
        assert!(out.join("adapter_config.json").is_file() && out.join("loss.svg").is_file());
        let gpu = crate::gpu::harness::gpu();
        let weights = glassgrad::model::Gpt2Weights::load(&base).unwrap();
        let mut model = glassgrad::model::gpt2::Gpt2::from_weights(&gpu, &weights).unwrap();
        let adapter = glassgrad::peft::files::load(&mut model, &out).unwrap();
        assert_eq!(adapter.peft_type(), peft_type, "{method}");
    }
    let out = dir.join("lora");
    let j = finetune_json(&base, &out, "5", &["--method", "lora", "--resume"]);
    assert_eq!(j["steps"], 5);
    let (ok, _, err) =
        glassgrad(&["finetune", "--model", s(&base), "--out", s(&out), "--steps", "3"]);
    assert!(!ok && err.contains("--overwrite"), "a second run into the same --out: {err}");
}

/// The methods of src/cli/method_args.rs: a Fisher mask at 0.5% (its gradient and optimizer
/// bytes are the K selected entries'), resumed; a parallel adapter; MAM (one COMPOSITE directory).
#[test]
fn finetune_mask_parallel_adapter_and_mam() {
    let dir = temp_dir("finetune-mask-mam");
    let base = dir.join("base");
    tiny_base(&base);
    // The 1-block base's projections: 16·48 + 16·16 + 16·64 + 64·16 = 3,072 weights; 0.5% → 15.
    // Parallel adapter R = 16 beside the MLP: 2·16·16 + 16 + 16 = 544; MAM adds prefix tuning's
    // Vt = 8 keys and values of 16: 256.
    let runs: [(&str, &[&str], &str, u64); 3] = [
        (
            "mask",
            &["--method", "mask", "--mask-by", "fisher", "--fisher-batches", "2"],
            "SPARSE_MASK",
            15,
        ),
        (
            "parallel",
            &["--method", "adapter", "--adapter-placement", "parallel"],
            "BOTTLENECK",
            544,
        ),
        ("mam", &["--method", "mam"], "COMPOSITE", 800),
    ];
    for (name, args, peft_type, want) in runs {
        let out = dir.join(name);
        let j = finetune_json(&base, &out, "3", args);
        let trainable = j["trainable_params"].as_u64().unwrap();
        assert_eq!(trainable, want, "{name}");
        assert_eq!(j["memory"]["optimizer"].as_u64().unwrap(), 8 * trainable, "{name}");
        assert_eq!(j["memory"]["gradients"].as_u64().unwrap(), 4 * trainable, "{name}");
        let gpu = crate::gpu::harness::gpu();
        let weights = glassgrad::model::Gpt2Weights::load(&base).unwrap();
        let mut model = glassgrad::model::gpt2::Gpt2::from_weights(&gpu, &weights).unwrap();
        let adapter = glassgrad::peft::files::load(&mut model, &out).unwrap();
        assert_eq!(adapter.peft_type(), peft_type, "{name}");
        assert_eq!(model.num_trainable_parameters() as u64, want, "{name}: loaded, trainable");
    }
    let j = finetune_json(&base, &dir.join("mask"), "5", &["--method", "mask", "--resume"]);
    assert_eq!((j["steps"].as_u64(), j["trainable_params"].as_u64()), (Some(5), Some(15)));
    let (ok, _, err) =
        glassgrad(&["finetune", "--model", s(&base), "--method", "mask", "--sparsity", "0"]);
    assert!(!ok && err.contains("(0, 1]"), "{err}");
}

#[test]
fn finetune_bad_input_is_one_line() {
    let dir = temp_dir("finetune-bad");
    let base = dir.join("base");
    tiny_base(&base);
    let out = dir.join("out");
    let run = |extra: &[&str]| {
        let mut a = vec!["finetune", "--model", s(&base), "--out", s(&out), "--steps", "1"];
        a.extend(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let check = |extra: &[&str], expect: &[&str]| {
        let args = run(extra);
        fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), expect);
    };
    check(
        &["--target-modules", "q_proj"],
        &["q_proj", "matches no module", "transformer.h.0.attn.c_attn"],
    );
    check(&["--r", "0"], &["r"]);
    check(&["--r", "17"], &["larger than"]);
    check(&["--rank", "2"], &["--rank", "dylora"]);
    check(&["--method", "dylora", "--r", "4", "--rank", "5"], &["rank 5", "1..=4"]);
    check(&["--seq-len", "4"], &["no room"]);
    fails_with(
        &["finetune", "--model", s(&base), "--out", s(&base), "--steps", "1"],
        &["base model's directory"],
    );
    assert!(!out.join("adapter_model.safetensors").exists(), "nothing written on bad input");
}

/// Rows: the prompt ends with the answers' shared prefix (a char model's space), and the only
/// target is the deciding token; characters outside the vocabulary are mapped or dropped.
#[test]
fn characters_outside_the_vocabulary_are_mapped_or_dropped() {
    let text = "abcdefghijklmnopqrstuvwxyz :'\n";
    let tokenizer = Tokenizer::Char(CharTokenizer::from_text(text));
    let (fitted, dropped) = tasks::prepare("Café \u{201C}2 fun\u{201D}!", &tokenizer);
    // C (no capitals here), 2 and ! are dropped; é → e, curly quotes → '.
    assert_eq!((fitted.as_str(), dropped), ("afe ' fun'", 3));
}

#[test]
fn sentiment_rows_have_one_target_at_the_deciding_token() {
    let text = glassgrad::data::SHAKESPEARE;
    let tokenizer = Tokenizer::Char(CharTokenizer::from_text(text));
    let examples = Examples::new(&movie_sentences(), &tokenizer, 64).unwrap();
    let n = examples.train.len() + examples.val.len() + examples.test.len();
    assert_eq!(n, 10_072, "every labelled movie sentence, once");
    assert_eq!(examples.test.len(), n / 10);
    let decode = |ids: &[u32]| tokenizer.decode(ids).unwrap();
    let (p, n) = (decode(&[examples.positive]), decode(&[examples.negative]));
    assert_eq!((p.as_str(), n.as_str()), ("p", "n"));
    let e = &examples.test[0];
    assert!(decode(&e.prompt).ends_with(" :: "), "{:?}", decode(&e.prompt));
    let rows = tasks::rows(&[e], 64);
    let counted: Vec<usize> = (0..64).filter(|&t| rows.targets[t] != IGNORE).collect();
    assert_eq!(counted, vec![e.prompt.len() - 1]);
    let want = if e.sentiment == Sentiment::Positive { "p" } else { "n" };
    assert_eq!(decode(&[rows.targets[counted[0]]]), want);
}

/// `compare` runs each method on the same base and budget: one JSON row each, then the rows;
/// gradient and optimizer bytes follow the trainable count (8 bytes of moments a parameter), and
/// the table, CSV, JSON and pictures are written.
#[test]
fn compare_sets_methods_side_by_side() {
    let dir = temp_dir("compare");
    let base = dir.join("base");
    tiny_base(&base);
    let out = dir.join("cmp");
    let args = ["compare", "--model", s(&base), "--methods", "lora,lora-fa,full", "--steps", "2"];
    let args = [&args[..], &["--batch-size", "4", "--out", s(&out), "--json"]].concat();
    let (ok, stdout, stderr) = glassgrad(&args);
    assert!(ok, "{stderr}");
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let rows = last["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        let trainable = r["trainable_params"].as_u64().unwrap();
        assert_eq!(r["memory"]["optimizer"].as_u64().unwrap(), 8 * trainable, "{}", r["method"]);
        assert!(
            r["memory"]["gradients"].as_u64().unwrap() <= 4 * trainable + 4096,
            "{}",
            r["method"]
        );
        assert!(
            r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["adapter_bytes"].as_u64().unwrap() > 0
        );
    }
    let full = &rows[2];
    assert_eq!(full["method"], "full");
    assert_eq!(full["trainable_params"], full["all_params"]);
    for f in ["compare.csv", "compare.json", "loss.svg", "memory.svg", "accuracy.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }
}
