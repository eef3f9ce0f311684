//! `adapter_config.json` for the methods besides LoRA (IA3, VeRA, prompt and prefix tuning,
//! BitFit): PEFT's fields read into a method's typed config, and written back as PEFT writes them.
//!
//! Reading ([`ConfigFields`]): a method takes the fields it honours one by one, typed; what is
//! left must hold the value that makes it do nothing (`null`, `false`, `{}`, `[]`, `""`), or be
//! bookkeeping (`peft_version`, …) — any other field would change the math in a way we do not
//! implement, and is refused by name. The accepted rest is kept and written back unchanged, so
//! loading PEFT's file and saving it gives PEFT's bytes again.
//! Writing ([`to_json`]): sorted keys, 2-space indent, no trailing newline (Python's
//! `json.dumps(indent=2, sort_keys=True)`, what PEFT's `save_pretrained` writes).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// What every PEFT config holds besides its method's own fields.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftFields {
    pub base_model_name_or_path: Option<String>,
    /// "CAUSAL_LM" (the only task this GPT-2 has) or absent.
    pub task_type: Option<String>,
    pub inference_mode: bool,
    /// Fields we do not interpret, each inert, written back unchanged.
    pub extra: BTreeMap<String, Value>,
}

impl Default for PeftFields {
    fn default() -> PeftFields {
        PeftFields {
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            inference_mode: false,
            extra: BTreeMap::new(),
        }
    }
}

/// Fields that may hold any value: bookkeeping only.
const HARMLESS: &[&str] = &["peft_version", "auto_mapping", "revision"];

/// A value that makes a PEFT option do nothing.
fn inert(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// A parsed `adapter_config.json` whose fields a method takes one by one.
pub struct ConfigFields {
    source: String,
    fields: BTreeMap<String, Value>,
}

impl ConfigFields {
    /// Reads `path`; its `peft_type` must be `peft_type`.
    pub fn read(path: &Path, peft_type: &str) -> Result<ConfigFields> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        ConfigFields::parse(&text, &path.display().to_string(), peft_type)
    }

    /// Parses config text (`source` names it in messages); its `peft_type` must be `peft_type`.
    pub fn parse(text: &str, source: &str, peft_type: &str) -> Result<ConfigFields> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{source}: not valid JSON ({e})")))?;
        let Value::Object(map) = value else {
            return Err(Error::Input(format!("{source}: expected a JSON object")));
        };
        let mut c = ConfigFields { source: source.to_string(), fields: map.into_iter().collect() };
        match c.string("peft_type")? {
            Some(t) if t == peft_type => {}
            Some(t) => return Err(c.err(format!("peft_type is {t:?}, this reader is {peft_type}"))),
            None => return Err(c.err("no peft_type; is this a PEFT adapter_config.json?".into())),
        }
        Ok(c)
    }

    pub fn err(&self, message: String) -> Error {
        Error::Input(format!("{}: {message}", self.source))
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.fields.remove(key).filter(|v| !v.is_null())
    }

    /// The raw value of `key` (`null` is none), for a field with its own shape.
    pub fn value(&mut self, key: &str) -> Option<Value> {
        self.take(key)
    }

    pub fn usize(&mut self, key: &str) -> Result<Option<usize>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n as usize)),
                None => Err(self.err(format!("{key} must be a non-negative integer, got {v}"))),
            },
        }
    }

    pub fn u64(&mut self, key: &str) -> Result<Option<u64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(n)),
                None => Err(self.err(format!("{key} must be a non-negative integer, got {v}"))),
            },
        }
    }

    pub fn f64(&mut self, key: &str) -> Result<Option<f64>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.err(format!("{key} must be a finite number, got {v}"))),
            },
        }
    }

    pub fn bool(&mut self, key: &str) -> Result<Option<bool>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_bool() {
                Some(b) => Ok(Some(b)),
                None => Err(self.err(format!("{key} must be true or false, got {v}"))),
            },
        }
    }

    pub fn string(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(format!("{key} must be a string, got {v}"))),
        }
    }

    /// A list of module names (`null` is none). A string is refused: PEFT reads it as a regular
    /// expression, which this loader does not.
    pub fn modules(&mut self, key: &str) -> Result<Option<Vec<String>>> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Err(self.err(format!(
                "{key} is the string {s:?}, which PEFT reads as a regular expression; this loader \
                 takes a list of module names only — write the names as a list"
            ))),
            Some(Value::Array(a)) => {
                let names: Option<Vec<String>> =
                    a.iter().map(|s| s.as_str().map(str::to_string)).collect();
                names.map(Some).ok_or_else(|| self.err(format!("{key} must be a list of names")))
            }
            Some(v) => Err(self.err(format!("{key} must be a list of module names, got {v}"))),
        }
    }

    /// The fields every config holds, then the rest, each inert or bookkeeping; any other is
    /// refused by name (`method` says whose config it is).
    pub fn finish(mut self, method: &str) -> Result<PeftFields> {
        let task_type = self.string("task_type")?;
        if let Some(t) = task_type.as_deref().filter(|t| *t != "CAUSAL_LM") {
            return Err(self.err(format!(
                "task_type {t:?} is not supported; this GPT-2 is a causal LM (CAUSAL_LM)"
            )));
        }
        let common = PeftFields {
            base_model_name_or_path: self.string("base_model_name_or_path")?,
            task_type,
            inference_mode: self.bool("inference_mode")?.unwrap_or(false),
            extra: BTreeMap::new(),
        };
        let mut extra = BTreeMap::new();
        for (key, v) in std::mem::take(&mut self.fields) {
            if !(HARMLESS.contains(&key.as_str()) || inert(&v)) {
                return Err(self.err(format!(
                    "field {key} = {v} is not supported by this {method} (only its inert value — \
                     null, false, empty — is accepted); remove it or use PEFT"
                )));
            }
            extra.insert(key, v);
        }
        Ok(PeftFields { extra, ..common })
    }
}

