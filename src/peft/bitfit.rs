//! BitFit (Ben Zaken et al. 2022): only the base model's bias terms train.
//!
//! What it adds: nothing — no new tensor, no new compute. What it trains: every bias of the model
//! (the four projections' and the LayerNorms' of every block, and ln_f's), or those of the
//! modules `bias_modules` names (PEFT's suffix matching); everything else is frozen in place.
//! PEFT has no BitFit, so its file is ours, in PEFT's directory layout:
//!   adapter_config.json        {"peft_type": "BITFIT", "bias_modules": null | [..],
//!                               "task_type": "CAUSAL_LM", "base_model_name_or_path": ..,
//!                               "inference_mode": true}
//!   adapter_model.safetensors  each trained bias under `base_model.model.<its transformers name>`
//!                              (`base_model.model.transformer.h.0.attn.c_attn.bias` (3C), …), f32
//! Loading writes the file's biases into the base's own (after checking every key and shape), so
//! merging is already done: `merge_and_unload` only reports how many biases it holds.

use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::peft::adapter::Adapter;
use crate::peft::fields::{
    ConfigFields, PeftFields, modules_json, read_weights, set_values, to_json,
};
use crate::peft::lora::{FILE_PREFIX, matches};
use crate::tensor::Tensor;

/// Our `peft_type` for BitFit.
pub const BITFIT: &str = "BITFIT";

#[derive(Clone, Debug, PartialEq, Default)]
pub struct BitFitConfig {
    /// Module-name suffixes whose bias trains (`c_attn`, `ln_1`, …); empty: every bias.
    pub bias_modules: Vec<String>,
    pub common: PeftFields,
}

impl BitFitConfig {
    pub fn from_json_str(text: &str, source: &str) -> Result<BitFitConfig> {
        let mut f = ConfigFields::parse(text, source, BITFIT)?;
        Ok(BitFitConfig {
            bias_modules: f.modules("bias_modules")?.unwrap_or_default(),
            common: f.finish("BitFit")?,
        })
    }

    pub fn to_json_string(&self) -> String {
        let fields =
            vec![("peft_type", json!(BITFIT)), ("bias_modules", modules_json(&self.bias_modules))];
        to_json(&self.common, fields, &[])
    }

    /// Whether the base parameter `name` is a bias this config trains.
    fn trains(&self, name: &str) -> bool {
        let Some(module) = name.strip_suffix(".bias") else { return false };
        self.bias_modules.is_empty() || self.bias_modules.iter().any(|m| matches(module, m))
    }
}

/// What [`inject`] did: the config and the trained biases' names.
pub struct BitFitModel {
    pub config: BitFitConfig,
    pub biases: Vec<String>,
}

/// Makes exactly the chosen biases trainable (the rest of the model frozen). Error: a
/// `bias_modules` entry that matches no module with a bias (the ones that exist are listed).
pub fn inject(model: &mut Gpt2, config: &BitFitConfig) -> Result<BitFitModel> {
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    for m in &config.bias_modules {
        if !names.iter().any(|n| n.strip_suffix(".bias").is_some_and(|module| matches(module, m))) {
            return Err(Error::Input(format!(
                "BitFit: bias_modules entry {m:?} matches no module with a bias; those are \
                 ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (per block) and ln_f"
            )));
        }
    }
    let biases: Vec<String> = names.into_iter().filter(|n| config.trains(n)).collect();
    model.set_trainable(|n| config.trains(n))?;
    Ok(BitFitModel { config: config.clone(), biases })
}

/// Loads a BitFit directory onto `model`: its biases replace the base's (every key and shape
/// checked first) and train.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<BitFitModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let config = BitFitConfig::from_json_str(&text, &path.display().to_string())?;
    let want = model
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| config.trains(n))
        .map(|(n, t)| (format!("{FILE_PREFIX}{n}"), t.shape().to_vec()))
        .collect();
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let bitfit = inject(model, &config)?;
    for (key, t) in bitfit.named_parameters(model) {
        set_values(&t, &values[&key])?;
    }
    Ok(bitfit)
}

impl Adapter for BitFitModel {
    fn peft_type(&self) -> &str {
        BITFIT
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        model
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| self.biases.contains(n))
            .map(|(n, t)| (format!("{FILE_PREFIX}{n}"), t))
            .collect()
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
    /// The biases are the base's own: nothing to fold, nothing to take off.
    fn merge_and_unload(self: Box<Self>, _model: &mut Gpt2) -> Result<usize> {
        Ok(self.biases.len())
    }
}
