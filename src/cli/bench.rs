//! `glassgrad bench [matmul|softmax|layernorm|attention|dequant-matmul|train-step|finetune-step|all] [--size N] [--json]`

use clap::Args;
use glassgrad::{Gpu, Result};

use crate::cli::validate;

#[derive(Args)]
pub struct BenchArgs {
    /// Which kernel to time.
    #[arg(default_value = "all", value_parser = which_parser())]
    which: String,
    /// Problem size, 1..=65536 (N for an N³ matmul, rows for softmax and layernorm, T for
    /// attention, rows of the training shapes for dequant-matmul, B for train-step and finetune-step); checked against the adapter's limits before allocating.
    #[arg(long, value_parser = validate::bench_size, allow_hyphen_values = true)]
    size: Option<usize>,
    /// One JSON object per line (instead of a table).
    #[arg(long)]
    json: bool,
}

/// The benchmarks (`glassgrad::bench::BENCHES`) and "all".
fn which_parser() -> clap::builder::PossibleValuesParser {
    let mut values = glassgrad::bench::BENCHES.to_vec();
    values.push("all");
    clap::builder::PossibleValuesParser::new(values)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let gpu = Gpu::new()?;
    if !args.json {
        println!("adapter: {}", gpu.describe());
    }
    for r in glassgrad::bench::run(&gpu, &args.which, args.size)? {
        if args.json {
            println!("{}", r.to_json());
        } else {
            let rate = match (r.gflops, r.gbps) {
                (Some(g), _) => format!("{g:8.2} GFLOPS"),
                (_, Some(b)) => format!("{b:8.2} GB/s"),
                _ => String::new(),
            };
            println!("{:<32} {:<20} {:>10.3} ms  {rate}", r.kernel, r.shape, r.ms);
        }
    }
    if std::env::var("GLASSGRAD_PROFILE").is_ok_and(|v| v == "1") {
        eprint!("{}", gpu.profile_report());
    }
    Ok(())
}
