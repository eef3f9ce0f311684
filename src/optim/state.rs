//! AdamW's checkpoint state: the moments sliced out of the arenas by parameter, under torch's
//! names (see the module docs of `optim`).

use super::AdamW;
use crate::error::{Error, Result};

impl AdamW {
    /// m and v of every trainable parameter, and the step count (see the module docs for names).
    pub fn state(&self) -> Result<Vec<(String, Vec<f32>)>> {
        let moments: Vec<(Vec<f32>, Vec<f32>)> = self
            .buckets
            .iter()
            .map(|b| Ok((b.m.to_vec()?, b.v.to_vec()?)))
            .collect::<Result<_>>()?;
        let mut out = vec![("step".to_string(), vec![self.step as f32])];
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if s.places.is_empty() {
                    continue;
                }
                // A split parameter's pieces, in order, make its whole moments.
                let (mut m, mut v) = (vec![], vec![]);
                for &(b, k) in &s.places {
                    let place = &self.buckets[b].places[k];
                    let range = place.start..place.start + place.numel;
                    m.extend_from_slice(&moments[b].0[range.clone()]);
                    v.extend_from_slice(&moments[b].1[range]);
                }
                out.push((format!("{gi}.{pi}.exp_avg"), m));
                out.push((format!("{gi}.{pi}.exp_avg_sq"), v));
            }
        }
        Ok(out)
    }

    /// Restores what [`state`](Self::state) returned. Every trainable parameter's m and v and
    /// the step must be present, with matching sizes; nothing is written unless all are.
    pub fn load_state(&mut self, state: &[(String, Vec<f32>)]) -> Result<()> {
        let find = |name: &str| state.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let step = find("step")
            .ok_or_else(|| Error::Input("AdamW::load_state: no \"step\" entry".into()))?;
        let mut arenas: Vec<[Vec<f32>; 2]> =
            self.buckets.iter().map(|b| [vec![0.0; b.numel], vec![0.0; b.numel]]).collect();
        for (gi, group) in self.groups.iter().enumerate() {
            for (pi, s) in group.params.iter().enumerate() {
                if s.places.is_empty() {
                    continue;
                }
                for (moment, suffix) in ["exp_avg", "exp_avg_sq"].into_iter().enumerate() {
                    let name = format!("{gi}.{pi}.{suffix}");
                    let data = find(&name).ok_or_else(|| {
                        Error::Input(format!("AdamW::load_state: no entry {name:?}"))
                    })?;
                    if data.len() != s.param.numel() {
                        return Err(Error::Input(format!(
                            "AdamW::load_state: {name:?} has {} values, the parameter has {} (shape {:?})",
                            data.len(),
                            s.param.numel(),
                            s.param.shape()
                        )));
                    }
                    for &(b, k) in &s.places {
                        let place = self.buckets[b].places[k];
                        let piece = &data[place.offset..place.offset + place.numel];
                        arenas[b][moment][place.start..place.start + place.numel]
                            .copy_from_slice(piece);
                    }
                }
            }
        }
        for (bucket, [m, v]) in self.buckets.iter().zip(&arenas) {
            bucket.m.gpu().upload(bucket.m.storage(), bytemuck::cast_slice(m))?;
            bucket.v.gpu().upload(bucket.v.storage(), bytemuck::cast_slice(v))?;
        }
        self.step = step.first().copied().unwrap_or(0.0) as u64;
        Ok(())
    }
}
