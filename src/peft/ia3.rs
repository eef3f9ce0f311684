//! IA3 (Liu et al. 2022, "(IA)³"): learned vectors that rescale activations, as PEFT's
//! `tuners/ia3` computes them.
//!
//! What it adds to a layer with weight W (Conv1D storage [in, out], y = x·W + b):
//!   attention-type target (c_attn):        h = (x·W + b) ⊙ l        l: (out), stored (out, 1)
//!   feed-forward target (mlp.c_proj):      h = (x ⊙ l)·W + b        l: (in),  stored (1, in)
//! A target is feed-forward when a `feedforward_modules` entry matches it; every feed-forward
//! module must also be a target. What it trains: the vectors l (init 1, so the model starts as the
//! base); every other parameter is frozen in place by [`inject`].
//! Saved for backward: the `mul` keeps l (for x's gradient) and its other input (for l's).
//! Merge (exact up to one f32 rounding, done on the host in f64): an output scale multiplies W's
//! column o and b[o] by l[o]; an input scale multiplies W's row i by l[i] and leaves b alone.
//! File keys: `base_model.model.<layer>.ia3_l`, with PEFT's shapes (out, 1) / (1, in).

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use serde_json::{Value, json};

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::model::layers::{Linear, LinearAdapter, WeightLayout};
use crate::peft::adapter::Adapter;
use crate::peft::fields::{
    ConfigFields, PeftFields, modules_json, read_weights, set_values, to_json,
};
use crate::peft::lora::{FILE_PREFIX, linear_layers, linear_layers_ref, matches};
use crate::tensor::Tensor;

/// PEFT's `IA3Config` (the fields we honour).
#[derive(Clone, Debug, PartialEq)]
pub struct Ia3Config {
    /// Module-name suffixes to wrap.
    pub target_modules: Vec<String>,
    /// The targets whose input (not output) is scaled; each must be one of `target_modules`.
    pub feedforward_modules: Vec<String>,
    pub exclude_modules: Vec<String>,
    /// Weights stored [in, out] (Conv1D); `inject` sets it from the layers, as PEFT does.
    pub fan_in_fan_out: bool,
    /// true: l = 1 (training starts from the base); false: l ~ N(0, 1) (PEFT: for debugging).
    pub init_ia3_weights: bool,
    pub common: PeftFields,
}

impl Default for Ia3Config {
    /// PEFT's defaults for GPT-2: targets c_attn and mlp.c_proj, the latter feed-forward.
    fn default() -> Ia3Config {
        Ia3Config {
            target_modules: vec!["c_attn".into(), "mlp.c_proj".into()],
            feedforward_modules: vec!["mlp.c_proj".into()],
            exclude_modules: vec![],
            fan_in_fan_out: false,
            init_ia3_weights: true,
            common: PeftFields::default(),
        }
    }
}

impl Ia3Config {
    pub fn validate(&self) -> Result<()> {
        if self.target_modules.is_empty() {
            return Err(Error::Input("IA3: target_modules is empty; name at least one".into()));
        }
        if let Some(f) = self.feedforward_modules.iter().find(|f| !self.target_modules.contains(f))
        {
            return Err(Error::Input(format!(
                "IA3: feedforward_modules entry {f:?} is not in target_modules {:?}; a \
                 feed-forward module must also be a target (PEFT's rule)",
                self.target_modules
            )));
        }
        Ok(())
    }

    pub fn from_json_str(text: &str, source: &str) -> Result<Ia3Config> {
        let mut f = ConfigFields::parse(text, source, "IA3")?;
        let d = Ia3Config::default();
        let c = Ia3Config {
            target_modules: f.modules("target_modules")?.unwrap_or(d.target_modules),
            feedforward_modules: f.modules("feedforward_modules")?.unwrap_or_default(),
            exclude_modules: f.modules("exclude_modules")?.unwrap_or_default(),
            fan_in_fan_out: f.bool("fan_in_fan_out")?.unwrap_or(false),
            init_ia3_weights: f.bool("init_ia3_weights")?.unwrap_or(true),
            common: f.finish("IA3")?,
        };
        c.validate().map_err(|e| Error::Input(format!("{source}: {e}")))?;
        Ok(c)
    }

    pub fn read(path: &Path) -> Result<Ia3Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        Ia3Config::from_json_str(&text, &path.display().to_string())
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn to_json_string(&self) -> String {
        let fields = vec![
            ("peft_type", json!("IA3")),
            ("target_modules", modules_json(&self.target_modules)),
            ("feedforward_modules", modules_json(&self.feedforward_modules)),
            ("exclude_modules", modules_json(&self.exclude_modules)),
            ("fan_in_fan_out", json!(self.fan_in_fan_out)),
            ("init_ia3_weights", json!(self.init_ia3_weights)),
        ];
        to_json(&self.common, fields, &[("modules_to_save", Value::Null)])
    }
}

/// One wrapped layer's IA3 vector.
pub struct Ia3 {
    pub ia3_l: Tensor, // (out, 1), or (1, in) for a feed-forward layer
    pub is_feedforward: bool,
    merged: Cell<bool>,
}

impl LinearAdapter for Ia3 {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        if self.merged.get() {
            return layer.project(x);
        }
        let l = self.ia3_l.reshape(&[self.ia3_l.numel()])?; // (in) or (out)
        if self.is_feedforward {
            layer.project(&x.mul(&l)?) // (.., out) = (x ⊙ l)·W + b
        } else {
            layer.project(x)?.mul(&l) // (.., out) = (x·W + b) ⊙ l
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}ia3_l"), &self.ia3_l);
    }
}

pub struct Ia3Layer {
    pub name: String,
    pub linear: Linear,
    pub ia3: Rc<Ia3>,
}

