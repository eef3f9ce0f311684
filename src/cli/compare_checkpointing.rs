//! `glassgrad compare --checkpointing [K]`: besides training every method with checkpointing every
//! K blocks, measure the trade-off of Chen et al. 2016 for each method. One batch of the task runs
//! forward + backward in training mode (dropout on) with no checkpointing and with segments of
//! k = 1, 2, ⌈√L⌉, 4 and K blocks (those < L):
//!   peak activation bytes: the engine's own count, the peak of the step less what was live before;
//!   step time: wall clock of forward + backward to the GPU's end, the fastest of 3 rounds that
//!   run every setting in turn after a warm-up (so that other load falls on all alike);
//!   max grad diff: max |g_k − g_none| / max |g_none| over the trainable tensors (0: the replay
//!   runs the same kernels on the same values).
//! Plain training holds every block's activations, O(L); segments of k hold L/k segment inputs
//! plus one segment's activations during its recompute, O(L/k + k), least at k = √L; the price is
//! one more forward of the blocks but the last segment (which runs plainly), about a third of a
//! step at most. Written to `--out`:
//! `checkpointing.csv`, `checkpointing.json` and `checkpointing.svg` (step time against peak
//! activations, one line per method, one labelled point per k); the table on stdout.

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use glassgrad::cpu::Rng;
use glassgrad::data::Split;
use glassgrad::io::write_atomic;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::model::{Gpt2Weights, size};
use glassgrad::tokenizer::Tokenizer;
use glassgrad::train::tasks::Task;
use glassgrad::{Category, Error, Gpu, Result, Tensor};
use plotters::prelude::*;
use serde_json::{Value, json};

use crate::cli::compare::CompareArgs;
use crate::cli::finetune::{
    DEFAULT_VIRTUAL_TOKENS, FinetuneArgs, Method, TaskArg, attach, task_data,
};

/// Timed rounds over all settings (the fastest is reported: other load only adds time).
const ROUNDS: usize = 3;

