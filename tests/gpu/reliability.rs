//! Issue 13, class by class, as a hostile but realistic user would try it: numeric options out of
//! range (parse time, one line, exit 2), `--resume`/`--out` checks, only regular files written,
//! a closed stdout, tokens outside the vocabulary, no targets, NaN weights, sizes checked before
//! allocating, misleading messages, `--help`, and the bound on work per GPU submission.
//! (Checkpoint atomicity: checkpoint.rs.)

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use glassgrad::io::{NamedTensor, TensorFile, TokenFile, write_safetensors};
use glassgrad::train::manifest::{self, Manifest};
use glassgrad::{Gpu, Tensor};

use crate::gpu::harness::{gpu, temp_dir};

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");
const BIN: &str = env!("CARGO_BIN_EXE_glassgrad");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("GLASSGRAD_FAIL_AT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A clean failure: non-zero exit, exactly one `error:` line on stderr containing every `expect`.
fn refused(args: &[&str], env: &[(&str, &str)], expect: &[&str]) -> Output {
    let o = run(args, env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} should fail; stderr:\n{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line on stderr:\n{err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    for e in expect {
        assert!(err.contains(e), "{args:?}: message lacks {e:?}: {err}");
    }
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A tiny model (1 layer, 16 channels) trained for `steps` steps into `out`.
const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-embd",
    "16",
    "--n-head",
    "2",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--eval-every",
    "1",
    "--eval-batches",
    "1",
];

fn train_tiny(out: &Path, steps: &str) {
    let mut args = vec!["train", "--steps", steps, "--out", s(out)];
    args.extend_from_slice(TINY);
    let o = run(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn numeric_options_outside_their_documented_range_are_refused_at_parse_time() {
    let m = "/nonexistent-model";
    // (command and option, bad values): each must fail at parse time (exit 2) saying the range.
    let table: &[(&[&str], &[&str])] = &[
        (&["train", "--lr"], &["-1", "0", "nan", "inf", "1.5", "x"]),
        (&["train", "--min-lr"], &["-1e-4", "nan"]),
        (&["train", "--weight-decay"], &["-0.1", "nan", "2"]),
        (&["train", "--grad-clip"], &["0", "-1", "nan"]),
        (&["train", "--dropout"], &["-0.5", "nan", "1"]),
        (&["train", "--eval-batches"], &["0", "-1"]),
        (&["train", "--steps"], &["0", "-5", "2.5"]),
        (&["train", "--batch-size"], &["0"]),
        (&["train", "--seq-len"], &["0"]),
        (&["train", "--grad-accum"], &["0"]),
        (&["train", "--n-embd"], &["0", "1000000"]),
        (&["generate", "--model", m, "--temperature"], &["-1", "nan", "inf"]),
        (&["generate", "--model", m, "--top-k"], &["-1"]),
        (&["generate", "--model", m, "--max-new-tokens"], &["0"]),
        (&["bench", "matmul", "--size"], &["0", "-1", "4294967296"]),
    ];
    for (prefix, values) in table {
        for v in *values {
            let mut args = prefix.to_vec();
            args.push(v); // "--lr -1" with a space: parsed as a value, then refused by range
            let o = refused(&args, &[], &["valid range"]);
            assert_eq!(o.status.code(), Some(2), "{args:?}");
        }
    }
    // The '=' form and a cross-option range.
    refused(&["train", "--lr=-1"], &[], &["(0, 1]"]);
    refused(&["train", "--min-lr", "0.01", "--lr", "0.001"], &[], &["--min-lr", "--lr"]);
}

#[test]
fn resume_and_out_are_checked_before_training() {
    let dir = temp_dir("rel-resume");
    let run_dir = dir.join("run");
    train_tiny(&run_dir, "1");
    let out = s(&run_dir);
    let tiny = |extra: &[&'static str]| -> Vec<String> {
        let mut a = vec!["train".to_string(), "--out".into(), out.to_string()];
        a.extend(extra.iter().chain(TINY).map(|x| x.to_string()));
        a
    };
    // A new run into a directory that holds a model: refused without --overwrite.
    let args = tiny(&["--steps", "1"]);
    let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    refused(&args, &[], &["already holds a model", "--overwrite"]);
    // --resume cannot change the model, nor go backwards.
    for opt in ["--n-layer", "--n-embd", "--n-head"] {
        let args = ["train", "--out", out, "--resume", "--steps", "3", opt, "2"];
        refused(&args, &[], &[opt, "cannot change"]);
    }
    refused(&["train", "--out", out, "--resume", "--steps", "1"], &[], &["already done 1 steps"]);
    // --resume with nothing to resume.
    let empty = dir.join("empty");
    refused(&["train", "--out", s(&empty), "--resume"], &[], &["holds no checkpoint"]);
    // A checkpoint without optimizer state (listed as such in its manifest).
    let no_opt = dir.join("no-opt");
    train_tiny(&no_opt, "1");
    let path = no_opt.join(manifest::MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m.files.remove("optimizer.safetensors");
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    std::fs::remove_file(no_opt.join("optimizer.safetensors")).unwrap();
    let args = ["train", "--out", s(&no_opt), "--resume", "--steps", "3"];
    refused(&args, &[], &["no optimizer.safetensors"]);
    // Any transformers model directory counts as a model.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::copy(format!("{REF}/model/config.json"), hf.join("config.json")).unwrap();
    refused(&["train", "--out", s(&hf)], &[], &["already holds a model"]);
    // An --out that cannot be written is found before training, not at the first checkpoint.
    refused(&["train", "--out", "/proc/glassgrad-cannot-be-here"], &[], &["--out", "cannot"]);
    let file = dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    refused(&["train", "--out", s(&file)], &[], &["not a directory"]);
    // With --overwrite the model is replaced.
    let args = tiny(&["--steps", "2", "--overwrite"]);
    let o = run(&args.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(manifest::open(&run_dir).unwrap().unwrap().step, 2);
    // A wrongly shaped optimizer moment names the parameter (transformers name) and the file.
    let opt = run_dir.join("optimizer.safetensors");
    let mut file = TensorFile::read(&opt).unwrap();
    let key = "exp_avg.transformer.ln_f.bias";
    file.tensors.insert(key.into(), NamedTensor::from_f32(&[2, 8], &[0.0; 16]));
    write_safetensors(&opt, file.tensors.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    let path = run_dir.join(manifest::MANIFEST_FILE);
    let mut m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let bytes = std::fs::read(&opt).unwrap();
    let entry = m.files.get_mut("optimizer.safetensors").unwrap();
    (entry.bytes, entry.hash) = (bytes.len() as u64, manifest::hash_bytes(&bytes));
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    let args = ["train", "--out", out, "--resume", "--steps", "3"];
    refused(&args, &[], &[key, "optimizer.safetensors", "[2, 8]", "[16]"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn only_regular_files_are_written() {
    let dir = temp_dir("rel-regular");
    let tokens = format!("{REF}/tokens.safetensors");
    let model = format!("{REF}/model");
    let target = dir.join("target");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for (out, what) in [
        (s(&link), "symbolic link"),
        (s(&fifo), "FIFO"),
        ("/dev/null", "device node"),
        ("/dev/stdout", "refusing"),
        (s(&sub), "directory"),
    ] {
        let args = ["forward", "--model", &model, "--tokens", &tokens, "--out", out];
        refused(&args, &[], &[what, "regular files"]);
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_closed_stdout_ends_quietly_and_generate_streams_tokens() {
    let dir = temp_dir("rel-pipe");
    train_tiny(&dir, "1");
    let mut child = Command::new(BIN)
        .args(["generate", "--model", s(&dir), "--max-new-tokens", "100000", "--prompt", "A"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    stdout.read_exact(&mut first).unwrap();
    // Tokens arrive while it is still generating (100000 would take minutes).
    assert!(child.try_wait().unwrap().is_none(), "generate printed only at the end");
    drop(stdout); // `| head -c 8`
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "a closed stdout is quiet, got: {err}");
    // `bench … | true`: stdout closed before anything is printed.
    let child = Command::new(BIN)
        .args(["bench", "matmul", "--size", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tokens_labels_and_weights_that_cannot_be_used_are_named() {
    let dir = temp_dir("rel-tokens");
    let model = format!("{REF}/model"); // vocab_size 97
    let out = dir.join("out.safetensors");
    let big = 1i64 << 40;
    // (input_ids, labels, B, T, expected words)
    type Case<'a> = (Vec<i64>, Option<Vec<i64>>, usize, usize, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (vec![1, 2, 3], Some(vec![1, 97, 3]), 1, 3, vec!["labels[0, 1] = 97", "vocab_size 97"]),
        (vec![1, 2, 3], Some(vec![1, 2, 500]), 1, 3, vec!["labels[0, 2] = 500"]),
        (vec![1, 2, 3], Some(vec![1, big, 3]), 1, 3, vec!["1099511627776", "larger than any"]),
        (vec![1, big, 3], None, 1, 3, vec!["input_ids[0, 1]", "larger than any"]),
        (vec![1, 2, 3], Some(vec![1, -7, 3]), 1, 3, vec!["-7", "-100"]),
        (vec![5, 6], None, 2, 1, vec!["no targets"]),
        (vec![1, 2, 3], Some(vec![-100, -100, -100]), 1, 3, vec!["no targets"]),
        (vec![1, 2, 3, 4], Some(vec![4, -100, 4, -100]), 2, 2, vec!["no targets"]),
    ];
    for (i, (ids, labels, b, t, expect)) in cases.iter().enumerate() {
        let path = dir.join(format!("tokens{i}.safetensors"));
        let ids_t = NamedTensor::from_i64(&[*b, *t], ids);
        let mut tensors = vec![("input_ids", ids_t)];
        if let Some(l) = labels {
            tensors.push(("labels", NamedTensor::from_i64(&[*b, *t], l)));
        }
        write_safetensors(&path, tensors.iter().map(|(k, v)| (*k, v))).unwrap();
        let args = ["forward", "--model", &model, "--tokens", s(&path), "--out", s(&out)];
        refused(&args, &[], expect);
    }
    // NaN or inf in any weight: forward and generate name the tensor.
    for (key, value) in [("h.0.mlp.c_fc.bias", f32::NAN), ("wte.weight", f32::INFINITY)] {
        let bad = dir.join(format!("bad-{key}"));
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::copy(format!("{model}/config.json"), bad.join("config.json")).unwrap();
        let mut file = TensorFile::read(format!("{model}/model.safetensors")).unwrap();
        let name = file.tensors.keys().find(|k| k.ends_with(key)).unwrap().clone();
        let t = &file.tensors[&name];
        let mut values = t.to_f32(&name).unwrap();
        values[3] = value;
        let shape = t.shape.clone();
        file.tensors.insert(name.clone(), NamedTensor::from_f32(&shape, &values));
        let p = bad.join("model.safetensors");
        write_safetensors(&p, file.tensors.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
        let tokens = format!("{REF}/tokens.safetensors");
        let args = ["forward", "--model", s(&bad), "--tokens", &tokens, "--out", s(&out)];
        refused(&args, &[], &[&name, "index 3"]);
    }
    assert!(!out.exists());
    let _ = TokenFile::read(format!("{REF}/tokens.safetensors")).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sizes_are_checked_before_anything_is_allocated() {
    let dir = temp_dir("rel-sizes");
    let started = std::time::Instant::now();
    // config.json with absurd sizes: refused from the config alone, no memory eaten.
    for (field, value) in [("n_layer", "1000000000"), ("n_embd", "3000000"), ("vocab_size", "1e15")]
    {
        let m = dir.join(format!("model-{field}"));
        std::fs::create_dir_all(&m).unwrap();
        let config = std::fs::read_to_string(format!("{REF}/model/config.json")).unwrap();
        let key = format!("\"{field}\": ");
        let at = config.find(&key).unwrap() + key.len();
        let end = at + config[at..].find([',', '\n']).unwrap();
        let value = if value == "1e15" { "1000000000000000" } else { value };
        std::fs::write(
            m.join("config.json"),
            format!("{}{value}{}", &config[..at], &config[end..]),
        )
        .unwrap();
        std::fs::copy(format!("{REF}/model/model.safetensors"), m.join("model.safetensors"))
            .unwrap();
        let tokens = format!("{REF}/tokens.safetensors");
        let out = dir.join("o.safetensors");
        refused(
            &["forward", "--model", s(&m), "--tokens", &tokens, "--out", s(&out)],
            &[],
            &["needs", "available"],
        );
        refused(&["generate", "--model", s(&m)], &[], &["needs", "available"]);
    }
    // Command-line sizes: host memory, then the adapter's per-buffer limit, before building.
    let out = dir.join("run");
    refused(
        &["train", "--n-embd", "65536", "--n-layer", "1000", "--out", s(&out)],
        &[],
        &["needs", "available"],
    );
    refused(
        &["train", "--n-embd", "4096", "--n-layer", "1", "--out", s(&out)],
        &[],
        &["largest weight", "per buffer"],
    );
    refused(
        &["train", "--batch-size", "65536", "--seq-len", "4096", "--out", s(&out)],
        &[],
        &["per buffer"],
    );
    refused(&["bench", "matmul", "--size", "60000"], &[], &["60000×60000", "per buffer"]);
    refused(&["bench", "softmax", "--size", "65536"], &[], &["per buffer"]);
    assert!(!out.exists(), "nothing was created for a run that cannot fit");
    assert!(started.elapsed().as_secs() < 60, "the checks are immediate");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn messages_name_what_is_wrong_and_help_lists_only_what_works() {
    for backend in ["vulkn", "vulkan,metl", "cuda"] {
        let o = refused(
            &["bench", "matmul", "--size", "8"],
            &[("WGPU_BACKEND", backend)],
            &["unknown backend", "vulkan, vk"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("Install a GPU driver"), "{err}");
    }
    let help = |args: &[&str]| String::from_utf8_lossy(&run(args, &[]).stdout).into_owned();
    let forward = help(&["forward", "--help"]);
    // The 4-bit flags work now (QLoRA, tests/gpu/qlora_cli.rs), so help lists them.
    for listed in ["--quantize", "--double-quant", "--blocksize"] {
        assert!(forward.contains(listed), "forward --help lacks {listed}:\n{forward}");
    }
    assert!(forward.contains("--tokens") && forward.contains("--grads"), "{forward}");
    assert!(forward.contains("--checkpointing") && forward.contains("--adapter"), "{forward}");
    let bench = help(&["bench", "--help"]);
    assert!(bench.contains("dequant-matmul") && bench.contains("train-step"), "{bench}");
    let generate = help(&["generate", "--help"]);
    assert!(generate.contains("0 = no limit") && generate.contains("0 = greedy"), "{generate}");
    let train = help(&["train", "--help"]);
    assert!(train.contains("--overwrite") && train.contains("(0, 1]"), "{train}");
    // Unknown options are one line too.
    refused(&["train", "--learning-rate", "1"], &[], &["--learning-rate"]);
}

#[test]
fn one_submission_holds_a_bounded_number_of_dispatches_whatever_the_loop_above() {
    let gpu: std::rc::Rc<Gpu> = gpu();
    let _g = glassgrad::autograd::no_grad();
    let one = Tensor::full(&gpu, &[4], 1.0).unwrap(); // (4)
    let mut x = Tensor::full(&gpu, &[4], 0.0).unwrap(); // (4)
    gpu.synchronize().unwrap();
    let before = gpu.submits.get();
    // 5000 dispatches with no read-back: at most 2048 go into one submission.
    for _ in 0..5000 {
        x = x.add(&one).unwrap();
    }
    assert!(gpu.submits.get() - before >= 2, "5000 dispatches were held in one submission");
    assert_eq!(x.to_vec().unwrap(), vec![5000.0; 4]);
}

#[test]
fn a_nan_loss_before_any_checkpoint_does_not_claim_one_is_intact() {
    use glassgrad::data::TokenDataset;
    use glassgrad::model::Gpt2Config;
    use glassgrad::model::gpt2::Gpt2;
    use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
    use glassgrad::train::trainer::{TrainOptions, train};
    let text =
        "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer";
    let chars = CharTokenizer::from_text(text);
    let config = Gpt2Config::new(chars.vocab_size(), 16, 16, 1, 2);
    let data = TokenDataset::split(&chars.encode(text).unwrap(), 0.2).unwrap();
    let mut model = Gpt2::new_random(&gpu(), config, 3).unwrap();
    let out = temp_dir("rel-nan");
    let options = TrainOptions {
        steps: 5,
        batch_size: 2,
        seq_len: 8,
        grad_accum: 1,
        lr: 1e30, // the second loss is not finite (see train.rs)
        min_lr: 1.0,
        warmup: 1,
        weight_decay: 0.1,
        grad_clip: 1.0,
        eval_every: 4, // no checkpoint before step 3
        eval_batches: 1,
        seed: 5,
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        checkpoint_every: None,
    };
    let err = train(&mut model, &data, &Tokenizer::Char(chars), &options, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("became") && err.contains("no checkpoint had been written"), "{err}");
    assert!(!err.contains("intact"), "{err}");
    assert!(manifest::open(&out).unwrap().is_none(), "nothing was saved");
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn a_second_tour_replaces_its_own_previous_run_and_says_so() {
    let cwd = temp_dir("rel-tour");
    let tour = || {
        Command::new(BIN)
            .current_dir(&cwd)
            .args(["tour", "--steps", "1", "--batch-size", "2", "--seq-len", "16"])
            .args(["--eval-batches", "1", "--finetune-steps", "1"])
            .output()
            .unwrap()
    };
    let first = tour();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(!String::from_utf8_lossy(&first.stdout).contains("replacing"));
    let second = tour();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("replacing the tour's previous run"), "{stdout}");
    // The LoRA half ran too: PEFT's line, accuracy before and after, the merged model's check.
    for line in ["trainable params: ", "before: validation loss", "accuracy", "Merged the adapter"]
    {
        assert!(stdout.contains(line), "the tour's LoRA half lacks {line:?}:\n{stdout}");
    }
    // `train` into the same directory without --overwrite is still refused.
    let o = Command::new(BIN).current_dir(&cwd).args(["train", "--steps", "1"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
    std::fs::remove_dir_all(cwd).unwrap();
}
