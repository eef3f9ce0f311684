//! Parse-time ranges for numeric options: each is a clap `value_parser`, so nonsense (`--lr -1`,
//! `--dropout nan`, `--eval-batches 0`) is rejected before anything runs, in one line that says
//! the valid range. Every option that uses one also sets `allow_hyphen_values`, so `--lr -1`
//! or `--min-lr -1e-4` (with a space) parses as a value and is then rejected by its range, not
//! taken for a flag.
//! The ranges are listed in README.md ("Option ranges").

fn float(s: &str) -> Result<f64, String> {
    s.trim().parse::<f64>().map_err(|_| format!("{s:?} is not a number"))
}

fn in_range(s: &str, ok: impl Fn(f64) -> bool, range: &str) -> Result<f32, String> {
    let v = float(s).map_err(|e| format!("{e} (valid range {range})"))?;
    if ok(v) { Ok(v as f32) } else { Err(format!("{s} is outside the valid range {range}")) }
}

/// --lr: (0, 1].
pub fn learning_rate(s: &str) -> Result<f32, String> {
    in_range(s, |v| v > 0.0 && v <= 1.0, "(0, 1]")
}

/// --min-lr: [0, 1] here, and ≤ --lr (checked once both are known).
pub fn min_learning_rate(s: &str) -> Result<f32, String> {
    in_range(s, |v| (0.0..=1.0).contains(&v), "[0, 1] (and at most --lr)")
}

/// --weight-decay: [0, 1].
pub fn weight_decay(s: &str) -> Result<f32, String> {
    in_range(s, |v| (0.0..=1.0).contains(&v), "[0, 1]")
}

/// --grad-clip: (0, inf]; inf turns clipping off.
pub fn grad_clip(s: &str) -> Result<f32, String> {
    in_range(s, |v| v > 0.0 && !v.is_nan(), "(0, inf] (inf = no clipping)")
}

/// --dropout: [0, 1).
pub fn dropout(s: &str) -> Result<f64, String> {
    in_range(s, |v| (0.0..1.0).contains(&v), "[0, 1)").map(|v| v as f64)
}

/// --temperature: [0, 100]; 0 = greedy.
pub fn temperature(s: &str) -> Result<f32, String> {
    in_range(s, |v| (0.0..=100.0).contains(&v), "[0, 100] (0 = greedy)")
}

fn whole(s: &str, min: u64, max: u64) -> Result<usize, String> {
    let range = format!("{min}..={max}");
    let v: u64 = match s.trim().parse() {
        Ok(v) => v,
        Err(_) if s.trim().parse::<i128>().is_ok() || float(s).is_ok() => {
            return Err(format!("{s} is outside the valid range {range} (a whole number)"));
        }
        Err(_) => return Err(format!("{s:?} is not a whole number (valid range {range})")),
    };
    if v < min || v > max {
        return Err(format!("{s} is outside the valid range {range}"));
    }
    usize::try_from(v).map_err(|_| format!("{s} does not fit this machine's usize"))
}

macro_rules! whole_parser {
    ($($(#[$doc:meta])* $name:ident: $min:expr, $max:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(s: &str) -> Result<usize, String> {
            whole(s, $min, $max)
        }
    )*};
}

whole_parser! {
    /// --steps: 1..=1e9.
    steps: 1, 1_000_000_000;
    /// --batch-size: 1..=65536.
    batch_size: 1, 65_536;
    /// --seq-len: 1..=65536 (and at most the model's n_positions, checked at run time).
    seq_len: 1, 65_536;
    /// --grad-accum: 1..=1e6.
    grad_accum: 1, 1_000_000;
    /// --n-layer: 1..=1000.
    n_layer: 1, 1_000;
    /// --n-embd: 1..=65536 (and divisible by --n-head; memory checked before building).
    n_embd: 1, 65_536;
    /// --n-head: 1..=1024.
    n_head: 1, 1_024;
    /// --warmup: 0..=1e9.
    warmup: 0, 1_000_000_000;
    /// --checkpointing K: 1..=1000 blocks per recomputed segment. Its value is optional, so it
    /// does not set `allow_hyphen_values` (that made `--checkpointing --out DIR` take `--out` as K).
    checkpointing: 1, 1_000;
    /// --eval-every: 0..=1e9 (0 = only at the end).
    eval_every: 0, 1_000_000_000;
    /// --eval-batches: 1..=10000.
    eval_batches: 1, 10_000;
    /// generate --max-new-tokens: 1..=1e6.
    max_new_tokens: 1, 1_000_000;
    /// generate --top-k: 0..=1e6 (0 = no limit: sample from every token).
    top_k: 0, 1_000_000;
    /// bench --size: 1..=65536 (then checked against the adapter's limits).
    bench_size: 1, 65_536;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (parser, input, accepted?) — each range's edges, both sides, and the non-numbers.
    #[test]
    fn every_range_accepts_its_edges_and_rejects_what_lies_outside() {
        type F = fn(&str) -> bool;
        let cases: &[(&str, F, &[&str], &[&str])] = &[
            (
                "lr",
                |s| learning_rate(s).is_ok(),
                &["1e-6", "0.003", "1"],
                &["0", "-1", "-0.001", "1.5", "nan", "NaN", "inf", "-inf", "x", ""],
            ),
            (
                "min-lr",
                |s| min_learning_rate(s).is_ok(),
                &["0", "3e-4", "1"],
                &["-1e-9", "nan", "inf", "2"],
            ),
            (
                "weight-decay",
                |s| weight_decay(s).is_ok(),
                &["0", "0.1", "1"],
                &["-0.1", "nan", "inf", "1.01"],
            ),
            (
                "grad-clip",
                |s| grad_clip(s).is_ok(),
                &["1e-3", "1", "inf"],
                &["0", "-1", "nan", "-inf"],
            ),
            (
                "dropout",
                |s| dropout(s).is_ok(),
                &["0", "0.1", "0.999"],
                &["-0.5", "1", "nan", "inf"],
            ),
            (
                "temperature",
                |s| temperature(s).is_ok(),
                &["0", "0.8", "100"],
                &["-1", "nan", "inf", "100.5"],
            ),
            (
                "steps",
                |s| steps(s).is_ok(),
                &["1", "1000000000"],
                &["0", "-1", "1.5", "1000000001", "99999999999999999999999", "x"],
            ),
            ("eval-batches", |s| eval_batches(s).is_ok(), &["1", "10000"], &["0", "-3", "10001"]),
            ("eval-every", |s| eval_every(s).is_ok(), &["0", "200"], &["-1", "0.5"]),
            ("top-k", |s| top_k(s).is_ok(), &["0", "40"], &["-1", "1000001"]),
            (
                "bench size",
                |s| bench_size(s).is_ok(),
                &["1", "65536"],
                &["0", "4294967296", "100000"],
            ),
            ("n-embd", |s| n_embd(s).is_ok(), &["1", "64"], &["0", "1000000"]),
            ("n-layer", |s| n_layer(s).is_ok(), &["1", "2"], &["0", "1000000000"]),
        ];
        for (name, ok, good, bad) in cases {
            for g in *good {
                assert!(ok(g), "--{name} {g} should be accepted");
            }
            for b in *bad {
                assert!(!ok(b), "--{name} {b:?} should be rejected");
            }
        }
        assert!(learning_rate("-1").unwrap_err().contains("(0, 1]"), "the message gives the range");
    }
}
