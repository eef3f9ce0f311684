//! GPT-2 exactly as transformers' `GPT2LMHeadModel` computes it (nanoGPT's model.py in Rust).
//!
//! Block (pre-LN):  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//!   attn(h) = c_proj(causal_self_attention(c_attn(h)))       c_attn: (C → 3C), heads inside
//!   mlp(h)  = c_proj(gelu_new(c_fc(h)))                      c_fc: (C → 4C), c_proj: (4C → C)
//! Embedding: x = wte[ids] + wpe[position_offset + t];  head: logits = ln_f(x) · wteᵀ (tied).
//! Every weight is stored as transformers stores it (Conv1D: [in, out], y = x·W + b) and carries
//! its transformers name, so checkpoints move both ways without conversion.

use std::rc::Rc;

use crate::autograd;
use crate::error::{Error, Result, shape_err};
use crate::gpu::Gpu;
use crate::model::config::Gpt2Config;
use crate::model::input_adapter::{self, InputAdapter};
use crate::model::layers::{
    Epilogue, LayerNorm, Linear, Parameters, SublayerAdapter, WeightLayout,
};
use crate::model::{Gpt2Weights, Param, parameter_shapes};
use crate::ops::attention::Prefix;
use crate::ops::cross_entropy::IGNORE;
use crate::tensor::Tensor;

/// One pre-LN transformer block. Cheap to clone (handles), so a recomputing wrapper can keep one.
#[derive(Clone)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub c_attn: Linear,      // (C, 3C)
    pub attn_c_proj: Linear, // (C, C)
    pub ln_2: LayerNorm,
    pub c_fc: Linear,       // (C, 4C), epilogue: gelu_new(· + b)
    pub mlp_c_proj: Linear, // (4C, C)
    pub n_head: usize,
    /// Methods beside the whole attention / MLP sublayer (parallel adapters); `None` for the
    /// plain block. Their parameters are named under `attn.parallel_adapter.` and
    /// `mlp.parallel_adapter.`.
    pub attn_parallel: Option<Rc<dyn SublayerAdapter>>,
    pub mlp_parallel: Option<Rc<dyn SublayerAdapter>>,
}

/// Dropout at a run of sites: site k draws its mask from its own counter-based stream.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// The forward's seed, mixed once (`Dropout::stream`).
    pub stream: u64,
    /// The first site's number; a block has two (after attention, after the MLP).
    pub site: u64,
    pub p: f64,
}

impl Dropout {
    pub fn stream(seed: u64) -> u64 {
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Training-mode dropout at site `self.site + offset`.
    pub fn apply(&self, x: Tensor, offset: u64) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x);
        }
        x.dropout(self.p as f32, self.stream.wrapping_add(self.site + offset), true)
    }
}

/// What a block's forward needs besides its input, as owned handles (a recompute keeps a clone).
#[derive(Clone, Default)]
pub struct BlockContext {
    /// Extra keys and values every position attends to (prefix tuning, a KV cache): (P, C) each.
    pub prefix: Option<(Tensor, Tensor)>,
    /// Additive attention mask (B, P + T).
    pub mask: Option<Tensor>,
    /// Residual dropout; `None` in eval mode.
    pub dropout: Option<Dropout>,
}

pub struct BlockOutput {
    pub x: Tensor,   // (B, T, C)
    pub qkv: Tensor, // (B, T, 3C), c_attn's output (the KV cache keeps k and v)
}

impl Block {
    /// x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)).   x: (B, T, C).
    /// With a parallel adapter P beside a sublayer: x = x + sublayer(h) + P(h), h its input.
    pub fn forward(&self, x: &Tensor, ctx: &BlockContext) -> Result<BlockOutput> {
        let dropout = |y: Tensor, offset| match &ctx.dropout {
            Some(d) => d.apply(y, offset),
            None => Ok(y),
        };
        let h = self.ln_1.forward(x)?; // (B, T, C)
        let qkv = self.c_attn.forward(&h)?; // (B, T, 3C)
        let prefix = ctx.prefix.as_ref().map(|(keys, values)| Prefix { keys, values });
        let a = qkv.attention(self.n_head, prefix, ctx.mask.as_ref())?; // (B, T, C)
        let attn = beside(self.attn_c_proj.forward(&a)?, &self.attn_parallel, &h)?; // (B, T, C)
        let x = x.add(&dropout(attn, 0)?)?; // (B, T, C)
        let h = self.ln_2.forward(&x)?; // (B, T, C)
        let f = self.c_fc.forward(&h)?; // (B, T, 4C) = gelu_new(h·W + b)
        let mlp = beside(self.mlp_c_proj.forward(&f)?, &self.mlp_parallel, &h)?; // (B, T, C)
        let x = x.add(&dropout(mlp, 1)?)?; // (B, T, C)
        Ok(BlockOutput { x, qkv })
    }
}

