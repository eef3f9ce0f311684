//! AdaLoRA (Zhang et al. 2023): LoRA in SVD form whose rank is pruned while it trains, as PEFT's
//! `tuners/adalora` computes it (config, layer, model; the allocator is `adalora_allocator.rs`).
//!
//! What it adds to a layer with weight W (Conv1D storage [in, out], y = x·W + b):
//!   h = x·W + b + (dropout(x)·(A ⊙ λ)ᵀ·Bᵀ) · scaling / (ranknum + 1e-5)
//!   A = P: (R, in) right singular vectors    λ = lora_E: (R, 1)    B = Q: (out, R)
//!   scaling = lora_alpha (if > 0, else R)    ranknum = init_r, a frozen constant (not saved)
//! so ΔW = B·diag(λ)·A·lora_alpha/init_r. Init: λ = 0, A and B ~ N(0, 0.02²), so training starts
//! from the base (our generator, not torch's bits).
//! Training loss (PEFT's `AdaLoraModel.forward`): the task loss plus
//!   orth_reg_weight · mean over every adapted A and B of ‖P·Pᵀ − I‖_F
//! with P·Pᵀ = A·Aᵀ (R, R) for A and Bᵀ·B (R, R) for B; the Frobenius norm itself, not squared.
//! After each optimizer step the [`RankAllocator`] masks the least important λ to 0 (see there).
//! Saved like PEFT's `save_pretrained`: `base_model.model.<layer>.lora_A` (r_k, in), `…lora_E`
//! (r_k, 1), `…lora_B` (out, r_k), keeping only the triplets `rank_pattern` keeps (r_k of init_r;
//! all R when no pattern yet), and `rank_pattern` in adapter_config.json ("<layer>.lora_E" →
//! flags). Loading puts the kept triplets back at their places in full (R)-row tensors with zero
//! rows elsewhere: the same ΔW, and ranknum stays init_r as in PEFT.
//! NOTE: a loaded adapter resumes with zero (not PEFT's cut) rows for pruned triplets, so its
//! regularizer counts them (−1 on the diagonal); the forward is exact.
//! Merge: W += (B·(A ⊙ λ))ᵀ · scaling/(ranknum + 1e-5), on the host in f64 (lora.rs does the same).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::{Dropout, Gpt2};
use crate::model::layers::{Linear, LinearAdapter, WeightLayout};
use crate::peft::adalora_allocator::{RankAllocator, RankPattern, Triplets};
use crate::peft::adalora_config::AdaLoraConfig;
use crate::peft::adapter::Adapter;
use crate::peft::fields::{read_weights, set_values};
use crate::peft::lora::{
    FILE_PREFIX, LORA_DROPOUT_SALT, linear_layers, linear_layers_ref, matches,
};
use crate::tensor::Tensor;

/// One adapted layer's SVD-form adapter (PEFT's `SVDLinear`).
pub struct SvdAdapter {
    pub lora_a: Tensor, // (R, in)
    pub lora_e: Tensor, // (R, 1)
    pub lora_b: Tensor, // (out, R)
    /// lora_alpha (or R when lora_alpha ≤ 0), PEFT's `scaling`.
    pub scaling: f32,
    /// init_r, PEFT's frozen `ranknum`.
    pub ranknum: f32,
    pub lora_dropout: f32,
    dropout_seed: Cell<Option<u64>>,
    merged: Cell<bool>,
}

impl SvdAdapter {
    pub fn rank(&self) -> usize {
        self.lora_a.shape()[0]
    }
    /// scaling / (ranknum + 1e-5), computed in f32 as PEFT does.
    pub fn factor(&self) -> f32 {
        self.scaling / (self.ranknum + 1e-5)
    }
}

