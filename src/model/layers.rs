//! The layers a model is built from, and the one way parameters are named.
//!
//! Every projection of the model is a [`Linear`]: c_attn, attn.c_proj, c_fc, mlp.c_proj and the
//! tied LM head. A parameter-efficient method wraps a `Linear` by setting its `adapter`
//! ([`LinearAdapter`]: LoRA, IA3, DoRA, …), and a 4-bit base replaces its weight; nothing in the
//! model calls a matmul around the layer. A fusion is the layer's own epilogue: c_fc's bias and
//! GELU run in one kernel (`bias_gelu`) after the matmul, and an adapter's term is added before
//! that epilogue, so a LoRA on c_fc changes the pre-activation exactly as PEFT's does.
//!
//! Parameters are found by one walk, [`Parameters::visit`], that each layer writes once: it names
//! them (transformers' names, in state_dict order), and the model derives from it the list, the
//! freezing, the saving and the optimizer's groups.

use std::rc::Rc;

use crate::error::Result;
use crate::tensor::Tensor;

/// The one walk over a module's parameters: calls `f(name, tensor)` for each, named
/// `prefix` + the module's own name for it, in a fixed order (transformers' state_dict order).
pub trait Parameters {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));

    /// Every parameter under its name (handles: freezing one freezes the module's).
    fn named_parameters(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        self.visit(prefix, &mut |name, t| out.push((name, t.clone())));
        out
    }
}

/// How the stored weight maps inputs to outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// [in, out], y = x·W: GPT-2's Conv1D, as transformers stores c_attn, c_proj, c_fc.
    InOut,
    /// [out, in], y = x·Wᵀ: nn.Linear's layout, and the LM head tied to wte (V, C).
    OutIn,
}

/// What runs after the matmul (and after an adapter's term), in the same kernel where one exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// + bias (fused into the matmul kernel).
    Bias,
    /// gelu_new(· + bias) (one `bias_gelu` kernel): GPT-2's c_fc.
    BiasGelu,
}

/// What a parameter-efficient method adds to one linear layer.
pub trait LinearAdapter {
    /// The layer's pre-epilogue output for input `x` (.., in): (.., out). `layer.project(x)` is
    /// the base term x·W + b (bias included, as PEFT's `base_layer(x)`); a method returns it
    /// changed (LoRA: + scaling·B·A·x; IA3: ⊙ l). The layer applies its activation after.
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor>;

    /// The method's own parameters, named under the layer (`prefix` ends in the layer's name and a
    /// dot: "transformer.h.0.attn.c_attn.").
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));
}

/// What a method adds beside a whole sublayer (attention or the MLP of a block): He et al.'s
/// parallel adapter. The block adds `forward(h)` to the sublayer's output, where h is the
/// sublayer's own input (ln_1(x) for attention, ln_2(x) for the MLP), before its residual add.
pub trait SublayerAdapter {
    /// h (.., C) → the term added to the sublayer's output (.., C).
    fn forward(&self, h: &Tensor) -> Result<Tensor>;

    /// The method's parameters, named under the sublayer (`prefix` ends in
    /// "transformer.h.0.mlp.parallel_adapter.").
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor));
}

/// y = epilogue(x·W + b), W stored as `layout` says. Cheap to clone (handles): a recomputing
/// wrapper (gradient checkpointing) keeps a clone.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,       // (in, out) InOut, or (out, in) OutIn
    pub bias: Option<Tensor>, // (out)
    pub layout: WeightLayout,
    pub epilogue: Epilogue,
    /// A method wrapping this layer (LoRA, IA3, …); `None` for the plain layer.
    pub adapter: Option<Rc<dyn LinearAdapter>>,
    /// False for a weight that another module owns and names (the LM head's is wte).
    pub owns_weight: bool,
}

impl Linear {
    /// A Conv1D-style layer: weight (in, out), bias (out), bias added in the matmul's epilogue.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear {
            weight,
            bias,
            layout: WeightLayout::InOut,
            epilogue: Epilogue::Bias,
            adapter: None,
            owns_weight: true,
        }
    }

    pub fn with_epilogue(mut self, epilogue: Epilogue) -> Linear {
        self.epilogue = epilogue;
        self
    }

    pub fn in_features(&self) -> usize {
        match self.layout {
            WeightLayout::InOut => self.weight.shape()[0],
            WeightLayout::OutIn => self.weight.shape()[1],
        }
    }

    pub fn out_features(&self) -> usize {
        match self.layout {
            WeightLayout::InOut => self.weight.shape()[1],
            WeightLayout::OutIn => self.weight.shape()[0],
        }
    }

    /// x (.., in) → (.., out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match (&self.adapter, self.epilogue) {
            (None, Epilogue::Bias) => self.project(x), // bias fused into the matmul
            (None, Epilogue::BiasGelu) => match &self.bias {
                Some(b) => self.matmul(x)?.bias_gelu(b), // one kernel: gelu(x·W + b)
                None => self.matmul(x)?.gelu(),
            },
            (Some(adapter), Epilogue::Bias) => adapter.forward(self, x),
            (Some(adapter), Epilogue::BiasGelu) => adapter.forward(self, x)?.gelu(),
        }
    }

    /// The base term x·W + b (no activation): what an adapter builds on.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        match self.layout {
            WeightLayout::InOut => x.linear(&self.weight, self.bias.as_ref()), // (.., out)
            WeightLayout::OutIn => match &self.bias {
                Some(b) => self.matmul(x)?.add(b),
                None => self.matmul(x),
            },
        }
    }

    /// x·W alone (.., in) → (.., out).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        match self.layout {
            WeightLayout::InOut => x.linear(&self.weight, None),
            WeightLayout::OutIn => {
                let (cols, out) = (x.last_dim(), self.out_features());
                let rows = x.numel() / cols.max(1);
                // x·Wᵀ, split over row windows of W when it exceeds one binding (wte).
                let y = x.reshape(&[rows, cols])?.lm_head(&self.weight)?; // (rows, out)
                let mut shape = x.shape().to_vec();
                *shape.last_mut().unwrap() = out;
                y.reshape(&shape) // (.., out)
            }
        }
    }
}

impl Parameters for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        if self.owns_weight {
            f(format!("{prefix}weight"), &self.weight);
        }
        if let Some(b) = &self.bias {
            f(format!("{prefix}bias"), b);
        }
        if let Some(adapter) = &self.adapter {
            adapter.visit(prefix, f);
        }
    }
}

#[derive(Clone)]
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

impl Parameters for LayerNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        f(format!("{prefix}weight"), &self.weight);
        f(format!("{prefix}bias"), &self.bias);
    }
}
