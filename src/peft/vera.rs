//! VeRA (Kopiczko et al. 2024): one pair of frozen random projections shared by every adapted
//! layer, and two small trained scaling vectors per layer, as PEFT's `tuners/vera` computes it.
//!
//! Shared, frozen:  A (R, in_max), B (out_max, R), kaiming-uniform with bound √(6/fan_in)
//! (A's fan_in is in_max, B's is R), A drawn first from `projection_prng_key`.
//! Per layer, trained:  λ_d (R), init `d_initial` (0.1);  λ_b (out), init 0.
//! What it adds to a layer with weight W (Conv1D storage [in, out], y = x·W + b):
//!   h = x·W + b + λ_b ⊙ ((λ_d ⊙ (dropout(x)·A[:, :in]ᵀ))·B[:out, :]ᵀ)       no alpha
//! so with λ_b = 0 the model starts as the base. The parameter count per layer is R + out, against
//! LoRA's R·(in + out).
//! Saved for backward: the matmuls and muls keep what they need; A and B are frozen and get no
//! gradient.
//! Files: `base_model.model.<layer>.vera_lambda_d` (R), `…vera_lambda_b` (out), and with
//! `save_projection` (PEFT's default, and the only setting we take) the shared
//! `base_model.vera_A` and `base_model.vera_B`. A fresh adapter draws A and B from our generator
//! (same distribution as PEFT's torch generator, not its bits); a loaded one uses the file's
//! projections exactly, so PEFT's file gives PEFT's logits.
//! Merge (host, f64): ΔW[i, o] = λ_b[o]·Σ_k B[o, k]·λ_d[k]·A[k, i] added to W.
//! Dropout (training mode only, `vera_dropout`): layer k's mask from the engine's counter-based
//! dropout with seed `Dropout::stream(seed ^ VERA_DROPOUT_SALT) + k`, reused until the next
//! `train(seed)` (a recomputed segment sees the same mask).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use serde_json::{Value, json};

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::{Dropout, Gpt2};
use crate::model::layers::{Linear, LinearAdapter, WeightLayout};
use crate::peft::adapter::Adapter;
use crate::peft::fields::{
    ConfigFields, PeftFields, modules_json, read_weights, set_values, to_json,
};
use crate::peft::lora::{FILE_PREFIX, linear_layers, linear_layers_ref, matches};
use crate::tensor::Tensor;

/// Mixed into the training seed so VeRA's dropout streams are not the residual dropout's.
pub const VERA_DROPOUT_SALT: u64 = 0x5665_5241_4472_6F70; // "VeRADrop"

/// The shared projections' keys in `adapter_model.safetensors`.
pub const VERA_A_KEY: &str = "base_model.vera_A";
pub const VERA_B_KEY: &str = "base_model.vera_B";

/// PEFT's `VeraConfig` (the fields we honour).
#[derive(Clone, Debug, PartialEq)]
pub struct VeraConfig {
    /// R, the rank of the shared projections.
    pub r: usize,
    pub target_modules: Vec<String>,
    /// Seed of the shared projections (PEFT seeds torch's generator with it; we seed ours).
    pub projection_prng_key: u64,
    /// Save A and B in the adapter file. Must be true here: without them a loader has to
    /// regenerate them with torch's generator, which we do not reproduce.
    pub save_projection: bool,
    pub vera_dropout: f64,
    /// λ_d's initial value.
    pub d_initial: f64,
    pub fan_in_fan_out: bool,
    /// true: λ_b = 0, λ_d = d_initial; false: λ_b = 1, λ_d ~ N(0, 1) (PEFT: for debugging).
    pub init_weights: bool,
    pub common: PeftFields,
}

impl Default for VeraConfig {
    /// PEFT's defaults for GPT-2: r 256, target c_attn, key 0, save_projection, d_initial 0.1.
    fn default() -> VeraConfig {
        VeraConfig {
            r: 256,
            target_modules: vec!["c_attn".into()],
            projection_prng_key: 0,
            save_projection: true,
            vera_dropout: 0.0,
            d_initial: 0.1,
            fan_in_fan_out: false,
            init_weights: true,
            common: PeftFields::default(),
        }
    }
}

