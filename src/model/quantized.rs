//! A quantized base (QLoRA): the frozen projection weights of GPT-2 held in 4 bits (NF4/FP4,
//! bitsandbytes' `Linear4bit`) or 8 bits (int8 rowwise), with adapters trained in f32 on top.
//!
//! What is quantized: c_attn, attn.c_proj, c_fc and mlp.c_proj of every block, each in nn.Linear
//! layout [out, in] (the transpose of GPT-2's Conv1D storage, as transformers + bitsandbytes do).
//! Embeddings, LayerNorms, biases and the tied LM head stay f32.
//! Math: y = x · dequant(Wq)ᵀ + b, with the fused kernels `linear_4bit` / `linear_int8` (W is never
//! written to memory); dx flows back through them, the quantized weight gets no gradient.
//! Memory: the quantized tensors count as `Category::Quantized`: per 4-bit weight of n elements
//! ceil(n/2) packed bytes + the absmax (4 bytes per block, or 1 per block + 4 per 256 blocks with
//! double quantization) + a 272-entry f32 table and a 4-byte placeholder; per int8 weight n + 4·out.
//! Counting (PEFT's `get_nb_trainable_parameters`): a 4-bit weight counts twice its packed bytes
//! (bitsandbytes' `Params4bit` holds ceil(n/2) u8), an int8 one its n elements.
//! An f16 base (`--base-dtype f16`, [`QuantizeSpec::F16`]) is held the same way: the same four
//! weights [out, in] rounded to f16, two per u32 word (`linear_f16`), computed in f32; per weight
//! out · ceil(in/8) · 16 bytes (half the f32 bytes when in % 8 == 0), counted as PEFT counts an
//! f16 tensor: n elements. docs/nf4.md ("An f16 base") has the details.
//! Loading: a model.safetensors holding `Linear4bit` state for these weights (`quant::file`) loads
//! as it is, without re-quantizing ([`load_model`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::io::{NamedTensor, TensorFile};
use crate::model::gpt2::Gpt2;
use crate::model::layers::Linear;
use crate::model::{Gpt2Config, Gpt2Weights};
use crate::ops::dequant::Weight4bit;
use crate::ops::linear_f16::WeightF16;
use crate::ops::linear_int8::WeightInt8;
use crate::quant::file::{read_state, state_key};
use crate::quant::int8::quantize_int8_rowwise;
use crate::quant::nf4::{Format, Quantized4, check_blocksize, quantize_4bit};
use crate::tensor::Tensor;

/// How the base is quantized (`--quantize nf4|fp4|int8 [--double-quant] [--blocksize N]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeSpec {
    FourBit {
        format: Format,
        blocksize: usize,
        double_quant: bool,
    },
    Int8,
    /// Not a quantization: the weights rounded to f16 (`--base-dtype f16`, never `--quantize`).
    F16,
}

impl QuantizeSpec {
    /// From the command line's words; `--double-quant` and `--blocksize` belong to 4 bits.
    pub fn parse(kind: &str, blocksize: usize, double_quant: bool) -> Result<QuantizeSpec> {
        if kind == "int8" {
            if double_quant || blocksize != 64 {
                return Err(Error::Input(
                    "--quantize int8 is rowwise: --double-quant and --blocksize apply to nf4/fp4"
                        .into(),
                ));
            }
            return Ok(QuantizeSpec::Int8);
        }
        let format = Format::parse(kind)?;
        check_blocksize("--blocksize", &[], blocksize)?;
        Ok(QuantizeSpec::FourBit { format, blocksize, double_quant })
    }

    /// "nf4 (blocksize 64, double quant)", "int8 rowwise".
    pub fn describe(&self) -> String {
        match self {
            QuantizeSpec::FourBit { format, blocksize, double_quant } => format!(
                "{} (blocksize {blocksize}{})",
                format.name(),
                if *double_quant { ", double quant" } else { "" }
            ),
            QuantizeSpec::Int8 => "int8 rowwise".into(),
            QuantizeSpec::F16 => "f16".into(),
        }
    }
}

