//! Parameter-efficient fine-tuning on a frozen base, as Hugging Face PEFT does it (see
//! docs/lora.md and /shared/reference/peft.md). A method wraps the model's `Linear` layers
//! through [`crate::model::layers::LinearAdapter`] and names its parameters through the model's
//! one registry, so freezing, listing, saving and the optimizer see them with no second list.
//!
//! - [`adapter`]: the [`Adapter`] trait every method implements (what the commands see).
//! - [`config`]: `LoraConfig` and `adapter_config.json` (fields we do not honour are refused).
//! - [`adalora`]: AdaLoRA, LoRA in SVD form whose rank the [`adalora_allocator`] prunes while it
//!   trains ([`adalora_config`]: its config).
//! - [`dora`]: DoRA's magnitude on a LoRA layer (`use_dora`).
//! - [`lora`]: the LoRA layer, `inject` (freeze the base, wrap the targets), merge and unmerge.
//! - [`multi`]: several named adapters on one base, switched or mixed per batch row.
//! - [`combine`]: PEFT's `add_weighted_adapter` (linear, cat, svd; [`svd`] is its f64 SVD).
//! - [`variants`]: LoRA-FA, LoRA+, Delta-LoRA and DyLoRA: LoRA's layers and files, trained
//!   differently.
//! - [`files`]: PEFT's adapter directory, loaded and saved with PEFT's key names.
//! - [`fields`]: `adapter_config.json` for the other methods (typed fields, the rest refused).
//! - [`ia3`], [`vera`]: the other methods on `Linear` layers (docs/methods.md).
//! - [`prompt_tuning`], [`prefix_tuning`]: methods in front of the sequence, through the
//!   model's input adapter (`model::input_adapter`).
//! - [`bitfit`]: biases only (our own `peft_type` "BITFIT", in PEFT's directory layout).
//! - [`bottleneck`]: Houlsby's serial adapters (our own `peft_type` "BOTTLENECK"), and the
//!   config of [`parallel_adapter`]'s parallel ones (He et al.), beside a whole sublayer.
//! - [`sparse_mask`]: selective masking, a fixed sparse subset of W trains ("SPARSE_MASK").
//! - [`composite`]: two methods on one model (MAM = prefix tuning + a parallel adapter).

pub mod adalora;
pub mod adalora_allocator;
pub mod adalora_config;
pub mod adapter;
pub mod bitfit;
pub mod bottleneck;
pub mod combine;
pub mod composite;
pub mod config;
pub mod dora;
pub mod fields;
pub mod files;
pub mod ia3;
pub mod lora;
pub mod multi;
pub mod parallel_adapter;
pub mod prefix_tuning;
pub mod prompt_tuning;
pub mod sparse_mask;
pub mod svd;
pub mod variants;
pub mod vera;

pub use adapter::Adapter;
pub use config::{Bias, LoraConfig, LoraInit};
pub use files::{load_adapter, save_adapter};
pub use lora::{Lora, LoraLayer, LoraModel, inject};