impl VeraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Input("VeRA: r must be at least 1, got 0".into()));
        }
        if self.target_modules.is_empty() {
            return Err(Error::Input("VeRA: target_modules is empty; name at least one".into()));
        }
        if !(0.0..1.0).contains(&self.vera_dropout) {
            return Err(Error::Input(format!(
                "VeRA: vera_dropout must be in [0, 1), got {}",
                self.vera_dropout
            )));
        }
        if !self.save_projection {
            return Err(Error::Input(
                "VeRA: save_projection = false is not supported: the shared projections would \
                 have to be regenerated bit for bit with torch's generator; save them (PEFT's \
                 default)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn from_json_str(text: &str, source: &str) -> Result<VeraConfig> {
        let mut f = ConfigFields::parse(text, source, "VERA")?;
        let d = VeraConfig::default();
        match f.string("bias")?.as_deref() {
            None | Some("none") => {}
            Some(other) => {
                return Err(
                    f.err(format!("bias {other:?} is not supported by this VeRA (only \"none\")"))
                );
            }
        }
        let c = VeraConfig {
            r: f.usize("r")?.unwrap_or(d.r),
            target_modules: f.modules("target_modules")?.unwrap_or(d.target_modules),
            projection_prng_key: f.u64("projection_prng_key")?.unwrap_or(0),
            save_projection: f.bool("save_projection")?.unwrap_or(true),
            vera_dropout: f.f64("vera_dropout")?.unwrap_or(0.0),
            d_initial: f.f64("d_initial")?.unwrap_or(d.d_initial),
            fan_in_fan_out: f.bool("fan_in_fan_out")?.unwrap_or(false),
            init_weights: f.bool("init_weights")?.unwrap_or(true),
            common: f.finish("VeRA")?,
        };
        c.validate().map_err(|e| Error::Input(format!("{source}: {e}")))?;
        Ok(c)
    }

    pub fn read(path: &Path) -> Result<VeraConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        VeraConfig::from_json_str(&text, &path.display().to_string())
    }

    pub fn to_json_string(&self) -> String {
        let fields = vec![
            ("peft_type", json!("VERA")),
            ("r", json!(self.r)),
            ("target_modules", modules_json(&self.target_modules)),
            ("projection_prng_key", json!(self.projection_prng_key)),
            ("save_projection", json!(self.save_projection)),
            ("vera_dropout", json!(self.vera_dropout)),
            ("d_initial", json!(self.d_initial)),
            ("fan_in_fan_out", json!(self.fan_in_fan_out)),
            ("init_weights", json!(self.init_weights)),
            ("bias", json!("none")),
        ];
        let defaults = [
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("modules_to_save", Value::Null),
        ];
        to_json(&self.common, fields, &defaults)
    }
}

/// One wrapped layer's VeRA: its vectors, and handles to the shared projections.
pub struct Vera {
    pub vera_lambda_d: Tensor, // (R)
    pub vera_lambda_b: Tensor, // (out)
    pub vera_a: Tensor,        // (R, in_max), shared, frozen
    pub vera_b: Tensor,        // (out_max, R), shared, frozen
    pub vera_dropout: f32,
    dropout_seed: Cell<Option<u64>>,
    merged: Cell<bool>,
}

