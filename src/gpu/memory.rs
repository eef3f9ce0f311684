//! GPU buffers: a pool that reuses freed buffers by size class, and byte counts by category.
//!
//! Every byte the engine allocates on the GPU is counted here, so memory claims (LoRA vs full
//! fine-tuning, checkpointing on/off) are measured, not estimated. Counts are of *requested* bytes
//! per category; `reserved` also includes the rounding to size classes and the pooled free buffers.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use super::Gpu;
use crate::error::{Error, Result};

/// What a buffer holds. A tensor's storage can change category (a backward result becomes a
/// parameter's gradient) without a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    Parameters,
    Gradients,
    Optimizer,
    Activations,
    Quantized,
    Scratch,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Parameters,
        Category::Gradients,
        Category::Optimizer,
        Category::Activations,
        Category::Quantized,
        Category::Scratch,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Category::Parameters => "parameters",
            Category::Gradients => "gradients",
            Category::Optimizer => "optimizer",
            Category::Activations => "activations",
            Category::Quantized => "quantized",
            Category::Scratch => "scratch",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Live and peak bytes, per category and in total.
#[derive(Clone, Debug, Default)]
pub struct MemoryStats {
    pub live: [u64; 6],
    pub peak: [u64; 6],
    pub total_live: u64,
    pub total_peak: u64,
    /// Bytes held by wgpu buffers, including size-class rounding and the free list.
    pub reserved: u64,
}

impl MemoryStats {
    pub fn live(&self, c: Category) -> u64 {
        self.live[c.index()]
    }
    pub fn peak(&self, c: Category) -> u64 {
        self.peak[c.index()]
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    pub(crate) stats: MemoryStats,
}

/// Size classes: multiples of 256 B up to 4 KiB, then 8 steps per power of two (≤ 12.5% waste).
fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.div_ceil(256) * 256;
    }
    let step = (1u64 << (63 - bytes.leading_zeros())) / 8;
    bytes.div_ceil(step) * step
}

impl Pool {
    fn add(&mut self, c: Category, bytes: u64) {
        let s = &mut self.stats;
        s.live[c.index()] += bytes;
        s.total_live += bytes;
        s.peak[c.index()] = s.peak[c.index()].max(s.live[c.index()]);
        s.total_peak = s.total_peak.max(s.total_live);
    }
    fn sub(&mut self, c: Category, bytes: u64) {
        let s = &mut self.stats;
        s.live[c.index()] -= bytes;
        s.total_live -= bytes;
    }
}

/// A GPU buffer owned by one or more tensors (a reshape shares it). Returned to the pool on drop.
pub struct Storage {
    pub(crate) gpu: Rc<Gpu>,
    buffer: Option<wgpu::Buffer>,
    /// Bytes requested (what the tensor needs).
    pub bytes: u64,
    category: Cell<Category>,
}

impl Storage {
    /// Takes a buffer of at least `bytes` from the pool (or creates one), counted under `category`.
    /// `op` names who asked, for the error when `bytes` exceeds the binding limit.
    pub fn new(gpu: &Rc<Gpu>, bytes: u64, category: Category, op: &'static str) -> Result<Storage> {
        // A buffer may exceed one binding (ops bind it in windows, see binding.rs), not this.
        let max = gpu.limits.max_buffer_size;
        if bytes > max {
            return Err(Error::Limit {
                op,
                message: format!(
                    "a tensor of {bytes} bytes exceeds this adapter's max_buffer_size of {max} bytes ({}); split the work into smaller tensors",
                    gpu.info.name
                ),
            });
        }
        let class = size_class(bytes).min(max).max(bytes.next_multiple_of(4));
        let mut pool = gpu.pool.borrow_mut();
        let buffer = match pool.free.get_mut(&class).and_then(|v| v.pop()) {
            Some(b) => b,
            None => {
                pool.stats.reserved += class;
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(category.name()),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        pool.add(category, bytes);
        Ok(Storage { gpu: gpu.clone(), buffer: Some(buffer), bytes, category: Cell::new(category) })
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("storage buffer present until drop")
    }

    pub fn category(&self) -> Category {
        self.category.get()
    }

    /// Moves this storage's bytes to another category (no copy).
    pub fn set_category(&self, c: Category) {
        let old = self.category.replace(c);
        if old != c {
            let mut pool = self.gpu.pool.borrow_mut();
            pool.sub(old, self.bytes);
            pool.add(c, self.bytes);
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let buffer = self.buffer.take().expect("storage dropped once");
        let mut pool = self.gpu.pool.borrow_mut();
        pool.sub(self.category.get(), self.bytes);
        // Reusing a freed buffer is safe without waiting: every later use is recorded after every
        // earlier one on the same queue, and wgpu inserts the barriers between them.
        pool.free.entry(buffer.size()).or_default().push(buffer);
    }
}

impl Gpu {
    pub fn memory(&self) -> MemoryStats {
        self.pool.borrow().stats.clone()
    }

    /// Forgets the peaks (e.g. to measure one training step).
    pub fn reset_peaks(&self) {
        let mut pool = self.pool.borrow_mut();
        let s = &mut pool.stats;
        s.peak = s.live;
        s.total_peak = s.total_live;
    }

    /// Frees pooled buffers that no tensor uses.
    pub fn release_free_buffers(&self) {
        let mut pool = self.pool.borrow_mut();
        let freed: u64 = pool.free.values().flatten().map(|b| b.size()).sum();
        pool.free.clear();
        pool.stats.reserved -= freed;
    }

    /// A table of live and peak bytes per category.
    pub fn memory_report(&self) -> String {
        let s = self.memory();
        let mut out = String::from("category        live (bytes)    peak (bytes)\n");
        for c in Category::ALL {
            out += &format!("{:<14} {:>13} {:>15}\n", c.name(), s.live(c), s.peak(c));
        }
        out += &format!("{:<14} {:>13} {:>15}\n", "total", s.total_live, s.total_peak);
        out += &format!("reserved by wgpu buffers (size classes + free pool): {}\n", s.reserved);
        out
    }
}
