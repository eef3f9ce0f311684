//! Sampling with a KV cache. The cache reuses the prefix path of attention: the keys and values of
//! every earlier position are "extra keys in front of the sequence" (no causal mask among them is
//! needed: they are all in the past), and the new token's position id starts after them.
//! A model's input adapter (prompt / prefix tuning) adds Vt virtual positions to the first pass:
//! prompt tuning's are in that pass's keys already, prefix tuning's are put in front of the
//! cache; either way the cache then holds every position, virtual ones included.

use crate::autograd::no_grad;
use crate::cpu::Rng;
use crate::error::{Error, Result};
use crate::model::gpt2::{ForwardOptions, Gpt2, LayerPrefix};
use crate::ops::shape::concat;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
}

/// Picks a token from one row of logits.
pub fn sample_token(logits: &[f32], opts: &SampleOptions, rng: &mut Rng) -> u32 {
    if opts.temperature <= 0.0 {
        return crate::ops::lm_head::cpu::argmax(logits) as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let max = logits[order[0]];
    let weights: Vec<f64> =
        order.iter().map(|&i| (((logits[i] - max) / opts.temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform() * total;
    for (w, &i) in weights.iter().zip(&order) {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    order[order.len() - 1] as u32
}

/// The next token from the last position's logits of (1, T, V): greedy decoding picks it on the
/// GPU (`Tensor::argmax`, one u32 read back); sampling reads the row back.
fn next_token(logits: &Tensor, opts: &SampleOptions, rng: &mut Rng) -> Result<u32> {
    let (t, v) = (logits.shape()[1], logits.shape()[2]);
    let last = match t {
        1 => logits.reshape(&[1, v])?,
        _ => logits.reshape(&[t, v])?.slice(0, t - 1, t)?,
    }; // (1, V)
    if opts.temperature <= 0.0 {
        return last.argmax();
    }
    Ok(sample_token(&last.to_vec()?, opts, rng))
}

/// k and v (T, C) of one layer's qkv (1, T, 3C).
fn keys_values(qkv: &Tensor, c: usize) -> Result<(Tensor, Tensor)> {
    let t = qkv.shape()[1];
    let k = qkv.slice(2, c, 2 * c)?.reshape(&[t, c])?; // (T, C)
    let v = qkv.slice(2, 2 * c, 3 * c)?.reshape(&[t, c])?; // (T, C)
    Ok((k, v))
}

/// Continues `prompt` by up to `max_new_tokens` tokens; returns only the new tokens.
pub fn generate(model: &Gpt2, prompt: &[u32], opts: &SampleOptions) -> Result<Vec<u32>> {
    generate_streaming(model, prompt, opts, |_| Ok(()))
}

/// [`generate`], handing each new token to `on_token` as soon as it is sampled (to print it).
pub fn generate_streaming(
    model: &Gpt2,
    prompt: &[u32],
    opts: &SampleOptions,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let _g = no_grad();
    if prompt.is_empty() {
        return Err(Error::Input("generate: the prompt is empty (give at least one token)".into()));
    }
    if !(opts.temperature >= 0.0 && opts.temperature.is_finite()) {
        return Err(Error::Input(format!(
            "generate: temperature {} must be finite and ≥ 0 (0 = greedy)",
            opts.temperature
        )));
    }
    let gpu = model.gpu();
    let c = model.config.n_embd;
    let max_t = model.config.n_positions;
    let vt = model.input_adapter.as_ref().map_or(0, |a| a.num_virtual_tokens());
    let window_max = max_t.saturating_sub(vt).max(1); // real tokens that fit beside Vt
    let mut rng = Rng::new(opts.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    let mut out = vec![];
    let mut cache: Vec<LayerPrefix> = vec![];
    let mut cached = 0; // positions in the cache
    while out.len() < opts.max_new_tokens {
        // A full context window: restart from the last max_t/2 tokens without a cache.
        if cached == 0 || cached + 1 > max_t {
            let window = &tokens[tokens.len().saturating_sub(if cached == 0 {
                window_max
            } else {
                window_max / 2
            })..];
            model.check_ids(window, &[1, window.len()], 0)?;
            let ids = Tensor::from_u32(gpu, window, &[1, window.len()])?;
            let fwd =
                model.forward(&ids, &ForwardOptions { keep_qkv: true, ..Default::default() })?;
            cache = fwd
                .qkv
                .iter()
                .map(|qkv| keys_values(qkv, c).map(|(keys, values)| LayerPrefix { keys, values }))
                .collect::<Result<_>>()?;
            if let Some(front) = model.input_adapter.as_ref().map(|a| a.prefix()).transpose()? {
                for (layer, virt) in cache.iter_mut().zip(front.into_iter().flatten()) {
                    layer.keys = concat(&[&virt.keys, &layer.keys], 0)?; // (Vt + T, C)
                    layer.values = concat(&[&virt.values, &layer.values], 0)?;
                }
            }
            cached = cache.first().map_or(window.len(), |l| l.keys.shape()[0]);
            let next = next_token(&fwd.logits, opts, &mut rng)?;
            tokens.push(next);
            out.push(next);
            on_token(next)?;
            continue;
        }
        let last = *tokens.last().unwrap();
        model.check_ids(&[last], &[1, 1], cached)?;
        let ids = Tensor::from_u32(gpu, &[last], &[1, 1])?;
        let fwd = model.forward(
            &ids,
            &ForwardOptions {
                prefix: Some(&cache),
                position_offset: cached,
                keep_qkv: true,
                ..Default::default()
            },
        )?;
        for (layer, qkv) in cache.iter_mut().zip(&fwd.qkv) {
            let (k, v) = keys_values(qkv, c)?;
            layer.keys = concat(&[&layer.keys, &k], 0)?; // (cached + 1, C)
            layer.values = concat(&[&layer.values, &v], 0)?;
        }
        cached += 1;
        let next = next_token(&fwd.logits, opts, &mut rng)?;
        tokens.push(next);
        out.push(next);
        on_token(next)?;
    }
    Ok(out)
}
