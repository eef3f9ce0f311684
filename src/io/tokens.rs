//! The token file (see the interfaces reference): a safetensors file with `input_ids` (i64 [B, T])
//! and optionally `labels` (i64 [B, T]; default: equal to input_ids). Loss is computed as
//! transformers does: logits[:, :-1] predict labels[:, 1:], label -100 is ignored.
//!
//! On the GPU ids and labels are u32, so a label of -100 becomes [`IGNORE_INDEX`] (u32::MAX).

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors::{NamedTensor, TensorFile, write_safetensors};

/// A label the loss skips: transformers' -100, stored as u32::MAX on our side.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Token ids and labels of a batch, row-major [B, T].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenFile {
    pub batch: usize,
    pub seq_len: usize,
    /// (B, T) token ids.
    pub input_ids: Vec<u32>,
    /// (B, T) labels; -100 in the file is [`IGNORE_INDEX`] here.
    pub labels: Vec<u32>,
}

impl TokenFile {
    /// Reads `input_ids` (and `labels` if present) from a safetensors file. Integer dtypes (I64 as
    /// the interface says, I32 too) are accepted; floats, wrong ranks, a `labels` shape different
    /// from `input_ids`, negative ids and negative labels other than -100 are errors.
    pub fn read(path: impl AsRef<Path>) -> Result<TokenFile> {
        let file = TensorFile::read(path.as_ref())?;
        let p = path.as_ref().display();
        let ids_t = file.get("input_ids")?;
        let [batch, seq_len] = ids_t.shape[..] else {
            return Err(Error::Input(format!(
                "{p}: 'input_ids' must be 2-D [B, T], got shape {:?}",
                ids_t.shape
            )));
        };
        if batch == 0 || seq_len == 0 {
            return Err(Error::Input(format!(
                "{p}: 'input_ids' is empty (shape [{batch}, {seq_len}])"
            )));
        }
        let ids = integers(ids_t, "input_ids", &p.to_string())?;
        let mut input_ids = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if id < 0 || id >= u32::MAX as i64 {
                let why = if id < 0 { "ids must be ≥ 0" } else { "larger than any vocabulary" };
                return Err(Error::Input(format!(
                    "{p}: input_ids[{}, {}] = {id} is not a valid token id ({why})",
                    i / seq_len,
                    i % seq_len
                )));
            }
            input_ids.push(id as u32);
        }
        let labels = match file.tensors.get("labels") {
            None => input_ids.clone(),
            Some(t) => {
                if t.shape != ids_t.shape {
                    return Err(Error::Input(format!(
                        "{p}: 'labels' has shape {:?} but 'input_ids' has {:?}; they must match",
                        t.shape, ids_t.shape
                    )));
                }
                let mut out = Vec::with_capacity(t.numel());
                for (i, &l) in integers(t, "labels", &p.to_string())?.iter().enumerate() {
                    out.push(match l {
                        -100 => IGNORE_INDEX,
                        l if l >= 0 && l < u32::MAX as i64 => l as u32,
                        l => {
                            let why = if l < 0 {
                                "labels must be ≥ 0 or -100 (ignored)"
                            } else {
                                "larger than any vocabulary; labels must be < vocab_size"
                            };
                            return Err(Error::Input(format!(
                                "{p}: labels[{}, {}] = {l}; {why}",
                                i / seq_len,
                                i % seq_len
                            )));
                        }
                    });
                }
                out
            }
        };
        Ok(TokenFile { batch, seq_len, input_ids, labels })
    }

    /// Writes `input_ids` and `labels` as i64 [B, T] (labels' IGNORE_INDEX back to -100), atomically.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let shape = [self.batch, self.seq_len];
        let ids: Vec<i64> = self.input_ids.iter().map(|&i| i as i64).collect();
        let labels: Vec<i64> =
            self.labels.iter().map(|&l| if l == IGNORE_INDEX { -100 } else { l as i64 }).collect();
        let ids = NamedTensor::from_i64(&shape, &ids);
        let labels = NamedTensor::from_i64(&shape, &labels);
        write_safetensors(path, [("input_ids", &ids), ("labels", &labels)])
    }

    /// Targets as transformers computes the loss: position t predicts labels[t + 1]; the last
    /// position of each row predicts nothing ([`IGNORE_INDEX`]). (B, T) like the ids.
    pub fn shifted_targets(&self) -> Vec<u32> {
        let (b, t) = (self.batch, self.seq_len);
        let mut targets = vec![IGNORE_INDEX; b * t];
        for row in 0..b {
            for col in 0..t.saturating_sub(1) {
                targets[row * t + col] = self.labels[row * t + col + 1];
            }
        }
        targets
    }

    /// How many positions the loss is taken over: labels[:, 1:] that are not -100.
    pub fn count_targets(&self) -> usize {
        self.shifted_targets().iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Checks every id and label against the model's vocabulary size.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        let bad = |what: &str, i: usize, v: u32| {
            Error::Input(format!(
                "{what}[{}, {}] = {v} is outside the model's vocabulary (vocab_size {vocab_size})",
                i / self.seq_len,
                i % self.seq_len
            ))
        };
        if let Some((i, &v)) =
            self.input_ids.iter().enumerate().find(|(_, v)| **v as usize >= vocab_size)
        {
            return Err(bad("input_ids", i, v));
        }
        let bad_label = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, v)| **v != IGNORE_INDEX && **v as usize >= vocab_size);
        if let Some((i, &v)) = bad_label {
            return Err(bad("labels", i, v));
        }
        Ok(())
    }
}

fn integers(t: &NamedTensor, name: &str, path: &str) -> Result<Vec<i64>> {
    match t.dtype {
        crate::io::Dtype::I64 | crate::io::Dtype::I32 => t.to_i64(name),
        other => Err(Error::Input(format!(
            "{path}: '{name}' has dtype {other:?}; expected I64 (torch.long)"
        ))),
    }
}
