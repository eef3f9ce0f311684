//! GPT-2 exactly as transformers' `GPT2LMHeadModel` computes it (nanoGPT's model.py in Rust).
//!
//! Block (pre-LN):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//!   attn(h) = c_proj(causal_self_attention(c_attn(h)))       c_attn: (C → 3C), heads inside
//!   mlp(h)  = c_proj(gelu_new(c_fc(h)))                      c_fc: (C → 4C), c_proj: (4C → C)
//! Embedding: x = wte[ids] + wpe[position_offset + t];  head: logits = ln_f(x) · wteᵀ (tied).
//! Every weight is stored as transformers stores it (Conv1D: [in, out], y = x·W + b) and carries
//! its transformers name, so checkpoints move both ways without conversion.

use std::rc::Rc;

use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu};
use crate::model::config::Gpt2Config;
use crate::model::{Gpt2Weights, Param};
use crate::ops::attention::Prefix;
use crate::tensor::Tensor;

/// y = x·W + b with W stored [in, out]. Adapters (LoRA, IA3, …) wrap this type.
pub struct Linear {
    pub weight: Tensor,       // (in, out)
    pub bias: Option<Tensor>, // (out)
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref()) // (.., out)
    }
}

pub struct LayerNorm {
    pub weight: Tensor, // (C)
    pub bias: Tensor,   // (C)
    pub eps: f32,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layernorm(&self.weight, &self.bias, self.eps)
    }
}

pub struct Block {
    pub ln_1: LayerNorm,
    pub c_attn: Linear,      // (C, 3C)
    pub attn_c_proj: Linear, // (C, C)
    pub ln_2: LayerNorm,
    pub c_fc: Linear,       // (C, 4C)
    pub mlp_c_proj: Linear, // (4C, C)
}

/// Per-layer keys and values placed in front of the sequence (prefix tuning, or a KV cache).
pub struct LayerPrefix {
    pub keys: Tensor,   // (P, C)
    pub values: Tensor, // (P, C)
}

/// Options of one forward pass.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// One entry per layer: extra keys/values every position attends to (no causal mask).
    pub prefix: Option<&'a [LayerPrefix]>,
    /// Additive attention mask (B, P + T): 0 to attend, a large negative number to ignore.
    pub mask: Option<&'a Tensor>,
    /// First position id (GPT-2 treats a prefix as past keys: real tokens start at P).
    pub position_offset: usize,
    /// Each layer's qkv (B, T, 3C) is handed here (the KV cache keeps k and v).
    pub keep_qkv: bool,
    /// Training-mode dropout with the config's `embd_pdrop` and `resid_pdrop`, masks drawn from this
    /// seed (each site gets its own stream). `None` (the default) is eval mode: no dropout.
    /// Attention-probability dropout (`attn_pdrop`) is not applied: the fused kernel never forms
    /// the probabilities.
    pub dropout_seed: Option<u64>,
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    pub wte: Tensor, // (V, C), tied with the LM head
    pub wpe: Tensor, // (n_positions, C)
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    gpu: Rc<Gpu>,
}

pub struct ForwardOutput {
    pub logits: Tensor,   // (B, T, V)
    pub qkv: Vec<Tensor>, // per layer (B, T, 3C) when keep_qkv
}

