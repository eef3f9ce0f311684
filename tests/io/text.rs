//! Tokenizers, the bundled data, batch sampling, the training log and checkpoint helpers.

use std::collections::BTreeMap;

use glassgrad::cpu::Rng;
use glassgrad::data::{self, Sentiment, Split, TokenDataset};
use glassgrad::model::{Gpt2Config, Gpt2Weights, Param};
use glassgrad::tokenizer::{CharTokenizer, Gpt2Tokenizer, Tokenizer};
use glassgrad::train::checkpoint::{
    AdamState, read_optimizer_state, save_checkpoint, write_optimizer_state,
};
use glassgrad::train::{LogRecord, TrainLog};

use crate::common::{assert_err, data as test_data, scratch};

#[test]
fn char_tokenizer_round_trips_and_names_unknown_characters() {
    let t = CharTokenizer::from_text("hello, world\n");
    assert_eq!(t.chars(), &['\n', ' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
    let ids = t.encode("hello").unwrap();
    assert_eq!(ids, vec![5, 4, 6, 6, 7]);
    assert_eq!(t.decode(&ids).unwrap(), "hello");
    assert_err(t.encode("held!"), &["'!'", "U+0021", "at character 4", "10 characters"]);
    assert_err(t.decode(&[10]), &["token id 10", "size 10"]);

    let dir = scratch("char-tokenizer");
    t.save(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    assert!(text.starts_with(r#"{"type":"char","vocab":["\n"," ",","#), "{text}");
    match Tokenizer::load(&dir, 10).unwrap() {
        Tokenizer::Char(back) => assert_eq!(back, t),
        other => panic!("expected a char tokenizer, got {other:?}"),
    }
    assert_err(Tokenizer::load(&dir, 11), &["10 characters", "vocab_size 11"]);
    std::fs::write(dir.join("tokenizer.json"), r#"{"type":"char","vocab":["a","bc"]}"#).unwrap();
    assert_err(Tokenizer::load(&dir, 2), &["tokenizer.json", "vocab[1] = \"bc\""]);
}

#[test]
fn gpt2_bpe_matches_gpt2() {
    let t = Gpt2Tokenizer::new();
    // The ids GPT-2's own tokenizer gives (transformers' GPT2TokenizerFast agrees).
    assert_eq!(t.encode("Hello world"), vec![15496, 995]);
    assert_eq!(t.decode(&[15496, 995]).unwrap(), "Hello world");
    let dir = scratch("gpt2-tokenizer");
    let tok = Tokenizer::load(&dir, 50257).unwrap();
    assert!(matches!(tok, Tokenizer::Gpt2(_)));
    assert_eq!(tok.encode(" the").unwrap(), vec![262]);
    assert_err(Tokenizer::load(&dir, 97), &["vocab_size is 97", "cannot tell"]);
    // Hugging Face's tokenizer.json: GPT-2's size is accepted, another model's is refused.
    let hf = |n: usize| {
        let vocab: Vec<String> = (0..n - 1).map(|i| format!("\"t{i}\": {i}")).collect();
        format!(
            r#"{{"model": {{"type": "BPE", "vocab": {{{}}}}}, "added_tokens": [{{"id": {}, "content": "<|endoftext|>"}}]}}"#,
            vocab.join(", "),
            n - 1
        )
    };
    std::fs::write(dir.join("tokenizer.json"), hf(50257)).unwrap();
    assert!(matches!(Tokenizer::load(&dir, 50257).unwrap(), Tokenizer::Gpt2(_)));
    std::fs::write(dir.join("tokenizer.json"), hf(32000)).unwrap();
    assert_err(
        Tokenizer::load(&dir, 50257),
        &["tokenizer.json", "32000 tokens", "vocab_size 50257", "another model"],
    );
}

/// Ids written by scripts/make_bpe_reference.py with transformers' GPT2TokenizerFast (built from
/// OpenAI's encoder.json + vocab.bpe: the Hub could not be reached), for strings with runs of
/// spaces, newlines (\n, \r\n, blank lines), tabs, digits, accents, CJK, Hangul, Greek, emoji
/// with modifiers and flags, contractions, code, and "<|endoftext|>" as plain text.
#[test]
fn gpt2_bpe_matches_transformers_tokenizer_ids() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bpe_ref/gpt2_ids.json");
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let t = Gpt2Tokenizer::new();
    let mut ids_checked = 0;
    for r in &records {
        let text = r["text"].as_str().unwrap();
        let want: Vec<u32> =
            r["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(t.encode(text), want, "ids of {text:?}");
        assert_eq!(t.decode(&want).unwrap(), text, "round trip of {text:?}");
        ids_checked += want.len();
        // transformers' default maps "<|endoftext|>" in a text to the special id; we do not.
        if let Some(default) = r.get("ids_default") {
            assert!(text.contains("<|endoftext|>") && default[0] == Gpt2Tokenizer::END_OF_TEXT);
        }
    }
    assert!(records.len() >= 12 && ids_checked > 150, "{} strings", records.len());
}

#[test]
fn bundled_shakespeare_and_split() {
    assert_eq!(data::SHAKESPEARE.len(), 1_115_394);
    let tok = CharTokenizer::from_text(data::SHAKESPEARE);
    assert_eq!(tok.vocab_size(), 65);
    let ids = tok.encode(data::SHAKESPEARE).unwrap();
    let ds = TokenDataset::new(&ids).unwrap();
    assert_eq!(ds.train.len() + ds.val.len(), ids.len());
    assert_eq!(ds.train.len(), 1_003_855); // round(0.9 · 1,115,394)
    assert_eq!(&ds.val[..], &ids[1_003_855..]);
}

#[test]
fn batches_are_seeded_windows() {
    let tokens: Vec<u32> = (0..100).collect();
    let ds = TokenDataset::new(&tokens).unwrap(); // train 0..90, val 90..100
    let a = ds.sample(Split::Train, 4, 8, &mut Rng::new(7)).unwrap();
    let b = ds.sample(Split::Train, 4, 8, &mut Rng::new(7)).unwrap();
    let c = ds.sample(Split::Train, 4, 8, &mut Rng::new(8)).unwrap();
    assert_eq!(a, b, "same seed, same batch");
    assert_ne!(a, c, "another seed, another batch");
    assert_eq!((a.inputs.len(), a.targets.len()), (32, 32));
    for row in 0..4 {
        let x = &a.inputs[row * 8..row * 8 + 8];
        let y = &a.targets[row * 8..row * 8 + 8];
        for t in 0..8 {
            assert_eq!(y[t], x[t] + 1, "targets are the next tokens");
            assert!(t == 0 || x[t] == x[t - 1] + 1, "a window is contiguous");
        }
        assert!(x[7] + 1 < 90, "train windows stay in the train split");
    }
    // Val has 10 tokens: T = 9 fits exactly (one window), T = 10 does not.
    let v = ds.sample(Split::Val, 2, 9, &mut Rng::new(1)).unwrap();
    assert_eq!(&v.inputs[..9], &tokens[90..99]);
    assert_err(
        ds.sample(Split::Val, 2, 10, &mut Rng::new(1)),
        &["Val split has 10 tokens", "sequence length + 1 = 11"],
    );
    assert_err(TokenDataset::new(&[]), &["empty"]);
}

#[test]
fn movie_sentences_are_labelled_and_crlf_free() {
    let s = data::movie_sentences();
    let pos = s.iter().filter(|r| r.sentiment == Sentiment::Positive).count();
    let neg = s.iter().filter(|r| r.sentiment == Sentiment::Negative).count();
    assert_eq!((pos, neg), (4996, 5076)); // data/README.md: 4,996 positive / 5,076 negative / 533 neutral
    assert!(s.iter().all(|r| !r.text.contains('\r') && !r.text.is_empty()));
    assert_eq!(s[0].id, "1");
    assert!(s[0].text.starts_with("The Rock is destined"));
    assert!(s.iter().all(
        |r| (r.rating >= 0.5) == (r.sentiment == Sentiment::Positive) && r.rating.abs() >= 0.5
    ));
    assert!(!data::tweets().is_empty());
    assert_err(
        data::parse_rated_tsv("1\tx\thello\r\n", "t.tsv"),
        &["t.tsv:1", "\"x\" is not a number"],
    );
    assert_err(
        data::parse_rated_tsv("1\t0.7\r\n", "t.tsv"),
        &["t.tsv:1", "id<TAB>rating<TAB>text"],
    );
}

#[test]
fn training_log_and_loss_curve() {
    let dir = scratch("log");
    let mut log = TrainLog::create(dir.join("run/train_log.jsonl")).unwrap();
    for step in 0..5 {
        let val_loss = (step % 2 == 0).then_some(3.0 - 0.2 * step as f32);
        log.push(LogRecord {
            step,
            train_loss: 3.0 - 0.3 * step as f32,
            val_loss,
            lr: 1e-3,
            tokens_per_s: 1000.0,
        })
        .unwrap();
    }
    let back = TrainLog::read(&log.path).unwrap();
    assert_eq!(back, log.records);
    let first = std::fs::read_to_string(&log.path).unwrap().lines().next().unwrap().to_string();
    assert_eq!(
        first,
        r#"{"step":0,"train_loss":3.0,"val_loss":3.0,"lr":0.001,"tokens_per_s":1000.0}"#
    );

    let svg_path = dir.join("run/loss.svg");
    glassgrad::train::log::write_loss_svg(&svg_path, &back, "tiny run").unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("tiny run") && svg.contains("<polyline"),
        "{}",
        &svg[..200.min(svg.len())]
    );
}

#[test]
fn checkpoint_and_optimizer_state() {
    let weights = Gpt2Weights::load(test_data("gpt2_ref/model")).unwrap();
    let tok = Tokenizer::Char(
        CharTokenizer::from_chars(
            (0..97u8).map(|i| (b' ' + i % 95) as char).take(95).chain(['\n', '\t']).collect(),
        )
        .unwrap(),
    );
    let dir = scratch("checkpoint");
    let log = vec![LogRecord {
        step: 0,
        train_loss: 4.5,
        val_loss: Some(4.6),
        lr: 1e-3,
        tokens_per_s: 10.0,
    }];
    save_checkpoint(&dir, &weights, &tok, &log).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "train_log.jsonl", "loss.svg"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let cfg = Gpt2Config::read(dir.join("config.json")).unwrap();
    assert_eq!(Tokenizer::load(&dir, cfg.vocab_size).unwrap().vocab_size(), 97);

    let mut m = BTreeMap::new();
    let mut v = BTreeMap::new();
    m.insert(
        "transformer.wte.weight".to_string(),
        Param { shape: vec![2, 2], data: vec![0.1, 0.2, 0.3, 0.4] },
    );
    v.insert(
        "transformer.wte.weight".to_string(),
        Param { shape: vec![2, 2], data: vec![1.0, 2.0, 3.0, 4.0] },
    );
    let state = AdamState { step: 42, exp_avg: m, exp_avg_sq: v };
    let path = dir.join("optimizer.safetensors");
    write_optimizer_state(&path, &state).unwrap();
    assert_eq!(read_optimizer_state(&path).unwrap(), state);
    let mut broken = state.clone();
    broken.exp_avg_sq.clear();
    write_optimizer_state(&path, &broken).unwrap();
    assert_err(
        read_optimizer_state(&path),
        &["optimizer.safetensors", "no matching 'exp_avg_sq.transformer.wte.weight'"],
    );
}
