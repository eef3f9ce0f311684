//! Several LoRA adapters combined into one, as PEFT's `add_weighted_adapter` does
//! (`tuners/lora/model.py`). Adapter i has, on a layer, A_i (r_i, in), B_i (out, r_i), scaling
//! s_i and weight w_i; its update is ΔW_i = s_i·B_i·A_i. The new adapter copies the first one's
//! config with r = R and lora_alpha = R (so its scaling is 1, or √R with the first's use_rslora,
//! as PEFT's copy gives), targets the union of the target modules, and on each layer holds:
//!   cat:    A = [w_1·s_1·A_1; w_2·s_2·A_2; …] (rows),  B = [B_1, B_2, …] (columns),  R = Σ r_i
//!           so B·A = Σ w_i·ΔW_i exactly;
//!   linear: A = Σ sign(w_i)·√|w_i·s_i|·A_i,  B = Σ √|w_i·s_i|·B_i,  R = r (all equal);
//!           B·A has cross terms B_i·A_j: an approximation (PEFT says so too);
//!   svd:    Σ w_i·ΔW_i = U·S·Vᵀ (f64, one-sided Jacobi), B = U_R·S_R, A = V_Rᵀ, R = max r_i
//!           unless given: the best rank-R approximation (B and A may differ from PEFT's by the
//!           sign of a singular pair; B·A does not when σ_R > σ_{R+1}).
//! An adapter that does not wrap a layer adds nothing there (cat: its rows stay zero, after the
//! ones of the adapters that do, as PEFT packs them). All on the host in f64, from the adapters'
//! files checked against the base; then `inject` wraps the layers and A and B are uploaded.
//! Refused by name: weights that do not match the adapters, `linear` with unequal ranks, DoRA
//! adapters (a magnitude cannot be combined this way), adapters that train biases, non-LoRA types.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::peft::config::{Bias, LoraConfig};
use crate::peft::files::{CONFIG_FILE, load_adapter, peft_type};
use crate::peft::lora::{LoraModel, inject, linear_layers};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combination {
    Linear,
    Cat,
    Svd,
}

impl Combination {
    pub fn parse(s: &str) -> Result<Combination> {
        match s {
            "linear" => Ok(Combination::Linear),
            "cat" => Ok(Combination::Cat),
            "svd" => Ok(Combination::Svd),
            _ => Err(Error::Input(format!(
                "combination {s:?} is not supported; supported: linear, cat, svd"
            ))),
        }
    }
}

/// One adapter's layer on the host: A (r, in), B (out, r), scaling.
struct Part {
    a: Vec<f64>,
    b: Vec<f64>,
    r: usize,
    scaling: f64,
}