impl LinearAdapter for Vera {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let base = layer.project(x)?; // (.., out) = x·W + b
        if self.merged.get() {
            return Ok(base);
        }
        let (fan_in, fan_out) = (layer.in_features(), layer.out_features());
        let x = match self.dropout_seed.get() {
            Some(seed) => x.dropout(self.vera_dropout, seed, true)?, // (.., in)
            None => x.clone(),
        };
        let rows = x.numel() / fan_in.max(1);
        let a = self.vera_a.slice(1, 0, fan_in)?; // (R, in)
        let b = self.vera_b.slice(0, 0, fan_out)?; // (out, R)
        let down = x.reshape(&[rows, fan_in])?.matmul_t(&a, false, true)?; // (rows, R) = x·Aᵀ
        let down = down.mul(&self.vera_lambda_d)?; // (rows, R)
        let up = down.matmul_t(&b, false, true)?.mul(&self.vera_lambda_b)?; // (rows, out)
        base.add(&up.reshape(base.shape())?) // (.., out)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}vera_lambda_b"), &self.vera_lambda_b);
        f(format!("{prefix}vera_lambda_d"), &self.vera_lambda_d);
    }
}

pub struct VeraLayer {
    pub name: String,
    pub linear: Linear,
    pub vera: Rc<Vera>,
}

/// What [`inject`] did: the effective config, the shared projections, every wrapped layer.
pub struct VeraModel {
    pub config: VeraConfig,
    pub vera_a: Tensor, // (R, in_max)
    pub vera_b: Tensor, // (out_max, R)
    pub layers: Vec<VeraLayer>,
}

/// The layers `config` wraps, (name, in, out); changes nothing.
pub fn plan(model: &Gpt2, config: &VeraConfig) -> Result<Vec<(String, usize, usize)>> {
    config.validate()?;
    let layers = linear_layers_ref(model);
    for target in &config.target_modules {
        if !layers.iter().any(|(n, _)| matches(n, target)) {
            return Err(Error::Input(format!(
                "VeRA: target module {target:?} matches no module of the model (its modules: \
                 attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj under transformer.h.<i>, lm_head)"
            )));
        }
    }
    let mut out = vec![];
    for (name, layer) in &layers {
        if config.target_modules.iter().any(|t| matches(name, t)) {
            if layer.adapter.is_some() {
                return Err(Error::Input(format!("VeRA: {name} already carries an adapter")));
            }
            out.push((name.clone(), layer.in_features(), layer.out_features()));
        }
    }
    Ok(out)
}

/// Checks that projections A (R', in') and B (out', R'') serve every planned layer.
fn check_projections(
    config: &VeraConfig,
    layers: &[(String, usize, usize)],
    a: &[usize],
    b: &[usize],
) -> Result<()> {
    let r = config.r;
    let (in_max, out_max) = max_dims(layers);
    let widest_in = layers.iter().find(|l| l.1 == in_max).map_or("", |l| l.0.as_str());
    let widest_out = layers.iter().find(|l| l.2 == out_max).map_or("", |l| l.0.as_str());
    if a.len() != 2 || a[0] != r || a[1] < in_max {
        return Err(Error::Input(format!(
            "VeRA: {VERA_A_KEY} has shape {a:?}, but the adapted layers need (r = {r}, ≥ {in_max}) \
             ({widest_in} has {in_max} inputs)"
        )));
    }
    if b.len() != 2 || b[1] != r || b[0] < out_max {
        return Err(Error::Input(format!(
            "VeRA: {VERA_B_KEY} has shape {b:?}, but the adapted layers need (≥ {out_max}, r = {r}) \
             ({widest_out} has {out_max} outputs)"
        )));
    }
    Ok(())
}

fn max_dims(layers: &[(String, usize, usize)]) -> (usize, usize) {
    layers.iter().fold((0, 0), |(i, o), l| (i.max(l.1), o.max(l.2)))
}

/// Freezes the base and wraps every targeted `Linear` with VeRA. A and B are drawn from
/// `projection_prng_key` (A first); λ_d = d_initial, λ_b = 0 (`init_weights`); `seed` is
/// used only for `init_weights` = false.
pub fn inject(model: &mut Gpt2, config: &VeraConfig, seed: u64) -> Result<VeraModel> {
    let layers = plan(model, config)?;
    let (in_max, out_max) = max_dims(&layers);
    let r = config.r;
    let mut rng = Rng::new(config.projection_prng_key);
    let mut kaiming = |n: usize, fan_in: usize| -> Vec<f32> {
        let bound = (6.0 / fan_in as f64).sqrt(); // gain √2 · √(3/fan_in)
        (0..n).map(|_| rng.range(-bound, bound) as f32).collect()
    };
    let a = kaiming(r * in_max, in_max);
    let b = kaiming(out_max * r, r);
    inject_with(model, config, &layers, (&a, &b, [r, in_max], [out_max, r]), seed)
}