/// What [`inject`] did: the effective config and every wrapped layer, in registry order.
pub struct Ia3Model {
    pub config: Ia3Config,
    pub layers: Vec<Ia3Layer>,
}

fn chosen(config: &Ia3Config, name: &str) -> bool {
    config.target_modules.iter().any(|t| matches(name, t))
        && !config.exclude_modules.iter().any(|t| matches(name, t))
}

/// The layers `config` wraps: (name, is_feedforward, l's shape); changes nothing.
pub fn plan(model: &Gpt2, config: &Ia3Config) -> Result<Vec<(String, bool, Vec<usize>)>> {
    config.validate()?;
    let layers = linear_layers_ref(model);
    for target in &config.target_modules {
        if !layers.iter().any(|(n, _)| matches(n, target)) {
            return Err(Error::Input(format!(
                "IA3: target module {target:?} matches no module of the model (its modules: \
                 attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj under transformer.h.<i>, lm_head)"
            )));
        }
    }
    let mut out = vec![];
    for (name, layer) in layers.iter().filter(|(n, _)| chosen(config, n)) {
        if layer.adapter.is_some() {
            return Err(Error::Input(format!("IA3: {name} already carries an adapter")));
        }
        let ff = config.feedforward_modules.iter().any(|f| matches(name, f));
        let shape = if ff { vec![1, layer.in_features()] } else { vec![layer.out_features(), 1] };
        out.push((name.clone(), ff, shape));
    }
    if out.is_empty() {
        return Err(Error::Input("IA3: exclude_modules removes every target".into()));
    }
    Ok(out)
}

/// Freezes every base parameter and wraps each targeted `Linear` with a fresh IA3 vector
/// (l = 1, or N(0, 1) from `seed` with `init_ia3_weights` false). Errors before anything
/// changes: a target that matches nothing, a feed-forward module that is not a target, a layer
/// already wrapped.
pub fn inject(model: &mut Gpt2, config: &Ia3Config, seed: u64) -> Result<Ia3Model> {
    let planned = plan(model, config)?;
    let gpu = model.gpu().clone();
    let mut rng = Rng::new(seed);
    let mut effective = config.clone();
    let mut out = vec![];
    for (name, layer) in linear_layers(model) {
        let Some((_, ff, shape)) = planned.iter().find(|(n, _, _)| *n == name) else { continue };
        effective.fan_in_fan_out = layer.layout == WeightLayout::InOut;
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if config.init_ia3_weights {
            vec![1.0; n]
        } else {
            (0..n).map(|_| rng.normal() as f32).collect()
        };
        let ia3 = Rc::new(Ia3 {
            ia3_l: Tensor::parameter(&gpu, &values, shape, true)?,
            is_feedforward: *ff,
            merged: Cell::new(false),
        });
        layer.adapter = Some(ia3.clone());
        out.push(Ia3Layer { name, linear: layer.clone(), ia3 });
    }
    model.set_trainable(|n| n.ends_with(".ia3_l"))?;
    Ok(Ia3Model { config: effective, layers: out })
}

/// Loads PEFT's IA3 adapter directory onto `model` (every key and shape checked first); the
/// vectors are trainable (PEFT's `is_trainable=True`).
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<Ia3Model> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let config = Ia3Config::read(&path)?;
    let want = plan(model, &config)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
        .into_iter()
        .map(|(name, _, shape)| (format!("{FILE_PREFIX}{name}.ia3_l"), shape))
        .collect();
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let ia3 = inject(model, &config, 0)?;
    for (key, t) in ia3.named_parameters(model) {
        set_values(&t, &values[&key])?;
    }
    Ok(ia3)
}

impl Ia3Model {
    /// Folds every l into its layer's W (and b for an output scale), then takes IA3 off the
    /// layers; returns how many were merged.
    pub fn merge_and_unload(self, model: &mut Gpt2) -> Result<usize> {
        if let Some(l) = self.layers.iter().find(|l| !l.linear.owns_weight) {
            return Err(Error::Input(format!(
                "IA3: cannot merge into {}: its weight is tied to wte",
                l.name
            )));
        }
        for l in &self.layers {
            let scale = l.ia3.ia3_l.to_vec()?;
            let (fan_in, fan_out) = (l.linear.in_features(), l.linear.out_features());
            let dense = l.linear.dense(&l.name, "IA3 merge")?;
            let w = dense.to_vec()?;
            let merged: Vec<f32> = (0..w.len())
                .map(|at| {
                    let (i, o) = match l.linear.layout {
                        WeightLayout::InOut => (at / fan_out, at % fan_out),
                        WeightLayout::OutIn => (at % fan_in, at / fan_in),
                    };
                    let s = if l.ia3.is_feedforward { scale[i] } else { scale[o] };
                    (w[at] as f64 * s as f64) as f32
                })
                .collect();
            set_values(dense, &merged)?;
            if let (Some(b), false) = (&l.linear.bias, l.ia3.is_feedforward) {
                let bias: Vec<f32> = b.to_vec()?.iter().zip(&scale).map(|(b, s)| b * s).collect();
                set_values(b, &bias)?;
            }
            l.ia3.merged.set(true);
        }
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        for (name, layer) in linear_layers(model) {
            if names.contains(&name.as_str()) {
                layer.adapter = None;
            }
        }
        Ok(self.layers.len())
    }
}

impl Adapter for Ia3Model {
    fn peft_type(&self) -> &str {
        "IA3"
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        let names: Vec<String> = self.layers.iter().map(|l| format!("{}.ia3_l", l.name)).collect();
        model
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(n, t)| (format!("{FILE_PREFIX}{n}"), t))
            .collect()
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
    fn merge_and_unload(self: Box<Self>, model: &mut Gpt2) -> Result<usize> {
        Ia3Model::merge_and_unload(*self, model)
    }
}
