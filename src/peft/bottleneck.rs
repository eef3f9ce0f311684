//! Bottleneck adapters (Houlsby et al. 2019), serial: a small residual MLP after the attention
//! output projection and after the MLP's output projection of every block.
//!
//! What it adds to a layer y = x·W + b (attn.c_proj and mlp.c_proj by default):
//!   h = y + gelu_new(y·W_downᵀ + b_down)·W_upᵀ + b_up
//!   W_down: (R, C), b_down: (R), W_up: (C, R), b_up: (C)      nn.Linear layout [out, in]
//! W_up and b_up start at zero, so the model starts as the base; W_down and b_down start
//! nn.Linear's way, U(±1/√C). The adapter sits before the block's residual add, which keeps the
//! base's own skip connection around it, as Houlsby's placement does. The nonlinearity is the
//! base's own gelu_new (Houlsby leaves it open; a ReLU's kink would also blur the
//! finite-difference check). What it trains: the four tensors per adapted layer; the base is
//! frozen. It does not merge (the GELU is in the way).
//! PEFT has no bottleneck adapter, so the file is ours, in PEFT's directory layout:
//!   adapter_config.json        {"peft_type": "BOTTLENECK", "bottleneck_size": R,
//!                               "target_modules": [..], "task_type": .., "inference_mode": ..}
//!   adapter_model.safetensors  `base_model.model.<layer>.adapter_down.{weight (R, C), bias (R)}`
//!                              and `…adapter_up.{weight (C, R), bias (C)}`, f32
//! The parallel variant (He et al. 2021: beside the whole attention/MLP, fed with its input,
//! scaled) has the same type and keys under `<sublayer>.parallel_adapter.`; its config adds
//! `"placement": "parallel"` and `"scaling"`, and its `target_modules` are sublayers ("attn",
//! "mlp"). It is built in `parallel_adapter.rs`; this file reads and writes both configs.

use std::path::Path;
use std::rc::Rc;

use serde_json::json;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::model::layers::{Linear, LinearAdapter, Parameters, WeightLayout};
use crate::peft::adapter::Adapter;
use crate::peft::fields::{
    ConfigFields, PeftFields, modules_json, read_weights, set_values, to_json,
};
use crate::peft::lora::{FILE_PREFIX, linear_layers, linear_layers_ref, matches};
use crate::tensor::Tensor;

/// Our `peft_type` for bottleneck adapters.
pub const BOTTLENECK: &str = "BOTTLENECK";

/// Where the adapters sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// After a layer's output (Houlsby): h = y + f(y).
    Serial,
    /// Beside a whole sublayer (He et al.): sublayer(h) + s·f(h), h the sublayer's input.
    Parallel,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckConfig {
    /// R, the bottleneck width.
    pub bottleneck_size: usize,
    /// Serial: the layers whose output passes through an adapter. Parallel: the sublayers an
    /// adapter sits beside, "attn" and/or "mlp".
    pub target_modules: Vec<String>,
    pub placement: Placement,
    /// s, the parallel adapter's output scale (1 for serial ones).
    pub scaling: f64,
    pub common: PeftFields,
}

impl Default for BottleneckConfig {
    /// After attention and after the MLP (both c_proj), R = 64 (Houlsby's middle setting).
    fn default() -> BottleneckConfig {
        BottleneckConfig {
            bottleneck_size: 64,
            target_modules: vec!["c_proj".into()],
            placement: Placement::Serial,
            scaling: 1.0,
            common: PeftFields::default(),
        }
    }
}

impl BottleneckConfig {
    pub fn from_json_str(text: &str, source: &str) -> Result<BottleneckConfig> {
        let mut f = ConfigFields::parse(text, source, BOTTLENECK)?;
        let d = BottleneckConfig::default();
        let placement = match f.string("placement")?.as_deref() {
            None | Some("serial") => Placement::Serial,
            Some("parallel") => Placement::Parallel,
            Some(other) => {
                return Err(f.err(format!(
                    "placement {other:?} is not known; use \"serial\" or \"parallel\""
                )));
            }
        };
        let scaling = f.f64("scaling")?.unwrap_or(1.0);
        if placement == Placement::Serial && scaling != 1.0 {
            return Err(f.err(format!(
                "scaling {scaling} applies to parallel adapters only (placement \"parallel\")"
            )));
        }
        let default_targets = match placement {
            Placement::Serial => d.target_modules,
            Placement::Parallel => vec!["mlp".into()],
        };
        Ok(BottleneckConfig {
            bottleneck_size: f.usize("bottleneck_size")?.unwrap_or(d.bottleneck_size),
            target_modules: f.modules("target_modules")?.unwrap_or(default_targets),
            placement,
            scaling,
            common: f.finish("bottleneck adapter")?,
        })
    }

    /// Parallel adapters beside the MLP with scale `scaling` (He et al.'s best placement).
    pub fn parallel(bottleneck_size: usize, scaling: f64) -> BottleneckConfig {
        BottleneckConfig {
            bottleneck_size,
            target_modules: vec!["mlp".into()],
            placement: Placement::Parallel,
            scaling,
            ..BottleneckConfig::default()
        }
    }

    /// A serial config writes only the fields it always had (its files keep their bytes).
    pub fn to_json_string(&self) -> String {
        let mut fields = vec![
            ("peft_type", json!(BOTTLENECK)),
            ("bottleneck_size", json!(self.bottleneck_size)),
            ("target_modules", modules_json(&self.target_modules)),
        ];
        if self.placement == Placement::Parallel {
            fields.push(("placement", json!("parallel")));
            fields.push(("scaling", json!(self.scaling)));
        }
        to_json(&self.common, fields, &[])
    }
}

