//! The GPU runtime: one [`Gpu`] handle owns the wgpu instance, adapter, device and queue, the
//! buffer pool (with memory accounting by category) and the command recorder.
//!
//! - `binding.rs`: buffers larger than one binding, bound in windows of rows.
//! - `context.rs`: choosing the adapter, creating the device, capturing wgpu errors.
//! - `memory.rs`: the buffer pool and the per-category byte counts (`memory_report()`).
//! - `kernel.rs`: `Kernel` descriptions, the pipeline cache, and `dispatch` — the one helper every
//!   op goes through; it records into one encoder and submits in batches.

mod binding;
mod context;
mod kernel;
mod memory;

pub use binding::{BindingLimitGuard, Window, limit_bindings_to};
pub use context::{Gpu, checked_from_env};
pub use kernel::{FoldGuard, Kernel, fold_dispatches_at, grid_1d, source_for_naga};
pub use memory::{Category, MemoryStats, Storage};