/// The base's spec from the parsed `--quantize …` and `--base-dtype f32|f16`: f16 is
/// [`QuantizeSpec::F16`], refused beside a quantization (the two are alternatives).
pub fn base_spec(quantize: Option<QuantizeSpec>, base_dtype: &str) -> Result<Option<QuantizeSpec>> {
    match (base_dtype, quantize) {
        ("f32", spec) => Ok(spec),
        ("f16", None) => Ok(Some(QuantizeSpec::F16)),
        ("f16", Some(q)) => Err(Error::Input(format!(
            "--base-dtype f16 with --quantize ({}): a frozen base is held either quantized or in              f16, not both; drop one of them",
            q.describe()
        ))),
        (other, _) => Err(Error::Input(format!("--base-dtype {other}: expected f32 or f16"))),
    }
}

/// The flag that asked for `spec`, for messages: `--base-dtype f16` or `--quantize`.
pub fn flag_of(spec: QuantizeSpec) -> &'static str {
    if spec == QuantizeSpec::F16 { "--base-dtype f16" } else { "--quantize" }
}

/// A frozen quantized weight [out, in] on the GPU.
pub enum QuantizedWeight {
    FourBit(Weight4bit),
    Int8(WeightInt8),
    F16(WeightF16),
}

impl QuantizedWeight {
    /// Quantizes `w` [out, in] (row-major) as `spec` says; `name` names it in errors (NaN/Inf, a
    /// bad blocksize).
    pub fn quantize(
        gpu: &Rc<Gpu>,
        name: &str,
        w: &[f32],
        shape: [usize; 2],
        spec: QuantizeSpec,
    ) -> Result<QuantizedWeight> {
        Ok(match spec {
            QuantizeSpec::FourBit { format, blocksize, double_quant } => {
                let q = quantize_4bit(name, w, &shape, format, blocksize, double_quant)?;
                QuantizedWeight::FourBit(Weight4bit::upload(gpu, &q)?)
            }
            QuantizeSpec::Int8 => {
                let q = quantize_int8_rowwise(name, w, &shape)?;
                QuantizedWeight::Int8(WeightInt8::upload(gpu, name, &q)?)
            }
            QuantizeSpec::F16 => QuantizedWeight::F16(WeightF16::upload(gpu, name, w, shape)?),
        })
    }

    /// [out, in]
    pub fn shape(&self) -> [usize; 2] {
        match self {
            QuantizedWeight::FourBit(w) => [w.shape[0], w.shape[1]],
            QuantizedWeight::Int8(w) => w.shape,
            QuantizedWeight::F16(w) => w.shape,
        }
    }

    /// x (.., in) · dequant(W)ᵀ → (.., out), fused; the gradient flows to x only.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            QuantizedWeight::FourBit(w) => x.linear_4bit(w),
            QuantizedWeight::Int8(w) => x.linear_int8(w),
            QuantizedWeight::F16(w) => x.linear_f16(w),
        }
    }

    /// The weight in f32, [out, in], no gradient (merges, DoRA's norm).
    pub fn dequantize(&self) -> Result<Tensor> {
        match self {
            QuantizedWeight::FourBit(w) => w.dequantize(),
            QuantizedWeight::Int8(w) => w.dequantize(),
            QuantizedWeight::F16(w) => w.dequantize(),
        }
    }

    /// Parameters as PEFT counts them: a `Params4bit` is ceil(n/2) bytes counted twice.
    pub fn peft_numel(&self) -> usize {
        match self {
            QuantizedWeight::FourBit(w) => w.packed.numel() * 2,
            QuantizedWeight::Int8(w) => w.codes.numel(),
            QuantizedWeight::F16(w) => w.shape[0] * w.shape[1],
        }
    }

    /// "nf4 (blocksize 64, double quant)" / "int8 rowwise".
    pub fn describe(&self) -> String {
        self.spec().describe()
    }

    pub fn spec(&self) -> QuantizeSpec {
        match self {
            QuantizedWeight::FourBit(w) => QuantizeSpec::FourBit {
                format: w.format,
                blocksize: w.blocksize,
                double_quant: w.nested_absmax.is_some(),
            },
            QuantizedWeight::Int8(_) => QuantizeSpec::Int8,
            QuantizedWeight::F16(_) => QuantizeSpec::F16,
        }
    }
}

/// The module names of the projections a quantized base holds in `bits`, with their [out, in].
pub fn projection_shapes(config: &Gpt2Config) -> Vec<(String, [usize; 2])> {
    let (c, h) = (config.n_embd, config.mlp_hidden());
    let mut out = vec![];
    for i in 0..config.n_layer {
        let p = format!("transformer.h.{i}");
        out.push((format!("{p}.attn.c_attn"), [3 * c, c]));
        out.push((format!("{p}.attn.c_proj"), [c, c]));
        out.push((format!("{p}.mlp.c_fc"), [h, c]));
        out.push((format!("{p}.mlp.c_proj"), [c, h]));
    }
    out
}

