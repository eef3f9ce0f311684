//! Loading and saving a GPT-2 model directory: `config.json` + `model.safetensors`, exactly as
//! transformers' `GPT2LMHeadModel.save_pretrained` writes them.
//!
//! Every parameter is held on the host as f32 under its `GPT2LMHeadModel` name
//! (`transformer.h.0.attn.c_attn.weight`, …) in the stored layout: GPT-2's `Conv1D` keeps weights
//! as [in, out] (y = x·W + b), the transpose of `nn.Linear`.
//! Accepted on load: bare `GPT2Model` keys (no `transformer.` prefix, as in the public "gpt2"),
//! the old `attn.bias` / `attn.masked_bias` buffers (ignored), F16/BF16 storage (converted), and an
//! `lm_head.weight` equal to `wte` (tied). Anything else — a missing key, a wrong shape, an
//! unknown key, an untied LM head — is an error naming the key and the file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{NamedTensor, TensorFile, write_safetensors};
use crate::model::config::Gpt2Config;

/// One parameter on the host: its shape and its f32 values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded model: its config and its parameters by transformers name (sorted).
#[derive(Clone, Debug)]
pub struct Gpt2Weights {
    pub config: Gpt2Config,
    pub params: BTreeMap<String, Param>,
}

/// Every parameter of `GPT2LMHeadModel` (tied head, so no `lm_head.weight`) with its stored shape,
/// in the order transformers creates them.
pub fn parameter_shapes(config: &Gpt2Config) -> Vec<(String, Vec<usize>)> {
    let (v, p, c, h) = (config.vocab_size, config.n_positions, config.n_embd, config.mlp_hidden());
    let mut out = vec![
        ("transformer.wte.weight".to_string(), vec![v, c]), // (V, C)
        ("transformer.wpe.weight".to_string(), vec![p, c]), // (P, C)
    ];
    for i in 0..config.n_layer {
        let layer: [(&str, Vec<usize>); 12] = [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.c_attn.weight", vec![c, 3 * c]), // (C, 3C) Conv1D [in, out]
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]), // (C, C)
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![c, h]), // (C, 4C)
            ("mlp.c_fc.bias", vec![h]),
            ("mlp.c_proj.weight", vec![h, c]), // (4C, C)
            ("mlp.c_proj.bias", vec![c]),
        ];
        out.extend(layer.into_iter().map(|(k, s)| (format!("transformer.h.{i}.{k}"), s)));
    }
    out.push(("transformer.ln_f.weight".to_string(), vec![c]));
    out.push(("transformer.ln_f.bias".to_string(), vec![c]));
    out
}

/// Maps a checkpoint key to its `GPT2LMHeadModel` name: bare `GPT2Model` keys gain `transformer.`.
pub(crate) fn normalise_key(key: &str) -> String {
    let bare = ["wte.", "wpe.", "h.", "ln_f."];
    if bare.iter().any(|p| key.starts_with(p)) {
        format!("transformer.{key}")
    } else {
        key.to_string()
    }
}

/// `transformer.h.{i}.attn.bias` / `.attn.masked_bias`: causal-mask buffers old checkpoints carry.
fn is_mask_buffer(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("transformer.h.") else { return false };
    let Some((layer, tail)) = rest.split_once('.') else { return false };
    layer.parse::<usize>().is_ok() && (tail == "attn.bias" || tail == "attn.masked_bias")
}

/// What loading converted, for a note on stderr: "model.safetensors stores 148 tensors as F16;
/// converted to f32 (the engine computes in f32; memory is 2× the file's)". None for an f32 file.
pub fn conversion_note(file: &TensorFile) -> Option<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in file.tensors.values() {
        let dtype = format!("{:?}", t.dtype);
        if dtype != "F32" {
            *counts.entry(dtype).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return None;
    }
    let what: Vec<String> = counts.iter().map(|(d, n)| format!("{n} tensors as {d}")).collect();
    Some(format!(
        "{} stores {}; converted to f32 (the engine computes in f32; memory is that of f32 weights)",
        file.path.display(),
        what.join(" and ")
    ))
}

