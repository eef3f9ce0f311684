//! bitsandbytes' saved `Linear4bit` state, as tensors in a safetensors file, and back.
//!
//! For a quantized weight `name` (`QuantState.as_dict(packed=True)` under `name.`):
//!   name                                   u8  (ceil(n/2), 1)  packed codes
//!   name.absmax                            f32 (blocks), or u8 (blocks) with double quantization
//!   name.quant_map                         f32 (16)   the 4-bit table
//!   name.nested_absmax                     f32 (ceil(blocks/256))        double quant only
//!   name.nested_quant_map                  f32 (256)  the dynamic map    double quant only
//!   name.quant_state.bitsandbytes__<fmt>   u8  the JSON `{"quant_type": …, "blocksize": …,
//!       "dtype": "float32", "shape": [...], ("nested_blocksize": 256, "nested_dtype": "float32",
//!       "nested_offset": <float>)}` exactly as Python's `json.dumps` writes it
//! NOTE: bitsandbytes quantizes nn.Linear weights, [out, in]. GPT-2's Conv1D stores [in, out]:
//! transpose before quantizing (the file functions here take tensors as stored).

use std::collections::BTreeMap;

use super::codes::dynamic_map;
use super::nf4::{Absmax, Format, NESTED_BLOCKSIZE, Quantized4, check_blocksize, quantize_4bit};
use crate::error::{Error, Result};
use crate::io::safetensors::{Dtype, NamedTensor};

/// How `glassgrad quantize` / `--quantize` quantize a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeOptions {
    pub format: Format,
    /// 64 by default; a power of two from 32 to 4096.
    pub blocksize: usize,
    pub double_quant: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions { format: Format::Nf4, blocksize: 64, double_quant: false }
    }
}

/// The key suffix of the JSON state: `quant_state.bitsandbytes__nf4`.
pub fn state_key(format: Format) -> String {
    format!("quant_state.bitsandbytes__{}", format.name())
}

/// Quantizes one stored tensor, which must be 2-D f32.
pub fn quantize_named(name: &str, t: &NamedTensor, opts: QuantizeOptions) -> Result<Quantized4> {
    if t.shape.len() != 2 {
        return Err(Error::Input(format!(
            "{name}: 4-bit quantization needs a 2-D weight, got shape {:?} (blocksize {})",
            t.shape, opts.blocksize
        )));
    }
    if t.dtype != Dtype::F32 {
        return Err(Error::Input(format!(
            "{name} {:?}: 4-bit quantization reads f32 weights, got {:?}",
            t.shape, t.dtype
        )));
    }
    let values = t.to_f32(name)?;
    quantize_4bit(name, &values, &t.shape, opts.format, opts.blocksize, opts.double_quant)
}

/// The tensors Linear4bit saves for `q`, keyed `name`, `name.absmax`, ….
pub fn state_tensors(name: &str, q: &Quantized4) -> Vec<(String, NamedTensor)> {
    let mut out = vec![
        (name.to_string(), NamedTensor::from_u8(&[q.packed.len(), 1], &q.packed)),
        (format!("{name}.quant_map"), NamedTensor::from_f32(&[16], &q.format.code())),
    ];
    match &q.absmax {
        Absmax::Plain(a) => {
            out.push((format!("{name}.absmax"), NamedTensor::from_f32(&[a.len()], a)))
        }
        Absmax::Nested { codes, nested_absmax, .. } => {
            out.push((format!("{name}.absmax"), NamedTensor::from_u8(&[codes.len()], codes)));
            let nested = NamedTensor::from_f32(&[nested_absmax.len()], nested_absmax);
            out.push((format!("{name}.nested_absmax"), nested));
            let map = NamedTensor::from_f32(&[256], &dynamic_map());
            out.push((format!("{name}.nested_quant_map"), map));
        }
    }
    let json = quant_state_json(q);
    let state = NamedTensor::from_u8(&[json.len()], json.as_bytes());
    out.push((format!("{name}.{}", state_key(q.format)), state));
    out
}

/// The JSON bitsandbytes packs into `quant_state.bitsandbytes__<fmt>` (Python `json.dumps`
/// separators and float repr, so the bytes are the same).
pub fn quant_state_json(q: &Quantized4) -> String {
    let shape: Vec<String> = q.shape.iter().map(|d| d.to_string()).collect();
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"float32\", \"shape\": [{}]",
        q.format.name(),
        q.blocksize,
        shape.join(", ")
    );
    if let Absmax::Nested { offset, .. } = &q.absmax {
        s += &format!(
            ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \
             \"nested_offset\": {}",
            python_float_repr(*offset as f64)
        );
    }
    s + "}"
}

