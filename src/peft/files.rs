//! PEFT's adapter directory, both ways: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Keys (PEFT removes the adapter name): `base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight`
//! (R, in) and `…lora_B.weight` (out, R) — nn.Linear layout for both, whatever the base layer's;
//! with `bias` = all / lora_only the trained biases too (`<layer>.base_layer.bias` for a wrapped
//! layer); with `use_dora` DoRA's `<layer>.lora_magnitude_vector` (out). Metadata `{"format": "pt"}`. Loading checks every key and shape against the base before
//! changing the model; saving computes both files before writing either (each atomically).
//! A file we save, loaded and saved again, gives the same bytes; so does a file PEFT saved.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors::to_bytes;
use crate::io::{NamedTensor, TensorFile, write_atomic};
use crate::model::gpt2::Gpt2;
use crate::peft::adapter::Adapter;
use crate::peft::config::LoraConfig;
use crate::peft::dora::MAGNITUDE;
use crate::peft::lora::{
    FILE_PREFIX as PREFIX, LoraModel, bias_key, inject, moved_weight_key, plan,
};
use crate::tensor::DType;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Writes any method's adapter to `dir` in PEFT's layout: its parameters under their file keys
/// and its `adapter_config.json` (`inference_mode: true`, as PEFT saves). Both files are computed
/// before either is written, each atomically.
pub fn save(model: &Gpt2, adapter: &dyn Adapter, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let mut tensors = BTreeMap::new();
    for (key, t) in adapter.tensors_to_save(model)? {
        let named = match t.dtype() {
            // Indices (selective masking's) as torch's int64.
            DType::U32 => {
                let v: Vec<i64> = t.to_vec_u32()?.into_iter().map(i64::from).collect();
                NamedTensor::from_i64(t.shape(), &v)
            }
            _ => NamedTensor::from_f32(t.shape(), &t.to_vec()?),
        };
        tensors.insert(key, named);
    }
    let bytes = to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)))?;
    let json = adapter.config_json();
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Writes `lora`'s adapter to `dir` in PEFT's layout.
pub fn save_adapter(model: &Gpt2, lora: &LoraModel, dir: impl AsRef<Path>) -> Result<()> {
    save(model, lora, dir)
}

