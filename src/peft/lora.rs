//! LoRA (Hu et al. 2021) on any [`Linear`] of the model, as PEFT's `tuners/lora` computes it.
//!
//! What it adds to a layer with weight W (GPT-2's Conv1D stores W as [in, out]: y = x·W + b):
//!   h = x·W + b + scaling · dropout(x) · Aᵀ · Bᵀ        A: (R, in), B: (out, R)
//!   scaling = lora_alpha / R   (rsLoRA: lora_alpha / √R)
//! With `use_dora` the layer's adapter is [`crate::peft::dora::Dora`] around this LoRA (a magnitude
//! per output feature; its own file), and merge folds that in too.
//! What it trains: A and B (and biases, with `bias` = all / lora_only); every other parameter of
//! the model is frozen in place by [`inject`]. A starts kaiming-uniform (a = √5, so U(±1/√in)), B
//! at zero: the wrapped model starts as the base model.
//! Saved for backward: the matmuls save what they need (x for A's gradient, x·Aᵀ for B's); the
//! base term's frozen W gets no gradient and the matmul saves nothing for it.
//! The term s·(dropout(x)·Aᵀ)·Bᵀ is added in the base matmul's epilogue (`ops/lora_linear.rs`,
//! which composes on adapters without that epilogue and under `ops::lora_linear::force_composed`);
//! a [out, in] weight (the tied LM head) composes here.
//!
//! Dropout (training mode only, [`LoraModel::train`]): layer k (in registry order) draws its mask
//! from the engine's counter-based dropout (`ops::dropout`) with seed
//! `Dropout::stream(seed ^ LORA_DROPOUT_SALT) + k`: a different stream per layer, and a stream
//! apart from the model's residual dropout even when both get the same seed. Every forward until
//! the next `train(seed)` reuses the masks, so a recomputed (checkpointed) segment sees the same
//! mask; pass a new seed each step. PEFT draws from torch's global generator: masks differ from
//! PEFT's, the distribution does not.
//!
//! Merge (W += scaling·(B·A)ᵀ for [in, out] storage, W += scaling·B·A for [out, in]) is done on
//! the host in f64 and uploaded into W's own buffer: afterwards the layer computes only x·W + b,
//! exactly what the base costs. Unmerge subtracts the same f64 delta: W comes back within f32
//! rounding of |W| + |ΔW| (one rounding each way), not bit for bit.

use std::cell::Cell;
use std::rc::Rc;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::{Dropout, Gpt2};
use crate::model::layers::{Linear, LinearAdapter, WeightLayout};
use crate::peft::config::{Bias, LoraConfig, LoraInit};
use crate::peft::dora::{self, Dora};
use crate::peft::variants::Variant;
use crate::tensor::Tensor;

/// Mixed into the training seed so LoRA's dropout streams are not the residual dropout's.
pub const LORA_DROPOUT_SALT: u64 = 0x4C6F_5241_4472_6F70; // "LoRADrop"

/// One wrapped layer's adapter: the [`LinearAdapter`] set on the `Linear`.
pub struct Lora {
    pub lora_a: Tensor, // (R, in)
    pub lora_b: Tensor, // (out, R)
    pub scaling: f32,
    pub lora_dropout: f32,
    /// This layer's dropout seed in training mode; `None` is eval mode (no dropout).
    dropout_seed: Cell<Option<u64>>,
    /// True while ΔW is folded into the base weight: the forward is then the base alone.
    merged: Cell<bool>,
    /// DyLoRA: the rank b ≤ R in use and its scaling (lora_alpha / b); `None` is the full rank.
    active_rank: Cell<Option<(usize, f32)>>,
}

impl Lora {
    pub fn rank(&self) -> usize {
        self.lora_a.shape()[0]
    }
    pub fn is_merged(&self) -> bool {
        self.merged.get()
    }
    /// This layer's dropout seed in training mode; `None` in eval mode.
    pub fn dropout_seed(&self) -> Option<u64> {
        self.dropout_seed.get()
    }
    /// DyLoRA: compute with the first `b` rows of A and columns of B at `scaling`, or with the
    /// full rank (`None`).
    pub fn set_active_rank(&self, rank: Option<(usize, f32)>) {
        self.active_rank.set(rank);
    }
}

