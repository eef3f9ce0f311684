//! LoRA's configuration, and `adapter_config.json` read and written as PEFT (0.21) does.
//!
//! Reading: the fields we honour are typed below. Every other field PEFT writes must hold the
//! value that makes it do nothing (`null`, `false`, `{}`, `[]`; a few listed harmless ones, such
//! as `peft_version`, may hold anything): a field that would change the math and that we do not
//! implement (`layers_to_transform`, `rank_pattern`, `alpha_pattern`, …) is refused
//! by name, never silently ignored. Accepted extra fields are kept as they were and written back,
//! so loading PEFT's file and saving it gives PEFT's bytes again.
//! Writing: sorted keys, 2-space indent, no trailing newline (`json.dumps(indent=2,
//! sort_keys=True)`, what PEFT's `save_pretrained` writes).
//! NOTE: `lora_alpha` is an int in PEFT; we hold it as f64 and write an integral value as an int.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// Which biases train (and are saved with the adapter), PEFT's `bias`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// No bias trains (the default).
    None,
    /// Every bias of the model trains: the wrapped layers', and LayerNorm's and the others'.
    All,
    /// Only the biases of the layers LoRA wraps train.
    LoraOnly,
}

impl Bias {
    pub fn name(self) -> &'static str {
        match self {
            Bias::None => "none",
            Bias::All => "all",
            Bias::LoraOnly => "lora_only",
        }
    }
}

/// How A and B start (PEFT's `init_lora_weights`). Only used when an adapter is created, not
/// when one is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInit {
    /// `true`: A kaiming-uniform (a = √5, bound 1/√in), B zeros: training starts from the base.
    Default,
    /// `"gaussian"`: A ~ N(0, (1/r)²), B zeros.
    Gaussian,
    /// `false`: A and B both nn.Linear's default init (kaiming-uniform, bounds 1/√in and 1/√r),
    /// so the adapter is not a no-op (PEFT: for debugging).
    Random,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// R, the rank of the update.
    pub r: usize,
    pub lora_alpha: f64,
    /// Dropout on the adapter's input, in training mode only.
    pub lora_dropout: f64,
    /// Module-name suffixes to wrap (`c_proj` matches attn.c_proj and mlp.c_proj).
    pub target_modules: Vec<String>,
    /// Module-name suffixes never to wrap.
    pub exclude_modules: Vec<String>,
    /// Weights stored [in, out] (GPT-2's Conv1D). `inject` sets it for Conv1D layers, as PEFT does.
    pub fan_in_fan_out: bool,
    /// scaling = lora_alpha/√r instead of lora_alpha/r.
    pub use_rslora: bool,
    /// DoRA: a magnitude per output feature on every wrapped layer (src/peft/dora.rs).
    pub use_dora: bool,
    pub bias: Bias,
    pub init_lora_weights: LoraInit,
    pub base_model_name_or_path: Option<String>,
    pub task_type: Option<String>,
    pub inference_mode: bool,
    /// Fields we do not interpret, each at a value that does nothing, written back unchanged.
    pub extra: BTreeMap<String, Value>,
}

impl Default for LoraConfig {
    /// PEFT's defaults for GPT-2: r 8, alpha 8, no dropout, target `c_attn`, bias none.
    fn default() -> LoraConfig {
        LoraConfig {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["c_attn".into()],
            exclude_modules: vec![],
            fan_in_fan_out: false,
            use_rslora: false,
            use_dora: false,
            bias: Bias::None,
            init_lora_weights: LoraInit::Default,
            base_model_name_or_path: None,
            task_type: Some("CAUSAL_LM".into()),
            inference_mode: false,
            extra: BTreeMap::new(),
        }
    }
}

/// Fields that may hold any value: bookkeeping, or settings that only act together with another
/// field that must itself be inert (qalora_group_size needs use_qalora).
const HARMLESS: &[&str] = &[
    "peft_version",
    "auto_mapping",
    "revision",
    "megatron_core",
    "qalora_group_size",
    "runtime_config",
];

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