/// Python's `repr(float)`: the shortest round-trip digits, fixed notation for exponents −4..16,
/// else `d.ddde±XX`; integral values keep a `.0`.
pub fn python_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{x:e}"); // e.g. "-1.2345e-5": shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
    }
}

/// Reads the state of `name` back from a file's tensors, checking every shape against the JSON.
pub fn read_state(tensors: &BTreeMap<String, NamedTensor>, name: &str) -> Result<Quantized4> {
    let bad = |m: String| Error::Input(format!("{name}: bad 4-bit quant_state: {m}"));
    let get = |suffix: &str| {
        let key = if suffix.is_empty() { name.to_string() } else { format!("{name}.{suffix}") };
        tensors.get(&key).ok_or_else(|| bad(format!("missing tensor '{key}'")))
    };
    let format = [Format::Nf4, Format::Fp4]
        .into_iter()
        .find(|f| tensors.contains_key(&format!("{name}.{}", state_key(*f))))
        .ok_or_else(|| bad("no quant_state.bitsandbytes__nf4 or __fp4 tensor".into()))?;
    let json_bytes = &get(&state_key(format))?.data;
    let json: serde_json::Value = serde_json::from_slice(json_bytes)
        .map_err(|e| bad(format!("the JSON does not parse ({e})")))?;
    let field = |k: &str| json.get(k).ok_or_else(|| bad(format!("the JSON has no \"{k}\"")));
    let quant_type = field("quant_type")?.as_str().unwrap_or("");
    if quant_type != format.name() {
        return Err(bad(format!("quant_type \"{quant_type}\" but the key says {}", format.name())));
    }
    let blocksize = field("blocksize")?.as_u64().ok_or_else(|| bad("blocksize".into()))? as usize;
    let shape: Vec<usize> = field("shape")?
        .as_array()
        .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| bad("\"shape\" is not a list of sizes".into()))?;
    check_blocksize(name, &shape, blocksize)?;
    let n: usize = shape.iter().product();
    let blocks = n.div_ceil(blocksize);
    let expect = |t: &NamedTensor, what: &str, dtype: Dtype, len: usize| {
        if t.dtype != dtype || t.numel() != len {
            return Err(bad(format!(
                "{what} is {:?} {:?}, expected {dtype:?} with {len} elements for shape {shape:?} \
                 at blocksize {blocksize}",
                t.dtype, t.shape
            )));
        }
        Ok(())
    };
    let packed = get("")?;
    expect(packed, "the packed weight", Dtype::U8, n.div_ceil(2))?;
    let quant_map = get("quant_map")?;
    expect(quant_map, "quant_map", Dtype::F32, 16)?;
    if quant_map.to_f32(name)? != format.code() {
        return Err(bad(format!("quant_map is not bitsandbytes' {} table", format.name())));
    }
    let absmax_t = get("absmax")?;
    let absmax = if json.get("nested_offset").is_some() {
        let offset = field("nested_offset")?.as_f64().ok_or_else(|| bad("nested_offset".into()))?;
        let nested_bs = field("nested_blocksize")?.as_u64().unwrap_or(0) as usize;
        if nested_bs != NESTED_BLOCKSIZE {
            return Err(bad(format!("nested_blocksize {nested_bs}, only 256 is supported")));
        }
        expect(absmax_t, "absmax (double-quantized)", Dtype::U8, blocks)?;
        let nested = get("nested_absmax")?;
        expect(nested, "nested_absmax", Dtype::F32, blocks.div_ceil(NESTED_BLOCKSIZE))?;
        let map = get("nested_quant_map")?;
        expect(map, "nested_quant_map", Dtype::F32, 256)?;
        if map.to_f32(name)? != dynamic_map() {
            return Err(bad("nested_quant_map is not bitsandbytes' dynamic map".into()));
        }
        let nested_absmax = nested.to_f32(name)?;
        Absmax::Nested { codes: absmax_t.data.clone(), nested_absmax, offset: offset as f32 }
    } else {
        expect(absmax_t, "absmax", Dtype::F32, blocks)?;
        Absmax::Plain(absmax_t.to_f32(name)?)
    };
    Ok(Quantized4 { format, blocksize, shape, packed: packed.data.clone(), absmax })
}

/// `glassgrad quantize`: every 2-D f32 tensor becomes Linear4bit state; others are copied.
pub fn quantize_file(
    tensors: &BTreeMap<String, NamedTensor>,
    opts: QuantizeOptions,
) -> Result<BTreeMap<String, NamedTensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        if t.shape.len() == 2 && t.dtype == Dtype::F32 {
            let q = quantize_named(name, t, opts)?;
            out.extend(state_tensors(name, &q));
        } else {
            out.insert(name.clone(), t.clone());
        }
    }
    Ok(out)
}