/// A sublayer's output y plus its parallel adapter's term on the sublayer's input h, if any.
fn beside(y: Tensor, parallel: &Option<Rc<dyn SublayerAdapter>>, h: &Tensor) -> Result<Tensor> {
    match parallel {
        Some(p) => y.add(&p.forward(h)?), // (B, T, C)
        None => Ok(y),
    }
}

impl Parameters for Block {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.ln_1.visit(&format!("{prefix}ln_1."), f);
        self.c_attn.visit(&format!("{prefix}attn.c_attn."), f);
        self.attn_c_proj.visit(&format!("{prefix}attn.c_proj."), f);
        if let Some(p) = &self.attn_parallel {
            p.visit(&format!("{prefix}attn.parallel_adapter."), f);
        }
        self.ln_2.visit(&format!("{prefix}ln_2."), f);
        self.c_fc.visit(&format!("{prefix}mlp.c_fc."), f);
        self.mlp_c_proj.visit(&format!("{prefix}mlp.c_proj."), f);
        if let Some(p) = &self.mlp_parallel {
            p.visit(&format!("{prefix}mlp.parallel_adapter."), f);
        }
    }
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
    /// Given, it is a KV-cache continuation: the model's input adapter is not applied again.
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
    /// Gradient checkpointing: blocks run in segments of this many, each keeping only its input
    /// and recomputed in backward (`autograd::checkpoint`), except the last, which backward
    /// reaches first (so k ≥ n_layer is a plain run). Ignored when no graph is recorded
    /// (inference, `keep_qkv`). `Some(0)` is an error.
    pub checkpoint_every: Option<usize>,
}