impl LinearAdapter for SvdAdapter {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        if self.merged.get() {
            return layer.project(x); // (.., out) = x·W + b
        }
        let x_lora = match self.dropout_seed.get() {
            Some(seed) => x.dropout(self.lora_dropout, seed, true)?, // (.., in)
            None => x.clone(),
        };
        let (r, fan_in) = (self.rank(), self.lora_a.shape()[1]);
        let lambda = self.lora_e.reshape(&[r])?.expand_last(fan_in)?; // (R, in): λ_k on row k
        let a_lambda = self.lora_a.mul(&lambda)?; // (R, in) = A ⊙ λ
        let s = self.factor();
        if layer.layout == WeightLayout::InOut && layer.quantized.is_none() {
            // x·W + b + s·(x_d·(A⊙λ)ᵀ)·Bᵀ, the term in the base matmul's epilogue (ops/lora_linear.rs).
            return x.lora_linear(
                &layer.weight,
                layer.bias.as_ref(),
                &x_lora,
                &a_lambda,
                &self.lora_b,
                s,
            );
        }
        let rows = x.numel() / fan_in.max(1);
        let down = x_lora.reshape(&[rows, fan_in])?.matmul_t(&a_lambda, false, true)?; // (rows, R)
        let up = down.matmul_t(&self.lora_b, false, true)?.scale(s)?; // (rows, out)
        let base = layer.project(x)?; // (.., out)
        base.add(&up.reshape(base.shape())?)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}lora_A"), &self.lora_a);
        f(format!("{prefix}lora_B"), &self.lora_b);
        f(format!("{prefix}lora_E"), &self.lora_e);
    }
}

pub struct AdaLoraLayer {
    pub name: String,
    pub linear: Linear,
    pub svd: Rc<SvdAdapter>,
}

/// What [`inject`] did: the effective config, every wrapped layer, and the allocator's state.
pub struct AdaLoraModel {
    pub config: AdaLoraConfig,
    pub layers: Vec<AdaLoraLayer>,
    pub allocator: RefCell<RankAllocator>,
}

fn chosen(config: &AdaLoraConfig, name: &str) -> bool {
    config.target_modules.iter().any(|t| matches(name, t))
        && !config.exclude_modules.iter().any(|t| matches(name, t))
}

/// The layers `config` wraps, (name, in, out); changes nothing.
pub fn plan(model: &Gpt2, config: &AdaLoraConfig) -> Result<Vec<(String, usize, usize)>> {
    config.validate()?;
    let layers = linear_layers_ref(model);
    if let Some(t) =
        config.target_modules.iter().find(|t| !layers.iter().any(|(n, _)| matches(n, t)))
    {
        return Err(Error::Input(format!(
            "AdaLoRA: target module {t:?} matches no module of the model (its modules: \
             attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj under transformer.h.<i>, lm_head)"
        )));
    }
    let mut out = vec![];
    for (name, layer) in layers.iter().filter(|(n, _)| chosen(config, n)) {
        if layer.adapter.is_some() {
            return Err(Error::Input(format!("AdaLoRA: {name} already carries an adapter")));
        }
        out.push((name.clone(), layer.in_features(), layer.out_features()));
    }
    if out.is_empty() {
        return Err(Error::Input("AdaLoRA: exclude_modules removes every target".into()));
    }
    Ok(out)
}

/// Freezes the base and wraps every targeted `Linear` with init_r triplets: λ = 0 and A, B ~
/// N(0, 0.02²) from `seed` (A drawn first, then B, layer by layer). Errors before anything changes.
pub fn inject(model: &mut Gpt2, config: &AdaLoraConfig, seed: u64) -> Result<AdaLoraModel> {
    let planned = plan(model, config)?;
    let gpu = model.gpu().clone();
    let mut rng = Rng::new(seed);
    let mut effective = config.clone();
    let r = config.init_r;
    let scaling = if config.lora_alpha > 0.0 { config.lora_alpha as f32 } else { r as f32 };
    let mut out = vec![];
    for (name, layer) in linear_layers(model) {
        let Some((_, fan_in, fan_out)) = planned.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        effective.fan_in_fan_out = layer.layout == WeightLayout::InOut && layer.quantized.is_none();
        let mut normal = |n: usize| -> Vec<f32> {
            (0..n).map(|_| (0.02 * rng.normal()) as f32).collect() // PEFT: normal_(std = 0.02)
        };
        let (a, b) = (normal(r * fan_in), normal(fan_out * r));
        let svd = Rc::new(SvdAdapter {
            lora_a: Tensor::parameter(&gpu, &a, &[r, *fan_in], true)?, // (R, in)
            lora_e: Tensor::parameter(&gpu, &vec![0.0; r], &[r, 1], true)?, // (R, 1)
            lora_b: Tensor::parameter(&gpu, &b, &[*fan_out, r], true)?, // (out, R)
            scaling,
            ranknum: r as f32,
            lora_dropout: config.lora_dropout as f32,
            dropout_seed: Cell::new(None),
            merged: Cell::new(false),
        });
        layer.adapter = Some(svd.clone());
        out.push(AdaLoraLayer { name, linear: layer.clone(), svd });
    }
    model.set_trainable(is_adapter_param)?;
    let allocator = RefCell::new(RankAllocator::new(config.schedule()));
    allocator.borrow_mut().rank_pattern = config.rank_pattern.as_ref().map(pattern_by_layer);
    Ok(AdaLoraModel { config: effective, layers: out, allocator })
}

