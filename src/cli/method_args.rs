//! The flags and the attaching of the methods added with selective masking: `--method mask`
//! (`--sparsity`, `--mask-by`, `--fisher-batches`), `--method adapter --adapter-placement
//! parallel` (`--adapter-scaling`), and `--method mam` (prefix tuning + a scaled parallel
//! adapter beside the MLP, He et al.). `FinetuneArgs` flattens [`MethodArgs`]; `finetune` calls
//! [`attach`] for these methods (Fisher selection needs the task's training batches).

use clap::{Args, ValueEnum};
use glassgrad::cpu::Rng;
use glassgrad::data::{Batches, Split};
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::adalora;
use glassgrad::peft::adalora_config::AdaLoraConfig;
use glassgrad::peft::bottleneck::{BottleneckConfig, Placement};
use glassgrad::peft::composite::compose;
use glassgrad::peft::sparse_mask::{self, SparseMaskConfig};
use glassgrad::peft::{Adapter, bottleneck, prefix_tuning};
use glassgrad::{Error, Result, Tensor};

use crate::cli::finetune::{DEFAULT_BOTTLENECK, DEFAULT_VIRTUAL_TOKENS, FinetuneArgs, Method};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MaskBy {
    /// The largest |W| (no data needed).
    Magnitude,
    /// The largest Σ (∂L/∂W)² over --fisher-batches training batches (FISH mask).
    Fisher,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AdapterPlacement {
    /// After attn.c_proj and mlp.c_proj (Houlsby).
    Serial,
    /// Beside the MLP (--target-modules attn,mlp for both), fed with its input (He et al.).
    Parallel,
}

#[derive(Args, Clone, Debug)]
pub struct MethodArgs {
    /// Selective masking: the fraction of the projections' weights that trains, (0, 1]
    /// (a global budget over all targeted layers).
    #[arg(long, default_value = "0.005", value_parser = sparsity, allow_hyphen_values = true)]
    pub sparsity: f64,
    /// Selective masking: how the entries are chosen.
    #[arg(long, value_enum, default_value = "magnitude")]
    pub mask_by: MaskBy,
    /// Selective masking by Fisher: training batches the squared gradients are summed over.
    #[arg(long, default_value = "8", value_parser = fisher_batches, allow_hyphen_values = true)]
    pub fisher_batches: usize,
    /// Bottleneck adapters: after the layers (serial) or beside the sublayers (parallel).
    #[arg(long, value_enum, default_value = "serial")]
    pub adapter_placement: AdapterPlacement,
    /// Parallel adapters: the scale s of their output, (0, 1000] [default: 1; mam: 4].
    #[arg(long, value_parser = scaling, allow_hyphen_values = true)]
    pub adapter_scaling: Option<f64>,
    /// AdaLoRA: the average rank per layer left at the end (--r is the starting rank, init_r)
    /// [default: 8, PEFT's, or init_r if smaller].
    #[arg(long)]
    pub target_r: Option<usize>,
    /// AdaLoRA: the weight of the orthogonality penalty ‖AAᵀ − I‖_F, ‖BᵀB − I‖_F.
    #[arg(long, default_value_t = 0.5)]
    pub orth_reg_weight: f64,
}

fn sparsity(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("{s:?} is not in (0, 1] (0.005 trains 0.5% of the weights)")),
    }
}

fn fisher_batches(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (1..=10_000).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a whole number in 1..=10000")),
    }
}

fn scaling(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1000.0 => Ok(v),
        _ => Err(format!("{s:?} is not in (0, 1000]")),
    }
}

/// The task's training batches, for the Fisher selection: (data, batch size, tokens per row).
pub type FisherData<'a> = (&'a dyn Batches, usize, usize);

/// The bottleneck config the flags describe: serial after c_proj, or parallel beside the MLP.
pub fn bottleneck_config(args: &FinetuneArgs) -> BottleneckConfig {
    let size = args.bottleneck_size.unwrap_or(DEFAULT_BOTTLENECK);
    let targets = args.target_modules.as_ref().map(|t| t.split(',').map(|s| s.trim().into()));
    let mut c = match args.methods.adapter_placement {
        AdapterPlacement::Serial => {
            BottleneckConfig { bottleneck_size: size, ..BottleneckConfig::default() }
        }
        AdapterPlacement::Parallel => {
            BottleneckConfig::parallel(size, args.methods.adapter_scaling.unwrap_or(1.0))
        }
    };
    if let Some(t) = targets {
        c.target_modules = t.collect();
    }
    c.common.base_model_name_or_path = Some(args.model.display().to_string());
    c
}