impl LinearAdapter for Lora {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        if self.merged.get() {
            return layer.project(x); // (.., out) = x·W + b
        }
        let x_lora = match self.dropout_seed.get() {
            Some(seed) => x.dropout(self.lora_dropout, seed, true)?, // (.., in)
            None => x.clone(),
        };
        // DyLoRA computes with the first b ranks (b < R) at its own scaling.
        let (lora_a, lora_b, scaling) = match self.active_rank.get() {
            Some((b, scaling)) if b < self.rank() => {
                (self.lora_a.slice(0, 0, b)?, self.lora_b.slice(1, 0, b)?, scaling) // (b, in), (out, b)
            }
            _ => (self.lora_a.clone(), self.lora_b.clone(), self.scaling),
        };
        // A quantized base has no f32 W for the fused epilogue: its fused kernel, then the term.
        if layer.layout == WeightLayout::InOut && layer.quantized.is_none() {
            // x·W + b + s·(x_d·Aᵀ)·Bᵀ with the term in the base matmul's epilogue (ops/lora_linear.rs).
            let (a, b) = (&lora_a, &lora_b);
            return x.lora_linear(&layer.weight, layer.bias.as_ref(), &x_lora, a, b, scaling);
        }
        let cols = x.last_dim();
        let rows = x.numel() / cols.max(1);
        let x2 = x_lora.reshape(&[rows, cols])?; // (rows, in)
        let down = x2.matmul_t(&lora_a, false, true)?; // (rows, R) = x·Aᵀ
        let base = layer.project(x)?; // (.., out) = x·W + b
        let up = down.matmul_t(&lora_b, false, true)?; // (rows, out) = x·Aᵀ·Bᵀ
        let up = up.scale(scaling)?.reshape(base.shape())?; // (.., out)
        base.add(&up) // (.., out)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}lora_A.weight"), &self.lora_a);
        f(format!("{prefix}lora_B.weight"), &self.lora_b);
    }
}

/// A wrapped layer: its module name (`transformer.h.0.attn.c_attn`), a handle to the layer (the
/// same weight and bias storage as the model's), and its adapter (with `use_dora`, the layer's
/// adapter is the [`Dora`] around this LoRA).
pub struct LoraLayer {
    pub name: String,
    pub linear: Linear,
    pub lora: Rc<Lora>,
    pub dora: Option<Rc<Dora>>,
}

/// What [`inject`] did: the effective config and every wrapped layer, in registry order.
pub struct LoraModel {
    pub config: LoraConfig,
    pub layers: Vec<LoraLayer>,
    /// How it trains: plain LoRA, or one of the variants in `peft::variants`.
    pub variant: Variant,
}

/// Every `Linear` of the model under its PEFT module name, in registry order.
pub fn linear_layers(model: &mut Gpt2) -> Vec<(String, &mut Linear)> {
    let mut out: Vec<(String, &mut Linear)> = vec![];
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let h = format!("transformer.h.{i}");
        out.push((format!("{h}.attn.c_attn"), &mut b.c_attn));
        out.push((format!("{h}.attn.c_proj"), &mut b.attn_c_proj));
        out.push((format!("{h}.mlp.c_fc"), &mut b.c_fc));
        out.push((format!("{h}.mlp.c_proj"), &mut b.mlp_c_proj));
    }
    out.push(("lm_head".to_string(), &mut model.lm_head));
    out
}

/// torch's `kaiming_uniform_(w, a=√5)` for a (rows, fan_in) weight: gain = √(2/(1 + a²)) = √(1/3),
/// bound = gain·√(3/fan_in) = 1/√fan_in, w ~ U(−bound, bound). Our generator, not torch's bits.
fn kaiming_uniform(rng: &mut Rng, rows: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..rows * fan_in).map(|_| rng.range(-bound, bound) as f32).collect()
}

/// PEFT's rule: a target matches a module whose name is the target or ends in "." + target.
pub fn matches(name: &str, target: &str) -> bool {
    name == target || name.ends_with(&format!(".{target}"))
}

