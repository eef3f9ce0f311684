//! Selective masking: a fixed sparse subset of the base's own projection weights trains
//! (FISH mask, Sung et al. 2021; magnitude selection as a data-free alternative).
//!
//! What it adds to a layer y = x·W + b (the four projections of every block by default):
//!   y = x·(W + S) + b,    S = scatter(indices, values): S[indices[k]] = values[k], 0 elsewhere
//!   indices: u32 (K_l) flat positions in W as stored ([in, out], GPT-2's Conv1D), sorted
//!   values:  f32 (K_l), init 0, trainable — the change of the selected entries
//! So the model starts as the base, training moves exactly the selected entries of W, and the
//! gradient and AdamW's moments are K-sized (dvalues = gather(dW', indices), `ops::scatter`):
//! "a binary gradient mask" without a W-sized gradient or optimizer state. The forward forms
//! W + S (a W-sized activation per layer, kept for the backward of the matmul).
//! Selection (global budget over all targeted layers, not per layer):
//!   K = max(1, round(sparsity · Σ_l numel(W_l)))
//!   magnitude: the K entries with the largest |W|
//!   fisher:    the K entries with the largest Σ_batches (∂L/∂W)² on the frozen model, over
//!              `fisher_batches` training batches (the empirical Fisher's diagonal; FISH mask
//!              uses per-example gradients, we use per-batch ones: batch size 1 is the paper's)
//! Ties go to the lower layer, then the lower index. Merge: W += S (exact up to one f32 add).
//! PEFT has no selective masking, so the file is ours, in PEFT's directory layout:
//!   adapter_config.json        {"peft_type": "SPARSE_MASK", "sparsity": .., "mask_by":
//!                               "magnitude"|"fisher", "fisher_batches": .., "target_modules": ..}
//!   adapter_model.safetensors  `base_model.model.<layer>.sparse_indices` (K_l) I64 and
//!                              `…sparse_values` (K_l) f32; a layer with no entry selected has
//!                              neither

use std::path::Path;
use std::rc::Rc;

use serde_json::json;

use crate::error::{Error, Result};
use crate::gpu::Category;
use crate::io::TensorFile;
use crate::model::gpt2::Gpt2;
use crate::model::layers::{Linear, LinearAdapter};
use crate::ops::scatter::scatter_indices;
use crate::peft::adapter::Adapter;
use crate::peft::fields::{ConfigFields, PeftFields, modules_json, set_values, to_json};
use crate::peft::lora::{FILE_PREFIX, linear_layers, linear_layers_ref, matches};
use crate::tensor::Tensor;

/// Our `peft_type` for selective masking.
pub const SPARSE_MASK: &str = "SPARSE_MASK";
const VALUES: &str = "sparse_values";
const INDICES: &str = "sparse_indices";

#[derive(Clone, Debug, PartialEq)]
pub struct SparseMaskConfig {
    /// The trained fraction of the targeted weights, (0, 1].
    pub sparsity: f64,
    /// "magnitude" or "fisher".
    pub mask_by: String,
    /// Batches the Fisher scores are summed over.
    pub fisher_batches: usize,
    pub target_modules: Vec<String>,
    pub common: PeftFields,
}

impl Default for SparseMaskConfig {
    /// 0.5% of the four projections of every block, by magnitude; 8 batches for Fisher.
    fn default() -> SparseMaskConfig {
        SparseMaskConfig {
            sparsity: 0.005,
            mask_by: "magnitude".into(),
            fisher_batches: 8,
            target_modules: vec!["c_attn".into(), "c_proj".into(), "c_fc".into()],
            common: PeftFields::default(),
        }
    }
}

impl SparseMaskConfig {
    pub fn from_json_str(text: &str, source: &str) -> Result<SparseMaskConfig> {
        let mut f = ConfigFields::parse(text, source, SPARSE_MASK)?;
        let d = SparseMaskConfig::default();
        Ok(SparseMaskConfig {
            sparsity: f.f64("sparsity")?.unwrap_or(d.sparsity),
            mask_by: f.string("mask_by")?.unwrap_or(d.mask_by),
            fisher_batches: f.usize("fisher_batches")?.unwrap_or(d.fisher_batches),
            target_modules: f.modules("target_modules")?.unwrap_or(d.target_modules),
            common: f.finish("sparse mask")?,
        })
    }

