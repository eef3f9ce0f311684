//! PEFT's `AdaLoraConfig` (tuners/adalora/config.py): AdaLoRA's fields, their defaults and
//! checks, and `adapter_config.json` both ways (peft_type "ADALORA"). `r` is read and ignored, as
//! PEFT ignores it (init_r is the rank); `total_step` is required (PEFT refuses None).

use std::path::Path;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::peft::adalora_allocator::{RankPattern, Schedule};
use crate::peft::fields::{ConfigFields, PeftFields, modules_json, to_json};

#[derive(Clone, Debug, PartialEq)]
pub struct AdaLoraConfig {
    pub target_modules: Vec<String>,
    pub exclude_modules: Vec<String>,
    /// Triplets per layer at the start (R).
    pub init_r: usize,
    /// The average rank per layer at the end.
    pub target_r: usize,
    /// Warmup steps with the full budget; final steps with the final pattern.
    pub tinit: usize,
    pub tfinal: usize,
    /// Steps between two maskings (PEFT's `deltaT`).
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    /// T, the run's optimizer steps (the budget schedule spans them).
    pub total_step: usize,
    /// "<layer>.lora_E" → which triplets survive (set by the allocator, saved by PEFT).
    pub rank_pattern: Option<RankPattern>,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub fan_in_fan_out: bool,
    pub init_lora_weights: bool,
    pub common: PeftFields,
}

impl AdaLoraConfig {
    /// PEFT's defaults for GPT-2 (target c_attn) with `total_step` steps.
    pub fn new(total_step: usize) -> AdaLoraConfig {
        AdaLoraConfig {
            target_modules: vec!["c_attn".into()],
            exclude_modules: vec![],
            init_r: 12,
            target_r: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step,
            rank_pattern: None,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            fan_in_fan_out: false,
            init_lora_weights: true,
            common: PeftFields::default(),
        }
    }