impl LoraConfig {
    /// lora_alpha / r, or lora_alpha / √r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Checks the values a person sets; layer-dependent checks (r vs the layer) are `inject`'s.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Input("LoRA: r must be at least 1, got 0".into()));
        }
        if !self.lora_alpha.is_finite() {
            return Err(Error::Input(format!(
                "LoRA: lora_alpha must be finite, got {}",
                self.lora_alpha
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Input(format!(
                "LoRA: lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Input(
                "LoRA: target_modules is empty; name at least one module (e.g. c_attn)".into(),
            ));
        }
        Ok(())
    }

    /// Parses `adapter_config.json` text; `source` names the file in messages.
    pub fn from_json_str(text: &str, source: &str) -> Result<LoraConfig> {
        let bad = |m: String| Error::Input(format!("{source}: {m}"));
        let value: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let Value::Object(fields) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let mut c = LoraConfig { task_type: None, ..LoraConfig::default() };
        let mut peft_type = None;
        for (key, v) in fields {
            let want = |what: &str| bad(format!("field {key} must be {what}, got {v}"));
            match key.as_str() {
                "peft_type" => {
                    peft_type =
                        Some(v.as_str().map(str::to_string).ok_or_else(|| want("a string"))?)
                }
                "r" => c.r = v.as_u64().ok_or_else(|| want("a positive integer"))? as usize,
                "lora_alpha" => c.lora_alpha = v.as_f64().ok_or_else(|| want("a number"))?,
                "lora_dropout" => c.lora_dropout = v.as_f64().ok_or_else(|| want("a number"))?,
                "target_modules" | "exclude_modules" => {
                    let list = match &v {
                        Value::Null => vec![],
                        Value::Array(a) => a
                            .iter()
                            .map(|s| s.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| want("a list of module names"))?,
                        Value::String(s) => {
                            return Err(bad(format!(
                                "{key} is the string {s:?}, which PEFT reads as a regular \
                                 expression (or \"all-linear\"); this loader takes a list of module \
                                 names only — write the names as a list"
                            )));
                        }
                        _ => return Err(want("a list of module names")),
                    };
                    if key == "target_modules" {
                        c.target_modules = list
                    } else {
                        c.exclude_modules = list
                    }
                }
                "fan_in_fan_out" => {
                    c.fan_in_fan_out = v.as_bool().ok_or_else(|| want("true or false"))?
                }
                "use_rslora" => c.use_rslora = v.as_bool().ok_or_else(|| want("true or false"))?,
                "use_dora" => c.use_dora = v.as_bool().ok_or_else(|| want("true or false"))?,
                "inference_mode" => {
                    c.inference_mode = v.as_bool().ok_or_else(|| want("true or false"))?
                }
                "bias" => {
                    c.bias = match v.as_str() {
                        Some("none") => Bias::None,
                        Some("all") => Bias::All,
                        Some("lora_only") => Bias::LoraOnly,
                        _ => return Err(want("\"none\", \"all\" or \"lora_only\"")),
                    }
                }
                "init_lora_weights" => {
                    c.init_lora_weights = match &v {
                        Value::Bool(true) => LoraInit::Default,
                        Value::Bool(false) => LoraInit::Random,
                        Value::String(s) if s == "gaussian" => LoraInit::Gaussian,
                        _ => {
                            return Err(bad(format!(
                                "init_lora_weights {v} is not supported (PiSSA, OLoRA, CorDA, LoftQ, \
                                 EVA and MiCA change the base weights or the method); supported: \
                                 true, false, \"gaussian\""
                            )));
                        }
                    }
                }
                "base_model_name_or_path" => {
                    c.base_model_name_or_path = v.as_str().map(str::to_string)
                }
                "task_type" => match v.as_str() {
                    None | Some("CAUSAL_LM") => c.task_type = v.as_str().map(str::to_string),
                    Some(other) => {
                        return Err(bad(format!(
                            "task_type {other:?} is not supported; this GPT-2 is a causal LM (CAUSAL_LM)"
                        )));
                    }
                },
                _ if HARMLESS.contains(&key.as_str()) || inert(&v) => {
                    c.extra.insert(key, v);
                }
                _ => {
                    return Err(bad(format!(
                        "field {key} = {v} is not supported by this LoRA (only its inert value — \
                         null, false, empty — is accepted); remove it or use PEFT"
                    )));
                }
            }
        }
        match peft_type.as_deref() {
            Some("LORA") => {}
            Some(other) => {
                return Err(bad(format!(
                    "peft_type {other:?} is not supported here; this loader reads LORA"
                )));
            }
            None => {
                return Err(bad("no peft_type field; is this a PEFT adapter_config.json?".into()));
            }
        }
        c.validate().map_err(|e| bad(e.to_string()))?;
        Ok(c)
    }

    pub fn read(path: impl AsRef<Path>) -> Result<LoraConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        LoraConfig::from_json_str(&text, &path.display().to_string())
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_json_string(&self) -> String {
        let mut m: BTreeMap<String, Value> = self.extra.clone();
        let alpha = if self.lora_alpha.fract() == 0.0 && self.lora_alpha.abs() < 1e15 {
            json!(self.lora_alpha as i64)
        } else {
            json!(self.lora_alpha)
        };
        let list = |l: &[String]| if l.is_empty() { Value::Null } else { json!(l) };
        let init = match self.init_lora_weights {
            LoraInit::Default => json!(true),
            LoraInit::Random => json!(false),
            LoraInit::Gaussian => json!("gaussian"),
        };
        let fields = [
            ("peft_type", json!("LORA")),
            ("task_type", json!(self.task_type)),
            ("base_model_name_or_path", json!(self.base_model_name_or_path)),
            ("r", json!(self.r)),
            ("lora_alpha", alpha),
            ("lora_dropout", json!(self.lora_dropout)),
            ("target_modules", list(&self.target_modules)),
            ("exclude_modules", list(&self.exclude_modules)),
            ("fan_in_fan_out", json!(self.fan_in_fan_out)),
            ("use_rslora", json!(self.use_rslora)),
            ("use_dora", json!(self.use_dora)),
            ("bias", json!(self.bias.name())),
            ("init_lora_weights", init),
            ("inference_mode", json!(self.inference_mode)),
        ];
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        // The fields PEFT always writes, at their inert values, for a config we made ourselves.
        for (k, v) in [
            ("layers_to_transform", Value::Null),
            ("layers_pattern", Value::Null),
            ("rank_pattern", json!({})),
            ("alpha_pattern", json!({})),
            ("modules_to_save", Value::Null),
            ("lora_bias", json!(false)),
            ("revision", Value::Null),
        ] {
            m.entry(k.to_string()).or_insert(v);
        }
        serde_json::to_string_pretty(&m).expect("a map of JSON values serialises")
    }
}
