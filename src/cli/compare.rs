//! `glassgrad compare --model DIR [--methods lora,lora-fa,…,full]`: every method fine-tunes the
//! same base on the same task with the same steps, batches and seed (`finetune` under the hood,
//! each into `--out/<method>`), and the rows set them side by side: trainable parameters, peak GPU
//! bytes by category (the engine's own accounting over the training run), tokens/s, validation
//! loss, accuracy, and the size of what it saves. Written: a table on stdout, `compare.csv`,
//! `compare.json`, and `loss.svg` (overlaid validation curves), `memory.svg` (bars by category),
//! `accuracy.svg` in `--out`. With `--quantize` each method also runs on the base held in int8,
//! NF4 and NF4 + double quantization (compare_quantize.rs), with the loss gap to the f32 base.
//! With `--checkpointing`, also the memory/time trade-off of checkpointing for each method
//! (`compare_checkpointing.rs`).

use std::path::PathBuf;

use clap::Args;
use glassgrad::gpu::Category;
use glassgrad::io::write_atomic;
use glassgrad::train::log::{LOG_FILE, TrainLog};
use glassgrad::train::plots::{bars_svg, curves_svg};
use glassgrad::{Error, Gpu, Result};
use serde_json::json;

use crate::cli::compare_checkpointing;
use crate::cli::compare_quantize;
use crate::cli::finetune::{FinetuneArgs, Method, TaskArg, finetune};
use crate::cli::train::{extend_json, memory_json};
use crate::cli::validate;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// Base model directory (e.g. the tour's runs/shakespeare-char).
    #[arg(long)]
    pub model: PathBuf,
    /// Comma-separated methods (finetune's --method names); `full` is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "lora,vera,prefix,ia3,bitfit,full")]
    pub methods: Vec<Method>,
    #[arg(long, value_enum, default_value = "sentiment")]
    pub task: TaskArg,
    /// Optimizer steps for every method, 1..=1e9.
    #[arg(long, default_value = "100", value_parser = validate::steps, allow_hyphen_values = true)]
    pub steps: usize,
    /// Peak learning rate for every method, (0, 1].
    #[arg(long, default_value = "3e-3", value_parser = validate::learning_rate, allow_hyphen_values = true)]
    pub lr: f32,
    /// Sequences per micro-batch, 1..=65536.
    #[arg(long, default_value = "32", value_parser = validate::batch_size, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Gradient checkpointing for every method: K blocks per segment (alone: 1). Also measures,
    /// per method, peak activation bytes and step time with none and k = 1, 2, ⌈√L⌉, 4, K (< L)
    /// (checkpointing.csv/.json/.svg; under "checkpointing" in --json's last line).
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "1",
          value_parser = validate::checkpointing)]
    pub checkpointing: Option<usize>,
    /// Also fine-tune each method on the base held in int8, NF4 and NF4 with double quantization
    /// (QLoRA), beside the f32 base: memory, speed and the validation-loss gap per base.
    #[arg(long)]
    pub quantize: bool,
    /// Output directory [default: runs/compare]; each method's run goes in a folder of its name.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// One JSON object per method, then {"rows": [...]} on the last line.
    #[arg(long)]
    pub json: bool,
    /// --sparsity, --mask-by, --adapter-placement, … for the methods that use them.
    #[command(flatten)]
    pub method_args: crate::cli::method_args::MethodArgs,
}

const CATEGORIES: [(Category, &str); 5] = [
    (Category::Parameters, "parameters"),
    (Category::Gradients, "gradients"),
    (Category::Optimizer, "optimizer"),
    (Category::Activations, "activations"),
    (Category::Quantized, "quantized"),
];

/// Bytes of what a method's run saved: the adapter file, or the whole model for `full`.
fn saved_bytes(dir: &std::path::Path) -> u64 {
    ["adapter_model.safetensors", "model.safetensors"]
        .iter()
        .find_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map_or(0, |m| m.len())
}