    pub fn to_json_string(&self) -> String {
        let fields = vec![
            ("peft_type", json!(SPARSE_MASK)),
            ("sparsity", json!(self.sparsity)),
            ("mask_by", json!(self.mask_by)),
            ("fisher_batches", json!(self.fisher_batches)),
            ("target_modules", modules_json(&self.target_modules)),
        ];
        to_json(&self.common, fields, &[])
    }

    /// K for `total` targeted weights: max(1, round(sparsity · total)).
    pub fn budget(&self, total: usize) -> usize {
        ((self.sparsity * total as f64).round() as usize).clamp(1, total.max(1))
    }
}

/// One layer's trained entries: W as used = W + scatter(indices, values).
pub struct SparseDelta {
    pub indices: Tensor, // u32 (K_l)
    pub values: Tensor,  // (K_l), trainable
}

impl LinearAdapter for SparseDelta {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let w = layer.weight.scatter_add(&self.indices, &self.values)?; // W + S, W's shape
        Linear { weight: w, adapter: None, ..layer.clone() }.project(x) // (.., out)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}{VALUES}"), &self.values);
    }
}

/// What [`inject`] did: the config and each adapted layer with its delta.
pub struct SparseMaskModel {
    pub config: SparseMaskConfig,
    pub layers: Vec<(String, Rc<SparseDelta>)>,
}

impl SparseMaskModel {
    /// K, the trained entries over all layers.
    pub fn num_selected(&self) -> usize {
        self.layers.iter().map(|(_, d)| d.values.numel()).sum()
    }
}

/// The targeted layers' names and weight sizes, in the model's order; changes nothing.
pub fn plan(model: &Gpt2, config: &SparseMaskConfig) -> Result<Vec<(String, usize)>> {
    if !(config.sparsity > 0.0 && config.sparsity <= 1.0) {
        return Err(Error::Input(format!(
            "sparse mask: sparsity {} must be in (0, 1] (0.005 trains 0.5% of the weights)",
            config.sparsity
        )));
    }
    if !["magnitude", "fisher"].contains(&config.mask_by.as_str()) {
        return Err(Error::Input(format!(
            "sparse mask: mask_by {:?} is not known; use \"magnitude\" or \"fisher\"",
            config.mask_by
        )));
    }
    if config.mask_by == "fisher" && config.fisher_batches == 0 {
        return Err(Error::Input("sparse mask: fisher_batches must be at least 1".into()));
    }
    let layers = linear_layers_ref(model);
    let mut out = vec![];
    for target in &config.target_modules {
        if !layers.iter().any(|(n, _)| matches(n, target)) {
            return Err(Error::Input(format!(
                "sparse mask: target module {target:?} matches no module of the model (its \
                 modules: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj under transformer.h.<i>)"
            )));
        }
    }
    for (name, layer) in layers {
        if !config.target_modules.iter().any(|t| matches(&name, t)) {
            continue;
        }
        if !layer.owns_weight {
            return Err(Error::Input(format!(
                "sparse mask: {name}'s weight is wte (tied), not a projection of its own; \
                 leave it out of target_modules"
            )));
        }
        if layer.adapter.is_some() {
            return Err(Error::Input(format!("sparse mask: {name} already carries an adapter")));
        }
        out.push((name, layer.weight.numel()));
    }
    Ok(out)
}

/// |W| of every targeted layer (flat, W's own layout): the magnitude scores.
pub fn magnitude_scores(model: &Gpt2, config: &SparseMaskConfig) -> Result<Vec<Vec<f32>>> {
    let names: Vec<String> = plan(model, config)?.into_iter().map(|(n, _)| n).collect();
    let mut scores = vec![];
    for (name, layer) in linear_layers_ref(model) {
        if names.contains(&name) {
            scores.push(layer.weight.to_vec()?.iter().map(|w| w.abs()).collect());
        }
    }
    Ok(scores)
}

