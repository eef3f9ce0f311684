//! GPT-2's `config.json`, read and written the way transformers' `GPT2Config` does.
//!
//! Reading: fields missing from the file take transformers' defaults, fields we do not know are
//! ignored, and settings we do not implement (another `model_type`, another activation, the
//! attention-scaling variants, cross-attention) are errors naming the field and the value.
//! Writing: sorted keys, 2-space indent, with `architectures: ["GPT2LMHeadModel"]` and the standard
//! fields, so `GPT2LMHeadModel.from_pretrained(dir)` loads our checkpoints.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Must be "gpt2".
    #[serde(default)]
    pub model_type: String,
    #[serde(default = "d_vocab_size")]
    pub vocab_size: usize,
    /// Longest sequence (rows of the position embedding `wpe`).
    #[serde(default = "d_n_positions")]
    pub n_positions: usize,
    /// C, the residual width.
    #[serde(default = "d_n_embd")]
    pub n_embd: usize,
    #[serde(default = "d_n_layer")]
    pub n_layer: usize,
    /// NH; head size HS = n_embd / n_head.
    #[serde(default = "d_n_head")]
    pub n_head: usize,
    /// MLP hidden width; None means 4·C.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "d_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// "gelu_new" (the tanh approximation); "gelu_pytorch_tanh" is the same function.
    #[serde(default = "d_activation_function")]
    pub activation_function: String,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "d_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "d_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "d_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "d_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d_token_id")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "d_token_id")]
    pub eos_token_id: Option<u32>,
    /// Must be true (scores divided by √HS).
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    /// Must be false (we do not implement the extra 1/(layer+1) scaling).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Only changes the precision torch uses inside attention; we compute in f32 either way.
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    /// Must be false (no encoder-decoder GPT-2).
    #[serde(default)]
    pub add_cross_attention: bool,
}

fn d_vocab_size() -> usize {
    50257
}
fn d_n_positions() -> usize {
    1024
}
fn d_n_embd() -> usize {
    768
}
fn d_n_layer() -> usize {
    12
}
fn d_n_head() -> usize {
    12
}
fn d_layer_norm_epsilon() -> f64 {
    1e-5
}
fn d_activation_function() -> String {
    "gelu_new".into()
}
fn d_true() -> bool {
    true
}
fn d_pdrop() -> f64 {
    0.1
}
fn d_initializer_range() -> f64 {
    0.02
}
fn d_token_id() -> Option<u32> {
    Some(50256)
}

impl Gpt2Config {
    /// A config with transformers' defaults for everything but the sizes, dropout 0 (we train
    /// without it), and no bos/eos token unless the vocabulary is GPT-2's own.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Gpt2Config {
        let token = (vocab_size == 50257).then_some(50256);
        Gpt2Config {
            model_type: "gpt2".into(),
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: "gelu_new".into(),
            tie_word_embeddings: true,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            initializer_range: 0.02,
            bos_token_id: token,
            eos_token_id: token,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            add_cross_attention: false,
        }
    }

    /// Parses and validates config.json text; `source` (the file name) is used in messages.
    pub fn from_json_str(text: &str, source: &str) -> Result<Gpt2Config> {
        let config: Gpt2Config = serde_json::from_str(text)
            .map_err(|e| Error::Input(format!("{source}: not a valid GPT-2 config.json: {e}")))?;
        config.validate(source)?;
        Ok(config)
    }

    /// Reads and validates `path` (a config.json).
    pub fn read(path: impl AsRef<Path>) -> Result<Gpt2Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        Gpt2Config::from_json_str(&text, &path.display().to_string())
    }

    /// Checks that this is a GPT-2 we can run; every message names the field and its value.
    pub fn validate(&self, source: &str) -> Result<()> {
        let err = |m: String| Err(Error::Input(format!("{source}: {m}")));
        if self.model_type.is_empty() {
            return err("has no \"model_type\"; expected \"gpt2\"".into());
        }
        if self.model_type != "gpt2" {
            return err(format!(
                "model_type is \"{}\"; only \"gpt2\" is supported",
                self.model_type
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return err(format!("{name} is 0; it must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return err(format!(
                "n_embd ({}) is not divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.n_inner == Some(0) {
            return err("n_inner is 0; it must be positive (or null for 4·n_embd)".into());
        }
        // Written so that NaN fails too (`NaN > 0` is false).
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(self.layer_norm_epsilon > 0.0) {
            return err(format!(
                "layer_norm_epsilon is {}; it must be positive",
                self.layer_norm_epsilon
            ));
        }
        if !matches!(self.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            return err(format!(
                "activation_function is \"{}\"; only \"gelu_new\" (= \"gelu_pytorch_tanh\") is supported",
                self.activation_function
            ));
        }
        if !self.scale_attn_weights {
            return err(
                "scale_attn_weights is false; only scaled attention (1/√head_dim) is supported"
                    .into(),
            );
        }
        if self.scale_attn_by_inverse_layer_idx {
            return err(
                "scale_attn_by_inverse_layer_idx is true; this variant is not supported".into()
            );
        }
        if self.add_cross_attention {
            return err("add_cross_attention is true; cross-attention is not supported".into());
        }
        // Before anything is sized from it: the weights alone must fit in memory.
        crate::model::size::check_host_memory(self, 1, source)
    }

    /// HS, the width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The MLP hidden width: n_inner, or 4·C when it is null.
    pub fn mlp_hidden(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// config.json text as transformers writes it: sorted keys, 2-space indent, trailing newline.
    pub fn to_json_string(&self) -> String {
        let mut map = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("Gpt2Config serialises to an object"),
        };
        let extra = serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "summary_activation": null,
            "summary_first_dropout": 0.1,
            "summary_proj_to_labels": true,
            "summary_type": "cls_index",
            "summary_use_proj": true,
            "use_cache": true,
        });
        if let serde_json::Value::Object(extra) = extra {
            map.extend(extra);
        }
        // serde_json's Map is a BTreeMap here (no preserve_order), so keys come out sorted.
        let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(map))
            .expect("config serialises");
        text.push('\n');
        text
    }

    /// Writes config.json atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        crate::io::write_atomic(path.as_ref(), self.to_json_string().as_bytes())
    }
}