/// `adapter_config.json` text: the method's `fields` over the common ones and the kept extras,
/// then `defaults` (PEFT's inert fields) where nothing else set them.
pub fn to_json(
    common: &PeftFields,
    fields: Vec<(&str, Value)>,
    defaults: &[(&str, Value)],
) -> String {
    let mut m: BTreeMap<String, Value> = common.extra.clone();
    m.insert("task_type".into(), json!(common.task_type));
    m.insert("base_model_name_or_path".into(), json!(common.base_model_name_or_path));
    m.insert("inference_mode".into(), json!(common.inference_mode));
    for (k, v) in fields {
        m.insert(k.to_string(), v);
    }
    for (k, v) in defaults {
        m.entry(k.to_string()).or_insert(v.clone());
    }
    serde_json::to_string_pretty(&m).expect("a map of JSON values serialises")
}

/// A module list as PEFT writes it: `null` when empty.
pub fn modules_json(list: &[String]) -> Value {
    if list.is_empty() { Value::Null } else { json!(list) }
}

/// The tensors of `dir`'s `adapter_model.safetensors`, checked against `want` (key → shape)
/// before anything changes: a key missing or unexpected, or a shape that does not fit this base,
/// is an error naming it (`base` names the base the adapter was made for).
pub fn read_weights(
    dir: &Path,
    want: &BTreeMap<String, Vec<usize>>,
    base: Option<&str>,
) -> Result<BTreeMap<String, Vec<f32>>> {
    let file = crate::io::TensorFile::read(dir.join(crate::peft::files::WEIGHTS_FILE))?;
    let base = base.unwrap_or("an unnamed base");
    if let Some(key) = want.keys().find(|k| !file.tensors.contains_key(*k)) {
        return Err(Error::Input(format!(
            "{}: missing the tensor {key}, which the config implies",
            file.path.display()
        )));
    }
    let unexpected: Vec<&str> =
        file.tensors.keys().filter(|k| !want.contains_key(*k)).map(|k| k.as_str()).collect();
    if !unexpected.is_empty() {
        return Err(Error::Input(format!(
            "{}: tensor(s) this adapter's config does not use (another method or another base?): {}",
            file.path.display(),
            unexpected.join(", ")
        )));
    }
    let mut values = BTreeMap::new();
    for (key, shape) in want {
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
    Ok(values)
}

/// Uploads `data` into a parameter's own storage.
pub fn set_values(t: &crate::tensor::Tensor, data: &[f32]) -> Result<()> {
    t.gpu().upload(t.storage(), bytemuck::cast_slice(data))
}