fn is_adapter_param(name: &str) -> bool {
    [".lora_A", ".lora_B", ".lora_E"].iter().any(|s| name.ends_with(s))
}

/// The config's pattern ("<layer>.lora_E" → flags) keyed by layer name, the allocator's way.
fn pattern_by_layer(p: &RankPattern) -> RankPattern {
    p.iter().map(|(k, v)| (k.strip_suffix(".lora_E").unwrap_or(k).to_string(), v.clone())).collect()
}

/// ‖M − I‖_F of the (R, R) product M of `p` with itself.
fn orth_distance(p: &Tensor, is_a: bool) -> Result<Tensor> {
    let cov = if is_a {
        p.matmul_t(p, false, true)? // (R, R) = A·Aᵀ
    } else {
        p.matmul_t(p, true, false)? // (R, R) = Bᵀ·B
    };
    let r = cov.shape()[0];
    let eye: Vec<f32> = (0..r * r).map(|i| if i % (r + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let diff = cov.sub(&Tensor::from_f32(p.gpu(), &eye, &[r, r])?)?; // (R, R)
    diff.mul(&diff)?.sum_all()?.sqrt() // (1)
}

impl AdaLoraModel {
    /// orth_reg_weight · mean over every A and B of ‖P·Pᵀ − I‖_F: (1), with a gradient.
    pub fn orth_regularizer(&self) -> Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for l in &self.layers {
            for d in [orth_distance(&l.svd.lora_a, true)?, orth_distance(&l.svd.lora_b, false)?] {
                total = Some(match total {
                    Some(t) => t.add(&d)?,
                    None => d,
                });
            }
        }
        let n = 2 * self.layers.len();
        total
            .expect("plan wraps at least one layer")
            .scale(self.config.orth_reg_weight as f32 / n as f32)
    }

    /// Host copies of every layer's A, λ, B and their gradients (a missing gradient is zeros).
    pub fn triplets(&self) -> Result<Vec<Triplets>> {
        let grad = |t: &Tensor| match t.grad() {
            Some(g) => g.to_vec(),
            None => Ok(vec![0.0; t.numel()]),
        };
        let mut out = vec![];
        for l in &self.layers {
            let s = &l.svd;
            out.push(Triplets {
                name: l.name.clone(),
                r: s.rank(),
                fan_in: l.linear.in_features(),
                fan_out: l.linear.out_features(),
                lora_a: s.lora_a.to_vec()?,
                lora_e: s.lora_e.to_vec()?,
                lora_b: s.lora_b.to_vec()?,
                grad_a: grad(&s.lora_a)?,
                grad_e: grad(&s.lora_e)?,
                grad_b: grad(&s.lora_b)?,
            });
        }
        Ok(out)
    }

    /// PEFT's `update_and_allocate(global_step)`: scores from this step's gradients, λ masked on
    /// the device. Returns the step's budget.
    pub fn update_and_allocate(&self, global_step: usize) -> Result<usize> {
        let mut triplets = self.triplets()?;
        let budget = self.allocator.borrow_mut().update_and_allocate(&mut triplets, global_step);
        for (l, t) in self.layers.iter().zip(&triplets) {
            set_values(&l.svd.lora_e, &t.lora_e)?;
        }
        Ok(budget)
    }

    /// The pattern as PEFT saves it: "<layer>.lora_E" → flags; `None` before any masking.
    pub fn rank_pattern(&self) -> Option<RankPattern> {
        let a = self.allocator.borrow();
        let p = a.rank_pattern.as_ref()?;
        Some(p.iter().map(|(k, v)| (format!("{k}.lora_E"), v.clone())).collect())
    }

    fn keep(&self, layer: &str, r: usize) -> Vec<bool> {
        let a = self.allocator.borrow();
        a.rank_pattern.as_ref().and_then(|p| p.get(layer).cloned()).unwrap_or(vec![true; r])
    }

    /// ΔW of layer `l` in W's stored layout, in f64.
    pub fn delta_weight(l: &AdaLoraLayer) -> Result<Vec<f64>> {
        let s = &l.svd;
        let (a, e, b) = (s.lora_a.to_vec()?, s.lora_e.to_vec()?, s.lora_b.to_vec()?);
        let (r, fan_in, fan_out) = (s.rank(), l.linear.in_features(), l.linear.out_features());
        let factor = s.factor() as f64;
        let mut delta = vec![0.0; fan_in * fan_out];
        for o in 0..fan_out {
            for i in 0..fan_in {
                let bae: f64 = (0..r)
                    .map(|k| b[o * r + k] as f64 * a[k * fan_in + i] as f64 * e[k] as f64)
                    .sum();
                let at = match l.linear.layout {
                    WeightLayout::InOut => i * fan_out + o,
                    WeightLayout::OutIn => o * fan_in + i,
                };
                delta[at] = factor * bae;
            }
        }
        Ok(delta)
    }
}

/// Rows `keep` of a (R, cols) tensor, or columns `keep` of a (rows, R) one (`by_column`).
fn select(data: &[f32], r: usize, keep: &[bool], by_column: bool) -> Vec<f32> {
    if by_column {
        data.chunks(r)
            .flat_map(|row| row.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| *v))
            .collect()
    } else {
        let cols = data.len() / r;
        data.chunks(cols).zip(keep).filter(|(_, k)| **k).flat_map(|(row, _)| row.to_vec()).collect()
    }
}

