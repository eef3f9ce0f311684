//! DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"), as PEFT's `use_dora` computes it
//! (`tuners/lora/dora.py`, `variants.py`): a LoRA whose adapted weight is split into a direction and
//! a learned magnitude per output feature.
//!
//! With V = W + s·B·A in nn.Linear terms ([out, in]; GPT-2's Conv1D stores W as [in, out] and the
//! update goes in transposed, fan_in_fan_out), n_o = ‖V[o, :]‖ the norm of output feature o's row
//! and m (out) the magnitude:
//!   W' = (m / n) ⊙_rows V                                    (each output feature rescaled)
//!   h  = x·W'ᵀ + b = b + (m / n) ⊙ (x·W + s·x·Aᵀ·Bᵀ)          (row vectors, ⊙ over the last dim)
//! n is *detached* (paper §4.3, PEFT's `weight_norm.detach()`): it is recomputed from W, A and B on
//! every forward but passes no gradient, so A and B get theirs only through the s·x·Aᵀ·Bᵀ term,
//! and m gets ∂L/∂m = Σ_rows dh ⊙ (x·W + s·x·Aᵀ·Bᵀ) / n.
//! With dropout (training mode) PEFT applies it to the adapter's input only, x_d = dropout(x), and
//! adds (m/n − 1)·(x_d·W) + (m/n)·s·x_d·Aᵀ·Bᵀ to the base term; we write that as
//!   h  = (x·W + b) − x_d·W + (m / n) ⊙ (x_d·W + s·x_d·Aᵀ·Bᵀ)
//! which is the line above when x_d = x.
//! m starts at n (with PEFT's B = 0 that is ‖W‖ per output feature): the model starts as the base.
//! Saved in the adapter file as `<layer>.lora_magnitude_vector` (out), next to lora_A / lora_B.
//!
//! Composed from existing ops: the norm is one `matmul_t` (Aᵀ·Bᵀ, or B·A for [out, in] storage),
//! `scale`, `add`, `mul`, `sum_rows` (or `sum_last`) and `sqrt`, all under `no_grad`; the forward is
//! the LoRA products, `mul` by the (out) factor broadcast over rows, `add`/`sub`.
//! Merge (host, f64): W ← (m/n) ⊙ (W + ΔW) per output feature; n is kept for unmerge
//! (W ← W'/(m/n) − ΔW), as PEFT caches it, because it cannot be recovered from W'.
//! NOTE: DoRA always computes with the full rank and is PEFT's plain DoRA: LoRA's variants
//! (DyLoRA's active rank, Delta-LoRA's move of W) are not defined on it here.

use std::cell::RefCell;
use std::rc::Rc;

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::model::layers::{Linear, LinearAdapter, WeightLayout};
use crate::peft::lora::{Lora, LoraModel};
use crate::tensor::Tensor;

/// The key suffix of the magnitude in the registry and in `adapter_model.safetensors`.
pub const MAGNITUDE: &str = "lora_magnitude_vector";

/// A LoRA layer with DoRA's magnitude: the [`LinearAdapter`] set on the `Linear` in place of the
/// plain [`Lora`] (which it shares: A, B, scaling, dropout and the merged flag are the LoRA's).
pub struct Dora {
    pub lora: Rc<Lora>,
    pub magnitude: Tensor, // (out)
    /// n (out) at merge time, in f64, for unmerge; `None` while unmerged.
    merged_norm: RefCell<Option<Vec<f64>>>,
}

/// n = ‖W + s·B·A‖ per output feature, (out), from the current W, A and B; no gradient.
pub fn weight_norm(layer: &Linear, lora: &Lora) -> Result<Tensor> {
    let _no_grad = no_grad();
    if let Some(q) = &layer.quantized {
        // A quantized base: its dequantized W [out, in] (what bitsandbytes' DoRA uses).
        let ba = lora.lora_b.matmul(&lora.lora_a)?; // (out, in)
        let v = q.dequantize()?.add(&ba.scale(lora.scaling)?)?; // (out, in)
        return Ok(v.mul(&v)?.sum_last()?.sqrt()?.detach()); // (out)
    }
    let v = match layer.layout {
        // (in, R)·(R, out) = (in, out) = s·(B·A)ᵀ + W, summed over in (the rows).
        WeightLayout::InOut => {
            let ba_t = lora.lora_a.matmul_t(&lora.lora_b, true, true)?; // (in, out)
            layer.weight.add(&ba_t.scale(lora.scaling)?)? // (in, out)
        }
        // (out, R)·(R, in) = (out, in) = s·B·A + W, summed over in (the last dim).
        WeightLayout::OutIn => {
            let ba = lora.lora_b.matmul(&lora.lora_a)?; // (out, in)
            layer.weight.add(&ba.scale(lora.scaling)?)? // (out, in)
        }
    };
    let squares = v.mul(&v)?;
    let sum = match layer.layout {
        WeightLayout::InOut => squares.sum_rows()?, // (out)
        WeightLayout::OutIn => squares.sum_last()?, // (out)
    };
    Ok(sum.sqrt()?.detach()) // (out)
}