impl Gpt2 {
    /// Uploads loaded weights (see `model::weights`, which has already checked names and shapes
    /// against the config) to the GPU. Every parameter starts trainable.
    pub fn from_weights(gpu: &Rc<Gpu>, weights: &Gpt2Weights) -> Result<Gpt2> {
        let config = weights.config.clone();
        let (v, c, p, hidden) =
            (config.vocab_size, config.n_embd, config.n_positions, config.mlp_hidden());
        let eps = config.layer_norm_epsilon as f32;
        let param = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let w = weights
                .params
                .get(name)
                .ok_or_else(|| Error::Input(format!("the weights lack {name}")))?;
            if w.shape != shape {
                return Err(Error::Input(format!(
                    "{name}: shape {:?}, the config implies {shape:?}",
                    w.shape
                )));
            }
            Tensor::parameter(gpu, &w.data, shape, true)
        };
        let linear = |name: &str, fan_in: usize, fan_out: usize| -> Result<Linear> {
            Ok(Linear {
                weight: param(&format!("{name}.weight"), &[fan_in, fan_out])?,
                bias: Some(param(&format!("{name}.bias"), &[fan_out])?),
            })
        };
        let layernorm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: param(&format!("{name}.weight"), &[c])?,
                bias: param(&format!("{name}.bias"), &[c])?,
                eps,
            })
        };
        let wte = param("transformer.wte.weight", &[v, c])?; // (V, C)
        let wpe = param("transformer.wpe.weight", &[p, c])?; // (n_positions, C)
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let h = format!("transformer.h.{i}");
            blocks.push(Block {
                ln_1: layernorm(&format!("{h}.ln_1"))?,
                c_attn: linear(&format!("{h}.attn.c_attn"), c, 3 * c)?,
                attn_c_proj: linear(&format!("{h}.attn.c_proj"), c, c)?,
                ln_2: layernorm(&format!("{h}.ln_2"))?,
                c_fc: linear(&format!("{h}.mlp.c_fc"), c, hidden)?,
                mlp_c_proj: linear(&format!("{h}.mlp.c_proj"), hidden, c)?,
            });
        }
        let ln_f = layernorm("transformer.ln_f")?;
        Ok(Gpt2 { config, wte, wpe, blocks, ln_f, gpu: gpu.clone() })
    }

    /// A freshly initialised model, as transformers initialises GPT-2 (see `Gpt2Weights::init`).
    pub fn new_random(gpu: &Rc<Gpu>, config: Gpt2Config, seed: u64) -> Result<Gpt2> {
        Gpt2::from_weights(gpu, &Gpt2Weights::init(&config, seed))
    }

    /// Reads every parameter back to the host (for saving).
    pub fn to_weights(&self) -> Result<Gpt2Weights> {
        let mut params = std::collections::BTreeMap::new();
        for (name, t) in self.named_parameters() {
            params.insert(name, Param { shape: t.shape().to_vec(), data: t.to_vec()? });
        }
        Ok(Gpt2Weights { config: self.config.clone(), params })
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }

    /// Every parameter under its transformers name, in a fixed order.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("transformer.wte.weight".to_string(), self.wte.clone()),
            ("transformer.wpe.weight".to_string(), self.wpe.clone()),
        ];
        for (i, b) in self.blocks.iter().enumerate() {
            let h = format!("transformer.h.{i}");
            let mut push = |name: &str, t: &Tensor| out.push((format!("{h}.{name}"), t.clone()));
            push("ln_1.weight", &b.ln_1.weight);
            push("ln_1.bias", &b.ln_1.bias);
            for (name, lin) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_c_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_c_proj),
            ] {
                push(&format!("{name}.weight"), &lin.weight);
                if let Some(bias) = &lin.bias {
                    push(&format!("{name}.bias"), bias);
                }
            }
            push("ln_2.weight", &b.ln_2.weight);
            push("ln_2.bias", &b.ln_2.bias);
        }
        out.push(("transformer.ln_f.weight".to_string(), self.ln_f.weight.clone()));
        out.push(("transformer.ln_f.bias".to_string(), self.ln_f.bias.clone()));
        out.sort_by_key(|(name, _)| order_key(name));
        out
    }

    /// Number of scalars in the model.
    pub fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Checks token ids on the host before they reach the GPU: in range, and not too long.
    pub fn check_ids(&self, ids: &[u32], shape: &[usize], position_offset: usize) -> Result<()> {
        if shape.len() != 2 || shape[0] * shape[1] != ids.len() || ids.is_empty() {
            return shape_err(
                "gpt2",
                format!(
                    "token ids must be (B, T) with B, T ≥ 1, got shape {shape:?} for {} ids",
                    ids.len()
                ),
            );
        }
        if let Some((i, &id)) =
            ids.iter().enumerate().find(|(_, id)| **id as usize >= self.config.vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {id} at position {i} is ≥ vocab_size {}",
                self.config.vocab_size
            )));
        }
        let t = shape[1] + position_offset;
        if t > self.config.n_positions {
            return Err(Error::Input(format!(
                "sequence of {} tokens (+{position_offset} prefix positions) is longer than n_positions {}",
                shape[1], self.config.n_positions
            )));
        }
        Ok(())
    }

    /// ids: u32 (B, T) → logits (B, T, V).
    pub fn forward(&self, ids: &Tensor, opts: &ForwardOptions) -> Result<ForwardOutput> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let c = self.config.n_embd;
        let positions: Vec<u32> = (0..t as u32).map(|i| i + opts.position_offset as u32).collect();
        let pos_ids = Tensor::from_u32(&self.gpu, &positions, &[t])?; // (T)
        let tok = self.wte.embedding(ids)?; // (B, T, C)
        let pos = self.wpe.embedding(&pos_ids)?; // (T, C)
        // Dropout site k of this forward draws from its own counter-based stream.
        let dropout = |x: Tensor, p: f64, site: u64| -> Result<Tensor> {
            match opts.dropout_seed {
                Some(seed) if p > 0.0 => x.dropout(
                    p as f32,
                    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(site),
                    true,
                ),
                _ => Ok(x),
            }
        };
        let (embd_p, resid_p) = (self.config.embd_pdrop, self.config.resid_pdrop);
        let mut x = dropout(tok.add(&pos)?, embd_p, 0)?; // (B, T, C)
        let mut kept = vec![];
        for (l, block) in self.blocks.iter().enumerate() {
            let site = 1 + 2 * l as u64;
            let h = block.ln_1.forward(&x)?; // (B, T, C)
            let qkv = block.c_attn.forward(&h)?; // (B, T, 3C)
            let prefix = opts.prefix.map(|p| Prefix { keys: &p[l].keys, values: &p[l].values });
            let a = qkv.attention(self.config.n_head, prefix, opts.mask)?; // (B, T, C)
            if opts.keep_qkv {
                kept.push(qkv.detach());
            }
            x = x.add(&dropout(block.attn_c_proj.forward(&a)?, resid_p, site)?)?; // (B, T, C)
            let h = block.ln_2.forward(&x)?; // (B, T, C)
            let f = h.linear(&block.c_fc.weight, None)?; // (B, T, 4C)
            let f = f.bias_gelu(block.c_fc.bias.as_ref().expect("c_fc has a bias"))?; // (B, T, 4C)
            x = x.add(&dropout(block.mlp_c_proj.forward(&f)?, resid_p, site + 1)?)?; // (B, T, C)
        }
        let x = self.ln_f.forward(&x)?; // (B, T, C)
        let logits = x.reshape(&[b * t, c])?.matmul_t(&self.wte, false, true)?; // (B·T, V)
        let logits = logits.reshape(&[b, t, self.config.vocab_size])?; // (B, T, V)
        Ok(ForwardOutput { logits, qkv: kept })
    }

    /// Mean cross-entropy of logits (B, T, V) against targets u32 (B, T) (IGNORE skipped).
    pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        logits.reshape(&[b * t, v])?.cross_entropy(&targets.reshape(&[b * t])?)
    }

    /// Freezes (or unfreezes) every parameter: frozen tensors get no gradient buffer.
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        self.map_parameters(|_, t| t.with_requires_grad(requires_grad));
    }

    /// Replaces each parameter by `f(name, tensor)` (freezing, loading new values).
    pub fn map_parameters(&mut self, mut f: impl FnMut(&str, &Tensor) -> Tensor) {
        let mut apply = |name: String, t: &mut Tensor| {
            let new = f(&name, t);
            new.set_category(Category::Parameters);
            *t = new;
        };
        apply("transformer.wte.weight".into(), &mut self.wte);
        apply("transformer.wpe.weight".into(), &mut self.wpe);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let h = format!("transformer.h.{i}");
            apply(format!("{h}.ln_1.weight"), &mut b.ln_1.weight);
            apply(format!("{h}.ln_1.bias"), &mut b.ln_1.bias);
            apply(format!("{h}.ln_2.weight"), &mut b.ln_2.weight);
            apply(format!("{h}.ln_2.bias"), &mut b.ln_2.bias);
            for (name, lin) in [
                ("attn.c_attn", &mut b.c_attn),
                ("attn.c_proj", &mut b.attn_c_proj),
                ("mlp.c_fc", &mut b.c_fc),
                ("mlp.c_proj", &mut b.mlp_c_proj),
            ] {
                apply(format!("{h}.{name}.weight"), &mut lin.weight);
                if let Some(bias) = lin.bias.as_mut() {
                    apply(format!("{h}.{name}.bias"), bias);
                }
            }
        }
        apply("transformer.ln_f.weight".into(), &mut self.ln_f.weight);
        apply("transformer.ln_f.bias".into(), &mut self.ln_f.bias);
    }
}

/// Sort key putting names in transformers' state_dict order (layer index numerically).
fn order_key(name: &str) -> (usize, usize, String) {
    if let Some(rest) = name.strip_prefix("transformer.h.") {
        let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
        (1, i.parse().unwrap_or(0), tail.to_string())
    } else if name.contains("ln_f") {
        (2, 0, name.to_string())
    } else {
        (0, 0, name.to_string())
    }
}