/// Loads PEFT's AdaLoRA directory (every key and shape checked first); pruned triplets come back
/// as zero rows (see the header). A, λ and B are trainable.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<AdaLoraModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let config = AdaLoraConfig::read(&path)?;
    let planned =
        plan(model, &config).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let pattern = config.rank_pattern.as_ref().map(pattern_by_layer).unwrap_or_default();
    let r = config.init_r;
    let mut want = std::collections::BTreeMap::new();
    for (name, fan_in, fan_out) in &planned {
        let keep = pattern.get(name).cloned().unwrap_or(vec![true; r]);
        if keep.len() != r {
            return Err(Error::Input(format!(
                "{}: rank_pattern for {name} has {} flags but init_r is {r}",
                path.display(),
                keep.len()
            )));
        }
        let rk = keep.iter().filter(|k| **k).count();
        want.insert(format!("{FILE_PREFIX}{name}.lora_A"), vec![rk, *fan_in]);
        want.insert(format!("{FILE_PREFIX}{name}.lora_E"), vec![rk, 1]);
        want.insert(format!("{FILE_PREFIX}{name}.lora_B"), vec![*fan_out, rk]);
    }
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let ada = inject(model, &config, 0)?;
    for l in &ada.layers {
        let keep = ada.keep(&l.name, r);
        let rows: Vec<usize> = (0..r).filter(|k| keep[*k]).collect();
        let key = |t: &str| format!("{FILE_PREFIX}{}.{t}", l.name);
        let (fan_in, fan_out) = (l.linear.in_features(), l.linear.out_features());
        let (mut a, mut e, mut b) = (vec![0.0; r * fan_in], vec![0.0; r], vec![0.0; fan_out * r]);
        for (j, &k) in rows.iter().enumerate() {
            a[k * fan_in..(k + 1) * fan_in]
                .copy_from_slice(&values[&key("lora_A")][j * fan_in..(j + 1) * fan_in]);
            e[k] = values[&key("lora_E")][j];
            for o in 0..fan_out {
                b[o * r + k] = values[&key("lora_B")][o * rows.len() + j];
            }
        }
        set_values(&l.svd.lora_a, &a)?;
        set_values(&l.svd.lora_e, &e)?;
        set_values(&l.svd.lora_b, &b)?;
    }
    Ok(ada)
}

