//! Several named adapters on one base, switched at run time, and batches that mix them — PEFT's
//! `load_adapter(…, adapter_name)`, `set_adapter(name)` and `forward(…, adapter_names=[…])`.
//!
//! Each adapter directory is loaded with [`crate::peft::files::load`] (every check of a single
//! adapter applies), and its layer adapters are then taken off the `Linear`s; when all are
//! loaded, every `Linear` that at least one of them wraps gets a [`Switch`] holding that layer's
//! adapter of each name. One shared [`Selection`] says what every Switch computes:
//!   One(Some(i)):  adapter i on the layers it wraps, the base elsewhere (PEFT's `set_adapter`);
//!   One(None):     the base everywhere (`"__base__"`, PEFT's `disable_adapter`);
//!   PerRow(rows):  batch row b (dim 0 of x) uses `rows[b]`: the rows are cut into runs of the same
//!                  choice (`slice` along dim 0), each run goes through its adapter or the base,
//!                  and the results are joined again (`concat`): PEFT groups rows by adapter the
//!                  same way (`_mixed_batch_forward`). Gradients flow through slice and concat.
//! Only methods whose every parameter lives in the wrapped layers can share a base this way: an
//! adapter that also trains base biases (`bias` = all / lora_only) or changes the input (prefix,
//! prompt tuning) is refused by name. In the model's registry the parameters of adapter `name`
//! are named as PEFT's model names them: `….c_attn.lora_A.<name>.weight`,
//! `….c_attn.lora_magnitude_vector.<name>` (the name before a final `.weight`, else at the end).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::model::gpt2::Gpt2;
use crate::model::layers::{Linear, LinearAdapter};
use crate::peft::adapter::Adapter;
use crate::peft::lora::linear_layers;
use crate::tensor::Tensor;

/// The name that means "no adapter" in a per-row list (PEFT's).
pub const BASE: &str = "__base__";

/// What every [`Switch`] computes; indices are into [`AdapterSet::names`].
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    One(Option<usize>),
    PerRow(Vec<Option<usize>>),
}

/// A `Linear` carrying several named adapters.
pub struct Switch {
    /// (adapter index, this layer's adapter of that name), for the adapters that wrap this layer.
    adapters: Vec<(usize, Rc<dyn LinearAdapter>)>,
    names: Rc<Vec<String>>,
    selection: Rc<RefCell<Selection>>,
}

impl Switch {
    /// The output of `choice` for x: its adapter when it wraps this layer, else the base term.
    fn run(&self, layer: &Linear, x: &Tensor, choice: Option<usize>) -> Result<Tensor> {
        match choice.and_then(|i| self.adapters.iter().find(|(j, _)| *j == i)) {
            Some((_, adapter)) => adapter.forward(layer, x),
            None => layer.project(x), // (.., out) = x·W + b
        }
    }
}

impl LinearAdapter for Switch {
    fn forward(&self, layer: &Linear, x: &Tensor) -> Result<Tensor> {
        let selection = self.selection.borrow().clone();
        let rows = match selection {
            Selection::One(choice) => return self.run(layer, x, choice),
            Selection::PerRow(rows) => rows,
        };
        if x.rank() < 2 || x.shape()[0] != rows.len() {
            return Err(Error::Input(format!(
                "adapter per row: {} names for a batch of shape {:?} (one name per row of dim 0)",
                rows.len(),
                x.shape()
            )));
        }
        let mut parts = vec![];
        let mut start = 0;
        while start < rows.len() {
            let end = (start..rows.len()).find(|&r| rows[r] != rows[start]).unwrap_or(rows.len());
            let xs = if end - start == rows.len() { x.clone() } else { x.slice(0, start, end)? }; // (run, .., in)
            parts.push(self.run(layer, &xs, rows[start])?); // (run, .., out)
            start = end;
        }
        match parts.as_slice() {
            [one] => Ok(one.clone()),
            _ => Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0), // (B, .., out)
        }
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        for (i, adapter) in &self.adapters {
            let name = &self.names[*i];
            adapter.visit(prefix, &mut |key, t| f(named(&key, name), t));
        }
    }
}

/// PEFT's model name of an adapter parameter: `lora_A.weight` → `lora_A.<name>.weight`,
/// `lora_magnitude_vector` → `lora_magnitude_vector.<name>`.
pub fn named(key: &str, name: &str) -> String {
    match key.strip_suffix(".weight") {
        Some(stem) => format!("{stem}.{name}.weight"),
        None => format!("{key}.{name}"),
    }
}

/// Several adapters loaded on one base. Use [`AdapterSet::named_parameters`] for an adapter's
/// parameters: an adapter's own `named_parameters(model)` reads the registry, which now names
/// every adapter's.
pub struct AdapterSet {
    pub names: Rc<Vec<String>>,
    /// Each adapter as loaded (its type, config and file keys).
    pub adapters: Vec<Box<dyn Adapter>>,
    /// Each adapter's parameters under its keys in `adapter_model.safetensors`.
    params: Vec<Vec<(String, Tensor)>>,
    selection: Rc<RefCell<Selection>>,
}

impl AdapterSet {
    /// Loads `(name, dir)` adapters onto `model` in order; the first is active (as in PEFT).
    /// Errors before any adapter is loaded: no adapters, an empty, reserved or duplicate name.
    /// Errors while loading (any single-adapter error, or an adapter with parameters outside its
    /// wrapped layers) take every adapter off again and restore which parameters train.
    pub fn load(model: &mut Gpt2, adapters: &[(String, &Path)]) -> Result<AdapterSet> {
        check_names(adapters.iter().map(|(n, _)| n.as_str()))?;
        let trainable: Vec<bool> =
            model.named_parameters().iter().map(|(_, t)| t.requires_grad()).collect();
        let result = load_all(model, adapters);
        if result.is_err() {
            for (_, layer) in linear_layers(model) {
                layer.adapter = None;
            }
            for ((_, t), was) in model.named_parameters().iter().zip(trainable) {
                t.set_requires_grad(was)?;
            }
        }
        result
    }

