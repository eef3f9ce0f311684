//! Prefix tuning (Li & Liang 2021): learned keys and values in front of every layer's
//! attention, as PEFT's `tuners/prefix_tuning` does for GPT-2 (they are its past keys/values).
//!
//! Table E = prompt_embeddings: (Vt, L·2·C), viewed as (Vt, 2L, NH, HS): layer l's keys are
//! slot 2l, its values slot 2l + 1, i.e. columns [2l·C, (2l+1)·C) and [(2l+1)·C, (2l+2)·C).
//! Every real position attends to the Vt prefix positions (no causal mask on them), and the real
//! tokens' position ids start at Vt (transformers' rule for past keys; checked against PEFT).
//! With `prefix_projection` the table is computed during training by PEFT's reparameterization
//!   E = W₂·tanh(W₁·emb + b₁) + b₂     emb: (Vt, C), W₁: (hidden, C), W₂: (L·2·C, hidden)
//! (nn.Linear layout [out, in]), and only the resulting table is saved, as PEFT does: a loaded
//! file is always the plain table (PEFT loads it the same way in inference mode).
//! What it trains: E (or emb, W₁, b₁, W₂, b₂); the whole base is frozen.
//! Init: emb / E ~ N(0, 1) (nn.Embedding), W and b ~ U(±1/√in) (nn.Linear).
//! The model applies it through its input adapter (`model::input_adapter`); the per-layer keys
//! and values go through the attention's prefix path, which gradient checkpointing keeps as a
//! segment input (so the gradients are those without checkpointing).

use std::path::Path;
use std::rc::Rc;

use serde_json::json;

use crate::autograd::no_grad;
use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::{Gpt2, LayerPrefix};
use crate::model::input_adapter::InputAdapter;
use crate::model::layers::{Linear, Parameters, WeightLayout};
use crate::peft::adapter::Adapter;
use crate::peft::fields::{ConfigFields, PeftFields, read_weights, to_json};
use crate::peft::prompt_tuning::{PROMPT_EMBEDDINGS, check_dims};
use crate::tensor::Tensor;

/// PEFT's `PrefixTuningConfig` (the fields we honour). Dimensions are filled in by [`inject`]
/// and checked against the base on loading.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixTuningConfig {
    /// Vt.
    pub num_virtual_tokens: usize,
    pub token_dim: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    /// Train the table through the reparameterization MLP.
    pub prefix_projection: bool,
    /// The MLP's hidden width (PEFT writes token_dim when none is given).
    pub encoder_hidden_size: Option<usize>,
    pub common: PeftFields,
}

impl Default for PrefixTuningConfig {
    /// PEFT has no default Vt; 20 is the value its examples use. No projection.
    fn default() -> PrefixTuningConfig {
        PrefixTuningConfig {
            num_virtual_tokens: 20,
            token_dim: None,
            num_layers: None,
            num_attention_heads: None,
            prefix_projection: false,
            encoder_hidden_size: None,
            common: PeftFields::default(),
        }
    }
}

impl PrefixTuningConfig {
    pub fn from_json_str(text: &str, source: &str) -> Result<PrefixTuningConfig> {
        let mut f = ConfigFields::parse(text, source, "PREFIX_TUNING")?;
        if f.usize("num_transformer_submodules")?.is_some_and(|n| n != 1) {
            return Err(f.err("num_transformer_submodules must be 1 for a causal LM".into()));
        }
        Ok(PrefixTuningConfig {
            num_virtual_tokens: f.usize("num_virtual_tokens")?.unwrap_or(0),
            token_dim: f.usize("token_dim")?,
            num_layers: f.usize("num_layers")?,
            num_attention_heads: f.usize("num_attention_heads")?,
            prefix_projection: f.bool("prefix_projection")?.unwrap_or(false),
            encoder_hidden_size: f.usize("encoder_hidden_size")?,
            common: f.finish("prefix tuning")?,
        })
    }

