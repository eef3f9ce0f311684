//! What every parameter-efficient method is to the rest of the program.
//!
//! `forward --adapter`, `generate --adapter`, `merge` and `finetune` see a method only through
//! [`Adapter`]: its PEFT type, its parameters under their adapter-file keys, its config file, the
//! train/eval switch, and the per-step hooks some methods need (LoRA+'s learning-rate groups,
//! Delta-LoRA's update of W, DyLoRA's rank sampling). A method is one file under `src/peft/` that
//! wraps the model's layers (or its input, for prefix and prompt tuning) and implements this
//! trait; [`crate::peft::files::load`] picks the method from `adapter_config.json`'s `peft_type`.

use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::tensor::Tensor;

pub trait Adapter {
    /// PEFT's `peft_type` ("LORA", "IA3", "VERA", "PREFIX_TUNING", "PROMPT_TUNING"), or our own
    /// name for a method PEFT does not have.
    fn peft_type(&self) -> &str;

    /// The method's trainable parameters under their keys in `adapter_model.safetensors`
    /// (`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`, `prompt_embeddings`, …).
    fn named_parameters(&self, model: &Gpt2) -> Vec<(String, Tensor)>;

    /// What `adapter_model.safetensors` holds, under its keys: the trainable parameters unless the
    /// method saves more or other tensors (VeRA adds its shared projections `base_model.vera_A`
    /// and `vera_B`; prefix tuning with `prefix_projection` saves the table its MLP computes).
    fn tensors_to_save(&self, model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        Ok(self.named_parameters(model))
    }

    /// `adapter_config.json` as this method saves it (`inference_mode: true`, as PEFT saves).
    fn config_json(&self) -> String;

    /// Training mode: the method's own dropout draws its masks from `seed` (a new seed each
    /// step; a recomputed segment reuses the step's masks).
    fn train(&self, _seed: u64) {}

    /// Eval mode: no dropout.
    fn eval(&self) {}

    /// The learning rate of trainable parameter `name` (a name of the model's registry) as a
    /// multiple of the schedule's: LoRA+ gives B `loraplus_lr_ratio` × A's. 1 by default.
    fn lr_scale(&self, _name: &str, _param: &Tensor) -> f32 {
        1.0
    }

    /// Called before each optimizer step's forward passes (DyLoRA samples its rank here).
    fn before_step(&self, _step: usize, _seed: u64) -> Result<()> {
        Ok(())
    }

    /// A term added to every micro-batch's training loss before backward (AdaLoRA's orthogonal
    /// regularizer), or `None`.
    fn loss_term(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Called right after each optimizer step, while the step's gradients are still there
    /// (AdaLoRA's rank allocator, PEFT's `update_and_allocate`); `global_step` counts the steps
    /// done (1 after the first).
    fn after_optimizer_step(&self, _global_step: usize) -> Result<()> {
        Ok(())
    }

    /// Called after each optimizer step (Delta-LoRA moves W by the change of B·A).
    fn after_step(&self, _model: &Gpt2) -> Result<()> {
        Ok(())
    }

    /// Folds the method into the base weights and takes it off the model (PEFT's
    /// `merge_and_unload`); returns how many layers were merged. Methods that cannot be merged
    /// (prefix and prompt tuning change the input, not a weight) say so.
    fn merge_and_unload(self: Box<Self>, _model: &mut Gpt2) -> Result<usize> {
        Err(Error::Input(format!(
            "{}: this method cannot be merged into the base weights",
            self.peft_type()
        )))
    }
}