    /// PEFT's `set_adapter`: every row uses `name` (`__base__`: no adapter). Only the adapter
    /// in use trains; the others are frozen (as PEFT's `set_adapter` leaves them).
    pub fn set_adapter(&self, name: &str) -> Result<()> {
        let choice = self.index(name)?;
        self.select(Selection::One(choice))
    }

    /// PEFT's `adapter_names`: batch row b uses `names[b]` (`__base__`: no adapter). The adapters
    /// named train, the others are frozen.
    pub fn set_adapter_per_row(&self, names: &[&str]) -> Result<()> {
        let rows = names.iter().map(|n| self.index(n)).collect::<Result<Vec<_>>>()?;
        self.select(Selection::PerRow(rows))
    }

    fn select(&self, selection: Selection) -> Result<()> {
        let used = |i: usize| match &selection {
            Selection::One(choice) => *choice == Some(i),
            Selection::PerRow(rows) => rows.contains(&Some(i)),
        };
        for (i, params) in self.params.iter().enumerate() {
            for (_, t) in params {
                t.set_requires_grad(used(i))?;
            }
        }
        self.selection.replace(selection);
        Ok(())
    }

    pub fn selection(&self) -> Selection {
        self.selection.borrow().clone()
    }

    /// `Some(i)` for adapter `name`, `None` for `__base__`; an unknown name lists the known ones.
    pub fn index(&self, name: &str) -> Result<Option<usize>> {
        if name == BASE {
            return Ok(None);
        }
        match self.names.iter().position(|n| n == name) {
            Some(i) => Ok(Some(i)),
            None => Err(Error::Input(format!(
                "unknown adapter name {name:?}; the loaded adapters are {} (and {BASE} for none)",
                self.names.join(", ")
            ))),
        }
    }

    /// Adapter `i`'s parameters under their adapter-file keys.
    pub fn named_parameters(&self, i: usize) -> &[(String, Tensor)] {
        &self.params[i]
    }

    /// Training or eval mode for every adapter (dropout).
    pub fn train(&self, seed: u64) {
        self.adapters.iter().for_each(|a| a.train(seed));
    }
    pub fn eval(&self) {
        self.adapters.iter().for_each(|a| a.eval());
    }
}

/// Names must be non-empty, not `__base__`, unique; at least one.
pub fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<()> {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return Err(Error::Input("no adapters given".into()));
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() || *name == BASE || name.contains(['.', ',']) {
            return Err(Error::Input(format!(
                "adapter name {name:?} is not allowed: a name is non-empty, has no '.' or ',', and \
                 {BASE} means \"no adapter\""
            )));
        }
        if names[..i].contains(name) {
            return Err(Error::Input(format!(
                "adapter name {name:?} is given twice; each adapter needs its own name"
            )));
        }
    }
    Ok(())
}

fn load_all(model: &mut Gpt2, adapters: &[(String, &Path)]) -> Result<AdapterSet> {
    let names: Rc<Vec<String>> = Rc::new(adapters.iter().map(|(n, _)| n.clone()).collect());
    // Per layer (registry order): the layer adapters taken off it, by adapter index.
    let mut taken: Vec<Vec<(usize, Rc<dyn LinearAdapter>)>> = vec![];
    let mut loaded = vec![];
    let mut params = vec![];
    for (i, (name, dir)) in adapters.iter().enumerate() {
        let adapter = crate::peft::files::load(model, dir)
            .map_err(|e| Error::Input(format!("adapter {name:?} ({}): {e}", dir.display())))?;
        let own = adapter.named_parameters(model);
        let mut in_layers: Vec<u64> = vec![];
        for (_, layer) in linear_layers(model) {
            if let Some(a) = &layer.adapter {
                a.visit("", &mut |_, t| in_layers.push(t.id()));
            }
        }
        let outside: Vec<&str> = own
            .iter()
            .filter(|(_, t)| !in_layers.contains(&t.id()))
            .map(|(k, _)| k.as_str())
            .collect();
        if !outside.is_empty() {
            return Err(Error::Input(format!(
                "adapter {name:?} ({}, {}) has parameters outside the layers it wraps ({}): base \
                 biases (bias = all / lora_only) or the model's input (prefix / prompt tuning) \
                 cannot be switched per adapter, so it cannot share the base with other adapters",
                dir.display(),
                adapter.peft_type(),
                outside.join(", ")
            )));
        }
        for (k, (_, layer)) in linear_layers(model).into_iter().enumerate() {
            if taken.len() <= k {
                taken.push(vec![]);
            }
            if let Some(a) = layer.adapter.take() {
                taken[k].push((i, a));
            }
        }
        params.push(own);
        loaded.push(adapter);
    }
    let selection = Rc::new(RefCell::new(Selection::One(Some(0))));
    for ((_, layer), adapters) in linear_layers(model).into_iter().zip(taken) {
        if !adapters.is_empty() {
            let switch = Switch { adapters, names: names.clone(), selection: selection.clone() };
            layer.adapter = Some(Rc::new(switch));
        }
    }
    let set = AdapterSet { names, adapters: loaded, params, selection };
    set.set_adapter(&set.names[0].clone())?;
    Ok(set)
}
