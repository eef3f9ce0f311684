//! LoRA's training-time variants: the same layers and the same files as LoRA (peft_type "LORA",
//! so PEFT loads what they train), trained differently. Each is a hook of the training loop
//! ([`crate::peft::Adapter`]): which parameters train, at what learning rate, and what happens
//! around each optimizer step.
//!
//! - **LoRA-FA** (Zhang et al. 2023): A is frozen after its initialisation and only B trains.
//!   x·Aᵀ still runs, but no gradient flows to A, so its matmul saves nothing for A's gradient:
//!   the activation memory of the layer input x is saved (measured by the tests and `compare`).
//! - **LoRA+** (Hayou et al. 2024): B's learning rate is `ratio` × A's (default 16). As PEFT's
//!   `create_loraplus_optimizer`, 1-D parameters (trained biases) go with B.
//! - **Delta-LoRA** (Zi et al. 2023): after each step the frozen W also moves, by
//!   λ·(s·B_t·A_t − s·B_{t−1}·A_{t−1}): the change of the adapter's update, with no gradient for W.
//!   The moved base weights are saved in the adapter file as `<layer>.base_layer.weight` (PEFT's
//!   name for a wrapped layer's weight), and loading such a file puts them back into W. NOTE: PEFT
//!   does not read those keys, so in PEFT a Delta-LoRA file gives the adapter without its moved
//!   base; merge it here (`glassgrad merge`) to take it elsewhere.
//! - **DyLoRA** (Valipour et al. 2023): each step samples a rank b in 1..=R and computes with the
//!   first b rows of A and columns of B, scaled lora_alpha/b (rsLoRA: /√b), so that every
//!   truncation of the adapter works; inference runs at any rank ≤ R (`eval_rank`).

use std::cell::RefCell;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::peft::lora::LoraModel;
use crate::tensor::Tensor;

pub enum Variant {
    Lora,
    Fa,
    Plus { ratio: f32 },
    Delta { lambda: f64, previous: RefCell<Vec<Vec<f64>>> },
    Dy { eval_rank: usize },
}

/// LoRA+'s ratio when none is given (the paper's suggestion, PEFT's `loraplus_lr_ratio`).
pub const LORAPLUS_RATIO: f32 = 16.0;
/// Delta-LoRA's λ when none is given.
pub const DELTA_LAMBDA: f64 = 2.0;

impl Variant {
    pub fn name(&self) -> &'static str {
        match self {
            Variant::Lora => "lora",
            Variant::Fa => "lora-fa",
            Variant::Plus { .. } => "lora-plus",
            Variant::Delta { .. } => "delta-lora",
            Variant::Dy { .. } => "dylora",
        }
    }

    pub fn lr_scale(&self, name: &str, param: &Tensor) -> f32 {
        match self {
            Variant::Plus { ratio } if name.contains(".lora_B.") || param.rank() == 1 => *ratio,
            _ => 1.0,
        }
    }

    pub fn before_step(&self, lora: &LoraModel, _step: usize, seed: u64) -> Result<()> {
        if let Variant::Dy { .. } = self {
            let b = 1 + Rng::new(seed).below(lora.config.r);
            set_rank(lora, b);
        }
        Ok(())
    }

    pub fn after_step(&self, lora: &LoraModel) -> Result<()> {
        match self {
            Variant::Delta { lambda, previous } => {
                let mut previous = previous.borrow_mut();
                for (l, prev) in lora.layers.iter().zip(previous.iter_mut()) {
                    let now = LoraModel::delta_weight(l)?; // s·B·A in W's layout
                    let w = l.linear.dense(&l.name, "Delta-LoRA")?;
                    let moved: Vec<f32> = w
                        .to_vec()?
                        .iter()
                        .zip(now.iter().zip(prev.iter()))
                        .map(|(w, (n, p))| (*w as f64 + lambda * (n - p)) as f32)
                        .collect();
                    w.gpu().upload(w.storage(), bytemuck::cast_slice(&moved))?;
                    *prev = now;
                }
            }
            Variant::Dy { eval_rank } => set_rank(lora, *eval_rank),
            _ => {}
        }
        Ok(())
    }
}

/// Every layer computes with the first `b` ranks at lora_alpha/b (rsLoRA: lora_alpha/√b).
fn set_rank(lora: &LoraModel, b: usize) {
    let c = &lora.config;
    let scaling =
        if c.use_rslora { c.lora_alpha / (b as f64).sqrt() } else { c.lora_alpha / b as f64 };
    let rank = (b < c.r).then_some((b, scaling as f32));
    lora.layers.iter().for_each(|l| l.lora.set_active_rank(rank));
}

/// Turns a freshly injected (or loaded) LoRA into `variant`: LoRA-FA freezes every A, Delta-LoRA
/// remembers each layer's current s·B·A (and refuses a layer whose weight it cannot move),
/// DyLoRA checks its inference rank and sets it.
pub fn apply(lora: &mut LoraModel, variant: Variant) -> Result<()> {
    match &variant {
        Variant::Fa => {
            for l in &lora.layers {
                l.lora.lora_a.set_requires_grad(false)?;
            }
        }
        Variant::Delta { previous, .. } => {
            if let Some(l) = lora.layers.iter().find(|l| !l.linear.owns_weight) {
                return Err(Error::Input(format!(
                    "delta-lora: cannot move {}'s weight: it is tied to another module's (wte)",
                    l.name
                )));
            }
            let now: Result<Vec<Vec<f64>>> =
                lora.layers.iter().map(LoraModel::delta_weight).collect();
            *previous.borrow_mut() = now?;
        }
        Variant::Dy { eval_rank } => {
            if *eval_rank == 0 || *eval_rank > lora.config.r {
                return Err(Error::Input(format!(
                    "dylora: inference rank {eval_rank} must be in 1..={} (the adapter's r)",
                    lora.config.r
                )));
            }
            set_rank(lora, *eval_rank);
        }
        Variant::Lora | Variant::Plus { .. } => {}
    }
    lora.variant = variant;
    Ok(())
}