impl Dora {
    /// DoRA on `lora`'s layer, m initialised to n (PEFT's init).
    pub fn new(layer: &Linear, lora: Rc<Lora>) -> Result<Dora> {
        let n = weight_norm(layer, &lora)?.to_vec()?;
        let magnitude = Tensor::parameter(lora.lora_a.gpu(), &n, &[n.len()], true)?; // (out)
        Ok(Dora { lora, magnitude, merged_norm: RefCell::new(None) })
    }

    /// The merged (or, `merge` false, unmerged) weight in W's stored layout, from W's current
    /// values and ΔW = s·(B·A) in that layout (f64, from [`LoraModel::delta_weight`]).
    pub fn fold(&self, layer: &Linear, w: &[f32], delta: &[f64], merge: bool) -> Result<Vec<f32>> {
        let (fan_in, fan_out) = (layer.in_features(), layer.out_features());
        let at = |o: usize, i: usize| match layer.layout {
            WeightLayout::InOut => i * fan_out + o,
            WeightLayout::OutIn => o * fan_in + i,
        };
        let m = self.magnitude.to_vec()?;
        let norm = if merge {
            let n: Vec<f64> = (0..fan_out)
                .map(|o| {
                    (0..fan_in).map(|i| (w[at(o, i)] as f64 + delta[at(o, i)]).powi(2)).sum::<f64>()
                })
                .map(f64::sqrt)
                .collect();
            self.merged_norm.replace(Some(n.clone()));
            n
        } else {
            self.merged_norm.take().ok_or_else(|| {
                Error::Input("DoRA: unmerge without a merge (no stored weight norm)".into())
            })?
        };
        let mut out = vec![0f32; w.len()];
        for o in 0..fan_out {
            let factor = m[o] as f64 / norm[o];
            for i in 0..fan_in {
                let k = at(o, i);
                out[k] = if merge {
                    (factor * (w[k] as f64 + delta[k])) as f32
                } else {
                    (w[k] as f64 / factor - delta[k]) as f32
                };
            }
        }
        Ok(out)
    }
}

impl LinearAdapter for Dora {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let lora = &self.lora;
        if lora.is_merged() {
            return layer.project(x); // (.., out) = x·W' + b
        }
        let factor = self.magnitude.div(&weight_norm(layer, lora)?)?; // (out) = m / n
        let cols = x.last_dim();
        let rows = x.numel() / cols.max(1);
        let mut out_shape = x.shape().to_vec();
        *out_shape.last_mut().unwrap() = layer.out_features();
        let lora_term = |xd: &Tensor| -> Result<Tensor> {
            let x2 = xd.reshape(&[rows, cols])?; // (rows, in)
            let down = x2.matmul_t(&lora.lora_a, false, true)?; // (rows, R) = x·Aᵀ
            let up = down.matmul_t(&lora.lora_b, false, true)?; // (rows, out) = x·Aᵀ·Bᵀ
            up.scale(lora.scaling)?.reshape(&out_shape) // (.., out)
        };
        match lora.dropout_seed() {
            None => {
                let xw = layer.matmul(x)?; // (.., out) = x·W
                let h = xw.add(&lora_term(x)?)?.mul(&factor)?; // (.., out) = (m/n)·(x·W + s·x·Aᵀ·Bᵀ)
                match &layer.bias {
                    Some(b) => h.add(b), // (.., out)
                    None => Ok(h),
                }
            }
            Some(seed) => {
                let xd = x.dropout(lora.lora_dropout, seed, true)?; // (.., in)
                let base = layer.project(x)?; // (.., out) = x·W + b
                let xdw = layer.matmul(&xd)?; // (.., out) = x_d·W
                let scaled = xdw.add(&lora_term(&xd)?)?.mul(&factor)?; // (.., out)
                base.sub(&xdw)?.add(&scaled) // (.., out)
            }
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        self.lora.visit(prefix, f);
        f(format!("{prefix}{MAGNITUDE}"), &self.magnitude);
    }
}

/// Turns every layer of a freshly injected LoRA into DoRA: m = n per layer, and the layer's
/// adapter becomes the [`Dora`] (sharing the LoRA). Called by `inject` when `use_dora` is set.
pub fn attach(layers: &mut [(String, &mut Linear)], model: &mut LoraModel) -> Result<()> {
    for l in model.layers.iter_mut() {
        let linear = layers
            .iter_mut()
            .find(|(n, _)| *n == l.name)
            .map(|(_, linear)| linear)
            .ok_or_else(|| Error::Input(format!("DoRA: internal: no layer {}", l.name)))?;
        let dora = Rc::new(Dora::new(linear, l.lora.clone())?);
        linear.adapter = Some(dora.clone());
        l.linear.adapter = Some(dora.clone());
        l.dora = Some(dora);
    }
    Ok(())
}

/// True for a registry name that is DoRA's magnitude.
pub fn is_magnitude(name: &str) -> bool {
    name.ends_with(&format!(".{MAGNITUDE}"))
}
