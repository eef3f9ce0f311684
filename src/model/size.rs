//! Size checks made before anything is allocated: a model (or a benchmark) that cannot fit is an
//! error that says what it needs and what there is, not an abort on a 12 TB allocation or a
//! machine eaten at 800 MB/s.
//!
//! Parameters of GPT-2 with C = n_embd, H = the MLP width, L = n_layer, V, P = n_positions:
//!   V·C + P·C + L·(2C + C·3C + 3C + C·C + C + 2C + C·H + H + H·C + C) + 2C
//! computed with checked arithmetic (a config of n_layer 10⁹ overflows nothing and fails here).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::config::Gpt2Config;

/// The number of parameters (tied head counted once), or None if it overflows u64.
pub fn parameter_count(config: &Gpt2Config) -> Option<u64> {
    let (v, p, c, l) = (
        config.vocab_size as u64,
        config.n_positions as u64,
        config.n_embd as u64,
        config.n_layer as u64,
    );
    let h = config.n_inner.map_or_else(|| c.checked_mul(4), |n| Some(n as u64))?;
    let embeddings = v.checked_mul(c)?.checked_add(p.checked_mul(c)?)?;
    let per_layer = [
        c.checked_mul(3)?.checked_mul(c)?, // c_attn weight (C, 3C)
        c.checked_mul(c)?,                 // attn.c_proj weight (C, C)
        c.checked_mul(h)?,                 // c_fc weight (C, H)
        h.checked_mul(c)?,                 // mlp.c_proj weight (H, C)
        c.checked_mul(9)?,                 // ln_1, ln_2 (2·2C), c_attn bias 3C, c_proj biases 2C
        h,                                 // c_fc bias
    ]
    .iter()
    .try_fold(0u64, |acc, x| acc.checked_add(*x))?;
    embeddings.checked_add(per_layer.checked_mul(l)?)?.checked_add(c.checked_mul(2)?)
}

/// The largest single parameter tensor's element count: wte (V, C), wpe (P, C), c_attn (C, 3C),
/// c_fc (C, H).
pub fn largest_parameter(config: &Gpt2Config) -> Option<u64> {
    let (v, p, c) = (config.vocab_size as u64, config.n_positions as u64, config.n_embd as u64);
    let h = config.n_inner.map_or_else(|| c.checked_mul(4), |n| Some(n as u64))?;
    [v.checked_mul(c), p.checked_mul(c), c.checked_mul(3)?.checked_mul(c), c.checked_mul(h)]
        .into_iter()
        .try_fold(0u64, |acc, x| x.map(|x| acc.max(x)))
}

/// The largest parameter bound whole by its ops: wpe (P, C), c_attn (C, 3C), c_fc (C, H). wte
/// (V, C) is bound in windows of rows (the embedding, the tied head: src/gpu/binding.rs).
pub fn largest_unsplit_parameter(config: &Gpt2Config) -> Option<u64> {
    let (p, c) = (config.n_positions as u64, config.n_embd as u64);
    let h = config.n_inner.map_or_else(|| c.checked_mul(4), |n| Some(n as u64))?;
    [p.checked_mul(c), c.checked_mul(3)?.checked_mul(c), c.checked_mul(h)]
        .into_iter()
        .try_fold(0u64, |acc, x| x.map(|x| acc.max(x)))
}

/// Bytes of memory this machine can still give (Linux: MemAvailable), None where unknown.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// "12.0 TB" style.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Checks that `copies` f32 copies of every parameter fit in this machine's memory (1 to hold the
/// weights at all; 5 to train: the host copy, weights, gradients and AdamW's two moments, which on
/// a CPU adapter all live in host memory). `source` names the config in messages.
pub fn check_host_memory(config: &Gpt2Config, copies: u64, source: &str) -> Result<()> {
    let what = format!(
        "n_layer {}, n_embd {}, vocab_size {}, n_positions {}",
        config.n_layer, config.n_embd, config.vocab_size, config.n_positions
    );
    let too_big = || {
        Error::Input(format!(
            "{source}: a GPT-2 with {what} has more parameters than fit in 64 bits"
        ))
    };
    let params = parameter_count(config).ok_or_else(too_big)?;
    let needed = params.checked_mul(4 * copies).ok_or_else(too_big)?;
    if let Some(available) = available_memory()
        && needed > available
    {
        return Err(Error::Input(format!(
            "{source}: a GPT-2 with {what} has {params} parameters and needs {} \
                 ({copies} × 4 bytes each); this machine has {} available",
            human(needed),
            human(available)
        )));
    }
    Ok(())
}

/// Checks a tensor of `numel` f32 values (None: overflowed) against the adapter's buffer limits
/// before it is built; `what` says which tensor, for the message.
pub fn check_tensor(gpu: &Gpu, op: &'static str, what: &str, numel: Option<u64>) -> Result<()> {
    check_bytes(gpu, op, what, numel, gpu.max_binding().min(gpu.limits.max_buffer_size))
}

/// `check_tensor` for a tensor that ops bind in windows of rows (wte, the logits): only
/// `max_buffer_size` limits it.
pub fn check_split_tensor(
    gpu: &Gpu,
    op: &'static str,
    what: &str,
    numel: Option<u64>,
) -> Result<()> {
    check_bytes(gpu, op, what, numel, gpu.limits.max_buffer_size)
}

fn check_bytes(
    gpu: &Gpu,
    op: &'static str,
    what: &str,
    numel: Option<u64>,
    limit: u64,
) -> Result<()> {
    let bytes = numel.and_then(|n| n.checked_mul(4));
    match bytes {
        Some(b) if b <= limit => Ok(()),
        _ => Err(Error::Limit {
            op,
            message: format!(
                "{what} needs {}; this adapter ({}) allows {} per buffer",
                bytes.map_or("more than 2^64 bytes".to_string(), human),
                gpu.info.name,
                human(limit)
            ),
        }),
    }
}

/// Everything checkable before a model is built for training or inference with batches of
/// (B, T): host memory for `copies` f32 copies, the largest parameter and the largest
/// activations — the MLP's (B, T, H) and the logits (B, T, V) — against the adapter's limits
/// (wte and the logits against `max_buffer_size`: they are bound in windows of rows).
pub fn check_model(
    gpu: &Gpu,
    config: &Gpt2Config,
    batch: usize,
    seq_len: usize,
    copies: u64,
    source: &str,
) -> Result<()> {
    check_host_memory(config, copies, source)?;
    let (v, c) = (config.vocab_size as u64, config.n_embd as u64);
    check_split_tensor(gpu, "gpt2", "the token embedding wte (V, C)", v.checked_mul(c))?;
    check_tensor(gpu, "gpt2", "the largest weight", largest_unsplit_parameter(config))?;
    let bt = (batch as u64).checked_mul(seq_len as u64);
    let h = config.n_inner.unwrap_or(4 * config.n_embd.min(usize::MAX / 4)) as u64;
    check_tensor(gpu, "gpt2", "the MLP activations (B, T, H)", bt.and_then(|n| n.checked_mul(h)))?;
    check_split_tensor(gpu, "gpt2", "the logits (B, T, V)", bt.and_then(|n| n.checked_mul(v)))
}