pub fn run(args: CompareArgs) -> Result<()> {
    if args.methods.is_empty() {
        return Err(Error::Input("compare: --methods names no method".into()));
    }
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs/compare"));
    std::fs::create_dir_all(&out)
        .map_err(|e| Error::Input(format!("--out {}: cannot create it: {e}", out.display())))?;
    let gpu = Gpu::new()?;
    if !args.json {
        println!("adapter: {}", gpu.describe());
    }
    let mut rows = vec![];
    let mut curves = vec![];
    for (method, base) in compare_quantize::runs(&args.methods, args.quantize) {
        let name = base.label(method);
        let dir = out.join(&name);
        let (quantize, double_quant) = base.flags();
        let finetune_args = FinetuneArgs {
            quantize,
            double_quant,
            model: args.model.clone(),
            method,
            out: Some(dir.clone()),
            task: args.task,
            steps: args.steps,
            lr: args.lr,
            batch_size: args.batch_size,
            checkpointing: args.checkpointing,
            seed: args.seed,
            overwrite: true,
            eval_every: (args.steps / 5).max(1),
            methods: args.method_args.clone(),
            ..crate::cli::finetune::defaults()
        };
        if !args.json {
            println!("\n== {name} ==");
        }
        let quiet = args.json;
        let f = finetune(&gpu, &finetune_args, |line| {
            if !quiet {
                println!("{line}")
            }
        })?
        .done;
        let row = json!({
            "method": name,
            "method_name": method.name(),
            "base": base.name(),
            "trainable_params": f.trainable_params,
            "all_params": f.all_params,
            "trainable_percent": 100.0 * f.trainable_params as f64 / f.all_params.max(1) as f64,
            "tokens_per_s": f.summary.tokens_per_s,
            "seconds": f.summary.seconds,
            "val_loss": f.summary.val_loss,
            "accuracy": f.accuracy.map(|a| a.0),
            "accuracy_tweets": f.accuracy.map(|a| a.1),
            "adapter_bytes": saved_bytes(&dir),
        });
        let row = extend_json(row, memory_json(&gpu)); // peak_bytes, memory by category
        if args.json {
            println!("{row}");
        }
        rows.push(row);
        let log = TrainLog::read(dir.join(LOG_FILE))?;
        let val: Vec<(f64, f64)> = log
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64 + 1.0, v as f64)))
            .collect();
        curves.push((name, val));
    }
    if args.quantize {
        compare_quantize::add_gaps(&mut rows);
    }
    write_outputs(&out, &rows, &curves)?;
    // --checkpointing: the memory/time trade-off for several segment lengths, per method.
    let sweep = match args.checkpointing {
        Some(k) => Some(compare_checkpointing::run(&gpu, &args, &out, k)?),
        None => None,
    };
    if args.json {
        let mut last = json!({ "rows": rows });
        if let Some(sweep) = &sweep {
            last["checkpointing"] = json!(sweep);
        }
        println!("{last}");
    } else {
        print!("\n{}", table(&rows));
        if args.quantize {
            print!("\n{}", compare_quantize::table(&rows));
        }
        println!(
            "wrote compare.csv, compare.json, loss.svg, memory.svg, accuracy.svg to {}",
            out.display()
        );
        if let Some(sweep) = &sweep {
            println!(
                "\ngradient checkpointing: one batch forward + backward, peak activations and \
                 step time (fastest of 3 rounds) without and with segments of k blocks"
            );
            print!("{}", compare_checkpointing::table(sweep));
            println!(
                "wrote checkpointing.csv, checkpointing.json, checkpointing.svg to {}",
                out.display()
            );
        }
    }
    Ok(())
}

const COLUMNS: [&str; 9] = [
    "method",
    "trainable_params",
    "trainable_percent",
    "peak_bytes",
    "tokens_per_s",
    "val_loss",
    "accuracy",
    "accuracy_tweets",
    "adapter_bytes",
];

fn cell(row: &serde_json::Value, key: &str) -> String {
    match &row[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_f64() => {
            let v = n.as_f64().unwrap_or(f64::NAN);
            if key.starts_with("accuracy") || key == "trainable_percent" {
                format!("{:.2}", if key == "trainable_percent" { v } else { 100.0 * v })
            } else {
                format!("{v:.4}")
            }
        }
        serde_json::Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The rows as an aligned text table (accuracies in %).
fn table(rows: &[serde_json::Value]) -> String {
    let mut lines = vec![COLUMNS.to_vec().iter().map(|s| s.to_string()).collect::<Vec<_>>()];
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

fn write_outputs(
    out: &std::path::Path,
    rows: &[serde_json::Value],
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let mut csv = COLUMNS.join(",")
        + ",memory_parameters,memory_gradients,memory_optimizer,memory_activations,memory_quantized\n";
    for r in rows {
        let mut cells: Vec<String> = COLUMNS.iter().map(|k| cell(r, k)).collect();
        cells.extend(CATEGORIES.iter().map(|(_, n)| r["memory"][*n].to_string()));
        csv += &(cells.join(",") + "\n");
    }
    write_atomic(&out.join("compare.csv"), csv.as_bytes())?;
    let text = serde_json::to_string_pretty(&json!({ "rows": rows })).expect("JSON");
    write_atomic(&out.join("compare.json"), text.as_bytes())?;
    let names: Vec<String> = rows.iter().map(|r| cell(r, "method")).collect();
    let loss = curves_svg(curves, "validation loss, same steps and data", "loss")?;
    write_atomic(&out.join("loss.svg"), loss.as_bytes())?;
    let cats: Vec<&str> = CATEGORIES.iter().map(|(_, n)| *n).collect();
    let mem: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| cats.iter().map(|c| r["memory"][*c].as_f64().unwrap_or(0.0) / 1e6).collect())
        .collect();
    let memory = bars_svg(&names, &cats, &mem, "peak GPU memory by category", "MB")?;
    write_atomic(&out.join("memory.svg"), memory.as_bytes())?;
    let acc: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            ["accuracy", "accuracy_tweets"]
                .iter()
                .map(|k| 100.0 * r[*k].as_f64().unwrap_or(0.0))
                .collect()
        })
        .collect();
    let accuracy = bars_svg(&names, &["held-out", "tweets"], &acc, "accuracy", "%")?;
    write_atomic(&out.join("accuracy.svg"), accuracy.as_bytes())
}