impl Gpt2Weights {
    /// Fresh weights initialised as transformers' `GPT2PreTrainedModel._init_weights` does:
    /// embeddings and projection weights ~ N(0, initializer_range²), the residual projections
    /// (`attn.c_proj`, `mlp.c_proj`) ~ N(0, (initializer_range/√(2·n_layer))²), biases 0,
    /// LayerNorm weight 1 and bias 0. Seeded (SplitMix64 + Box–Muller), so not torch's numbers.
    pub fn init(config: &Gpt2Config, seed: u64) -> Gpt2Weights {
        let mut rng = crate::cpu::Rng::new(seed);
        let std = config.initializer_range;
        let residual_std = std / (2.0 * config.n_layer as f64).sqrt();
        let mut params = BTreeMap::new();
        for (name, shape) in parameter_shapes(config) {
            let n: usize = shape.iter().product();
            let is_ln = name.contains(".ln_");
            let data: Vec<f32> = if is_ln && name.ends_with(".weight") {
                vec![1.0; n]
            } else if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                let s = if name.ends_with("c_proj.weight") { residual_std } else { std };
                (0..n).map(|_| (s * rng.normal()) as f32).collect()
            };
            params.insert(name, Param { shape, data });
        }
        Gpt2Weights { config: config.clone(), params }
    }

    /// The number of parameter values (the tied LM head counted once, as transformers does).
    pub fn num_params(&self) -> usize {
        self.params.values().map(|p| p.data.len()).sum()
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Gpt2Weights> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{} is not a directory (expected a model directory with config.json and model.safetensors)",
                dir.display()
            )));
        }
        // One of our checkpoints is loaded only whole: an interrupted save is finished first, and
        // every file must match its manifest (train/manifest.rs); other directories load as they are.
        crate::train::manifest::open(dir)?;
        let config = Gpt2Config::read(dir.join("config.json"))?;
        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            let hint = if dir.join("model.safetensors.index.json").exists() {
                " (sharded checkpoints are not supported)"
            } else if dir.join("pytorch_model.bin").exists() {
                " (pytorch_model.bin is not supported; re-save with safe_serialization=True)"
            } else {
                ""
            };
            return Err(Error::Input(format!("{} does not exist{hint}", weights_path.display())));
        }
        let file = TensorFile::read(&weights_path)?;
        let params = Gpt2Weights::from_tensors(&config, &file)?;
        if let Some(note) = conversion_note(&file) {
            eprintln!("note: {note}");
        }
        Ok(Gpt2Weights { config, params })
    }

    /// Normalises and checks the tensors of a checkpoint against `config` (see the module comment).
    pub fn from_tensors(config: &Gpt2Config, file: &TensorFile) -> Result<BTreeMap<String, Param>> {
        let path = file.path.display();
        let mut found: BTreeMap<String, (&str, &NamedTensor)> = BTreeMap::new();
        for (key, t) in &file.tensors {
            let name = normalise_key(key);
            if is_mask_buffer(&name) {
                continue;
            }
            if let Some((other, _)) = found.insert(name.clone(), (key.as_str(), t)) {
                return Err(Error::Input(format!(
                    "{path}: keys '{other}' and '{key}' are the same parameter '{name}'"
                )));
            }
        }
        let lm_head = found.remove("lm_head.weight");
        let mut params = BTreeMap::new();
        for (name, shape) in parameter_shapes(config) {
            let Some((key, t)) = found.remove(&name) else {
                return Err(Error::Input(format!(
                    "{path}: missing tensor '{name}' (shape {shape:?} for this config.json)"
                )));
            };
            if t.shape != shape {
                return Err(Error::Input(format!(
                    "{path}: tensor '{key}' has shape {:?}, expected {shape:?} from config.json \
                     (vocab_size {}, n_positions {}, n_embd {}, n_layer {}); config.json disagrees with the weights",
                    t.shape, config.vocab_size, config.n_positions, config.n_embd, config.n_layer
                )));
            }
            let data = t.to_f32(key).map_err(|e| Error::Input(format!("{path}: {e}")))?;
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "{path}: tensor '{key}' holds {} at flat index {i} (of {}); the weights are \
                     corrupt or came from a diverged run",
                    data[i],
                    data.len()
                )));
            }
            params.insert(name, Param { shape, data });
        }
        if let Some(name) = found.keys().next() {
            let key = found[name].0;
            let more = found.len() - 1;
            let hint = if name.starts_with("transformer.h.") {
                " (config.json's n_layer may be too small)"
            } else {
                ""
            };
            return Err(Error::Input(format!(
                "{path}: unknown tensor '{key}'{hint}{}; a GPT-2 checkpoint has only the GPT2LMHeadModel parameters",
                if more > 0 { format!(" and {more} more") } else { String::new() }
            )));
        }
        let wte = &params["transformer.wte.weight"];
        match lm_head {
            Some((key, t)) => {
                let head = t.to_f32(key).map_err(|e| Error::Input(format!("{path}: {e}")))?;
                if t.shape != wte.shape || head != wte.data {
                    return Err(Error::Input(format!(
                        "{path}: '{key}' differs from 'transformer.wte.weight'; only a tied LM head is supported"
                    )));
                }
            }
            None if !config.tie_word_embeddings => {
                return Err(Error::Input(format!(
                    "{path}: config.json says tie_word_embeddings = false but there is no 'lm_head.weight'; \
                     only a tied LM head is supported"
                )));
            }
            None => {}
        }
        Ok(params)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (atomically, metadata {"format":"pt"}),
    /// under transformers' names in the stored Conv1D layout and without `lm_head.weight` (tied).
    /// The parameters must be exactly those of [`parameter_shapes`].
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let expected = parameter_shapes(&self.config);
        let mut tensors = BTreeMap::new();
        for (name, shape) in &expected {
            let p = self.params.get(name).ok_or_else(|| {
                Error::Input(format!(
                    "cannot save {}: parameter '{name}' is missing",
                    dir.display()
                ))
            })?;
            if &p.shape != shape || p.data.len() != shape.iter().product::<usize>() {
                return Err(Error::Input(format!(
                    "cannot save {}: parameter '{name}' has shape {:?} ({} values), expected {shape:?}",
                    dir.display(),
                    p.shape,
                    p.data.len()
                )));
            }
            tensors.insert(name.as_str(), NamedTensor::from_f32(shape, &p.data));
        }
        if let Some(extra) = self.params.keys().find(|k| !tensors.contains_key(k.as_str())) {
            return Err(Error::Input(format!(
                "cannot save {}: unknown parameter '{extra}'",
                dir.display()
            )));
        }
        let mut config = self.config.clone();
        config.tie_word_embeddings = true;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Input(format!("cannot create {}: {e}", dir.display())))?;
        write_safetensors(dir.join("model.safetensors"), tensors.iter().map(|(k, v)| (*k, v)))?;
        config.write(dir.join("config.json"))
    }
}
