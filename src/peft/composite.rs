//! Two (or more) methods on one model: He et al.'s MAM adapter is prefix tuning plus a scaled
//! parallel adapter beside the MLP, and any pair of methods composes when the code lets them.
//!
//! The rule (docs/methods.md): methods compose when they use different slots of the model.
//! The slots are the model's input (prompt or prefix tuning: one of them), each `Linear`'s adapter
//! (LoRA and its variants, DoRA, IA3, VeRA, serial bottleneck adapters, selective masking: one
//! per layer), and each sublayer's parallel-adapter slot (one beside attention, one beside the
//! MLP of each block). BitFit has no slot (it trains the base's biases) and composes with any of
//! them. `full` trains everything and composes with nothing. A clash is found by the second
//! method's own injection, which refuses a taken slot; [`compose`] names both methods in the
//! error. Their file keys must also differ (checked).
//! Training: each part freezes the base when it is injected; the composite then makes every
//! part's parameters train again. Each parameter gets the learning-rate scale of the part that
//! owns it; the per-step hooks run for every part in order.
//! Files: ONE adapter directory, as every method saves (a checkpoint is one flat unit):
//!   adapter_config.json        {"peft_type": "COMPOSITE", "parts": [{"config": <part's
//!                               adapter_config.json>, "tensors": [<its keys>]}, …]}
//!   adapter_model.safetensors  every part's tensors under their own keys
//! Loading hands each part its config and its tensors through a private staging directory and
//! that method's own loader (so each part's file checks apply), then re-enables all parts.
//! A composite does not merge (merge each method on its own; prefix tuning cannot be merged).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::io::safetensors::to_bytes;
use crate::io::{TensorFile, write_atomic};
use crate::model::gpt2::Gpt2;
use crate::peft::adapter::Adapter;
use crate::peft::files::{CONFIG_FILE, WEIGHTS_FILE};
use crate::tensor::Tensor;

/// Our `peft_type` for a composition of methods.
pub const COMPOSITE: &str = "COMPOSITE";

pub struct Composite {
    pub parts: Vec<Box<dyn Adapter>>,
    /// Each part's file keys (fixed once composed).
    keys: Vec<Vec<String>>,
    /// Each part's parameter tensors, by id (for the learning-rate scale).
    owned: Vec<HashSet<u64>>,
}

/// Adds the method `second` builds to a model that carries `first` (both names for messages).
/// An error names the two methods and why they do not compose; the model may then carry part of
/// `second` and should be dropped.
pub fn compose(
    model: &mut Gpt2,
    first: Box<dyn Adapter>,
    second_name: &str,
    second: impl FnOnce(&mut Gpt2) -> Result<Box<dyn Adapter>>,
) -> Result<Composite> {
    let first_name = first.peft_type().to_string();
    let second = second(model).map_err(|e| {
        Error::Input(format!(
            "{first_name} + {second_name} do not compose on this model: {e} (methods compose \
             when they use different slots: one input method, one method per layer, one \
             parallel adapter per sublayer; see docs/methods.md)"
        ))
    })?;
    Composite::new(model, vec![first, second])
}

impl Composite {
    /// The composite of `parts`, already on `model`: their keys checked distinct, every part's
    /// parameters made trainable and everything else frozen.
    pub fn new(model: &Gpt2, parts: Vec<Box<dyn Adapter>>) -> Result<Composite> {
        let mut keys = vec![];
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for p in &parts {
            let mut k = vec![];
            for (key, _) in p.tensors_to_save(model)? {
                if let Some(other) = seen.insert(key.clone(), p.peft_type().to_string()) {
                    return Err(Error::Input(format!(
                        "{other} + {} do not compose: both save the tensor {key}",
                        p.peft_type()
                    )));
                }
                k.push(key);
            }
            keys.push(k);
        }
        // The last injection froze the earlier parts: everything off, then every part on.
        model.set_trainable(|_| false)?;
        let mut owned = vec![];
        for p in &parts {
            let mut ids = HashSet::new();
            for (_, t) in p.named_parameters(model) {
                t.set_requires_grad(true)?; // in place: the registry's handle trains
                ids.insert(t.id());
            }
            owned.push(ids);
        }
        Ok(Composite { parts, keys, owned })
    }
}

