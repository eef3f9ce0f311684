//! Command-line interface (interfaces.md): `glassgrad [tour|train|generate|forward|bench]`.

mod adapters;
mod bench;
mod compare;
mod compare_checkpointing;
mod compare_quantize;
mod finetune;
mod forward;
mod generate;
mod merge;
mod method_args;
mod quantize;
mod tour;
mod train;
mod validate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use glassgrad::Result;

#[derive(Parser)]
#[command(
    name = "glassgrad",
    version,
    about = "A tensor autodiff engine with WGSL kernels: train and fine-tune a small GPT-2 on any GPU.\n\nWith no command: the guided tour (trains a tiny GPT on the bundled Shakespeare)."
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The guided tour: train a tiny char-level GPT on the bundled Shakespeare, sample before/after.
    Tour(tour::TourArgs),
    /// Train a GPT-2 (by default the tour's tiny char-level model on the bundled Shakespeare).
    Train(train::TrainArgs),
    /// Fine-tune a model directory with a parameter-efficient method (LoRA and its variants) on
    /// the bundled movie-review sentences.
    Finetune(Box<finetune::FinetuneArgs>),
    /// Fine-tune one base with several methods, same data, steps and seed, and set them side by
    /// side (table, CSV, JSON, pictures).
    Compare(compare::CompareArgs),
    /// Sample text from a model directory.
    Generate(generate::GenerateArgs),
    /// One forward (and optionally backward) pass written to safetensors (llm.c's debug state).
    Forward(forward::ForwardArgs),
    /// Time the kernels on the current adapter.
    Bench(bench::BenchArgs),
    /// Fold a PEFT LoRA adapter (or several, combined by weight) into its base: a plain GPT-2 dir.
    Merge(merge::MergeArgs),
    /// Quantize a safetensors file's 2-D f32 tensors to NF4/FP4 as bitsandbytes stores them.
    Quantize(quantize::QuantizeArgs),
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        None => tour::run(tour::TourArgs::default()),
        Some(Command::Tour(a)) => tour::run(a),
        Some(Command::Train(a)) => train::run(a),
        Some(Command::Finetune(a)) => finetune::run(*a),
        Some(Command::Compare(a)) => compare::run(a),
        Some(Command::Generate(a)) => generate::run(a),
        Some(Command::Forward(a)) => forward::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Merge(a)) => merge::run(a),
        Some(Command::Quantize(a)) => quantize::run(a),
    }
}

/// `A` with every flag at its own default, given only `required` (flags a command cannot run
/// without): the tour and `compare` start from these. A derived `Default` would give 0 and ""
/// instead (the tour once ran its fine-tuning with 0 steps that way).
pub fn flag_defaults<A: clap::Args>(required: &[&str]) -> A {
    #[derive(Parser)]
    struct Wrapper<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    Wrapper::<A>::parse_from(std::iter::once("glassgrad").chain(required.iter().copied())).args
}

/// The directory outputs go to: `--out`, else `default` under the current directory.
pub fn out_dir(out: &Option<PathBuf>, default: &str) -> PathBuf {
    out.clone().unwrap_or_else(|| PathBuf::from(default))
}