impl Adapter for AdaLoraModel {
    fn peft_type(&self) -> &str {
        "ADALORA"
    }
    fn named_parameters(&self, _model: &Gpt2) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for l in &self.layers {
            let key = |t: &str| format!("{FILE_PREFIX}{}.{t}", l.name);
            out.push((key("lora_A"), l.svd.lora_a.clone()));
            out.push((key("lora_B"), l.svd.lora_b.clone()));
            out.push((key("lora_E"), l.svd.lora_e.clone()));
        }
        out
    }
    /// PEFT's `resize_state_dict_by_rank_pattern`: only the kept triplets.
    fn tensors_to_save(&self, model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![];
        for (key, t) in self.named_parameters(model) {
            let layer =
                key.strip_prefix(FILE_PREFIX).and_then(|k| k.rsplit_once('.')).map(|(l, _)| l);
            let r = self.config.init_r;
            let keep = self.keep(layer.unwrap_or(""), r);
            let rk = keep.iter().filter(|k| **k).count();
            if rk == r {
                out.push((key, t));
                continue;
            }
            if rk == 0 {
                // PEFT writes (0, in) tensors here; our device tensors cannot be empty.
                return Err(Error::Input(format!(
                    "AdaLoRA: {} was pruned to rank 0; saving a rank-0 layer is not supported \
                     yet (PEFT writes empty tensors for it); train with a larger --target-r",
                    layer.unwrap_or("a layer")
                )));
            }
            let by_column = key.ends_with(".lora_B");
            let data = select(&t.to_vec()?, r, &keep, by_column);
            let shape = if by_column { vec![t.shape()[0], rk] } else { vec![rk, t.shape()[1]] };
            out.push((key, Tensor::from_f32(t.gpu(), &data, &shape)?));
        }
        Ok(out)
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.rank_pattern = self.rank_pattern().or(c.rank_pattern);
        c.to_json_string()
    }
    fn train(&self, seed: u64) {
        let stream = Dropout::stream(seed ^ LORA_DROPOUT_SALT);
        for (k, l) in self.layers.iter().enumerate() {
            let on = l.svd.lora_dropout > 0.0;
            l.svd.dropout_seed.set(on.then(|| stream.wrapping_add(k as u64)));
        }
    }
    fn eval(&self) {
        self.layers.iter().for_each(|l| l.svd.dropout_seed.set(None));
    }
    fn loss_term(&self) -> Result<Option<Tensor>> {
        (self.config.orth_reg_weight > 0.0).then(|| self.orth_regularizer()).transpose()
    }
    fn after_optimizer_step(&self, global_step: usize) -> Result<()> {
        self.update_and_allocate(global_step).map(|_| ())
    }
    fn merge_and_unload(self: Box<Self>, model: &mut Gpt2) -> Result<usize> {
        if let Some(l) = self.layers.iter().find(|l| !l.linear.owns_weight) {
            return Err(Error::Input(format!(
                "AdaLoRA: cannot merge into {}: its weight is tied to wte, which the merge would change too",
                l.name
            )));
        }
        for l in &self.layers {
            let delta = AdaLoraModel::delta_weight(l)?;
            let w = l.linear.dense(&l.name, "AdaLoRA merge")?;
            let merged: Vec<f32> =
                w.to_vec()?.iter().zip(&delta).map(|(w, d)| (*w as f64 + d) as f32).collect();
            set_values(w, &merged)?;
            l.svd.merged.set(true);
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