/// Every `Linear` of the model under its PEFT module name, read-only.
pub fn linear_layers_ref(model: &Gpt2) -> Vec<(String, &Linear)> {
    let mut out: Vec<(String, &Linear)> = vec![];
    for (i, b) in model.blocks.iter().enumerate() {
        let h = format!("transformer.h.{i}");
        out.push((format!("{h}.attn.c_attn"), &b.c_attn));
        out.push((format!("{h}.attn.c_proj"), &b.attn_c_proj));
        out.push((format!("{h}.mlp.c_fc"), &b.c_fc));
        out.push((format!("{h}.mlp.c_proj"), &b.mlp_c_proj));
    }
    out.push(("lm_head".to_string(), &model.lm_head));
    out
}

/// The layers `config` wraps, (name, in, out), after every check `inject` makes; changes nothing.
pub fn plan(model: &Gpt2, config: &LoraConfig) -> Result<Vec<(String, usize, usize)>> {
    config.validate()?;
    let layers = linear_layers_ref(model);
    let names: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
    for target in &config.target_modules {
        if !names.iter().any(|n| matches(n, target)) {
            let first: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| n.starts_with("transformer.h.0.") || *n == "lm_head")
                .collect();
            return Err(Error::Input(format!(
                "LoRA: target module {target:?} matches no module of the model; the modules that \
                 can carry LoRA are {} (and the same under transformer.h.1 … transformer.h.{}); a \
                 target matches a module whose name is the target or ends in \".<target>\"",
                first.join(", "),
                model.config.n_layer.saturating_sub(1)
            )));
        }
    }
    let mut out = vec![];
    for (name, layer) in layers.iter().filter(|(n, _)| chosen(config, n)) {
        let (fan_in, fan_out) = (layer.in_features(), layer.out_features());
        if config.r > fan_in.min(fan_out) {
            return Err(Error::Input(format!(
                "LoRA: r = {} is larger than {name} ({fan_in} → {fan_out}): a rank-r update of a \
                 {fan_in}×{fan_out} matrix has rank at most {}",
                config.r,
                fan_in.min(fan_out)
            )));
        }
        if layer.adapter.is_some() {
            return Err(Error::Input(format!("LoRA: {name} already carries an adapter")));
        }
        out.push((name.clone(), fan_in, fan_out));
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "LoRA: exclude_modules {:?} removes every module target_modules {:?} matched",
            config.exclude_modules, config.target_modules
        )));
    }
    Ok(out)
}

fn chosen(config: &LoraConfig, name: &str) -> bool {
    config.target_modules.iter().any(|t| matches(name, t))
        && !config.exclude_modules.iter().any(|t| matches(name, t))
}

/// Freezes every base parameter and wraps each `Linear` that `config.target_modules` matches
/// (minus `exclude_modules`) with a fresh LoRA, initialised from `seed` as `init_lora_weights`
/// says. Errors, before anything changes ([`plan`]): a target that matches no module (the names
/// that exist are listed), r = 0 or r larger than a wrapped layer, a layer already wrapped.
pub fn inject(model: &mut Gpt2, config: &LoraConfig, seed: u64) -> Result<LoraModel> {
    plan(model, config)?;
    let gpu = model.gpu().clone();
    let mut layers = linear_layers(model);
    let mut effective = config.clone();
    let mut rng = Rng::new(seed);
    let mut out = vec![];
    for (name, layer) in layers.iter_mut().filter(|(n, _)| chosen(config, n)) {
        let (fan_in, fan_out, r) = (layer.in_features(), layer.out_features(), config.r);
        // As PEFT: fan_in_fan_out follows the layer (true for Conv1D [in, out] storage).
        effective.fan_in_fan_out = layer.is_conv1d();
        let rng = &mut rng;
        let (a, b) = match config.init_lora_weights {
            LoraInit::Default => (kaiming_uniform(rng, r, fan_in), vec![0.0; fan_out * r]),
            LoraInit::Random => (kaiming_uniform(rng, r, fan_in), kaiming_uniform(rng, fan_out, r)),
            LoraInit::Gaussian => {
                let std = 1.0 / r as f64; // PEFT: normal_(std = 1/r)
                let a = (0..r * fan_in).map(|_| (std * rng.normal()) as f32).collect();
                (a, vec![0.0; fan_out * r])
            }
        };
        let lora = Rc::new(Lora {
            lora_a: Tensor::parameter(&gpu, &a, &[r, fan_in], true)?, // (R, in)
            lora_b: Tensor::parameter(&gpu, &b, &[fan_out, r], true)?, // (out, R)
            scaling: config.scaling() as f32,
            lora_dropout: config.lora_dropout as f32,
            dropout_seed: Cell::new(None),
            merged: Cell::new(false),
            active_rank: Cell::new(None),
        });
        layer.adapter = Some(lora.clone());
        out.push(LoraLayer { name: name.clone(), linear: (**layer).clone(), lora, dora: None });
    }
    let mut lora_model = LoraModel { config: effective, layers: out, variant: Variant::Lora };
    if config.use_dora {
        dora::attach(&mut layers, &mut lora_model)?;
    }
    drop(layers);
    let wrapped: Vec<String> = lora_model.layers.iter().map(|l| format!("{}.", l.name)).collect();
    let is_adapter = |n: &str| is_adapter_param(n);
    model.set_trainable(|n| {
        is_adapter(n)
            || match config.bias {
                Bias::None => false,
                Bias::All => n.ends_with(".bias"),
                Bias::LoraOnly => {
                    n.ends_with(".bias") && wrapped.iter().any(|w| n == format!("{w}bias"))
                }
            }
    })?;
    Ok(lora_model)
}

