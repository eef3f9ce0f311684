//! What a method adds in front of the sequence instead of inside a layer: prompt tuning's
//! virtual input embeddings, prefix tuning's virtual keys and values in every layer.
//!
//! The model applies it itself in `Gpt2::forward`, the way a `Linear` applies its
//! `LinearAdapter`: a method sets `Gpt2::input_adapter`, and the trainer, `forward` and
//! `generate` need no method-specific code. It acts on a forward that starts a sequence; a
//! KV-cache continuation (`ForwardOptions::prefix` given) already holds the virtual positions.
//!
//! With Vt virtual tokens and T real ones (GPT-2 as transformers runs it under PEFT):
//!   prompt tuning:  x = [P_row ; wte[ids]] + wpe[0 .. Vt + T)      P_row: (Vt, C), per batch row
//!                   the real tokens' logits only are returned: (B, T, V)
//!   prefix tuning:  every layer attends to its (Vt, C) keys and values in front, no causal mask
//!                   on them; the real tokens' position ids start at Vt (past keys' rule)
//! An attention mask (B, T) given for the real tokens gets Vt zeros (attend) in front.

use crate::error::{Error, Result};
use crate::model::gpt2::{ForwardOptions, Gpt2, LayerPrefix};
use crate::ops::shape::concat;
use crate::tensor::Tensor;

pub trait InputAdapter {
    /// Vt, the virtual positions in front of the real tokens.
    fn num_virtual_tokens(&self) -> usize;

    /// Prompt tuning: the token embeddings (B, T, C) with the virtual ones in front,
    /// (B, Vt + T, C). `None`: the method leaves the input alone.
    fn embed(&self, _tokens: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Prefix tuning: each layer's virtual keys and values, (Vt, C) each.
    fn prefix(&self) -> Result<Option<Vec<LayerPrefix>>> {
        Ok(None)
    }

    /// The method's parameters in the model's registry (`prompt_embeddings`, …).
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));
}

/// What the forward uses once the model's input adapter (if any) has acted.
pub struct Input {
    pub tokens: Tensor, // (B, Vt + T, C) with prompt tuning, else (B, T, C)
    /// Prefix tuning's per-layer keys and values, in place of `opts.prefix`.
    pub prefix: Option<Vec<LayerPrefix>>,
    pub position_offset: usize,
    /// Virtual positions at the front of `tokens`, dropped before the LM head.
    pub skip: usize,
    /// The attention mask with Vt zeros in front, in place of `opts.mask`.
    pub mask: Option<Tensor>,
}

/// Applies `model`'s input adapter to the token embeddings `tokens` (B, T, C) of a forward with
/// `opts`. Error: the virtual tokens plus the sequence are longer than n_positions.
pub fn apply(model: &Gpt2, tokens: Tensor, opts: &ForwardOptions) -> Result<Input> {
    let plain = |tokens| Input {
        tokens,
        prefix: None,
        position_offset: opts.position_offset,
        skip: 0,
        mask: None,
    };
    let Some(adapter) = model.input_adapter.as_ref().filter(|_| opts.prefix.is_none()) else {
        return Ok(plain(tokens));
    };
    let (b, t, vt) = (tokens.shape()[0], tokens.shape()[1], adapter.num_virtual_tokens());
    let n_positions = model.config.n_positions;
    if opts.position_offset + vt + t > n_positions {
        return Err(Error::Input(format!(
            "{vt} virtual tokens + a sequence of {t} tokens{} = {} positions is longer than \
             n_positions {n_positions}; shorten the sequence to at most {} tokens",
            if opts.position_offset > 0 {
                format!(" + offset {}", opts.position_offset)
            } else {
                String::new()
            },
            opts.position_offset + vt + t,
            n_positions.saturating_sub(vt + opts.position_offset)
        )));
    }
    let mask = match opts.mask {
        Some(m) if vt > 0 => {
            let front = Tensor::zeros(model.gpu(), &[b, vt])?; // (B, Vt): attend
            Some(concat(&[&front, m], 1)?) // (B, Vt + T)
        }
        _ => None,
    };
    if let Some(embedded) = adapter.embed(&tokens)? {
        return Ok(Input { skip: vt, mask, ..plain(embedded) });
    }
    match adapter.prefix()? {
        Some(prefix) => Ok(Input {
            prefix: Some(prefix),
            position_offset: opts.position_offset + vt,
            mask,
            ..plain(tokens)
        }),
        None => Ok(plain(tokens)),
    }
}
