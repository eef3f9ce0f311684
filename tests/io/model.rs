//! config.json, model directories, and the reference files made by scripts/make_gpt2_reference.py.

use std::collections::BTreeMap;
use std::path::Path;

use glassgrad::io::{Dtype, NamedTensor, TensorFile, write_safetensors};
use glassgrad::model::{Gpt2Config, Gpt2Weights, parameter_shapes};

use crate::common::{assert_err, data, scratch};
use crate::temp_dir::TempDir;

#[test]
fn reference_config_reads_and_round_trips() {
    let c = Gpt2Config::read(data("gpt2_ref/model/config.json")).unwrap();
    assert_eq!((c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head), (97, 32, 24, 2, 3));
    assert_eq!((c.head_dim(), c.mlp_hidden()), (8, 96));
    assert_eq!(c.layer_norm_epsilon, 1e-5);
    assert_eq!(c.activation_function, "gelu_new");
    assert!(c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, None);

    let text = c.to_json_string();
    assert_eq!(Gpt2Config::from_json_str(&text, "ours").unwrap(), c);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["architectures"], serde_json::json!(["GPT2LMHeadModel"]));
    assert_eq!(v["model_type"], "gpt2");
    // Every standard field transformers writes (except its version stamps) is present in ours.
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("gpt2_ref/model/config.json")).unwrap())
            .unwrap();
    for key in theirs.as_object().unwrap().keys() {
        if !["transformers_version", "dtype", "pad_token_id"].contains(&key.as_str()) {
            assert!(v.get(key).is_some(), "our config.json lacks {key}");
        }
    }
}

