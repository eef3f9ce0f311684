//! Training: an interrupted run resumed from its checkpoint ends bit-identical to an uninterrupted
//! one (model and optimizer state restored, batches a function of the step), and a NaN loss stops
//! the run with a clear error while the last good checkpoint stays intact and loadable.

use std::path::PathBuf;

use glassgrad::data::TokenDataset;
use glassgrad::model::gpt2::Gpt2;
use glassgrad::model::{Gpt2Config, Gpt2Weights};
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::trainer::{TrainOptions, train};

use crate::gpu::harness::{gpu, temp_dir};

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n";

fn options(out: PathBuf, steps: usize, lr: f32) -> TrainOptions {
    TrainOptions {
        steps,
        batch_size: 2,
        seq_len: 16,
        grad_accum: 2,
        lr,
        min_lr: lr / 10.0,
        warmup: 1,
        weight_decay: 0.1,
        grad_clip: 1.0,
        eval_every: 1,
        eval_batches: 1,
        seed: 5,
        out,
        resume: false,
        stop_after: None,
        checkpoint_every: None,
    }
}

fn setup() -> (Gpt2, Tokenizer, TokenDataset) {
    let chars = CharTokenizer::from_text(TEXT);
    let config = Gpt2Config::new(chars.vocab_size(), 16, 16, 1, 2);
    let data = TokenDataset::split(&chars.encode(TEXT).unwrap(), 0.2).unwrap();
    (Gpt2::new_random(&gpu(), config, 3).unwrap(), Tokenizer::Char(chars), data)
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    let gpu = gpu();
    let (straight, interrupted) = (temp_dir("straight"), temp_dir("interrupted"));
    let (mut model, tokenizer, data) = setup();
    train(&mut model, &data, &tokenizer, &options(straight.to_path_buf(), 4, 1e-2), |_| {})
        .unwrap();

    let (mut model, tokenizer, data) = setup();
    let first = TrainOptions { stop_after: Some(2), ..options(interrupted.to_path_buf(), 4, 1e-2) };
    assert_eq!(train(&mut model, &data, &tokenizer, &first, |_| {}).unwrap().steps, 2);
    // A new process would load the checkpoint: do the same.
    let mut model = Gpt2::from_weights(&gpu, &Gpt2Weights::load(&interrupted).unwrap()).unwrap();
    let resumed = TrainOptions { resume: true, ..options(interrupted.to_path_buf(), 4, 1e-2) };
    train(&mut model, &data, &tokenizer, &resumed, |_| {}).unwrap();

    let a = Gpt2Weights::load(&straight).unwrap();
    let b = Gpt2Weights::load(&interrupted).unwrap();
    let initial = Gpt2Weights::init(&a.config, 3);
    for (name, p) in &a.params {
        assert_ne!(p.data, initial.params[name].data, "{name} was trained");
        assert_eq!(
            p.data, b.params[name].data,
            "{name}: resumed run differs from the uninterrupted one"
        );
    }
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let out = temp_dir("nan");
    let (mut model, tokenizer, data) = setup();
    // lr = 1e30: Adam moves every weight by ~1e30 in the first step, so the second loss is not finite.
    let err = train(&mut model, &data, &tokenizer, &options(out.to_path_buf(), 5, 1e30), |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("became") && err.contains("step 1") && err.contains("intact"), "{err}");
    // The checkpoint written after step 0 (huge but finite weights) is complete and loads; the
    // step that produced the NaN never overwrote it.
    let saved = Gpt2Weights::load(&out).unwrap();
    assert!(
        saved.params.values().all(|p| p.data.iter().all(|v| v.is_finite())),
        "the kept checkpoint holds finite weights"
    );
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "only step 0 was logged and saved:\n{log}");
    assert!(out.join("tokenizer.json").exists() && out.join("optimizer.safetensors").exists());
}