/// A registry name of LoRA's own parameters: lora_A, lora_B, and DoRA's magnitude.
fn is_adapter_param(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.") || dora::is_magnitude(name)
}

impl LoraModel {
    /// Training mode: LoRA dropout on, layer k seeded `Dropout::stream(seed ^ SALT) + k`.
    pub fn train(&self, seed: u64) {
        let stream = Dropout::stream(seed ^ LORA_DROPOUT_SALT);
        for (k, l) in self.layers.iter().enumerate() {
            let on = l.lora.lora_dropout > 0.0;
            l.lora.dropout_seed.set(on.then(|| stream.wrapping_add(k as u64)));
        }
    }

    /// Eval mode: no dropout.
    pub fn eval(&self) {
        self.layers.iter().for_each(|l| l.lora.dropout_seed.set(None));
    }

    /// ΔW of layer `l` in the weight's stored layout, in f64: scaling·(B·A)ᵀ [in, out] for
    /// Conv1D storage, scaling·B·A [out, in] for nn.Linear storage.
    pub fn delta_weight(l: &LoraLayer) -> Result<Vec<f64>> {
        let (a, b) = (l.lora.lora_a.to_vec()?, l.lora.lora_b.to_vec()?);
        let (r, fan_in, fan_out) = (l.lora.rank(), l.linear.in_features(), l.linear.out_features());
        let s = l.lora.scaling as f64;
        let mut delta = vec![0.0; fan_in * fan_out];
        for o in 0..fan_out {
            for i in 0..fan_in {
                let ba: f64 = (0..r).map(|k| b[o * r + k] as f64 * a[k * fan_in + i] as f64).sum();
                let at = match l.linear.layout {
                    WeightLayout::InOut => i * fan_out + o,
                    WeightLayout::OutIn => o * fan_in + i,
                };
                delta[at] = s * ba;
            }
        }
        Ok(delta)
    }

    fn fold(&self, sign: f64, want_merged: bool) -> Result<()> {
        for l in &self.layers {
            if l.lora.merged.get() == want_merged {
                return Err(Error::Input(format!(
                    "LoRA: {} is {} merged",
                    l.name,
                    if want_merged { "already" } else { "not" }
                )));
            }
            if !l.linear.owns_weight {
                return Err(Error::Input(format!(
                    "LoRA: cannot merge into {}: its weight is tied to another module's (wte), \
                     which the merge would change too",
                    l.name
                )));
            }
        }
        for l in &self.layers {
            let delta = LoraModel::delta_weight(l)?;
            let w = l.linear.dense(&l.name, "LoRA merge")?;
            let merged: Vec<f32> = match &l.dora {
                Some(d) => d.fold(&l.linear, &w.to_vec()?, &delta, want_merged)?,
                None => w
                    .to_vec()?
                    .iter()
                    .zip(&delta)
                    .map(|(w, d)| (*w as f64 + sign * d) as f32)
                    .collect(),
            };
            w.gpu().upload(w.storage(), bytemuck::cast_slice(&merged))?;
            l.lora.merged.set(want_merged);
        }
        Ok(())
    }