/// Loads a COMPOSITE directory onto `model`, each part through its own method's loader.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<Composite> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: not valid JSON: {e}", path.display())))?;
    let bad = |what: &str| Error::Input(format!("{}: {what}", path.display()));
    let parts = json
        .get("parts")
        .and_then(Value::as_array)
        .filter(|p| p.len() >= 2)
        .ok_or_else(|| bad("a COMPOSITE config needs \"parts\": a list of two or more"))?;
    let file = TensorFile::read(dir.join(WEIGHTS_FILE))?;
    let mut claimed = HashSet::new();
    let mut staged = vec![];
    for (i, part) in parts.iter().enumerate() {
        let config = part.get("config").filter(|c| c.is_object()).ok_or_else(|| {
            bad(&format!("part {i} has no \"config\" object (its adapter_config.json)"))
        })?;
        if config.get("peft_type") == Some(&json!(COMPOSITE)) {
            return Err(bad(&format!("part {i} is itself COMPOSITE; list the methods flat")));
        }
        let keys: Vec<String> = part
            .get("tensors")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(&format!("part {i} has no \"tensors\" list")))?
            .iter()
            .map(|k| {
                k.as_str().map(str::to_string).ok_or_else(|| bad("a tensor key is not a string"))
            })
            .collect::<Result<_>>()?;
        let mut tensors = BTreeMap::new();
        for key in &keys {
            if !claimed.insert(key.clone()) {
                return Err(bad(&format!("tensor {key} is listed by two parts")));
            }
            tensors.insert(key.clone(), file.get(key)?.clone());
        }
        let bytes = to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v)))?;
        let config = serde_json::to_string_pretty(config).expect("JSON value serialises");
        staged.push((config, bytes));
    }
    if let Some(extra) = file.tensors.keys().find(|k| !claimed.contains(*k)) {
        return Err(Error::Input(format!(
            "{}: tensor {extra} belongs to no part of {}",
            file.path.display(),
            path.display()
        )));
    }
    static STAGED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stage =
        std::env::temp_dir().join(format!("glassgrad-composite-{}-{n}", std::process::id()));
    let mut loaded = vec![];
    let result = (|| -> Result<()> {
        for (config, bytes) in &staged {
            std::fs::create_dir_all(&stage)
                .map_err(|e| Error::Input(format!("cannot create {}: {e}", stage.display())))?;
            write_atomic(&stage.join(CONFIG_FILE), config.as_bytes())?;
            write_atomic(&stage.join(WEIGHTS_FILE), bytes)?;
            loaded
                .push(crate::peft::files::load(model, &stage).map_err(|e| {
                    Error::Input(format!("{} (a part of it): {e}", path.display()))
                })?);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&stage);
    result?;
    Composite::new(model, loaded)
}

impl Adapter for Composite {
    fn peft_type(&self) -> &str {
        COMPOSITE
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        self.parts.iter().flat_map(|p| p.named_parameters(model)).collect()
    }
    fn tensors_to_save(&self, model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for p in &self.parts {
            out.extend(p.tensors_to_save(model)?);
        }
        Ok(out)
    }
    fn config_json(&self) -> String {
        let parts: Vec<Value> = self
            .parts
            .iter()
            .zip(&self.keys)
            .map(|(p, keys)| {
                let config: Value =
                    serde_json::from_str(&p.config_json()).expect("a part's config is JSON");
                json!({ "config": config, "tensors": keys })
            })
            .collect();
        let top = json!({ "peft_type": COMPOSITE, "inference_mode": true, "parts": parts });
        serde_json::to_string_pretty(&top).expect("JSON value serialises")
    }
    fn train(&self, seed: u64) {
        self.parts.iter().for_each(|p| p.train(seed));
    }
    fn eval(&self) {
        self.parts.iter().for_each(|p| p.eval());
    }
    fn lr_scale(&self, name: &str, param: &Tensor) -> f32 {
        let owner = self.owned.iter().position(|ids| ids.contains(&param.id()));
        owner.map_or(1.0, |i| self.parts[i].lr_scale(name, param))
    }
    fn before_step(&self, step: usize, seed: u64) -> Result<()> {
        self.parts.iter().try_for_each(|p| p.before_step(step, seed))
    }
    fn after_step(&self, model: &Gpt2) -> Result<()> {
        self.parts.iter().try_for_each(|p| p.after_step(model))
    }
}