type Projections<'a> = (&'a [f32], &'a [f32], [usize; 2], [usize; 2]);

fn inject_with(
    model: &mut Gpt2,
    config: &VeraConfig,
    planned: &[(String, usize, usize)],
    (a, b, a_shape, b_shape): Projections,
    seed: u64,
) -> Result<VeraModel> {
    check_projections(config, planned, &a_shape, &b_shape)?;
    let gpu = model.gpu().clone();
    let vera_a = Tensor::parameter(&gpu, a, &a_shape, false)?; // (R, in_max)
    let vera_b = Tensor::parameter(&gpu, b, &b_shape, false)?; // (out_max, R)
    let mut rng = Rng::new(seed);
    let mut effective = config.clone();
    let r = config.r;
    let mut out = vec![];
    for (name, layer) in linear_layers(model) {
        if !planned.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        effective.fan_in_fan_out = layer.is_conv1d();
        let fan_out = layer.out_features();
        let (d, b) = if config.init_weights {
            (vec![config.d_initial as f32; r], vec![0.0; fan_out])
        } else {
            ((0..r).map(|_| rng.normal() as f32).collect(), vec![1.0; fan_out])
        };
        let vera = Rc::new(Vera {
            vera_lambda_d: Tensor::parameter(&gpu, &d, &[r], true)?, // (R)
            vera_lambda_b: Tensor::parameter(&gpu, &b, &[fan_out], true)?, // (out)
            vera_a: vera_a.clone(),
            vera_b: vera_b.clone(),
            vera_dropout: config.vera_dropout as f32,
            dropout_seed: Cell::new(None),
            merged: Cell::new(false),
        });
        layer.adapter = Some(vera.clone());
        out.push(VeraLayer { name, linear: layer.clone(), vera });
    }
    model.set_trainable(|n| n.ends_with(".vera_lambda_b") || n.ends_with(".vera_lambda_d"))?;
    Ok(VeraModel { config: effective, vera_a, vera_b, layers: out })
}

/// Loads PEFT's VeRA adapter directory (saved with `save_projection`) onto `model`: the file's
/// A and B exactly, and the vectors, every key and shape checked first.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<VeraModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let config = VeraConfig::read(&path)?;
    let named = |e: Error| Error::Input(format!("{}: {e}", path.display()));
    let layers = plan(model, &config).map_err(named)?;
    // The projections' shapes come from the file (PEFT's may be wider than these layers need).
    let file = crate::io::TensorFile::read(dir.join(crate::peft::files::WEIGHTS_FILE))?;
    let shape_of = |key: &str| -> Result<Vec<usize>> {
        file.tensors.get(key).map(|t| t.shape.clone()).ok_or_else(|| {
            Error::Input(format!(
                "{}: no {key}; VeRA adapters load only when saved with save_projection",
                file.path.display()
            ))
        })
    };
    let (a_shape, b_shape) = (shape_of(VERA_A_KEY)?, shape_of(VERA_B_KEY)?);
    check_projections(&config, &layers, &a_shape, &b_shape)
        .map_err(|e| Error::Input(format!("{}: {e}", file.path.display())))?;
    let mut want = BTreeMap::new();
    want.insert(VERA_A_KEY.to_string(), a_shape.clone());
    want.insert(VERA_B_KEY.to_string(), b_shape.clone());
    for (name, _, fan_out) in &layers {
        want.insert(format!("{FILE_PREFIX}{name}.vera_lambda_d"), vec![config.r]);
        want.insert(format!("{FILE_PREFIX}{name}.vera_lambda_b"), vec![*fan_out]);
    }
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let projections = (
        values[VERA_A_KEY].as_slice(),
        values[VERA_B_KEY].as_slice(),
        [a_shape[0], a_shape[1]],
        [b_shape[0], b_shape[1]],
    );
    let vera = inject_with(model, &config, &layers, projections, 0)?;
    for (key, t) in vera.named_parameters(model) {
        set_values(&t, &values[&key])?;
    }
    Ok(vera)
}