/// Puts `--method adalora` on `model`: PEFT's AdaLoraConfig defaults, init_r from --r (12),
/// total_step from --steps.
pub fn adalora(model: &mut Gpt2, args: &FinetuneArgs) -> Result<Box<dyn Adapter>> {
    let mut c = AdaLoraConfig::new(args.steps);
    c.init_r = args.r.unwrap_or(c.init_r);
    c.target_r = args.methods.target_r.unwrap_or(c.target_r.min(c.init_r));
    c.orth_reg_weight = args.methods.orth_reg_weight;
    c.lora_alpha = args.lora_alpha.unwrap_or(c.lora_alpha);
    c.lora_dropout = args.lora_dropout.unwrap_or(c.lora_dropout);
    if let Some(t) = &args.target_modules {
        c.target_modules = t.split(',').map(|s| s.trim().to_string()).collect();
    }
    c.common.base_model_name_or_path = Some(args.model.display().to_string());
    Ok(Box::new(adalora::inject(model, &c, args.seed)?))
}

/// Puts `--method mask` or `mam` on `model`. `data` is needed for `--mask-by fisher`.
pub fn attach(
    model: &mut Gpt2,
    args: &FinetuneArgs,
    data: Option<FisherData>,
) -> Result<Box<dyn Adapter>> {
    let base = Some(args.model.display().to_string());
    match args.method {
        Method::Mask => {
            let mut c = SparseMaskConfig {
                sparsity: args.methods.sparsity,
                mask_by: format!("{:?}", args.methods.mask_by).to_lowercase(),
                fisher_batches: args.methods.fisher_batches,
                ..SparseMaskConfig::default()
            };
            if let Some(t) = &args.target_modules {
                c.target_modules = t.split(',').map(|s| s.trim().to_string()).collect();
            }
            c.common.base_model_name_or_path = base;
            let scores = match (args.methods.mask_by, data) {
                (MaskBy::Magnitude, _) => sparse_mask::magnitude_scores(model, &c)?,
                (MaskBy::Fisher, Some((data, batch, seq_len))) => {
                    let mut rng = Rng::new(args.seed ^ 0xF15E);
                    let gpu = model.gpu().clone();
                    let classes = data.classes(); // the loss training will use (a classifier's)
                    sparse_mask::fisher_scores(model, &c, |_| {
                        let b = data.sample(Split::Train, batch, seq_len, &mut rng)?;
                        let ids = Tensor::from_u32(&gpu, &b.inputs, &[batch, seq_len])?;
                        let opts = ForwardOptions::default();
                        model.task_loss(&ids, &b.targets, classes.as_deref(), &opts)
                    })?
                }
                (MaskBy::Fisher, None) => {
                    return Err(Error::Input(
                        "--mask-by fisher needs the task's training batches (run it through \
                         `glassgrad finetune`)"
                            .into(),
                    ));
                }
            };
            let total: usize = scores.iter().map(Vec::len).sum();
            let picked = sparse_mask::select(&scores, c.budget(total));
            Ok(Box::new(sparse_mask::inject(model, &c, &picked)?))
        }
        Method::Mam => {
            let vt = args.num_virtual_tokens.unwrap_or(DEFAULT_VIRTUAL_TOKENS);
            let mut prefix =
                prefix_tuning::PrefixTuningConfig { num_virtual_tokens: vt, ..Default::default() };
            prefix.common.base_model_name_or_path = base.clone();
            let first = Box::new(prefix_tuning::inject(model, &prefix, args.seed)?);
            let size = args.bottleneck_size.unwrap_or(DEFAULT_BOTTLENECK);
            let mut parallel =
                BottleneckConfig::parallel(size, args.methods.adapter_scaling.unwrap_or(4.0));
            parallel.common.base_model_name_or_path = base;
            debug_assert_eq!(parallel.placement, Placement::Parallel);
            let seed = args.seed.wrapping_add(1);
            let c = compose(model, first, "parallel adapter", |m| {
                Ok(Box::new(bottleneck::inject(m, &parallel, seed)?))
            })?;
            Ok(Box::new(c))
        }
        other => Err(Error::Input(format!(
            "internal: method_args::attach handles mask and mam, not {}",
            other.name()
        ))),
    }
}