    /// Folds ΔW into every wrapped layer's base weight; the layers then compute x·W' + b only.
    pub fn merge(&self) -> Result<()> {
        self.fold(1.0, true)
    }

    /// Takes ΔW back out of the base weights (within f32 rounding) and turns the adapters on.
    pub fn unmerge(&self) -> Result<()> {
        self.fold(-1.0, false)
    }

    /// PEFT's `merge_and_unload`: folds ΔW in (unless already merged) and takes the adapters off
    /// the layers, leaving a plain model whose registry holds only base weights (still frozen).
    pub fn merge_and_unload(self, model: &mut Gpt2) -> Result<()> {
        if !self.layers.iter().all(|l| l.lora.merged.get()) {
            self.merge()?;
        }
        let names: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        for (name, layer) in linear_layers(model) {
            if names.contains(&name.as_str()) {
                layer.adapter = None;
            }
        }
        Ok(())
    }

    /// The adapter's parameters under their keys in PEFT's `adapter_model.safetensors`:
    /// `base_model.model.<layer>.lora_A.weight` (R, in), `…lora_B.weight` (out, R), and with
    /// `bias` = all / lora_only the trained biases (`<layer>.base_layer.bias` for a wrapped layer,
    /// as PEFT names it, and `<module>.bias` for the others).
    pub fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        let wrapped: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
        let mut out = vec![];
        for (name, t) in model.named_parameters() {
            let key = if is_adapter_param(&name) {
                Some(format!("{FILE_PREFIX}{name}"))
            } else {
                bias_key(&name, &wrapped, self.config.bias)
            };
            out.extend(key.map(|k| (k, t)));
        }
        if let Variant::Delta { .. } = self.variant {
            for l in &self.layers {
                out.push((moved_weight_key(&l.name), l.linear.weight.clone()));
            }
        }
        out
    }
}

/// Keys in `adapter_model.safetensors` start with this (PEFT's model wrapper, then the LM).
pub const FILE_PREFIX: &str = "base_model.model.";

/// The adapter-file key of a wrapped layer's moved base weight (Delta-LoRA), in W's own layout.
pub fn moved_weight_key(layer: &str) -> String {
    format!("{FILE_PREFIX}{layer}.base_layer.weight")
}

/// The adapter-file key of base parameter `name` when `bias` saves it, else `None`: a wrapped
/// layer's bias is `<layer>.base_layer.bias` (PEFT keeps the wrapped module's name), any other
/// bias (bias = all) keeps its own name.
pub fn bias_key(name: &str, wrapped: &[&str], bias: Bias) -> Option<String> {
    let layer = name.strip_suffix(".bias")?;
    match bias {
        Bias::None => None,
        _ if wrapped.contains(&layer) => Some(format!("{FILE_PREFIX}{layer}.base_layer.bias")),
        Bias::All => Some(format!("{FILE_PREFIX}{name}")),
        Bias::LoraOnly => None,
    }
}

impl crate::peft::adapter::Adapter for LoraModel {
    fn peft_type(&self) -> &str {
        "LORA"
    }
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)> {
        LoraModel::named_parameters(self, model)
    }
    fn config_json(&self) -> String {
        LoraConfig { inference_mode: true, ..self.config.clone() }.to_json_string()
    }
    fn train(&self, seed: u64) {
        LoraModel::train(self, seed)
    }
    fn eval(&self) {
        LoraModel::eval(self)
    }
    fn lr_scale(&self, name: &str, param: &Tensor) -> f32 {
        self.variant.lr_scale(name, param)
    }
    fn before_step(&self, step: usize, seed: u64) -> Result<()> {
        self.variant.before_step(self, step, seed)
    }
    fn after_step(&self, _model: &Gpt2) -> Result<()> {
        self.variant.after_step(self)
    }
    fn merge_and_unload(self: Box<Self>, model: &mut Gpt2) -> Result<usize> {
        let layers = self.layers.len();
        LoraModel::merge_and_unload(*self, model)?;
        Ok(layers)
    }
}
