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

use crate::error::{Error, Result};
use crate::gpu::Category;
use crate::model::quantized::{QuantizeSpec, QuantizedWeight};
use crate::tensor::{DType, Tensor};

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
    /// (in, out) InOut, or (out, in) OutIn; an empty (0) tensor once `quantized` holds the weight.
    pub weight: Tensor,
    pub bias: Option<Tensor>, // (out)
    pub layout: WeightLayout,
    pub epilogue: Epilogue,
    /// A method wrapping this layer (LoRA, IA3, …); `None` for the plain layer.
    pub adapter: Option<Rc<dyn LinearAdapter>>,
    /// False for a weight that another module owns and names (the LM head's is wte).
    pub owns_weight: bool,
    /// The frozen base weight in 4 or 8 bits, [out, in] (nn.Linear layout, as bitsandbytes
    /// quantizes it), when the layer is quantized (QLoRA), or in f16 (`--base-dtype f16`):
    /// `weight` is then empty, and the layer computes x·dequant(Wq)ᵀ + b with the fused kernels
    /// (model/quantized.rs).
    pub quantized: Option<Rc<QuantizedWeight>>,
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
            quantized: None,
        }
    }

    pub fn with_epilogue(mut self, epilogue: Epilogue) -> Linear {
        self.epilogue = epilogue;
        self
    }

    pub fn in_features(&self) -> usize {
        if let Some(q) = &self.quantized {
            return q.shape()[1];
        }
        match self.layout {
            WeightLayout::InOut => self.weight.shape()[0],
            WeightLayout::OutIn => self.weight.shape()[1],
        }
    }

    pub fn out_features(&self) -> usize {
        if let Some(q) = &self.quantized {
            return q.shape()[0];
        }
        match self.layout {
            WeightLayout::InOut => self.weight.shape()[1],
            WeightLayout::OutIn => self.weight.shape()[0],
        }
    }

    /// Whether PEFT sees a Conv1D here (its `fan_in_fan_out`): GPT-2's [in, out] storage, also
    /// when held in f16 (transformers keeps Conv1D in f16), not once bitsandbytes' 4- or 8-bit
    /// nn.Linear layers replace it.
    pub fn is_conv1d(&self) -> bool {
        self.layout == WeightLayout::InOut
            && self.quantized.as_ref().is_none_or(|q| q.spec() == QuantizeSpec::F16)
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
        if let Some(q) = &self.quantized {
            let y = q.apply(x)?; // (.., out) = x·dequant(Wq)ᵀ
            return match &self.bias {
                Some(b) => y.add(b),
                None => Ok(y),
            };
        }
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
        if let Some(q) = &self.quantized {
            return q.apply(x); // (.., out)
        }
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

impl Linear {
    /// The f32 weight in its stored layout, for the code that reads or rewrites it (merges, moved
    /// weights); an error naming the layer `name` and `what` wanted it when the weight is quantized.
    pub fn dense(&self, name: &str, what: &str) -> Result<&Tensor> {
        match &self.quantized {
            None => Ok(&self.weight),
            Some(q) => Err(Error::Input(format!(
                "{what}: {name} has a {} base weight, which has no f32 copy to change; merge into \
                 the f32 model (`glassgrad merge` dequantizes a quantized base first)",
                q.describe()
            ))),
        }
    }

    /// Replaces the f32 weight by its quantized form [out, in] (`name` names it in errors): a
    /// Conv1D weight [in, out] is transposed first, as bitsandbytes quantizes nn.Linear's. The f32
    /// tensor is released (the layer keeps an empty one); the quantized weight has no gradient.
    pub fn quantize(&mut self, name: &str, spec: QuantizeSpec) -> Result<()> {
        let q = self.quantized_form(name, spec)?;
        self.set_quantized(q)
    }

    /// The quantized form of this layer's weight, [out, in], without installing it.
    pub fn quantized_form(&self, name: &str, spec: QuantizeSpec) -> Result<QuantizedWeight> {
        if self.quantized.is_some() {
            return Err(Error::Input(format!("{name} is already quantized")));
        }
        if !self.owns_weight {
            return Err(Error::Input(format!(
                "{name}: its weight is tied to another module's (wte) and stays f32"
            )));
        }
        let (fan_in, fan_out) = (self.in_features(), self.out_features());
        let w = self.weight.to_vec()?;
        let w_out_in: Vec<f32> = match self.layout {
            // [in, out] → [out, in]
            WeightLayout::InOut => {
                (0..fan_out * fan_in).map(|k| w[(k % fan_in) * fan_out + k / fan_in]).collect()
            }
            WeightLayout::OutIn => w,
        };
        let gpu = self.weight.gpu().clone();
        QuantizedWeight::quantize(&gpu, name, &w_out_in, [fan_out, fan_in], spec)
    }

    /// Installs an already-quantized weight [out, in] (a loaded Linear4bit state), releasing the
    /// f32 one; its shape must be the layer's.
    pub fn set_quantized(&mut self, q: QuantizedWeight) -> Result<()> {
        let want = [self.out_features(), self.in_features()];
        if q.shape() != want {
            return Err(Error::Input(format!(
                "a quantized weight of shape {:?} for a layer of [out, in] = {want:?}",
                q.shape()
            )));
        }
        let gpu = self.weight.gpu().clone();
        self.weight = Tensor::empty(&gpu, &[0], DType::F32, Category::Parameters, "quantize")?;
        self.quantized = Some(Rc::new(q));
        Ok(())
    }
}

impl Parameters for Linear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        // A quantized weight is a frozen buffer, not a parameter (see `Gpt2::quantized_layers`).
        if self.owns_weight && self.quantized.is_none() {
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