/// `peft_type` of the adapter directory `dir` (its `adapter_config.json`), for messages and
/// dispatch; a missing or unreadable config is an error naming the file.
pub fn peft_type(dir: &Path) -> Result<String> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(Error::Input(format!(
            "{} has no {CONFIG_FILE}; is it a PEFT adapter directory?",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: not valid JSON: {e}", path.display())))?;
    match json.get("peft_type") {
        Some(serde_json::Value::String(t)) => Ok(t.clone()),
        Some(other) => {
            Err(Error::Input(format!("{}: peft_type is {other}, not a string", path.display())))
        }
        None => Err(Error::Input(format!("{}: no peft_type field", path.display()))),
    }
}

/// Loads any supported PEFT adapter directory onto `model`, the method chosen by the config's
/// `peft_type`. An unknown or unsupported type is an error naming it and the supported ones.
pub fn load(model: &mut Gpt2, dir: impl AsRef<Path>) -> Result<Box<dyn Adapter>> {
    let dir = dir.as_ref();
    match peft_type(dir)?.as_str() {
        "LORA" => Ok(Box::new(load_adapter(model, dir)?)),
        "IA3" => Ok(Box::new(crate::peft::ia3::load(model, dir)?)),
        "ADALORA" => Ok(Box::new(crate::peft::adalora::load(model, dir)?)),
        "VERA" => Ok(Box::new(crate::peft::vera::load(model, dir)?)),
        "PROMPT_TUNING" => Ok(Box::new(crate::peft::prompt_tuning::load(model, dir)?)),
        "PREFIX_TUNING" => Ok(Box::new(crate::peft::prefix_tuning::load(model, dir)?)),
        crate::peft::bitfit::BITFIT => Ok(Box::new(crate::peft::bitfit::load(model, dir)?)),
        crate::peft::bottleneck::BOTTLENECK => {
            Ok(Box::new(crate::peft::bottleneck::load(model, dir)?))
        }
        crate::peft::sparse_mask::SPARSE_MASK => {
            Ok(Box::new(crate::peft::sparse_mask::load(model, dir)?))
        }
        crate::peft::composite::COMPOSITE => {
            Ok(Box::new(crate::peft::composite::load(model, dir)?))
        }
        other => Err(Error::Input(format!(
            "{}: peft_type {other:?} is not supported; supported: {}",
            dir.join(CONFIG_FILE).display(),
            SUPPORTED.join(", ")
        ))),
    }
}

/// The `peft_type`s [`load`] reads.
pub const SUPPORTED: &[&str] = &[
    "LORA",
    "IA3",
    "ADALORA",
    "VERA",
    "PROMPT_TUNING",
    "PREFIX_TUNING",
    "BITFIT",
    "BOTTLENECK",
    "SPARSE_MASK",
    "COMPOSITE",
];

/// The keys and shapes an adapter for `config` on `model` holds.
fn expected_keys(model: &Gpt2, config: &LoraConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let layers = plan(model, config)?;
    let r = config.r;
    let mut want = BTreeMap::new();
    for (name, fan_in, fan_out) in &layers {
        want.insert(format!("{PREFIX}{name}.lora_A.weight"), vec![r, *fan_in]);
        want.insert(format!("{PREFIX}{name}.lora_B.weight"), vec![*fan_out, r]);
        if config.use_dora {
            want.insert(format!("{PREFIX}{name}.{MAGNITUDE}"), vec![*fan_out]);
        }
    }
    let wrapped: Vec<&str> = layers.iter().map(|(n, _, _)| n.as_str()).collect();
    for (name, t) in model.named_parameters() {
        if let Some(key) = bias_key(&name, &wrapped, config.bias) {
            want.insert(key, t.shape().to_vec());
        }
    }
    Ok(want)
}

/// Loads a PEFT LoRA adapter directory onto `model`: freezes the base, wraps the layers the
/// config names, and sets A, B (and the saved biases) from the file. Every problem — a missing
/// or corrupt file, a field we do not honour, a key missing or unexpected, a shape that does not
/// fit this base — is an error before the model changes. The loaded A and B are trainable
/// (PEFT's `is_trainable=True`, to resume training); freeze them with `Gpt2::set_trainable` for
/// inference only.
pub fn load_adapter(model: &mut Gpt2, dir: impl AsRef<Path>) -> Result<LoraModel> {
    let dir = dir.as_ref();
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.exists() {
        return Err(Error::Input(format!(
            "{} has no {CONFIG_FILE}; is it a PEFT adapter directory?",
            dir.display()
        )));
    }
    let config = LoraConfig::read(&config_path)?;
    let file = TensorFile::read(dir.join(WEIGHTS_FILE))?;
    let want = expected_keys(model, &config)
        .map_err(|e| Error::Input(format!("{}: {e}", config_path.display())))?;
    let base = config.base_model_name_or_path.as_deref().unwrap_or("an unnamed base");
    let missing: Vec<&String> = want.keys().filter(|k| !file.tensors.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "{}: missing {} tensor(s) the config implies on this base, e.g. {} (a corrupt file, \
             or an adapter made for a different base: {base})",
            file.path.display(),
            missing.len(),
            missing[0]
        )));
    }
    // Delta-LoRA's moved base weights (`<layer>.base_layer.weight`) may come with the adapter.
    let moved: BTreeMap<String, Vec<usize>> = plan(model, &config)?
        .into_iter()
        .map(|(name, fan_in, fan_out)| (moved_weight_key(&name), vec![fan_in, fan_out]))
        .filter(|(key, _)| file.tensors.contains_key(key))
        .collect();
    let unexpected: Vec<&String> =
        file.tensors.keys().filter(|k| !want.contains_key(*k) && !moved.contains_key(*k)).collect();
    if !unexpected.is_empty() {
        return Err(Error::Input(format!(
            "{}: {} tensor(s) this LoRA does not use (another method, a DoRA file whose config \
             lacks use_dora, or an adapter made for a different base: {base}): {}",
            file.path.display(),
            unexpected.len(),
            unexpected.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let mut values = BTreeMap::new();
    for (key, shape) in &want {
        let (got, data) = file.f32(key)?;
        if &got != shape {
            return Err(Error::Input(format!(
                "{}: {key} has shape {got:?}, but this base needs {shape:?}; the adapter was made \
                 for a different base ({base})",
                file.path.display()
            )));
        }
        values.insert(key.clone(), data);
    }
    for (key, shape) in &moved {
        let (got, data) = file.f32(key)?;
        if &got != shape {
            return Err(Error::Input(format!(
                "{}: {key} has shape {got:?}, but the layer's weight is {shape:?} ([in, out]); \
                 the adapter was made for a different base ({base})",
                file.path.display()
            )));
        }
        values.insert(key.clone(), data);
    }
    let lora = inject(model, &config, 0)?;
    for l in &lora.layers {
        if let Some(data) = values.get(&moved_weight_key(&l.name)) {
            let w = l.linear.dense(&l.name, "Delta-LoRA's moved base weight")?;
            w.gpu().upload(w.storage(), bytemuck::cast_slice(data))?;
        }
    }
    for (key, t) in lora.named_parameters(model) {
        let data = values.get(&key).ok_or_else(|| {
            Error::Input(format!("internal: the adapter's parameter {key} was not planned"))
        })?;
        t.gpu().upload(t.storage(), bytemuck::cast_slice(data))?;
    }
    Ok(lora)
}