/// The segment lengths measured on an `n_layer`-block model: 1, 2, ⌈√L⌉, 4 and `asked`, those
/// < L (the last segment runs plainly, so k ≥ L is a plain run), ascending, each once.
pub fn segment_lengths(n_layer: usize, asked: usize) -> Vec<usize> {
    let root = (n_layer as f64).sqrt().ceil() as usize;
    let mut ks: Vec<usize> =
        [1, 2, root, 4, asked].into_iter().filter(|k| (1..n_layer).contains(k)).collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// One method's batch, measured at every segment length: one JSON row per setting.
fn sweep_method(
    gpu: &Rc<Gpu>,
    args: &CompareArgs,
    method: Method,
    asked: usize,
    out: &Path,
) -> Result<Vec<Value>> {
    let weights = Gpt2Weights::load(&args.model)?;
    let tokenizer = Tokenizer::load(&args.model, weights.config.vocab_size)?;
    let virtual_tokens = match method {
        Method::Prefix | Method::Prompt => DEFAULT_VIRTUAL_TOKENS,
        _ => 0,
    };
    // finetune's default sequence length, so the rows describe the runs above them.
    let positions = weights.config.n_positions;
    let t = positions.min(64).saturating_sub(virtual_tokens).max(1);
    let b = args.batch_size;
    size::check_model(gpu, &weights.config, b, t, 5, "compare --model")?;
    let mut model = Gpt2::from_weights(gpu, &weights)?;
    drop(weights);
    let fargs = FinetuneArgs {
        model: args.model.clone(),
        method,
        seed: args.seed,
        ..crate::cli::finetune::defaults()
    };
    let adapter = attach(&mut model, &fargs, out)?; // `out` is read only when resuming
    if let Some(a) = &adapter {
        a.train(args.seed); // training-mode dropout, replayed by the recompute
    }
    let task = match args.task {
        TaskArg::Sentiment => Task::Sentiment,
        TaskArg::Style => Task::Style,
    };
    let (data, _) = task_data(task, &None, &tokenizer, t)?;
    let batch = data.batches().sample(Split::Train, b, t, &mut Rng::new(args.seed))?;
    model.check_ids(&batch.inputs, &[b, t], 0)?;
    let ids = Tensor::from_u32(gpu, &batch.inputs, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(gpu, &batch.targets, &[b, t])?; // (B, T)
    let trainable: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.requires_grad())
        .collect();

    // One forward + backward: (peak activation bytes, peak bytes, seconds).
    let step = |every: Option<usize>| -> Result<(u64, u64, f64)> {
        trainable.iter().for_each(|p| p.zero_grad());
        gpu.synchronize()?;
        gpu.reset_peaks();
        let before = gpu.memory();
        let clock = Instant::now();
        let opts = ForwardOptions {
            dropout_seed: Some(args.seed),
            checkpoint_every: every,
            ..Default::default()
        };
        model.forward_loss(&ids, &targets, &opts)?.backward()?; // (1)
        gpu.synchronize()?;
        let seconds = clock.elapsed().as_secs_f64();
        let after = gpu.memory();
        let activations = after.peak(Category::Activations) - before.live(Category::Activations);
        Ok((activations, after.total_peak, seconds))
    };
    let grads = || -> Result<Vec<Vec<f32>>> {
        trainable.iter().map(|p| p.grad().map_or(Ok(vec![]), |g| g.to_vec())).collect()
    };

    let settings: Vec<Option<usize>> = std::iter::once(None)
        .chain(segment_lengths(model.config.n_layer, asked).into_iter().map(Some))
        .collect();
    // A warm-up of each (pipelines built, buffers pooled; its gradients kept), then ROUNDS
    // rounds of every setting in turn, so that other load falls on all alike; the fastest round.
    let mut runs = vec![];
    for &every in &settings {
        let (activations, peak, _) = step(every)?;
        runs.push((activations, peak, f64::INFINITY, grads()?));
    }
    for _ in 0..ROUNDS {
        for (&every, run) in settings.iter().zip(&mut runs) {
            run.2 = run.2.min(step(every)?.2);
        }
    }
    let (base_bytes, _, base_seconds, plain) = &runs[0];
    let scale = plain.iter().flatten().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let mut rows = vec![];
    for (every, (activations, peak, seconds, g)) in settings.iter().zip(&runs) {
        let diff = g
            .iter()
            .zip(plain)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        rows.push(json!({
            "method": method.name(),
            "checkpoint_every": every,
            "n_layer": model.config.n_layer,
            "batch": b,
            "seq_len": t,
            "peak_activation_bytes": activations,
            "activation_ratio": *activations as f64 / (*base_bytes as f64).max(1.0),
            "peak_bytes": peak,
            "step_ms": seconds * 1e3,
            "time_ratio": seconds / base_seconds,
            "max_grad_diff": (diff / scale) as f64,
        }));
    }
    Ok(rows)
}

/// The sweep for every method of `args`, written to `out`; returns the rows.
pub fn run(gpu: &Rc<Gpu>, args: &CompareArgs, out: &Path, asked: usize) -> Result<Vec<Value>> {
    let mut rows = vec![];
    for &method in &args.methods {
        rows.extend(sweep_method(gpu, args, method, asked, out)?);
    }
    write_outputs(out, &rows)?;
    Ok(rows)
}

const COLUMNS: [&str; 7] = [
    "method",
    "checkpoint_every",
    "peak_activation_bytes",
    "activation_ratio",
    "step_ms",
    "time_ratio",
    "max_grad_diff",
];

fn cell(row: &Value, key: &str) -> String {
    match (key, &row[key]) {
        ("checkpoint_every", Value::Null) => "none".into(),
        (_, Value::String(s)) => s.clone(),
        ("step_ms", v) => format!("{:.1}", v.as_f64().unwrap_or(f64::NAN)),
        ("max_grad_diff", v) => format!("{:.1e}", v.as_f64().unwrap_or(f64::NAN)),
        (_, Value::Number(n)) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(f64::NAN)),
        (_, v) => v.to_string(),
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[Value]) -> String {
    let mut lines = vec![COLUMNS.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    lines.extend(rows.iter().map(|r| COLUMNS.iter().map(|k| cell(r, k)).collect()));
    let widths: Vec<usize> =
        (0..COLUMNS.len()).map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        out += &(cells.join("  ") + "\n");
    }
    out
}

fn write_outputs(out: &Path, rows: &[Value]) -> Result<()> {
    let mut csv = COLUMNS.join(",") + ",peak_bytes,n_layer,batch,seq_len\n";
    for r in rows {
        let mut cells: Vec<String> = COLUMNS.iter().map(|k| cell(r, k)).collect();
        cells.extend(["peak_bytes", "n_layer", "batch", "seq_len"].map(|k| r[k].to_string()));
        csv += &(cells.join(",") + "\n");
    }
    write_atomic(&out.join("checkpointing.csv"), csv.as_bytes())?;
    let text = serde_json::to_string_pretty(&json!({ "rows": rows })).expect("JSON");
    write_atomic(&out.join("checkpointing.json"), text.as_bytes())?;
    write_atomic(&out.join("checkpointing.svg"), tradeoff_svg(rows)?.as_bytes())
}

fn plot_err(e: &dyn std::fmt::Display) -> Error {
    Error::Input(format!("cannot draw checkpointing.svg: {e}"))
}

/// Step time (ms) against peak activations (MB): one line per method through its settings, each
/// point labelled with its segment length.
fn tradeoff_svg(rows: &[Value]) -> Result<String> {
    const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let point = |r: &Value| {
        (
            r["peak_activation_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            r["step_ms"].as_f64().unwrap_or(0.0),
        )
    };
    let mut methods: Vec<&str> = rows.iter().filter_map(|r| r["method"].as_str()).collect();
    methods.dedup();
    let (x_hi, y_hi) =
        rows.iter().map(point).fold((1e-6f64, 1e-6f64), |(x, y), (a, b)| (x.max(a), y.max(b)));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("gradient checkpointing: time against memory", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_hi * 1.15, 0.0..y_hi * 1.2)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("peak activations (MB)")
            .y_desc("forward + backward (ms)")
            .draw()
            .map_err(|e| plot_err(&e))?;
        for (i, method) in methods.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mine: Vec<&Value> = rows.iter().filter(|r| r["method"] == *method).collect();
            let pts: Vec<(f64, f64)> = mine.iter().map(|r| point(r)).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(&e))?
                .label(*method)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(|e| plot_err(&e))?;
            let labels = mine.iter().zip(&pts).map(|(r, p)| {
                let k = r["checkpoint_every"].as_u64().map_or("none".into(), |k| format!("k={k}"));
                Text::new(k, *p, ("sans-serif", 13).into_font().color(&color))
            });
            chart.draw_series(labels).map_err(|e| plot_err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}