    pub fn to_json_string(&self) -> String {
        let fields = vec![
            ("peft_type", json!("PREFIX_TUNING")),
            ("num_virtual_tokens", json!(self.num_virtual_tokens)),
            ("token_dim", json!(self.token_dim)),
            ("num_layers", json!(self.num_layers)),
            ("num_attention_heads", json!(self.num_attention_heads)),
            ("num_transformer_submodules", json!(1)),
            ("prefix_projection", json!(self.prefix_projection)),
            ("encoder_hidden_size", json!(self.encoder_hidden_size)),
        ];
        let null = serde_json::Value::Null;
        to_json(&self.common, fields, &[("init_weights", null.clone()), ("modules_to_save", null)])
    }

    fn dims(&self) -> [(&'static str, Option<usize>); 3] {
        [
            ("token_dim", self.token_dim),
            ("num_layers", self.num_layers),
            ("num_attention_heads", self.num_attention_heads),
        ]
    }
}

/// Where the (Vt, L·2·C) table comes from.
pub enum Table {
    /// The table itself is the parameter.
    Plain(Tensor), // (Vt, L·2·C)
    /// PEFT's reparameterization: transform.2(tanh(transform.0(embedding))).
    Projected {
        embedding: Tensor, // (Vt, C)
        first: Linear,     // C → hidden, weight (hidden, C)
        second: Linear,    // hidden → L·2·C, weight (L·2·C, hidden)
    },
}

/// The model's input adapter: each layer's virtual keys and values.
pub struct PrefixEncoder {
    pub num_virtual_tokens: usize,
    pub n_embd: usize,
    pub table: Table,
}

impl PrefixEncoder {
    /// E: (Vt, L·2·C).
    pub fn table(&self) -> Result<Tensor> {
        match &self.table {
            Table::Plain(t) => Ok(t.clone()),
            Table::Projected { embedding, first, second } => {
                let h = first.forward(embedding)?.tanh()?; // (Vt, hidden)
                second.forward(&h) // (Vt, L·2·C)
            }
        }
    }
}

impl InputAdapter for PrefixEncoder {
    fn num_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens
    }

    fn prefix(&self) -> Result<Option<Vec<LayerPrefix>>> {
        let table = self.table()?; // (Vt, L·2·C)
        let c = self.n_embd;
        let layers = table.shape()[1] / (2 * c);
        let slot = |s: usize| table.slice(1, s * c, (s + 1) * c); // (Vt, C)
        let prefix = (0..layers)
            .map(|l| Ok(LayerPrefix { keys: slot(2 * l)?, values: slot(2 * l + 1)? }))
            .collect::<Result<_>>()?;
        Ok(Some(prefix))
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        match &self.table {
            Table::Plain(t) => f(format!("{prefix}{PROMPT_EMBEDDINGS}"), t),
            Table::Projected { embedding, first, second } => {
                f(format!("{prefix}prompt_encoder.embedding.weight"), embedding);
                first.visit(&format!("{prefix}prompt_encoder.transform.0."), f);
                second.visit(&format!("{prefix}prompt_encoder.transform.2."), f);
            }
        }
    }
}

/// What [`inject`] did.
pub struct PrefixTuningModel {
    pub config: PrefixTuningConfig,
    pub encoder: Rc<PrefixEncoder>,
}