pub struct Gpt2 {
    pub config: Gpt2Config,
    pub wte: Tensor, // (V, C), tied with the LM head
    pub wpe: Tensor, // (n_positions, C)
    pub blocks: Vec<Block>,
    pub ln_f: LayerNorm,
    /// logits = x·wteᵀ: a `Linear` over wte's own handle (tied; it names no weight of its own).
    pub lm_head: Linear,
    /// A method that works in front of the sequence (prompt / prefix tuning), applied by
    /// `forward` itself; `None` for the plain model.
    pub input_adapter: Option<Rc<dyn InputAdapter>>,
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
            Ok(Linear::new(
                param(&format!("{name}.weight"), &[fan_in, fan_out])?, // (in, out)
                Some(param(&format!("{name}.bias"), &[fan_out])?),     // (out)
            ))
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
                c_fc: linear(&format!("{h}.mlp.c_fc"), c, hidden)?
                    .with_epilogue(Epilogue::BiasGelu),
                mlp_c_proj: linear(&format!("{h}.mlp.c_proj"), hidden, c)?,
                n_head: config.n_head,
                attn_parallel: None,
                mlp_parallel: None,
            });
        }
        let ln_f = layernorm("transformer.ln_f")?;
        let lm_head = Linear {
            layout: WeightLayout::OutIn,
            owns_weight: false,
            ..Linear::new(wte.clone(), None)
        };
        let input_adapter = None;
        let model =
            Gpt2 { config, wte, wpe, blocks, ln_f, lm_head, input_adapter, gpu: gpu.clone() };
        // The registry is the model: it must name exactly what a transformers checkpoint holds.
        let names: Vec<(String, Vec<usize>)> =
            model.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
        if names != parameter_shapes(&model.config) {
            return Err(Error::Input(format!(
                "internal: the model's parameter registry differs from the checkpoint layout \
                 ({} vs {} parameters)",
                names.len(),
                parameter_shapes(&model.config).len()
            )));
        }
        Ok(model)
    }

    /// A freshly initialised model, as transformers initialises GPT-2 (see `Gpt2Weights::init`).
    pub fn new_random(gpu: &Rc<Gpu>, config: Gpt2Config, seed: u64) -> Result<Gpt2> {
        Gpt2::from_weights(gpu, &Gpt2Weights::init(&config, seed))
    }

    /// Reads every base parameter back to the host (for saving model.safetensors); an
    /// adapter's parameters are not part of the base model and are left out.
    pub fn to_weights(&self) -> Result<Gpt2Weights> {
        let base: std::collections::HashSet<String> =
            parameter_shapes(&self.config).into_iter().map(|(n, _)| n).collect();
        let mut params = std::collections::BTreeMap::new();
        for (name, t) in self.named_parameters() {
            if base.contains(&name) {
                params.insert(name, Param { shape: t.shape().to_vec(), data: t.to_vec()? });
            }
        }
        Ok(Gpt2Weights { config: self.config.clone(), params })
    }

    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.gpu
    }

    /// Every parameter under its transformers name, in state_dict order (the registry's walk,
    /// [`Parameters::visit`]). Adapters' parameters appear under the layer they wrap.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        self.visit("", &mut |name, t| out.push((name, t.clone())));
        out
    }

    /// The parameter called `name`, if there is one.
    pub fn parameter(&self, name: &str) -> Option<Tensor> {
        self.named_parameters().into_iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Number of scalars in the model, a quantized base's weights counted as PEFT counts them
    /// (`num_quantized_parameters`: a 4-bit weight is twice its packed bytes).
    pub fn num_parameters(&self) -> usize {
        let params: usize = self.named_parameters().iter().map(|(_, t)| t.numel()).sum();
        params + self.num_quantized_parameters()
    }

    /// Number of scalars that train.
    pub fn num_trainable_parameters(&self) -> usize {
        self.named_parameters()
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(_, t)| t.numel())
            .sum()
    }

    /// PEFT's `print_trainable_parameters` line (quantized weights counted as PEFT counts them),
    /// digits grouped as PEFT prints them:
    /// `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`.
    pub fn trainable_summary(&self) -> String {
        let (trainable, all) = (self.num_trainable_parameters(), self.num_parameters());
        format!(
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            grouped(trainable),
            grouped(all),
            100.0 * trainable as f64 / all.max(1) as f64
        )
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
        let (x, qkv) = self.hidden(ids, opts)?; // (B, T, C)
        let logits = self.lm_head.forward(&x)?; // (B, T, V)
        Ok(ForwardOutput { logits, qkv })
    }

    /// Mean cross-entropy of the next-token predictions for ids u32 (B, T) against targets u32
    /// (B, T) (IGNORE skipped): the same value as `Gpt2::loss(forward(ids).logits, targets)`, but
    /// the head and the loss run fused over vocabulary chunks (`lm_head_loss`), so the (B·T, V)
    /// logits never exist. A head with an adapter or a bias takes the unfused path.
    pub fn forward_loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let (x, _) = self.hidden(ids, opts)?; // (B, T, C)
        if self.lm_head.adapter.is_some() || self.lm_head.bias.is_some() {
            return Gpt2::loss(&self.lm_head.forward(&x)?, targets);
        }
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let x = x.reshape(&[b * t, c])?; // (B·T, C)
        x.lm_head_loss(&self.lm_head.weight, &targets.reshape(&[b * t])?) // (1)
    }

    /// The loss of a classifier that answers with one of `classes`' tokens (the sentiment task's
    /// `p` and `n`): cross-entropy over those tokens' logits alone, so every gradient goes to the
    /// choice between them and none to the rest of the vocabulary, which is not an answer.
    ///   logits_k[r] = h[r] · W[classes_k]   (the head's rows for the classes; tied: wte's)
    ///   loss = mean over counted rows of lse_k(logits_k[r]) − logits_{y_r}[r]
    /// `targets` (B, T) hold vocabulary ids or IGNORE; a counted target must be one of `classes`.
    /// Comparing two logits ranks the classes as the full softmax does, so accuracy is unchanged
    /// in meaning. The head's rows are gathered by `embedding` (its backward scatters into wte).
    pub fn forward_class_loss(
        &self,
        ids: &Tensor,
        targets: &[u32],
        classes: &[u32],
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        let op = "forward_class_loss";
        let v = self.config.vocab_size;
        if classes.is_empty() || classes.iter().any(|&c| c as usize >= v) {
            return Err(Error::Input(format!(
                "{op}: classes {classes:?} must be 1 or more token ids below the vocabulary's {v}"
            )));
        }
        let mut mapped = Vec::with_capacity(targets.len()); // (B·T) class index or IGNORE
        for &t in targets {
            mapped.push(match classes.iter().position(|&c| c == t) {
                Some(k) => k as u32,
                None if t == IGNORE => IGNORE,
                None => {
                    return Err(Error::Input(format!(
                        "{op}: target token {t} is not one of the classes {classes:?}"
                    )));
                }
            });
        }
        let (x, _) = self.hidden(ids, opts)?; // (B, T, C)
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        if targets.len() != b * t {
            return shape_err(
                op,
                format!("{} targets for hidden states {:?}", targets.len(), x.shape()),
            );
        }
        let x = x.reshape(&[b * t, c])?; // (B·T, C)
        let class_ids = Tensor::from_u32(&self.gpu, classes, &[classes.len()])?; // (K)
        let logits = match (&self.lm_head.adapter, &self.lm_head.bias, self.lm_head.layout) {
            (None, None, WeightLayout::OutIn) => {
                let w = self.lm_head.weight.embedding(&class_ids)?; // (K, C): the classes' rows
                x.matmul_t(&w, false, true)? // (B·T, K)
            }
            _ => {
                // A head with an adapter or bias: its full logits, then the classes' columns
                // through a one-hot (V, K) selection.
                let full = self.lm_head.forward(&x)?; // (B·T, V)
                let mut onehot = vec![0f32; v * classes.len()]; // (V, K)
                for (k, &cls) in classes.iter().enumerate() {
                    onehot[cls as usize * classes.len() + k] = 1.0;
                }
                let select = Tensor::from_f32(&self.gpu, &onehot, &[v, classes.len()])?;
                full.matmul_t(&select, false, false)? // (B·T, K)
            }
        };
        let mapped = Tensor::from_u32(&self.gpu, &mapped, &[b * t])?; // (B·T)
        logits.cross_entropy(&mapped) // (1)
    }

    /// The loss a task trains, targets u32 (B, T) on the host: over `classes`' logits only for a
    /// classifier (`forward_class_loss`), else the next-token cross-entropy over the whole
    /// vocabulary (`forward_loss`). The trainer, validation and Fisher scoring all call this, so
    /// they score the same loss.
    pub fn task_loss(
        &self,
        ids: &Tensor,
        targets: &[u32],
        classes: Option<&[u32]>,
        opts: &ForwardOptions,
    ) -> Result<Tensor> {
        match classes {
            Some(classes) => self.forward_class_loss(ids, targets, classes, opts), // (1)
            None => {
                let targets = Tensor::from_u32(&self.gpu, targets, ids.shape())?; // (B, T)
                self.forward_loss(ids, &targets, opts) // (1)
            }
        }
    }

    /// The blocks and ln_f: ids u32 (B, T) → hidden states (B, T, C), and each layer's qkv when
    /// `opts.keep_qkv`.
    fn hidden(&self, ids: &Tensor, opts: &ForwardOptions) -> Result<(Tensor, Vec<Tensor>)> {
        let tok = self.wte.embedding(ids)?; // (B, T, C)
        // Prompt / prefix tuning: virtual tokens in front (model::input_adapter).
        let input = input_adapter::apply(self, tok, opts)?;
        let (tok, t) = (input.tokens.clone(), input.tokens.shape()[1]); // (B, Vt + T, C) or (B, T, C)
        let positions: Vec<u32> = (0..t as u32).map(|i| i + input.position_offset as u32).collect();
        let pos_ids = Tensor::from_u32(&self.gpu, &positions, &[t])?; // (T)
        let pos = self.wpe.embedding(&pos_ids)?; // (T, C)
        // Dropout site 0 is the embedding's, sites 1 + 2l and 2 + 2l are block l's.
        let stream = opts.dropout_seed.map(Dropout::stream);
        let dropout = |site: u64, p: f64| stream.map(|stream| Dropout { stream, site, p });
        let mut x = tok.add(&pos)?; // (B, T, C)
        if let Some(d) = dropout(0, self.config.embd_pdrop) {
            x = d.apply(x, 0)?;
        }
        let prefix = input.prefix.as_deref().or(opts.prefix);
        let ctx = |l: usize| BlockContext {
            prefix: prefix.map(|p| (p[l].keys.clone(), p[l].values.clone())),
            mask: input.mask.clone().or(opts.mask.cloned()),
            dropout: dropout(1 + 2 * l as u64, self.config.resid_pdrop),
        };
        let mut kept = vec![];
        let segment = match opts.checkpoint_every {
            Some(0) => {
                return Err(Error::Input(
                    "checkpointing every 0 blocks: give a segment length of 1 or more".into(),
                ));
            }
            Some(k) if autograd::is_grad_enabled() && !opts.keep_qkv => Some(k),
            _ => None,
        };
        if let Some(k) = segment {
            let n = self.blocks.len();
            for first in (0..n).step_by(k) {
                let layers = first..(first + k).min(n);
                if layers.end < n {
                    x = self.checkpointed_segment(&x, layers, &ctx)?; // (B, T, C)
                } else {
                    // The last segment runs plainly (as torch's checkpoint_sequential does):
                    // backward starts with it, so its recompute would free nothing before it is
                    // needed again, and would cost a forward of k blocks.
                    for l in layers {
                        x = self.blocks[l].forward(&x, &ctx(l))?.x; // (B, T, C)
                    }
                }
            }
        } else {
            for (l, block) in self.blocks.iter().enumerate() {
                let out = block.forward(&x, &ctx(l))?;
                if opts.keep_qkv {
                    kept.push(out.qkv.detach());
                }
                x = out.x; // (B, T, C)
            }
        }
        if input.skip > 0 {
            x = x.slice(1, input.skip, t)?; // (B, T, C): the real tokens only
        }
        Ok((self.ln_f.forward(&x)?, kept)) // (B, T, C)
    }

    /// Blocks `layers` as one recomputed segment: only `x` (and the prefix tensors, which may be
    /// computed by ops, as prefix tuning's reparameterization does) are kept; the blocks' own
    /// trainable parameters receive their gradients from the recompute.
    fn checkpointed_segment(
        &self,
        x: &Tensor,
        layers: std::ops::Range<usize>,
        ctx: &dyn Fn(usize) -> BlockContext,
    ) -> Result<Tensor> {
        let blocks: Vec<Block> = self.blocks[layers.clone()].to_vec();
        let ctxs: Vec<BlockContext> = layers.map(ctx).collect();
        // Inputs: x, then each layer's prefix keys and values (fresh leaves in the replay).
        let mut inputs: Vec<Tensor> = vec![x.clone()];
        for c in &ctxs {
            if let Some((keys, values)) = &c.prefix {
                inputs.extend([keys.clone(), values.clone()]);
            }
        }

        let mut params = vec![];
        for block in &blocks {
            block.visit("", &mut |_, t| {
                if t.requires_grad() {
                    params.push(t.clone());
                }
            });
        }
        let inputs: Vec<&Tensor> = inputs.iter().collect();
        autograd::checkpoint(&inputs, &params, move |i| {
            let mut h = i[0].clone(); // (B, T, C)
            let mut next = 1;
            for (block, ctx) in blocks.iter().zip(&ctxs) {
                let mut ctx = ctx.clone();
                if ctx.prefix.is_some() {
                    ctx.prefix = Some((i[next].clone(), i[next + 1].clone())); // (P, C) each
                    next += 2;
                }
                h = block.forward(&h, &ctx)?.x;
            }
            Ok(h)
        })
    }

    /// Mean cross-entropy of logits (B, T, V) against targets u32 (B, T) (IGNORE skipped).
    pub fn loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t, v) = (logits.shape()[0], logits.shape()[1], logits.shape()[2]);
        logits.reshape(&[b * t, v])?.cross_entropy(&targets.reshape(&[b * t])?)
    }

    /// Freezes (or unfreezes) every parameter in place: frozen tensors get no gradient buffer.
    pub fn set_requires_grad(&self, requires_grad: bool) -> Result<()> {
        self.set_trainable(|_| requires_grad)
    }

    /// Makes exactly the parameters whose name `trainable` accepts train; the rest are frozen.
    pub fn set_trainable(&self, trainable: impl Fn(&str) -> bool) -> Result<()> {
        for (name, t) in self.named_parameters() {
            t.set_requires_grad(trainable(&name))?;
        }
        Ok(())
    }
}

/// 1234567 → "1,234,567" (Python's `f"{n:,}"`).
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Parameters for Gpt2 {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}transformer.wte.weight"), &self.wte);
        f(format!("{prefix}transformer.wpe.weight"), &self.wpe);
        for (i, block) in self.blocks.iter().enumerate() {
            block.visit(&format!("{prefix}transformer.h.{i}."), f);
        }
        self.ln_f.visit(&format!("{prefix}transformer.ln_f."), f);
        self.lm_head.visit(&format!("{prefix}lm_head."), f); // tied: names only what it adds
        if let Some(adapter) = &self.input_adapter {
            adapter.visit(prefix, f);
        }
    }
}