/// One adapted layer's bottleneck: down-projection, GELU, up-projection, added to the output.
pub struct Bottleneck {
    pub adapter_down: Linear, // C → R, weight (R, C)
    pub adapter_up: Linear,   // R → C, weight (C, R)
}

impl LinearAdapter for Bottleneck {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let y = layer.project(x)?; // (.., C) = x·W + b
        let down = self.adapter_down.forward(&y)?.gelu()?; // (.., R)
        y.add(&self.adapter_up.forward(&down)?) // (.., C)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.adapter_down.visit(&format!("{prefix}adapter_down."), f);
        self.adapter_up.visit(&format!("{prefix}adapter_up."), f);
    }
}

/// What [`inject`] did: the config and the adapted layers' names.
pub struct BottleneckModel {
    pub config: BottleneckConfig,
    pub layers: Vec<String>,
}

/// A serial adapter's parameter (a parallel one's sit under `.parallel_adapter.`).
fn is_adapter(name: &str) -> bool {
    (name.contains(".adapter_down.") || name.contains(".adapter_up."))
        && !crate::peft::parallel_adapter::is_parallel(name)
}

/// The layers `config` adapts, (name, out); changes nothing.
pub fn plan(model: &Gpt2, config: &BottleneckConfig) -> Result<Vec<(String, usize)>> {
    if config.bottleneck_size == 0 {
        return Err(Error::Input("bottleneck adapter: bottleneck_size must be at least 1".into()));
    }
    if config.placement == Placement::Parallel {
        return crate::peft::parallel_adapter::plan(model, config);
    }
    let layers = linear_layers_ref(model);
    for target in &config.target_modules {
        if !layers.iter().any(|(n, _)| matches(n, target)) {
            return Err(Error::Input(format!(
                "bottleneck adapter: target module {target:?} matches no module of the model \
                 (its modules: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj under \
                 transformer.h.<i>, lm_head)"
            )));
        }
    }
    let mut out = vec![];
    for (name, layer) in &layers {
        if config.target_modules.iter().any(|t| matches(name, t)) {
            if layer.adapter.is_some() {
                return Err(Error::Input(format!(
                    "bottleneck adapter: {name} already carries an adapter"
                )));
            }
            out.push((name.clone(), layer.out_features()));
        }
    }
    Ok(out)
}

/// Freezes the base and puts a fresh bottleneck after every targeted layer (W_up, b_up = 0;
/// W_down, b_down ~ U(±1/√C) from `seed`).
pub fn inject(model: &mut Gpt2, config: &BottleneckConfig, seed: u64) -> Result<BottleneckModel> {
    if config.placement == Placement::Parallel {
        return crate::peft::parallel_adapter::inject(model, config, seed);
    }
    let planned = plan(model, config)?;
    let gpu = model.gpu().clone();
    let r = config.bottleneck_size;
    let mut rng = Rng::new(seed);
    let mut names = vec![];
    for (name, layer) in linear_layers(model) {
        let Some((_, c)) = planned.iter().find(|(n, _)| *n == name) else { continue };
        let bound = 1.0 / (*c as f64).sqrt();
        let mut draw =
            |n: usize| (0..n).map(|_| rng.range(-bound, bound) as f32).collect::<Vec<_>>();
        let linear = |w: Tensor, b: Tensor| Linear {
            layout: WeightLayout::OutIn,
            ..Linear::new(w, Some(b))
        };
        let adapter_down = linear(
            Tensor::parameter(&gpu, &draw(r * c), &[r, *c], true)?, // (R, C)
            Tensor::parameter(&gpu, &draw(r), &[r], true)?,         // (R)
        );
        let adapter_up = linear(
            Tensor::parameter(&gpu, &vec![0.0; c * r], &[*c, r], true)?, // (C, R)
            Tensor::parameter(&gpu, &vec![0.0; *c], &[*c], true)?,       // (C)
        );
        layer.adapter = Some(Rc::new(Bottleneck { adapter_down, adapter_up }));
        names.push(name);
    }
    model.set_trainable(is_adapter)?;
    Ok(BottleneckModel { config: config.clone(), layers: names })
}

/// Loads a bottleneck-adapter directory onto `model`, every key and shape checked first.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<BottleneckModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let config = BottleneckConfig::from_json_str(&text, &path.display().to_string())?;
    let r = config.bottleneck_size;
    let mut want = std::collections::BTreeMap::new();
    for (name, c) in
        plan(model, &config).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
    {
        // Serial: `name` is the layer; parallel: "<sublayer>.parallel_adapter".
        want.insert(format!("{FILE_PREFIX}{name}.adapter_down.weight"), vec![r, c]);
        want.insert(format!("{FILE_PREFIX}{name}.adapter_down.bias"), vec![r]);
        want.insert(format!("{FILE_PREFIX}{name}.adapter_up.weight"), vec![c, r]);
        want.insert(format!("{FILE_PREFIX}{name}.adapter_up.bias"), vec![c]);
    }
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let adapter = inject(model, &config, 0)?;
    for (key, t) in adapter.named_parameters(model) {
        set_values(&t, &values[&key])?;
    }
    Ok(adapter)
}

impl Adapter for BottleneckModel {
    fn peft_type(&self) -> &str {
        BOTTLENECK
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        let ours = |n: &str| match self.config.placement {
            Placement::Serial => is_adapter(n),
            Placement::Parallel => crate::peft::parallel_adapter::is_parallel(n),
        };
        model
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| ours(n))
            .map(|(n, t)| (format!("{FILE_PREFIX}{n}"), t))
            .collect()
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
}
