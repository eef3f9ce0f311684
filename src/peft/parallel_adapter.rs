//! Parallel bottleneck adapters (He et al. 2021, "Towards a Unified View of Parameter-Efficient
//! Transfer Learning"): a small MLP beside a whole sublayer, fed with the sublayer's input.
//!
//! With h the sublayer's input (ln_1(x) for attention, ln_2(x) for the MLP; GPT-2's modules
//! take the normalized stream) and y = sublayer(h):
//!   x ← x + y + s·(gelu_new(h·W_downᵀ + b_down)·W_upᵀ + b_up)
//!   W_down: (R, C), b_down: (R), W_up: (C, R), b_up: (C)   nn.Linear layout [out, in]
//! s is the config's `scaling` (He et al. use 4 beside the MLP in the MAM adapter). W_up and
//! b_up start at zero, so the model starts as the base; W_down and b_down start nn.Linear's way,
//! U(±1/√C). The nonlinearity is the base's gelu_new, as the serial adapters' (He et al. use
//! ReLU; a kink would blur the finite-difference check). It does not merge (the GELU).
//! Gradients: with u = gelu_new(h·W_downᵀ + b_down):  dW_up = s·dyᵀ·u,  db_up = s·Σ_rows dy,
//!   du = s·dy·W_up,  then through the GELU to W_down and b_down — so on the first step (W_up = 0)
//!   only W_up and b_up move, as LoRA's B.
//! The block holds it in its sublayer slot (`Block::attn_parallel`, `mlp_parallel`), one per
//! sublayer; the type is BOTTLENECK with `"placement": "parallel"` (bottleneck.rs reads and
//! writes the config), keys `base_model.model.transformer.h.<i>.<attn|mlp>.parallel_adapter.
//! adapter_down.{weight (R, C), bias (R)}` and `…adapter_up.{weight (C, R), bias (C)}`.

use std::rc::Rc;

use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::model::layers::{Linear, Parameters, SublayerAdapter, WeightLayout};
use crate::peft::bottleneck::{BottleneckConfig, BottleneckModel};
use crate::tensor::Tensor;

/// The sublayers an adapter can sit beside.
pub const SUBLAYERS: [&str; 2] = ["attn", "mlp"];

/// Whether registry name `name` is a parallel adapter's parameter.
pub fn is_parallel(name: &str) -> bool {
    name.contains(".parallel_adapter.")
}

/// One sublayer's parallel adapter: s·up(gelu(down(h))).
pub struct ParallelAdapter {
    pub adapter_down: Linear, // C → R, weight (R, C)
    pub adapter_up: Linear,   // R → C, weight (C, R)
    pub scaling: f32,
}

impl SublayerAdapter for ParallelAdapter {
    fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let down = self.adapter_down.forward(h)?.gelu()?; // (.., R)
        let up = self.adapter_up.forward(&down)?; // (.., C)
        if self.scaling == 1.0 { Ok(up) } else { up.scale(self.scaling) } // (.., C)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.adapter_down.visit(&format!("{prefix}adapter_down."), f);
        self.adapter_up.visit(&format!("{prefix}adapter_up."), f);
    }
}

/// The adapters `config` puts beside sublayers, ("transformer.h.<i>.<sublayer>.parallel_adapter",
/// C); changes nothing. Errors: a target that is not a sublayer, a slot already taken.
pub fn plan(model: &Gpt2, config: &BottleneckConfig) -> Result<Vec<(String, usize)>> {
    if config.target_modules.is_empty() {
        return Err(Error::Input(
            "parallel adapter: target_modules names no sublayer; give \"attn\" and/or \"mlp\""
                .into(),
        ));
    }
    if let Some(t) = config.target_modules.iter().find(|t| !SUBLAYERS.contains(&t.as_str())) {
        return Err(Error::Input(format!(
            "parallel adapter: target {t:?} is not a sublayer; a parallel adapter sits beside \
             \"attn\" or \"mlp\""
        )));
    }
    let c = model.config.n_embd;
    let mut out = vec![];
    for (i, block) in model.blocks.iter().enumerate() {
        for (sublayer, slot) in [("attn", &block.attn_parallel), ("mlp", &block.mlp_parallel)] {
            if !config.target_modules.iter().any(|t| t == sublayer) {
                continue;
            }
            let name = format!("transformer.h.{i}.{sublayer}.parallel_adapter");
            if slot.is_some() {
                return Err(Error::Input(format!(
                    "parallel adapter: transformer.h.{i}.{sublayer} already has an adapter \
                     beside it"
                )));
            }
            out.push((name, c));
        }
    }
    Ok(out)
}

/// Freezes the base and puts a fresh parallel adapter beside every targeted sublayer (W_up,
/// b_up = 0; W_down, b_down ~ U(±1/√C) from `seed`).
pub fn inject(model: &mut Gpt2, config: &BottleneckConfig, seed: u64) -> Result<BottleneckModel> {
    let planned = plan(model, config)?;
    let gpu = model.gpu().clone();
    let (r, c) = (config.bottleneck_size, model.config.n_embd);
    let bound = 1.0 / (c as f64).sqrt();
    let mut rng = Rng::new(seed);
    let mut draw = |n: usize| (0..n).map(|_| rng.range(-bound, bound) as f32).collect::<Vec<_>>();
    let linear =
        |w: Tensor, b: Tensor| Linear { layout: WeightLayout::OutIn, ..Linear::new(w, Some(b)) };
    let mut names = vec![];
    for (i, block) in model.blocks.iter_mut().enumerate() {
        for (sublayer, slot) in
            [("attn", &mut block.attn_parallel), ("mlp", &mut block.mlp_parallel)]
        {
            let name = format!("transformer.h.{i}.{sublayer}.parallel_adapter");
            if !planned.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let adapter_down = linear(
                Tensor::parameter(&gpu, &draw(r * c), &[r, c], true)?, // (R, C)
                Tensor::parameter(&gpu, &draw(r), &[r], true)?,        // (R)
            );
            let adapter_up = linear(
                Tensor::parameter(&gpu, &vec![0.0; c * r], &[c, r], true)?, // (C, R)
                Tensor::parameter(&gpu, &vec![0.0; c], &[c], true)?,        // (C)
            );
            let scaling = config.scaling as f32;
            *slot = Some(Rc::new(ParallelAdapter { adapter_down, adapter_up, scaling }));
            names.push(name);
        }
    }
    model.set_trainable(is_parallel)?;
    Ok(BottleneckModel { config: config.clone(), layers: names })
}
