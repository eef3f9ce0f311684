//! `glassgrad compare --quantize`: each method fine-tuned on the f32 base, then on the base held
//! in int8 (rowwise), NF4, and NF4 with double quantization (QLoRA), same steps, data and seed.
//! The rows gain `base`, the peak `quantized` bytes, and `val_loss_gap` = the run's validation
//! loss − the same method's on the f32 base (what the quantization cost after the same fine-tune).

use serde_json::{Value, json};

use crate::cli::finetune::Method;

/// The base a run trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Base {
    F32,
    Int8,
    Nf4,
    Nf4DoubleQuant,
}

impl Base {
    pub const ALL: [Base; 4] = [Base::F32, Base::Int8, Base::Nf4, Base::Nf4DoubleQuant];

    pub fn name(self) -> &'static str {
        match self {
            Base::F32 => "f32",
            Base::Int8 => "int8",
            Base::Nf4 => "nf4",
            Base::Nf4DoubleQuant => "nf4-dq",
        }
    }

    /// finetune's (--quantize, --double-quant).
    pub fn flags(self) -> (Option<String>, bool) {
        match self {
            Base::F32 => (None, false),
            Base::Int8 => (Some("int8".into()), false),
            Base::Nf4 => (Some("nf4".into()), false),
            Base::Nf4DoubleQuant => (Some("nf4".into()), true),
        }
    }

    /// The row's (and the run directory's) name: `lora`, `lora+nf4-dq`.
    pub fn label(self, method: Method) -> String {
        match self {
            Base::F32 => method.name().to_string(),
            _ => format!("{}+{}", method.name(), self.name()),
        }
    }
}

/// The runs: every method on the f32 base, and with `quantize` on each quantized base too
/// (methods that train the base weights, full and delta-lora, only on f32).
pub fn runs(methods: &[Method], quantize: bool) -> Vec<(Method, Base)> {
    let mut out = vec![];
    for &m in methods {
        for base in Base::ALL {
            let trains_base = matches!(m, Method::Full | Method::DeltaLora);
            if base == Base::F32 || (quantize && !trains_base) {
                out.push((m, base));
            }
        }
    }
    out
}

/// Adds `val_loss_gap` to every row that has an f32 row of the same method.
pub fn add_gaps(rows: &mut [Value]) {
    let f32_loss: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r["base"] == "f32")
        .filter_map(|r| Some((r["method_name"].as_str()?.to_string(), r["val_loss"].as_f64()?)))
        .collect();
    for r in rows.iter_mut() {
        let method = r["method_name"].as_str().unwrap_or_default().to_string();
        if let (Some((_, base)), Some(loss)) =
            (f32_loss.iter().find(|(m, _)| *m == method), r["val_loss"].as_f64())
        {
            r["val_loss_gap"] = json!(loss - base);
        }
    }
}

/// The side-by-side table: base, quantized and peak bytes, tokens/s, validation loss and gap.
pub fn table(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<16} {:>7} {:>12} {:>12} {:>10} {:>9} {:>9}\n",
        "run", "base", "quantized_B", "peak_B", "tokens/s", "val_loss", "gap"
    );
    for r in rows {
        out += &format!(
            "{:<16} {:>7} {:>12} {:>12} {:>10.0} {:>9.4} {:>+9.4}\n",
            r["method"].as_str().unwrap_or("-"),
            r["base"].as_str().unwrap_or("-"),
            r["memory"]["quantized"].as_u64().unwrap_or(0),
            r["peak_bytes"].as_u64().unwrap_or(0),
            r["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["val_loss"].as_f64().unwrap_or(f64::NAN),
            r["val_loss_gap"].as_f64().unwrap_or(f64::NAN),
        );
    }
    out
}