impl Gpt2 {
    /// The four projections of every block under their module names, in registry order.
    fn projections_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out: Vec<(String, &mut Linear)> = vec![];
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let h = format!("transformer.h.{i}");
            out.push((format!("{h}.attn.c_attn"), &mut b.c_attn));
            out.push((format!("{h}.attn.c_proj"), &mut b.attn_c_proj));
            out.push((format!("{h}.mlp.c_fc"), &mut b.c_fc));
            out.push((format!("{h}.mlp.c_proj"), &mut b.mlp_c_proj));
        }
        out
    }

    /// Quantizes c_attn, attn.c_proj, c_fc and mlp.c_proj of every block (QLoRA's base); the f32
    /// weights are released. Call before attaching adapters. All or nothing: every weight is
    /// quantized before any layer changes, so an error (NaN/Inf, naming the tensor) changes nothing.
    pub fn quantize_base(&mut self, spec: QuantizeSpec) -> Result<()> {
        let mut layers = self.projections_mut();
        let mut quantized = Vec::with_capacity(layers.len());
        for (name, layer) in &layers {
            quantized.push(layer.quantized_form(&format!("{name}.weight"), spec)?);
        }
        for ((_, layer), q) in layers.iter_mut().zip(quantized) {
            layer.set_quantized(q)?;
        }
        Ok(())
    }

    /// Rounds the frozen projection weights (c_attn, attn.c_proj, c_fc, mlp.c_proj) to f16:
    /// half their memory, computed in f32 (`--base-dtype f16`); the f32 copies go back to the
    /// pool. As `quantize_base`: before attaching adapters, all or nothing. wte (the embedding
    /// and the tied LM head) stays f32.
    pub fn base_to_f16(&mut self) -> Result<()> {
        self.quantize_base(QuantizeSpec::F16)
    }

    /// Every quantized layer's weight under its transformers name (`….c_attn.weight`).
    pub fn quantized_layers(&self) -> Vec<(String, Rc<QuantizedWeight>)> {
        let mut out = vec![];
        for (i, b) in self.blocks.iter().enumerate() {
            let h = format!("transformer.h.{i}");
            let layers = [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_c_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_c_proj),
            ];
            for (n, l) in layers {
                if let Some(q) = &l.quantized {
                    out.push((format!("{h}.{n}.weight"), q.clone()));
                }
            }
        }
        out
    }

    /// The quantized weights' parameters as PEFT counts them (4-bit: twice the packed bytes).
    pub fn num_quantized_parameters(&self) -> usize {
        self.quantized_layers().iter().map(|(_, q)| q.peft_numel()).sum()
    }

    /// Replaces every quantized weight by its dequantized f32 values in the layer's stored layout
    /// (Conv1D [in, out]), frozen, as a merge needs: ΔW is then added to exactly the weights the
    /// adapter was trained on. Returns what the base was, `None` if nothing was quantized.
    pub fn dequantize_base(&mut self) -> Result<Option<QuantizeSpec>> {
        let held = self.quantization();
        let gpu = self.gpu().clone();
        for (_, layer) in self.projections_mut() {
            let Some(q) = layer.quantized.take() else { continue };
            let [out, inp] = q.shape();
            let w = q.dequantize()?.to_vec()?; // [out, in]
            let conv1d: Vec<f32> = (0..inp * out).map(|k| w[(k % out) * inp + k / out]).collect();
            layer.weight = Tensor::parameter(&gpu, &conv1d, &[inp, out], false)?; // (in, out)
        }
        Ok(held)
    }

    /// The base's quantization, if any (all quantized layers share it).
    pub fn quantization(&self) -> Option<QuantizeSpec> {
        self.quantized_layers().first().map(|(_, q)| q.spec())
    }
}

/// A model directory's config.json (a missing directory gets `Gpt2Weights::load`'s message).
pub fn read_config(dir: &Path) -> Result<Gpt2Config> {
    if !dir.is_dir() {
        return Gpt2Weights::load(dir).map(|w| w.config);
    }
    Gpt2Config::read(dir.join("config.json"))
}

