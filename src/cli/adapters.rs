//! The adapter options `forward` and `generate` share (interfaces.md):
//!   --adapter DIR            a PEFT adapter directory; repeatable (several adapters, one base)
//!   --adapter-name NAME      the name of the --adapter at the same position (needed with several)
//!   --adapter-per-row a,b,…  batch row b uses adapter a_b (`__base__`: none), PEFT's adapter_names
//! One --adapter with neither of the others loads it as before (any method). Otherwise the
//! adapters go into a [`AdapterSet`] (methods that wrap layers only: LoRA, DoRA, …); the first
//! is active unless --adapter-per-row says otherwise, and only the adapters in use train (as
//! PEFT's `set_adapter` leaves the others frozen).
//! Everything a person can get wrong is checked before the model is read: names that do not
//! pair with the directories, duplicates, `__base__` as a name, an unknown name per row.

use std::path::{Path, PathBuf};

use clap::Args;
use glassgrad::model::gpt2::Gpt2;
use glassgrad::peft::Adapter;
use glassgrad::peft::multi::{self, AdapterSet, BASE};
use glassgrad::{Error, Result, Tensor};

#[derive(Args, Default)]
pub struct AdapterArgs {
    /// A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to load on the
    /// model. Repeatable: several adapters on one base, each named by an --adapter-name.
    #[arg(long)]
    pub adapter: Vec<PathBuf>,
    /// The name of the --adapter at the same position (needed when there are several; a name
    /// has no '.' or ','; `__base__` is reserved for "no adapter").
    #[arg(long = "adapter-name", value_name = "NAME")]
    pub adapter_name: Vec<String>,
    /// One adapter name per batch row, comma-separated (`__base__` for none): each row runs its
    /// own adapter, as PEFT's `adapter_names`.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub adapter_per_row: Option<Vec<String>>,
}

/// What was loaded.
pub enum Loaded {
    None,
    One(Box<dyn Adapter>),
    Set(AdapterSet),
}

impl AdapterArgs {
    fn single(&self) -> bool {
        self.adapter.len() <= 1 && self.adapter_name.is_empty() && self.adapter_per_row.is_none()
    }

    /// The (name, directory) pairs; checks the options against each other (no files read).
    pub fn named(&self) -> Result<Vec<(String, &Path)>> {
        if self.adapter.is_empty()
            && !(self.adapter_name.is_empty() && self.adapter_per_row.is_none())
        {
            return Err(Error::Input(
                "--adapter-name and --adapter-per-row need at least one --adapter DIR".into(),
            ));
        }
        let names: Vec<String> = match (self.adapter.len(), self.adapter_name.len()) {
            (0, _) => return Ok(vec![]),
            (1, 0) => vec!["default".into()], // PEFT's name for a lone adapter
            (a, n) if a != n => {
                return Err(Error::Input(format!(
                    "{a} --adapter but {n} --adapter-name: give each --adapter DIR an \
                     --adapter-name NAME (in the same order)"
                )));
            }
            _ => self.adapter_name.clone(),
        };
        multi::check_names(names.iter().map(String::as_str))
            .map_err(|e| Error::Input(format!("--adapter-name: {e}")))?;
        if let Some(rows) = &self.adapter_per_row {
            for row in rows {
                if row != BASE && !names.contains(row) {
                    return Err(Error::Input(format!(
                        "--adapter-per-row names {row:?}, which is no --adapter-name; the names \
                         are {} (and {BASE} for none)",
                        names.join(", ")
                    )));
                }
            }
        }
        Ok(names.into_iter().zip(self.adapter.iter().map(PathBuf::as_path)).collect())
    }

    /// The per-row names, checked against the batch size.
    pub fn rows(&self, batch: usize) -> Result<Option<Vec<&str>>> {
        match &self.adapter_per_row {
            Some(rows) if rows.len() != batch => Err(Error::Input(format!(
                "--adapter-per-row has {} names for a batch of {batch} rows; give one per row",
                rows.len()
            ))),
            Some(rows) => Ok(Some(rows.iter().map(String::as_str).collect())),
            None => Ok(None),
        }
    }

    /// Loads the adapters onto `model`; with --adapter-per-row, `rows` (already checked) are set.
    pub fn load(&self, model: &mut Gpt2, rows: Option<&[&str]>) -> Result<Loaded> {
        let named = self.named()?;
        if named.is_empty() {
            return Ok(Loaded::None);
        }
        if self.single() {
            return Ok(Loaded::One(glassgrad::peft::files::load(model, named[0].1)?));
        }
        let set = AdapterSet::load(model, &named)?;
        match rows {
            Some(rows) => set.set_adapter_per_row(rows)?,
            None => set.set_adapter(&set.names[0].clone())?,
        }
        Ok(Loaded::Set(set))
    }
}

impl Loaded {
    /// The parameters that train, under their output keys: a lone adapter's file keys, or for
    /// several adapters PEFT's model names (`base_model.model.….lora_A.<name>.weight`).
    pub fn named_parameters(&self, model: &Gpt2) -> Option<Vec<(String, Tensor)>> {
        match self {
            Loaded::None => None,
            Loaded::One(a) => Some(a.named_parameters(model)),
            Loaded::Set(set) => Some(
                (0..set.names.len())
                    .flat_map(|i| {
                        set.named_parameters(i)
                            .iter()
                            .filter(|(_, t)| t.requires_grad())
                            .map(move |(k, t)| (multi::named(k, &set.names[i]), t.clone()))
                    })
                    .collect(),
            ),
        }
    }

    pub fn eval(&self) {
        match self {
            Loaded::None => {}
            Loaded::One(a) => a.eval(),
            Loaded::Set(set) => set.eval(),
        }
    }
}