    /// PEFT's checks (`__post_init__`, RankAllocator's asserts), plus ours: 1 ≤ target_r ≤
    /// init_r (a budget above the start would ask kthvalue for a negative k).
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Input(format!("AdaLoRA: {m}")));
        if self.target_modules.is_empty() {
            return fail("target_modules is empty; name at least one".into());
        }
        if self.total_step == 0 {
            return fail(
                "total_step must be > 0 (the budget schedule spans the run's steps)".into(),
            );
        }
        if self.tinit + self.tfinal >= self.total_step {
            return fail(format!(
                "tinit {} + tfinal {} leave no budgeting phase in total_step {}; decrease \
                 tinit/tfinal or train longer",
                self.tinit, self.tfinal, self.total_step
            ));
        }
        if self.init_r == 0 || self.target_r > self.init_r {
            return fail(format!(
                "need 1 ≤ init_r and target_r ≤ init_r; got init_r {}, target_r {}",
                self.init_r, self.target_r
            ));
        }
        if self.delta_t == 0 {
            return fail("deltaT must be ≥ 1".into());
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return fail(format!("{name} = {b} must be in (0, 1)"));
            }
        }
        if !(self.orth_reg_weight >= 0.0 && self.orth_reg_weight.is_finite()) {
            return fail(format!("orth_reg_weight = {} must be ≥ 0", self.orth_reg_weight));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return fail(format!("lora_dropout = {} must be in [0, 1)", self.lora_dropout));
        }
        Ok(())
    }

    pub fn schedule(&self) -> Schedule {
        Schedule {
            init_r: self.init_r,
            target_r: self.target_r,
            tinit: self.tinit,
            tfinal: self.tfinal,
            delta_t: self.delta_t,
            beta1: self.beta1,
            beta2: self.beta2,
            total_step: self.total_step,
        }
    }

    pub fn from_json_str(text: &str, source: &str) -> Result<AdaLoraConfig> {
        let mut f = ConfigFields::parse(text, source, "ADALORA")?;
        let total_step = f
            .usize("total_step")?
            .ok_or_else(|| f.err("total_step is missing; PEFT requires it for AdaLoRA".into()))?;
        let d = AdaLoraConfig::new(total_step);
        let bias = f.string("bias")?.unwrap_or("none".into());
        if bias != "none" {
            return Err(
                f.err(format!("bias {bias:?} is not supported for AdaLoRA (only \"none\")"))
            );
        }
        let rank_pattern = rank_pattern(&mut f)?;
        // Read and ignored as PEFT ignores them: r (init_r is the rank), qalora_group_size (only
        // with use_qalora), megatron_core (only with megatron_config).
        let _ = (f.usize("r")?, f.usize("qalora_group_size")?, f.string("megatron_core")?);
        let c = AdaLoraConfig {
            target_modules: f.modules("target_modules")?.unwrap_or(d.target_modules),
            exclude_modules: f.modules("exclude_modules")?.unwrap_or_default(),
            init_r: f.usize("init_r")?.unwrap_or(d.init_r),
            target_r: f.usize("target_r")?.unwrap_or(d.target_r),
            tinit: f.usize("tinit")?.unwrap_or(d.tinit),
            tfinal: f.usize("tfinal")?.unwrap_or(d.tfinal),
            delta_t: f.usize("deltaT")?.unwrap_or(d.delta_t),
            beta1: f.f64("beta1")?.unwrap_or(d.beta1),
            beta2: f.f64("beta2")?.unwrap_or(d.beta2),
            orth_reg_weight: f.f64("orth_reg_weight")?.unwrap_or(d.orth_reg_weight),
            total_step,
            rank_pattern,
            lora_alpha: f.f64("lora_alpha")?.unwrap_or(d.lora_alpha),
            lora_dropout: f.f64("lora_dropout")?.unwrap_or(d.lora_dropout),
            fan_in_fan_out: f.bool("fan_in_fan_out")?.unwrap_or(false),
            init_lora_weights: f.bool("init_lora_weights")?.unwrap_or(true),
            common: f.finish("AdaLoRA")?,
        };
        c.validate().map_err(|e| Error::Input(format!("{source}: {e}")))?;
        Ok(c)
    }

    pub fn read(path: &Path) -> Result<AdaLoraConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        AdaLoraConfig::from_json_str(&text, &path.display().to_string())
    }

    /// `adapter_config.json` as PEFT 0.21 writes it (its inert LoRA fields included).
    pub fn to_json_string(&self) -> String {
        let num = |x: f64| json!(x);
        let fields = vec![
            ("peft_type", json!("ADALORA")),
            ("target_modules", modules_json(&self.target_modules)),
            ("exclude_modules", modules_json(&self.exclude_modules)),
            ("init_r", json!(self.init_r)),
            ("target_r", json!(self.target_r)),
            ("tinit", json!(self.tinit)),
            ("tfinal", json!(self.tfinal)),
            ("deltaT", json!(self.delta_t)),
            ("beta1", num(self.beta1)),
            ("beta2", num(self.beta2)),
            ("orth_reg_weight", num(self.orth_reg_weight)),
            ("total_step", json!(self.total_step)),
            ("rank_pattern", self.rank_pattern.as_ref().map_or(Value::Null, |p| json!(p))),
            ("lora_alpha", whole_or_float(self.lora_alpha)),
            ("lora_dropout", num(self.lora_dropout)),
            ("fan_in_fan_out", json!(self.fan_in_fan_out)),
            ("init_lora_weights", json!(self.init_lora_weights)),
        ];
        let defaults = [
            ("r", json!(8)),
            ("bias", json!("none")),
            ("use_rslora", json!(false)),
            ("use_dora", json!(false)),
            ("alpha_pattern", json!({})),
            ("loftq_config", json!({})),
            ("lora_bias", json!(false)),
            ("modules_to_save", Value::Null),
            ("layers_to_transform", Value::Null),
            ("layers_pattern", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("qalora_group_size", json!(16)),
        ];
        to_json(&self.common, fields, &defaults)
    }
}

/// PEFT writes an integer alpha as an integer (8, not 8.0).
fn whole_or_float(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 { json!(x as i64) } else { json!(x) }
}

/// `rank_pattern`: null, or an object of "<layer>.lora_E" → a list of booleans.
fn rank_pattern(f: &mut ConfigFields) -> Result<Option<RankPattern>> {
    let Some(v) = f.value("rank_pattern") else { return Ok(None) };
    let Value::Object(map) = v else {
        return Err(f.err(format!("rank_pattern must be an object of flag lists, got {v}")));
    };
    let mut out = RankPattern::new();
    for (k, flags) in map {
        let list: Option<Vec<bool>> =
            flags.as_array().and_then(|a| a.iter().map(Value::as_bool).collect());
        let list =
            list.ok_or_else(|| f.err(format!("rank_pattern[{k:?}] must be a list of true/false")))?;
        out.insert(k, list);
    }
    Ok(Some(out))
}