#[test]
fn config_defaults_extras_and_errors() {
    // Missing fields take transformers' defaults; unknown ones (n_ctx, …) are ignored.
    let c =
        Gpt2Config::from_json_str(r#"{"model_type": "gpt2", "n_ctx": 1024, "foo": [1]}"#, "c.json")
            .unwrap();
    assert_eq!((c.vocab_size, c.n_embd, c.n_layer, c.bos_token_id), (50257, 768, 12, Some(50256)));
    let ok =
        |extra: &str| format!(r#"{{"model_type": "gpt2", "n_embd": 24, "n_head": 3 {extra}}}"#);
    Gpt2Config::from_json_str(&ok(r#", "activation_function": "gelu_pytorch_tanh""#), "c.json")
        .unwrap();
    assert_err(
        Gpt2Config::from_json_str(r#"{"model_type": "llama"}"#, "c.json"),
        &["c.json", "\"llama\"", "gpt2"],
    );
    assert_err(
        Gpt2Config::from_json_str(r#"{"n_embd": 8}"#, "c.json"),
        &["c.json", "no \"model_type\""],
    );
    assert_err(
        Gpt2Config::from_json_str(r#"{"model_type": "gpt2", "n_embd": 10, "n_head": 3}"#, "c.json"),
        &["n_embd (10) is not divisible by n_head (3)"],
    );
    assert_err(
        Gpt2Config::from_json_str(&ok(r#", "activation_function": "relu""#), "c.json"),
        &["\"relu\"", "gelu_new"],
    );
    assert_err(
        Gpt2Config::from_json_str(&ok(r#", "scale_attn_by_inverse_layer_idx": true"#), "c.json"),
        &["scale_attn_by_inverse_layer_idx"],
    );
    assert_err(
        Gpt2Config::from_json_str(r#"{"model_type": "gpt2", "n_layer": "x"}"#, "c.json"),
        &["c.json", "not a valid GPT-2 config.json"],
    );
    assert_err(
        Gpt2Config::read("/nonexistent/config.json"),
        &["cannot read", "/nonexistent/config.json"],
    );
}

#[test]
fn reference_model_and_expected_files_match_the_config() {
    let w = Gpt2Weights::load(data("gpt2_ref/model")).unwrap();
    let shapes = parameter_shapes(&w.config);
    assert_eq!(shapes.len(), 2 + 12 * 2 + 2);
    assert_eq!(w.params.len(), shapes.len());
    for (name, shape) in &shapes {
        assert_eq!(&w.params[name].shape, shape, "{name}");
    }
    assert_eq!(w.params["transformer.h.1.attn.c_attn.weight"].shape, vec![24, 72]); // Conv1D [in, out]
    assert_eq!(w.params["transformer.h.1.mlp.c_proj.weight"].shape, vec![96, 24]);

    let expected = TensorFile::read(data("gpt2_ref/expected.safetensors")).unwrap();
    assert_eq!(expected.get("logits").unwrap().shape, vec![2, 17, 97]);
    let loss = expected.get("loss").unwrap();
    assert_eq!((loss.dtype, loss.shape.len()), (Dtype::F32, 0));
    assert!(expected.f32("loss").unwrap().1[0].is_finite());
    let grads: Vec<&str> =
        expected.tensors.keys().filter_map(|k| k.strip_prefix("grad.")).collect();
    let names: Vec<&str> = w.params.keys().map(String::as_str).collect();
    assert_eq!(grads, names, "one grad.<name> per parameter");
    for (name, shape) in &shapes {
        assert_eq!(&expected.get(&format!("grad.{name}")).unwrap().shape, shape);
    }
}

#[test]
fn bare_gpt2model_checkpoint_with_mask_buffers_loads_the_same() {
    let bare_file = TensorFile::read(data("gpt2_ref/model_bare/model.safetensors")).unwrap();
    assert!(
        bare_file.tensors.contains_key("h.0.attn.bias")
            && bare_file.tensors.contains_key("h.1.attn.masked_bias")
    );
    assert!(bare_file.tensors.keys().all(|k| !k.starts_with("transformer.")));
    let bare = Gpt2Weights::load(data("gpt2_ref/model_bare")).unwrap();
    let full = Gpt2Weights::load(data("gpt2_ref/model")).unwrap();
    assert_eq!(bare.params, full.params);
}

#[test]
fn save_then_load_round_trips() {
    let w = Gpt2Weights::load(data("gpt2_ref/model")).unwrap();
    let scratch = scratch("model-round-trip");
    let dir = scratch.join("ckpt");
    w.save(&dir).unwrap();
    let back = Gpt2Weights::load(&dir).unwrap();
    assert_eq!(back.config, w.config);
    assert_eq!(back.params, w.params);
    let f = TensorFile::read(dir.join("model.safetensors")).unwrap();
    assert_eq!(f.metadata.get("format").map(String::as_str), Some("pt"));
    assert!(!f.tensors.contains_key("lm_head.weight"));
    // Same names, shapes and bytes as transformers' own file.
    let theirs = TensorFile::read(data("gpt2_ref/model/model.safetensors")).unwrap();
    assert_eq!(f.tensors, theirs.tensors);
}

/// The reference checkpoint's tensors, edited by `edit`, written with its config.json into a new dir.
fn edited_model(name: &str, edit: impl FnOnce(&mut BTreeMap<String, NamedTensor>)) -> TempDir {
    let dir = scratch(name);
    let mut tensors = TensorFile::read(data("gpt2_ref/model/model.safetensors")).unwrap().tensors;
    edit(&mut tensors);
    write_safetensors(dir.join("model.safetensors"), tensors.iter().map(|(k, v)| (k.as_str(), v)))
        .unwrap();
    std::fs::copy(data("gpt2_ref/model/config.json"), dir.join("config.json")).unwrap();
    dir
}

fn load(dir: &Path) -> glassgrad::Result<()> {
    Gpt2Weights::load(dir).map(|_| ())
}

#[test]
fn model_directory_errors_name_the_problem() {
    let dir = edited_model("missing-key", |t| {
        t.remove("transformer.h.1.ln_2.bias");
    });
    assert_err(
        load(&dir),
        &["model.safetensors", "missing tensor 'transformer.h.1.ln_2.bias'", "[24]"],
    );

    let dir = edited_model("wrong-shape", |t| {
        t.insert(
            "transformer.wpe.weight".into(),
            NamedTensor::from_f32(&[16, 24], &[0.0; 16 * 24]),
        );
    });
    assert_err(
        load(&dir),
        &["'transformer.wpe.weight'", "[16, 24]", "expected [32, 24]", "config.json disagrees"],
    );

    let dir = edited_model("unknown-key", |t| {
        t.insert("transformer.h.0.attn.q_proj.weight".into(), NamedTensor::from_f32(&[1], &[0.0]));
    });
    assert_err(load(&dir), &["unknown tensor 'transformer.h.0.attn.q_proj.weight'"]);

    let dir = edited_model("extra-layer", |t| {
        t.insert("transformer.h.2.ln_1.bias".into(), NamedTensor::from_f32(&[24], &[0.0; 24]));
    });
    assert_err(load(&dir), &["unknown tensor 'transformer.h.2.ln_1.bias'", "n_layer"]);

    let dir = edited_model("untied-head", |t| {
        let mut head = t["transformer.wte.weight"].clone();
        head.data[0] ^= 1; // one bit of one value differs
        t.insert("lm_head.weight".into(), head);
    });
    assert_err(load(&dir), &["'lm_head.weight' differs from 'transformer.wte.weight'", "tied"]);

    let dir = edited_model("int-weights", |t| {
        t.insert("transformer.ln_f.bias".into(), NamedTensor::from_i64(&[24], &[0; 24]));
    });
    assert_err(load(&dir), &["'transformer.ln_f.bias'", "I64"]);

    assert_err(
        load(Path::new("/nonexistent-model-dir")),
        &["/nonexistent-model-dir", "not a directory"],
    );
    let dir = scratch("no-weights");
    std::fs::copy(data("gpt2_ref/model/config.json"), dir.join("config.json")).unwrap();
    assert_err(load(&dir), &["model.safetensors does not exist"]);
}

#[test]
fn tied_head_and_half_precision_are_accepted() {
    let dir = edited_model("tied-head", |t| {
        let wte = t["transformer.wte.weight"].clone();
        t.insert("lm_head.weight".into(), wte);
    });
    let w = Gpt2Weights::load(&dir).unwrap();
    assert!(!w.params.contains_key("lm_head.weight"));

    // The same checkpoint stored in f16: values come back as the f16-rounded f32s.
    let full = Gpt2Weights::load(data("gpt2_ref/model")).unwrap();
    let dir = edited_model("f16", |t| {
        for v in t.values_mut() {
            let f: Vec<f32> = v.to_f32("x").unwrap();
            let bytes =
                f.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect();
            *v = NamedTensor::new(Dtype::F16, &v.shape.clone(), bytes);
        }
    });
    let h = Gpt2Weights::load(&dir).unwrap();
    let (a, b) = (
        &h.params["transformer.h.0.mlp.c_fc.weight"].data,
        &full.params["transformer.h.0.mlp.c_fc.weight"].data,
    );
    // f16 has an 11-bit significand: relative rounding error ≤ 2^-11.
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= y.abs() * 2f32.powi(-11) + 1e-7, "{x} vs {y}");
    }
    assert_ne!(a, b, "f16 rounding must have changed something");
    // The note printed on load names the file, the count and the dtype.
    let file = glassgrad::io::TensorFile::read(dir.join("model.safetensors")).unwrap();
    let note = glassgrad::model::weights::conversion_note(&file).unwrap();
    assert!(note.contains("model.safetensors") && note.contains("as F16") && note.contains("f32"));
    let f32_file = glassgrad::io::TensorFile::read(data("gpt2_ref/model/model.safetensors"));
    assert_eq!(glassgrad::model::weights::conversion_note(&f32_file.unwrap()), None);

    // And in bf16 (8-bit significand, round to nearest even, as torch's .to(bfloat16) does).
    let dir = edited_model("bf16", |t| {
        for v in t.values_mut() {
            let f: Vec<f32> = v.to_f32("x").unwrap();
            let bytes =
                f.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect();
            *v = NamedTensor::new(Dtype::BF16, &v.shape.clone(), bytes);
        }
    });
    let h = Gpt2Weights::load(&dir).unwrap();
    let a = &h.params["transformer.h.0.mlp.c_fc.weight"].data;
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= y.abs() * 2f32.powi(-8) + 1e-30, "{x} vs {y}");
        assert_eq!(*x, half::bf16::from_f32(*y).to_f32(), "bf16 value not the rounded f32");
    }
    let file = glassgrad::io::TensorFile::read(dir.join("model.safetensors")).unwrap();
    let note = glassgrad::model::weights::conversion_note(&file).unwrap();
    assert!(note.contains("as BF16") && note.contains("f32"), "{note}");
}

#[test]
fn init_follows_transformers_scheme() {
    let config = Gpt2Config::new(65, 64, 48, 4, 4);
    let a = Gpt2Weights::init(&config, 1);
    assert_eq!(a.params, Gpt2Weights::init(&config, 1).params, "seeded");
    assert_ne!(a.params, Gpt2Weights::init(&config, 2).params);
    // Shapes are exactly those of the config; the count is V·C + P·C + L·(12C² + 13C) + 2C.
    let shapes = parameter_shapes(&config);
    assert!(shapes.iter().all(|(n, s)| &a.params[n].shape == s));
    let (v, p, c, l) = (65, 64, 48, 4);
    assert_eq!(a.num_params(), v * c + p * c + l * (12 * c * c + 13 * c) + 2 * c);
    assert!(a.params["transformer.h.3.ln_2.weight"].data.iter().all(|&x| x == 1.0));
    assert!(a.params["transformer.h.3.mlp.c_fc.bias"].data.iter().all(|&x| x == 0.0));
    // Sample standard deviations: 0.02 for c_fc, 0.02/√8 for c_proj (9216 draws each: ±3% is ~4σ).
    let std = |name: &str| {
        let d = &a.params[name].data;
        (d.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / d.len() as f64).sqrt()
    };
    assert!((std("transformer.h.0.mlp.c_fc.weight") / 0.02 - 1.0).abs() < 0.03);
    assert!((std("transformer.h.0.mlp.c_proj.weight") / (0.02 / 8f64.sqrt()) - 1.0).abs() < 0.03);
    // Saved, it loads back unchanged.
    let dir = scratch("init-save");
    a.save(&dir).unwrap();
    assert_eq!(Gpt2Weights::load(&dir).unwrap().params, a.params);
}