impl VeraModel {
    pub fn train(&self, seed: u64) {
        let stream = Dropout::stream(seed ^ VERA_DROPOUT_SALT);
        for (k, l) in self.layers.iter().enumerate() {
            let on = l.vera.vera_dropout > 0.0;
            l.vera.dropout_seed.set(on.then(|| stream.wrapping_add(k as u64)));
        }
    }

    pub fn eval(&self) {
        self.layers.iter().for_each(|l| l.vera.dropout_seed.set(None));
    }

    /// ΔW of layer `l` in the weight's stored layout, in f64.
    pub fn delta_weight(&self, l: &VeraLayer) -> Result<Vec<f64>> {
        let (a, b) = (self.vera_a.to_vec()?, self.vera_b.to_vec()?);
        let (d, lb) = (l.vera.vera_lambda_d.to_vec()?, l.vera.vera_lambda_b.to_vec()?);
        let (r, in_max) = (self.config.r, self.vera_a.shape()[1]);
        let (fan_in, fan_out) = (l.linear.in_features(), l.linear.out_features());
        let mut delta = vec![0.0; fan_in * fan_out];
        for o in 0..fan_out {
            for i in 0..fan_in {
                let s: f64 = (0..r)
                    .map(|k| b[o * r + k] as f64 * d[k] as f64 * a[k * in_max + i] as f64)
                    .sum();
                let at = match l.linear.layout {
                    WeightLayout::InOut => i * fan_out + o,
                    WeightLayout::OutIn => o * fan_in + i,
                };
                delta[at] = lb[o] as f64 * s;
            }
        }
        Ok(delta)
    }

    /// Folds ΔW into every wrapped layer's W and takes VeRA off the layers.
    pub fn merge_and_unload(self, model: &mut Gpt2) -> Result<usize> {
        if let Some(l) = self.layers.iter().find(|l| !l.linear.owns_weight) {
            return Err(Error::Input(format!(
                "VeRA: cannot merge into {}: its weight is tied to wte",
                l.name
            )));
        }
        for l in &self.layers {
            let delta = self.delta_weight(l)?;
            let dense = l.linear.dense(&l.name, "VeRA merge")?;
            let w = dense.to_vec()?;
            let merged: Vec<f32> =
                w.iter().zip(&delta).map(|(w, d)| (*w as f64 + d) as f32).collect();
            set_values(dense, &merged)?;
            l.vera.merged.set(true);
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

impl Adapter for VeraModel {
    fn peft_type(&self) -> &str {
        "VERA"
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        model
            .named_parameters()
            .into_iter()
            .filter(|(n, _)| n.ends_with(".vera_lambda_b") || n.ends_with(".vera_lambda_d"))
            .map(|(n, t)| (format!("{FILE_PREFIX}{n}"), t))
            .collect()
    }
    fn tensors_to_save(&self, model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.named_parameters(model);
        out.push((VERA_A_KEY.into(), self.vera_a.clone()));
        out.push((VERA_B_KEY.into(), self.vera_b.clone()));
        Ok(out)
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
    fn train(&self, seed: u64) {
        VeraModel::train(self, seed)
    }
    fn eval(&self) {
        VeraModel::eval(self)
    }
    fn merge_and_unload(self: Box<Self>, model: &mut Gpt2) -> Result<usize> {
        VeraModel::merge_and_unload(*self, model)
    }
}