/// Combines the LoRA adapters in `dirs` with `weights` into a new LoRA on `model` (which must
/// carry no adapter). `svd_rank` is the new rank for `svd` (default: the largest rank).
pub fn add_weighted_adapter(
    model: &mut Gpt2,
    dirs: &[&Path],
    weights: &[f64],
    combination: Combination,
    svd_rank: Option<usize>,
) -> Result<LoraModel> {
    if weights.len() != dirs.len() {
        return Err(Error::Input(format!(
            "{} weights for {} adapters: give one weight per adapter",
            weights.len(),
            dirs.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        return Err(Error::Input(format!("adapter weight {w} is not a finite number")));
    }
    let mut configs = vec![];
    for dir in dirs {
        let kind = peft_type(dir)?;
        let path = dir.join(CONFIG_FILE);
        if kind != "LORA" {
            return Err(Error::Input(format!(
                "{}: peft_type {kind:?}; only LoRA adapters can be combined",
                path.display()
            )));
        }
        let c = LoraConfig::read(&path)?;
        if c.use_dora {
            return Err(Error::Input(format!(
                "{}: a DoRA adapter (use_dora) cannot be combined: its magnitude vector has no \
                 weighted sum; merge it on its own",
                path.display()
            )));
        }
        if c.bias != Bias::None {
            return Err(Error::Input(format!(
                "{}: bias = {:?} trains base biases, which a combination cannot weigh; only \
                 adapters with bias = \"none\" can be combined",
                path.display(),
                c.bias.name()
            )));
        }
        configs.push(c);
    }
    let ranks: Vec<usize> = configs.iter().map(|c| c.r).collect();
    // PEFT: a single adapter is always combined linearly.
    let combination = if dirs.len() == 1 { Combination::Linear } else { combination };
    let new_rank = match combination {
        Combination::Linear if ranks.iter().any(|r| *r != ranks[0]) => {
            return Err(Error::Input(format!(
                "combination linear needs adapters of equal rank, got r = {ranks:?}; use cat \
                 (rank Σ r) or svd"
            )));
        }
        Combination::Linear => ranks[0],
        Combination::Cat => ranks.iter().sum(),
        Combination::Svd => svd_rank.unwrap_or(*ranks.iter().max().unwrap_or(&1)),
    };
    let trainable: Vec<bool> =
        model.named_parameters().iter().map(|(_, t)| t.requires_grad()).collect();
    let parts = read_parts(model, dirs);
    for ((_, t), was) in model.named_parameters().iter().zip(&trainable) {
        t.set_requires_grad(*was)?;
    }
    let parts = parts?;
    let mut config = configs[0].clone();
    config.r = new_rank;
    config.lora_alpha = new_rank as f64;
    config.target_modules = vec![];
    for c in &configs {
        for t in &c.target_modules {
            if !config.target_modules.contains(t) {
                config.target_modules.push(t.clone());
            }
        }
    }
    let lora = inject(model, &config, 0)?;
    for l in &lora.layers {
        let (fan_in, fan_out) = (l.linear.in_features(), l.linear.out_features());
        let here: Vec<(&Part, f64)> = parts
            .iter()
            .zip(weights)
            .filter_map(|(p, w)| p.iter().find(|(n, _)| *n == l.name).map(|(_, p)| (p, *w)))
            .collect();
        let (a, b) = match combination {
            Combination::Cat => cat(&here, new_rank, fan_in, fan_out),
            Combination::Linear => linear(&here, new_rank, fan_in, fan_out),
            Combination::Svd => svd_combine(&here, new_rank, fan_in, fan_out),
        };
        let a: Vec<f32> = a.iter().map(|v| *v as f32).collect();
        let b: Vec<f32> = b.iter().map(|v| *v as f32).collect();
        let (ta, tb) = (&l.lora.lora_a, &l.lora.lora_b);
        ta.gpu().upload(ta.storage(), bytemuck::cast_slice(&a))?;
        tb.gpu().upload(tb.storage(), bytemuck::cast_slice(&b))?;
    }
    Ok(lora)
}

/// Each adapter's layers (module name, A, B, r, scaling), loaded through the full file checks
/// and taken off the model again.
fn read_parts(model: &mut Gpt2, dirs: &[&Path]) -> Result<Vec<Vec<(String, Part)>>> {
    let mut out = vec![];
    for dir in dirs {
        let lora = load_adapter(model, dir);
        let mut layers = vec![];
        if let Ok(lora) = &lora {
            for l in &lora.layers {
                let f64s = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
                let part = Part {
                    a: f64s(l.lora.lora_a.to_vec()?),
                    b: f64s(l.lora.lora_b.to_vec()?),
                    r: l.lora.rank(),
                    scaling: l.lora.scaling as f64,
                };
                layers.push((l.name.clone(), part));
            }
        }
        for (_, layer) in linear_layers(model) {
            layer.adapter = None;
        }
        lora?;
        out.push(layers);
    }
    Ok(out)
}

/// cat: A rows w·s·A_i, B columns B_i, packed in order; the rest zero.
fn cat(parts: &[(&Part, f64)], rank: usize, fan_in: usize, fan_out: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = vec![0.0; rank * fan_in]; // (R, in)
    let mut b = vec![0.0; fan_out * rank]; // (out, R)
    let mut row = 0;
    for (p, w) in parts {
        for k in 0..p.r {
            for i in 0..fan_in {
                a[(row + k) * fan_in + i] = w * p.scaling * p.a[k * fan_in + i];
            }
            for o in 0..fan_out {
                b[o * rank + row + k] = p.b[o * p.r + k];
            }
        }
        row += p.r;
    }
    (a, b)
}

/// linear: A = Σ sign(w·s)·√|w·s|·A_i, B = Σ √|w·s|·B_i (equal ranks).
fn linear(
    parts: &[(&Part, f64)],
    rank: usize,
    fan_in: usize,
    fan_out: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut a = vec![0.0; rank * fan_in]; // (R, in)
    let mut b = vec![0.0; fan_out * rank]; // (out, R)
    for (p, w) in parts {
        let ws = w * p.scaling;
        let root = ws.abs().sqrt();
        let sign = if ws >= 0.0 { 1.0 } else { -1.0 };
        a.iter_mut().zip(&p.a).for_each(|(x, v)| *x += sign * root * v);
        b.iter_mut().zip(&p.b).for_each(|(x, v)| *x += root * v);
    }
    (a, b)
}

/// svd: Σ w·s·B_i·A_i (out, in) = U·S·Vᵀ; B = U_R·S_R (out, R), A = V_Rᵀ (R, in).
fn svd_combine(
    parts: &[(&Part, f64)],
    rank: usize,
    fan_in: usize,
    fan_out: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut delta = vec![0.0; fan_out * fan_in]; // (out, in)
    for (p, w) in parts {
        for o in 0..fan_out {
            for i in 0..fan_in {
                let ba: f64 = (0..p.r).map(|k| p.b[o * p.r + k] * p.a[k * fan_in + i]).sum();
                delta[o * fan_in + i] += w * p.scaling * ba;
            }
        }
    }
    let (u, s, v) = crate::peft::svd::svd(&delta, fan_out, fan_in);
    let k = s.len();
    let mut a = vec![0.0; rank * fan_in];
    let mut b = vec![0.0; fan_out * rank];
    for j in 0..rank.min(k) {
        for o in 0..fan_out {
            b[o * rank + j] = u[o * k + j] * s[j];
        }
        for i in 0..fan_in {
            a[j * fan_in + i] = v[i * k + j];
        }
    }
    (a, b)
}