/// The inverse: every tensor with a `quant_state` becomes f32 (its JSON shape), the state's own
/// tensors are dropped, others are copied.
pub fn dequantize_file(
    tensors: &BTreeMap<String, NamedTensor>,
) -> Result<BTreeMap<String, NamedTensor>> {
    let suffixes = [state_key(Format::Nf4), state_key(Format::Fp4)];
    let names: Vec<&str> = tensors
        .keys()
        .filter_map(|k| suffixes.iter().find_map(|s| k.strip_suffix(&format!(".{s}"))))
        .collect();
    let owned = |k: &str| {
        names.iter().any(|n| {
            k == *n
                || k.strip_prefix(n).is_some_and(|rest| {
                    [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"].contains(&rest)
                        || suffixes.iter().any(|s| rest == format!(".{s}"))
                })
        })
    };
    let mut out: BTreeMap<String, NamedTensor> =
        tensors.iter().filter(|(k, _)| !owned(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for name in &names {
        let q = read_state(tensors, name)?;
        let values = super::nf4::dequantize_4bit(&q);
        out.insert(name.to_string(), NamedTensor::from_f32(&q.shape, &values));
    }
    Ok(out)
}

/// The projection sub-modules of a GPT-2 block whose weights QLoRA quantizes (Conv1D layers).
const GPT2_PROJECTIONS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// `transformer.h.{i}.<projection>.weight` of a GPT2LMHeadModel key.
fn is_gpt2_projection_weight(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("transformer.h.") else { return false };
    let Some((layer, tail)) = rest.split_once('.') else { return false };
    layer.parse::<usize>().is_ok()
        && GPT2_PROJECTIONS.iter().any(|p| tail.strip_suffix(".weight") == Some(p))
}

/// `glassgrad quantize --gpt2`: a GPT-2 checkpoint as transformers + bitsandbytes quantize it.
/// Keys are written under their `GPT2LMHeadModel` names (bare `GPT2Model` keys gain
/// `transformer.`). Each projection weight (c_attn, attn.c_proj, c_fc, mlp.c_proj), stored as a
/// Conv1D [in, out], is transposed to nn.Linear's [out, in] and becomes Linear4bit state;
/// embeddings, LayerNorms, biases and anything else are copied unchanged. The result is what
/// bitsandbytes' `Linear4bit.state_dict` holds for the same model, and loads as a quantized base.
/// Errors name the tensor: a projection weight that is not 2-D f32, NaN/Inf, no projection at all.
pub fn quantize_gpt2_file(
    tensors: &BTreeMap<String, NamedTensor>,
    opts: QuantizeOptions,
) -> Result<BTreeMap<String, NamedTensor>> {
    let mut out = BTreeMap::new();
    let mut projections = 0;
    for (key, t) in tensors {
        let name = crate::model::weights::normalise_key(key);
        if out.contains_key(&name) {
            return Err(Error::Input(format!(
                "'{key}' and another key both name '{name}' (a bare GPT2Model key and its \
                 GPT2LMHeadModel twin); keep one"
            )));
        }
        if !is_gpt2_projection_weight(&name) {
            out.insert(name, t.clone());
            continue;
        }
        let [inp, outf] = match t.shape[..] {
            [i, o] if t.dtype == Dtype::F32 => [i, o],
            _ => {
                return Err(Error::Input(format!(
                    "{key}: a GPT-2 projection weight must be a 2-D f32 Conv1D weight [in, out], \
                     got {:?} {:?}",
                    t.dtype, t.shape
                )));
            }
        };
        let w = t.to_f32(key)?; // (in, out)
        let mut w_t = vec![0.0f32; w.len()]; // (out, in)
        for i in 0..inp {
            for o in 0..outf {
                w_t[o * inp + i] = w[i * outf + o];
            }
        }
        let q = quantize_4bit(
            &name,
            &w_t,
            &[outf, inp],
            opts.format,
            opts.blocksize,
            opts.double_quant,
        )?;
        out.extend(state_tensors(&name, &q));
        projections += 1;
    }
    if projections == 0 {
        return Err(Error::Input(format!(
            "--gpt2: no GPT-2 projection weight (transformer.h.N.{{{}}}.weight) in the file; \
             without --gpt2 every 2-D tensor is quantized as stored",
            GPT2_PROJECTIONS.join(", ")
        )));
    }
    Ok(out)
}