/// Σ over `config.fisher_batches` batches of (∂L/∂W)² for every targeted layer, with the base
/// otherwise frozen; `loss(i)` is batch i's loss. Every parameter's trainable flag is restored.
pub fn fisher_scores(
    model: &Gpt2,
    config: &SparseMaskConfig,
    mut loss: impl FnMut(usize) -> Result<Tensor>,
) -> Result<Vec<Vec<f32>>> {
    let planned = plan(model, config)?;
    let names: Vec<String> = planned.iter().map(|(n, _)| format!("{n}.weight")).collect();
    let flags: Vec<(Tensor, bool)> =
        model.named_parameters().into_iter().map(|(_, t)| (t.clone(), t.requires_grad())).collect();
    let result = (|| {
        model.set_trainable(|n| names.iter().any(|m| m == n))?;
        let weights: Vec<Tensor> =
            names.iter().filter_map(|n| model.parameter(n)).collect::<Vec<_>>();
        let mut scores: Vec<Vec<f32>> = planned.iter().map(|(_, n)| vec![0.0; *n]).collect();
        for i in 0..config.fisher_batches {
            weights.iter().for_each(Tensor::zero_grad);
            loss(i)?.backward()?;
            for (w, s) in weights.iter().zip(&mut scores) {
                let g = w.grad().ok_or_else(|| {
                    Error::Input("sparse mask: a targeted weight got no gradient".into())
                })?;
                for (s, g) in s.iter_mut().zip(g.to_vec()?) {
                    *s += g * g;
                }
            }
        }
        weights.iter().for_each(Tensor::zero_grad);
        Ok(scores)
    })();
    for (t, flag) in flags {
        t.set_requires_grad(flag)?;
    }
    result
}

/// The `k` entries with the largest scores over all layers (ties: lower layer, then lower
/// index), as each layer's sorted flat indices.
pub fn select(scores: &[Vec<f32>], k: usize) -> Vec<Vec<u32>> {
    let mut all: Vec<f32> = scores.iter().flatten().copied().collect();
    let k = k.min(all.len());
    let mut picked: Vec<Vec<u32>> = vec![vec![]; scores.len()];
    if k == 0 {
        return picked;
    }
    // The k-th largest score: every larger one is in, ties at it fill up the rest in order.
    let (_, kth, _) = all.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    let above = scores.iter().flatten().filter(|s| s.total_cmp(&threshold).is_gt()).count();
    let mut ties = k - above;
    for (l, layer) in scores.iter().enumerate() {
        for (i, s) in layer.iter().enumerate() {
            let take = match s.total_cmp(&threshold) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    true
                }
                _ => false,
            };
            if take {
                picked[l].push(i as u32);
            }
        }
    }
    picked
}

/// Freezes the base and makes the `indices` (one sorted list per planned layer, as [`select`]
/// gives them) of the targeted weights train, their deltas starting at 0.
pub fn inject(
    model: &mut Gpt2,
    config: &SparseMaskConfig,
    indices: &[Vec<u32>],
) -> Result<SparseMaskModel> {
    let planned = plan(model, config)?;
    if indices.len() != planned.len() {
        return Err(Error::Input(format!(
            "sparse mask: {} index lists for {} targeted layers",
            indices.len(),
            planned.len()
        )));
    }
    let gpu = model.gpu().clone();
    let mut deltas = vec![];
    for ((name, n), idx) in planned.iter().zip(indices) {
        if idx.is_empty() {
            continue; // no entry of this layer was selected: it stays the base's
        }
        let t = scatter_indices(&gpu, idx, *n)
            .map_err(|e| Error::Input(format!("sparse mask: {name}: {e}")))?; // (K_l)
        t.set_category(Category::Parameters);
        let values = Tensor::parameter(&gpu, &vec![0.0; idx.len()], &[idx.len()], true)?; // (K_l)
        deltas.push((name.clone(), Rc::new(SparseDelta { indices: t, values })));
    }
    for (name, layer) in linear_layers(model) {
        if let Some((_, d)) = deltas.iter().find(|(n, _)| *n == name) {
            layer.adapter = Some(d.clone());
        }
    }
    model.set_trainable(|n| n.ends_with(&format!(".{VALUES}")))?;
    Ok(SparseMaskModel { config: config.clone(), layers: deltas })
}