/// True when `model.safetensors` in `dir` holds bitsandbytes `Linear4bit` state.
pub fn holds_quantized_state(file: &TensorFile) -> bool {
    let keys = [state_key(Format::Nf4), state_key(Format::Fp4)];
    file.tensors.keys().any(|k| keys.iter().any(|s| k.ends_with(&format!(".{s}"))))
}

/// Loads a model directory whose model.safetensors holds `Linear4bit` state for (some of) the
/// projection weights, each [out, in] as bitsandbytes stores it, the rest f32. The state is
/// uploaded as it is (no re-quantization). A plain directory loads as `Gpt2Weights::load` does.
/// Errors name the tensor: state on a tensor that is not a projection weight, a JSON shape that
/// is not the layer's [out, in], shapes disagreeing with the JSON, NaN/Inf in the absmax.
pub fn load_model(gpu: &Rc<Gpu>, dir: &Path) -> Result<Gpt2> {
    let weights_path = dir.join("model.safetensors");
    let file = if dir.is_dir() && weights_path.exists() {
        crate::train::manifest::open(dir)?;
        TensorFile::read(&weights_path)?
    } else {
        return Gpt2::from_weights(gpu, &Gpt2Weights::load(dir)?);
    };
    if !holds_quantized_state(&file) {
        return Gpt2::from_weights(gpu, &Gpt2Weights::load(dir)?);
    }
    let config = Gpt2Config::read(dir.join("config.json"))?;
    let path = weights_path.display().to_string();
    let projections: BTreeMap<String, [usize; 2]> =
        projection_shapes(&config).into_iter().map(|(n, s)| (format!("{n}.weight"), s)).collect();
    let mut states: Vec<(String, Quantized4)> = vec![];
    let mut tensors = file.tensors.clone();
    let keys = [state_key(Format::Nf4), state_key(Format::Fp4)];
    let names: Vec<String> = file
        .tensors
        .keys()
        .filter_map(|k| keys.iter().find_map(|s| k.strip_suffix(&format!(".{s}"))))
        .map(str::to_string)
        .collect();
    for name in names {
        let Some(&[out, inp]) = projections.get(&name) else {
            return Err(Error::Input(format!(
                "{path}: '{name}' holds 4-bit state, but only the projection weights (c_attn, \
                 attn.c_proj, c_fc, mlp.c_proj) of a quantized base may be 4-bit"
            )));
        };
        let q =
            read_state(&file.tensors, &name).map_err(|e| Error::Input(format!("{path}: {e}")))?;
        if q.shape != [out, inp] {
            return Err(Error::Input(format!(
                "{path}: '{name}' is quantized with shape {:?}, but bitsandbytes stores this layer \
                 in nn.Linear layout [out, in] = [{out}, {inp}] (the transpose of the Conv1D \
                 weight); quantize the transposed weight",
                q.shape
            )));
        }
        let absmax = q.absmax_f32();
        if let Some(b) = absmax.iter().position(|a| !a.is_finite()) {
            return Err(Error::Input(format!(
                "{path}: '{name}' block {b} has absmax {} (NaN or Inf): the quantized weight is \
                 corrupt",
                absmax[b]
            )));
        }
        for suffix in ["", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"] {
            tensors.remove(&format!("{name}{suffix}"));
        }
        for s in &keys {
            tensors.remove(&format!("{name}.{s}"));
        }
        // A stand-in of the Conv1D shape so the f32 loader checks everything else; replaced below.
        tensors.insert(name.clone(), NamedTensor::from_f32(&[inp, out], &vec![0.0; out * inp]));
        states.push((name, q));
    }
    let stand_in = TensorFile { path: file.path.clone(), metadata: file.metadata.clone(), tensors };
    let params = Gpt2Weights::from_tensors(&config, &stand_in)?;
    let mut model = Gpt2::from_weights(gpu, &Gpt2Weights { config, params })?;
    let by_name: BTreeMap<String, Quantized4> = states.into_iter().collect();
    for (module, layer) in model.projections_mut() {
        let name = format!("{module}.weight");
        if let Some(q) = by_name.get(&name) {
            check_blocksize(&name, &q.shape, q.blocksize)?;
            layer.set_quantized(QuantizedWeight::FourBit(Weight4bit::upload(gpu, q)?))?;
        }
    }
    Ok(model)
}