/// Freezes the base and gives every layer Vt fresh prefix keys and values (with the MLP when
/// `prefix_projection`), drawn from `seed`. Errors: Vt = 0 or ≥ n_positions, dimensions that
/// are not the base's, a model that already carries an input adapter.
pub fn inject(
    model: &mut Gpt2,
    config: &PrefixTuningConfig,
    seed: u64,
) -> Result<PrefixTuningModel> {
    check_dims("prefix tuning", model, config.num_virtual_tokens, config.dims())?;
    let (vt, c, l) = (config.num_virtual_tokens, model.config.n_embd, model.config.n_layer);
    let hidden = config.encoder_hidden_size.unwrap_or(c);
    if config.prefix_projection && hidden == 0 {
        return Err(Error::Input("prefix tuning: encoder_hidden_size must be at least 1".into()));
    }
    let gpu = model.gpu().clone();
    let mut rng = Rng::new(seed);
    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
    let table = if config.prefix_projection {
        let embedding = Tensor::parameter(&gpu, &normal(vt * c), &[vt, c], true)?;
        let mut rng = Rng::new(seed ^ 0x5072_6566); // the Linears' own stream
        let mut linear = |fan_in: usize, fan_out: usize| -> Result<Linear> {
            let bound = 1.0 / (fan_in as f64).sqrt(); // nn.Linear: U(±1/√in) for W and b
            let mut draw = |n| (0..n).map(|_| rng.range(-bound, bound) as f32).collect::<Vec<_>>();
            let w = Tensor::parameter(&gpu, &draw(fan_out * fan_in), &[fan_out, fan_in], true)?;
            let b = Tensor::parameter(&gpu, &draw(fan_out), &[fan_out], true)?;
            Ok(Linear { layout: WeightLayout::OutIn, ..Linear::new(w, Some(b)) })
        };
        let (first, second) = (linear(c, hidden)?, linear(hidden, l * 2 * c)?);
        Table::Projected { embedding, first, second }
    } else {
        Table::Plain(Tensor::parameter(&gpu, &normal(vt * l * 2 * c), &[vt, l * 2 * c], true)?)
    };
    attach(model, config, table)
}

fn attach(
    model: &mut Gpt2,
    config: &PrefixTuningConfig,
    table: Table,
) -> Result<PrefixTuningModel> {
    if model.input_adapter.is_some() {
        return Err(Error::Input(
            "prefix tuning: the model already carries an input adapter".into(),
        ));
    }
    let c = model.config.n_embd;
    let encoder =
        Rc::new(PrefixEncoder { num_virtual_tokens: config.num_virtual_tokens, n_embd: c, table });
    model.set_trainable(|_| false)?;
    model.input_adapter = Some(encoder.clone());
    let mut config = config.clone();
    config.token_dim = Some(c);
    config.num_layers = Some(model.config.n_layer);
    config.num_attention_heads = Some(model.config.n_head);
    config.encoder_hidden_size = Some(config.encoder_hidden_size.unwrap_or(c));
    Ok(PrefixTuningModel { config, encoder })
}

/// Loads PEFT's prefix-tuning adapter directory onto `model`: the saved table (also for a
/// `prefix_projection` adapter, whose MLP PEFT does not save), trainable.
pub fn load(model: &mut Gpt2, dir: &Path) -> Result<PrefixTuningModel> {
    let path = dir.join(crate::peft::files::CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let config = PrefixTuningConfig::from_json_str(&text, &path.display().to_string())?;
    check_dims("prefix tuning", model, config.num_virtual_tokens, config.dims())
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let (vt, c, l) = (config.num_virtual_tokens, model.config.n_embd, model.config.n_layer);
    let want = [(PROMPT_EMBEDDINGS.to_string(), vec![vt, l * 2 * c])].into_iter().collect();
    let values = read_weights(dir, &want, config.common.base_model_name_or_path.as_deref())?;
    let table = Tensor::parameter(model.gpu(), &values[PROMPT_EMBEDDINGS], &[vt, l * 2 * c], true)?;
    attach(model, &config, Table::Plain(table))
}

impl Adapter for PrefixTuningModel {
    fn peft_type(&self) -> &str {
        "PREFIX_TUNING"
    }
    /// The trainable tensors under their registry names: `prompt_embeddings`, or the MLP's
    /// (`prompt_encoder.embedding.weight`, `prompt_encoder.transform.0.weight`, …, PEFT's names
    /// without the adapter name).
    fn named_parameters(&self, _model: &Gpt2) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        self.encoder.visit("", &mut |n, t| out.push((n, t.clone())));
        out
    }
    /// The table, computed through the MLP when there is one (PEFT saves only the table).
    fn tensors_to_save(&self, _model: &Gpt2) -> Result<Vec<(String, Tensor)>> {
        let _g = no_grad();
        Ok(vec![(PROMPT_EMBEDDINGS.into(), self.encoder.table()?)])
    }
    fn config_json(&self) -> String {
        let mut c = self.config.clone();
        c.common.inference_mode = true;
        c.to_json_string()
    }
}