/// Loads a sparse-mask directory onto `model`: indices checked (in range, increasing) and every
/// key and shape checked before the model changes; the values train.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<SparseMaskModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let config = SparseMaskConfig::from_json_str(&text, &path.display().to_string())?;
    let planned =
        plan(model, &config).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let file = TensorFile::read(dir.join(crate::peft::files::WEIGHTS_FILE))?;
    let key = |layer: &str, what: &str| format!("{FILE_PREFIX}{layer}.{what}");
    let mut known = std::collections::BTreeSet::new();
    let mut indices = vec![];
    let mut values = vec![];
    for (name, n) in &planned {
        let (ik, vk) = (key(name, INDICES), key(name, VALUES));
        let (has_i, has_v) = (file.tensors.contains_key(&ik), file.tensors.contains_key(&vk));
        if has_i != has_v {
            return Err(Error::Input(format!(
                "{}: {name} has {} but not {}",
                file.path.display(),
                if has_i { &ik } else { &vk },
                if has_i { &vk } else { &ik }
            )));
        }
        if !has_i {
            indices.push(vec![]);
            values.push(vec![]);
            continue;
        }
        let idx = file.get(&ik)?.to_i64(&ik)?;
        let (shape, v) = file.f32(&vk)?;
        if shape != [idx.len()] {
            return Err(Error::Input(format!(
                "{}: {vk} has shape {shape:?}, but {ik} holds {} indices",
                file.path.display(),
                idx.len()
            )));
        }
        let idx: Vec<u32> = idx
            .iter()
            .map(|&i| {
                u32::try_from(i).ok().filter(|&i| (i as usize) < *n).ok_or_else(|| {
                    Error::Input(format!(
                        "{}: {ik}: index {i} is outside the layer's {n} weights",
                        file.path.display()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        if let Some(p) = idx.windows(2).position(|w| w[0] >= w[1]) {
            return Err(Error::Input(format!(
                "{}: {ik}: indices must be strictly increasing; position {p} holds {} then {}",
                file.path.display(),
                idx[p],
                idx[p + 1]
            )));
        }
        known.extend([ik, vk]);
        indices.push(idx);
        values.push(v);
    }
    if let Some(extra) = file.tensors.keys().find(|k| !known.contains(*k)) {
        return Err(Error::Input(format!(
            "{}: tensor {extra} is not one this sparse mask's config implies (another method or \
             another base?)",
            file.path.display()
        )));
    }
    let adapter = inject(model, &config, &indices)?;
    let nonempty = values.iter().filter(|v| !v.is_empty());
    for ((_, delta), v) in adapter.layers.iter().zip(nonempty) {
        set_values(&delta.values, v)?;
    }
    Ok(adapter)
}

impl Adapter for SparseMaskModel {
    fn peft_type(&self) -> &str {
        SPARSE_MASK
    }
    fn named_parameters(&self, _model: &Gpt2) -> Vec<(String, Tensor)> {
        let key = |layer: &str| format!("{FILE_PREFIX}{layer}.{VALUES}");
        self.layers.iter().map(|(n, d)| (key(n), d.values.clone())).collect()
    }
    /// The values and, as I64, the indices.
    fn tensors_to_save(&self, model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.named_parameters(model);
        for (n, d) in &self.layers {
            out.push((format!("{FILE_PREFIX}{n}.{INDICES}"), d.indices.clone()));
        }
        Ok(out)
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
    /// W += S in every adapted layer, then the deltas come off.
    fn merge_and_unload(self: Box<Self>, model: &mut Gpt2) -> Result<usize> {
        for (name, layer) in linear_layers(model) {
            let Some((_, d)) = self.layers.iter().find(|(n, _)| *n == name) else { continue };
            let mut w = layer.weight.to_vec()?;
            for (i, v) in d.indices.to_vec_u32()?.iter().zip(d.values.to_vec()?) {
                w[*i as usize] += v;
            }
            set_values(&layer.weight, &w)?;
            layer.adapter = None;
        }
        Ok(self.layers.len())
    }
}
