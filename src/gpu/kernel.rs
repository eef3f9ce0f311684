//! Kernels and the one dispatch helper every op goes through.
//!
//! A [`Kernel`] names a WGSL file, an entry point and how many storage buffers it reads and
//! writes. Binding convention, the same in every shader:
//!   @group(0) @binding(0)            var<uniform> p: Params;            // the op's typed params
//!   @group(0) @binding(1 ..= reads)  var<storage, read> …;              // inputs
//!   @group(0) @binding(reads+1 ..)   var<storage, read_write> …;        // outputs
//!
//! Dispatches are recorded into one open compute pass of one command encoder; params go into one
//! uniform arena written just before the submit. Nothing waits until someone reads data back
//! (`Tensor::to_vec`) or calls `Gpu::flush`.

use std::cell::Cell;
use std::collections::HashMap;

use super::Gpu;
use super::binding::Window;
use super::memory::Storage;
use crate::error::{Error, Result};

/// One compute entry point of one WGSL file.
pub struct Kernel {
    /// Label for wgpu objects and debug output, e.g. "binary_add".
    pub name: &'static str,
    /// The WGSL source, `include_str!("../../shaders/<op>.wgsl")`.
    pub source: &'static str,
    pub entry: &'static str,
    /// Storage buffers bound read-only after the params (bindings 1..=reads).
    pub reads: usize,
    /// Storage buffers bound read-write after those.
    pub writes: usize,
}

/// The directive the WGSL spec (and tint) require before subgroup built-ins; naga 30 cannot parse
/// it yet, so wgpu and our naga checks get the source without it.
const ENABLE_SUBGROUPS: &str = "enable subgroups;";

/// `source` as naga 30 accepts it (see `ENABLE_SUBGROUPS`).
pub fn source_for_naga(source: &str) -> std::borrow::Cow<'_, str> {
    if source.contains(ENABLE_SUBGROUPS) {
        source.replacen(ENABLE_SUBGROUPS, "", 1).into()
    } else {
        source.into()
    }
}

/// Workgroup counts for `n` independent threads in workgroups of `workgroup_size`, folded into two
/// dimensions when more than 65,535 groups are needed. Shaders recover the flat index as
/// `(wid.y * nwg.x + wid.x) * WG + lid.x`.
pub fn grid_1d(n: usize, workgroup_size: u32) -> [u32; 3] {
    let groups = n.div_ceil(workgroup_size as usize).max(1);
    let fold = FOLD_AT.with(Cell::get) as usize;
    if groups <= fold {
        [groups as u32, 1, 1]
    } else {
        [fold as u32, groups.div_ceil(fold) as u32, 1]
    }
}

thread_local! {
    /// Workgroups along x before `grid_1d` folds into y: 65,535, the WebGPU limit per dimension.
    /// Tests lower it ([`fold_dispatches_at`]) so every kernel's folded index runs at small shapes.
    static FOLD_AT: Cell<u32> = const { Cell::new(65_535) };
}

/// Until the guard drops, `grid_1d` on this thread folds past `groups` workgroups instead of
/// 65,535. For tests: a kernel that ignores `wid.y` then fails at the shapes of its usual checks,
/// not only at 16M elements.
pub fn fold_dispatches_at(groups: u32) -> FoldGuard {
    assert!((1..=65_535).contains(&groups), "fold point {groups} is not in 1..=65535");
    FoldGuard(FOLD_AT.with(|f| f.replace(groups)))
}

/// Restores the previous fold point when dropped.
pub struct FoldGuard(u32);

impl Drop for FoldGuard {
    fn drop(&mut self) {
        FOLD_AT.with(|f| f.set(self.0));
    }
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: HashMap<usize, wgpu::ShaderModule>,
    pipelines: HashMap<&'static str, (wgpu::ComputePipeline, wgpu::BindGroupLayout)>,
}

/// Bytes of params one batch can hold before it is submitted.
const PARAMS_CAPACITY: u64 = 1 << 20;

/// Dispatches one submission holds at most, whatever loop records them: each holds a bind group
/// until its submission completes, and lavapipe crashed allocating descriptor sets for ~10⁵ of
/// them (`train --grad-accum 4000`). At the bound we submit and wait, so at most this many are
/// ever in flight.
const MAX_DISPATCHES_PER_SUBMIT: u32 = 2048;

pub(crate) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// CPU copy of this batch's uniform arena, written to `params_buffer` at submit.
    params: Vec<u8>,
    params_buffer: wgpu::Buffer,
    align: u64,
    /// Dispatches recorded since the last submit (see MAX_DISPATCHES_PER_SUBMIT).
    recorded: u32,
}

impl Recorder {
    pub(crate) fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> Recorder {
        let params_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size: PARAMS_CAPACITY,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Recorder {
            encoder: None,
            pass: None,
            params: Vec::new(),
            params_buffer,
            align: limits.min_uniform_buffer_offset_alignment as u64,
            recorded: 0,
        }
    }
}

impl Gpu {
    fn pipeline(
        &self,
        kernel: &'static Kernel,
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        if let Some(p) = self.pipelines.borrow().pipelines.get(kernel.name) {
            return Ok(p.clone());
        }
        if self.debug >= 3 {
            eprintln!("[glassgrad] shader for {}:\n{}", kernel.name, kernel.source);
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let key = kernel.source.as_ptr() as usize;
        let module = {
            let mut cache = self.pipelines.borrow_mut();
            cache
                .modules
                .entry(key)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.name),
                        source: wgpu::ShaderSource::Wgsl(source_for_naga(kernel.source)),
                    };
                    if self.checked_shaders() {
                        // wgpu's runtime checks: indices clamped, integer division guarded, loops
                        // bounded (GLASSGRAD_CHECKED=1, and debug builds).
                        self.device.create_shader_module(desc)
                    } else {
                        // SAFETY: every kernel checks its own bounds against the lengths it is
                        // given, so the runtime checks naga would add are redundant (and cost 1.5x
                        // on some drivers). GLASSGRAD_CHECKED=1 turns them back on to find out.
                        unsafe {
                            self.device.create_shader_module_trusted(
                                desc,
                                wgpu::ShaderRuntimeChecks::unchecked(),
                            )
                        }
                    }
                })
                .clone()
        };
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for i in 0..kernel.reads {
            entries.push(storage(1 + i as u32, true));
        }
        for i in 0..kernel.writes {
            entries.push(storage((1 + kernel.reads + i) as u32, false));
        }
        let layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(kernel.name),
            entries: &entries,
        });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Wgpu(format!("creating kernel {}: {e}", kernel.name)));
        }
        let entry = (pipeline, layout);
        self.pipelines.borrow_mut().pipelines.insert(kernel.name, entry.clone());
        Ok(entry)
    }

    /// Records one dispatch of `kernel`. `params` is the kernel's typed uniform struct.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &'static Kernel,
        params: &P,
        reads: &[&Storage],
        writes: &[&Storage],
        groups: [u32; 3],
    ) -> Result<()> {
        let reads: Vec<Window> = reads.iter().map(|s| s.whole()).collect();
        let writes: Vec<Window> = writes.iter().map(|s| s.whole()).collect();
        self.dispatch_windows(kernel, params, &reads, &writes, groups)
    }

    /// `dispatch` with each storage bound as a window (part of a buffer larger than one binding;
    /// see binding.rs). Every window must fit the binding limit.
    pub fn dispatch_windows<P: bytemuck::Pod>(
        &self,
        kernel: &'static Kernel,
        params: &P,
        reads: &[Window],
        writes: &[Window],
        groups: [u32; 3],
    ) -> Result<()> {
        let limit = self.max_binding();
        if let Some(w) = reads.iter().chain(writes).find(|w| w.bytes > limit) {
            return Err(Error::Limit {
                op: kernel.name,
                message: format!(
                    "a tensor of {} bytes would be bound whole, above the binding limit of {limit} \
                     bytes (max_storage_buffer_binding_size of {}); {} does not split its tensors \
                     by rows: use smaller shapes",
                    w.bytes, self.info.name, kernel.name
                ),
            });
        }
        if reads.len() != kernel.reads || writes.len() != kernel.writes {
            return Err(Error::Wgpu(format!(
                "kernel {} takes {} inputs and {} outputs, was given {} and {}",
                kernel.name,
                kernel.reads,
                kernel.writes,
                reads.len(),
                writes.len()
            )));
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::Limit {
                op: kernel.name,
                message: format!("dispatch of {groups:?} workgroups exceeds {max} per dimension"),
            });
        }
        for w in writes {
            if reads
                .iter()
                .chain(writes.iter())
                .filter(|s| std::ptr::eq(s.storage.buffer(), w.storage.buffer()))
                .count()
                > 1
            {
                return Err(Error::Wgpu(format!(
                    "kernel {}: one buffer is bound twice, once as an output (a read-write binding must be unique)",
                    kernel.name
                )));
            }
        }
        if self.debug >= 2 {
            eprintln!("[glassgrad] dispatch {:<28} groups {:?}", kernel.name, groups);
        }
        let (pipeline, layout) = self.pipeline(kernel)?;
        let profiling = self.profile.borrow().is_some();
        if profiling {
            self.synchronize()?; // time this dispatch alone
        }
        let started = std::time::Instant::now();
        let bytes = bytemuck::bytes_of(params);
        // Params go into the arena at an aligned offset; a full arena is submitted first.
        let needed = (bytes.len() as u64).max(16);
        let full = {
            let rec = self.recorder.borrow();
            (rec.params.len() as u64).next_multiple_of(rec.align) + needed > PARAMS_CAPACITY
        };
        if full {
            self.flush()?;
        }
        let mut rec = self.recorder.borrow_mut();
        let offset = (rec.params.len() as u64).next_multiple_of(rec.align);
        rec.params.resize(offset as usize, 0);
        rec.params.extend_from_slice(bytes);
        rec.params.resize((offset + needed) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &rec.params_buffer,
                offset,
                size: wgpu::BufferSize::new(needed),
            }),
        }];
        for (i, w) in reads.iter().chain(writes.iter()).enumerate() {
            let buffer = w.storage.buffer();
            // The whole buffer when it fits (its size class, as always); else the window,
            // rounded up to whole vec4s where the buffer and the limit leave room.
            let resource = if w.offset == 0 && buffer.size() <= limit {
                buffer.as_entire_binding()
            } else {
                let size = w.bytes.next_multiple_of(16).min(buffer.size() - w.offset).min(limit);
                wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer,
                    offset: w.offset,
                    size: wgpu::BufferSize::new(size.max(4)),
                })
            };
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout: &layout,
            entries: &entries,
        });
        let pass = self.open_pass(&mut rec);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.dispatches.set(self.dispatches.get() + 1);
        rec.recorded += 1;
        let bound_reached = rec.recorded >= MAX_DISPATCHES_PER_SUBMIT;
        drop(rec);
        if bound_reached {
            self.synchronize()?;
        }
        if profiling {
            self.synchronize()?;
            let seconds = started.elapsed().as_secs_f64();
            let mut profile = self.profile.borrow_mut();
            let entry = profile.as_mut().expect("profiling on").entry(kernel.name).or_default();
            entry.0 += 1;
            entry.1 += seconds;
        }
        Ok(())
    }

    /// Turns per-kernel timing on or off (also `GLASSGRAD_PROFILE=1`). While on, every dispatch is
    /// submitted and waited for alone, so the figures include one submit (~70 µs on lavapipe) each.
    pub fn set_profiling(&self, on: bool) {
        *self.profile.borrow_mut() = on.then(Default::default);
    }

    /// Per-kernel calls and milliseconds since profiling was turned on, slowest first.
    pub fn profile_report(&self) -> String {
        let profile = self.profile.borrow();
        let Some(p) = profile.as_ref() else {
            return "profiling is off (GLASSGRAD_PROFILE=1 or Gpu::set_profiling(true))\n".into();
        };
        let mut rows: Vec<_> = p.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        let total: f64 = rows.iter().map(|r| r.1.1).sum();
        let mut out =
            format!("{:<32} {:>8} {:>12} {:>8}\n", "kernel", "calls", "total ms", "share");
        for (name, (calls, secs)) in rows {
            out += &format!(
                "{name:<32} {calls:>8} {:>12.2} {:>7.1}%\n",
                secs * 1e3,
                100.0 * secs / total.max(1e-12)
            );
        }
        out
    }

    /// The batch's command encoder, created on first use.
    fn encoder<'r>(&self, rec: &'r mut Recorder) -> &'r mut wgpu::CommandEncoder {
        rec.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("glassgrad batch"),
            })
        })
    }

    fn open_pass<'r>(&self, rec: &'r mut Recorder) -> &'r mut wgpu::ComputePass<'static> {
        if rec.pass.is_none() {
            let pass = self
                .encoder(rec)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("glassgrad ops"),
                    timestamp_writes: None,
                })
                .forget_lifetime();
            rec.pass = Some(pass);
        }
        rec.pass.as_mut().unwrap()
    }

    /// The open encoder with no compute pass open (for copies), in recording order.
    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.recorder.borrow_mut();
        rec.pass = None; // ends the pass
        f(self.encoder(&mut rec))
    }

    /// Records a copy of `data` into `dst`, ordered after everything recorded so far.
    pub fn upload(&self, dst: &Storage, data: &[u8]) -> Result<()> {
        use wgpu::util::DeviceExt;
        let mut padded;
        let data = if !data.len().is_multiple_of(4) {
            padded = data.to_vec();
            padded.resize(data.len().next_multiple_of(4), 0);
            &padded[..]
        } else {
            data
        };
        if data.is_empty() {
            return Ok(());
        }
        let staging = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("upload staging"),
            contents: data,
            usage: wgpu::BufferUsages::COPY_SRC,
        });
        self.with_encoder(|e| {
            e.copy_buffer_to_buffer(&staging, 0, dst.buffer(), 0, data.len() as u64)
        });
        Ok(())
    }

    /// Records zeroing `bytes` bytes of `dst` from `offset` (no binding, so no binding limit).
    pub fn clear(&self, dst: &Storage, offset: u64, bytes: u64) -> Result<()> {
        let bytes = bytes.next_multiple_of(4).min(dst.buffer().size() - offset);
        self.with_encoder(|e| e.clear_buffer(dst.buffer(), offset, Some(bytes)));
        Ok(())
    }

    /// Records a copy of `bytes` bytes from `src` at byte `src_offset` to `dst` at `dst_offset`,
    /// ordered after everything recorded so far (a copy, not a dispatch: it is not counted in
    /// `dispatches`, and it binds nothing, so it is free of the binding limit). Offsets and size must be multiples of 4 and inside both storages.
    pub fn copy_range(
        &self,
        src: &Storage,
        src_offset: u64,
        dst: &Storage,
        dst_offset: u64,
        bytes: u64,
    ) -> Result<()> {
        let fits =
            |s: &Storage, offset: u64| offset.checked_add(bytes).is_some_and(|e| e <= s.bytes);
        if !(src_offset | dst_offset | bytes).is_multiple_of(4) || !fits(src, src_offset) {
            return Err(Error::Wgpu(format!(
                "copy_range: {bytes} bytes from offset {src_offset} of a {}-byte storage to offset \
                 {dst_offset} of a {}-byte storage is unaligned (4) or out of bounds",
                src.bytes, dst.bytes
            )));
        }
        if !fits(dst, dst_offset) || std::ptr::eq(src.buffer(), dst.buffer()) {
            return Err(Error::Wgpu(format!(
                "copy_range: the destination ({} bytes, offset {dst_offset}) cannot take {bytes} \
                 bytes, or is the source itself",
                dst.bytes
            )));
        }
        if bytes > 0 {
            self.with_encoder(|e| {
                e.copy_buffer_to_buffer(src.buffer(), src_offset, dst.buffer(), dst_offset, bytes)
            });
        }
        Ok(())
    }

    /// Submits everything recorded so far. Does not wait. Returns any wgpu error captured.
    pub fn flush(&self) -> Result<()> {
        let mut rec = self.recorder.borrow_mut();
        rec.pass = None;
        rec.recorded = 0;
        let Some(encoder) = rec.encoder.take() else {
            return self.take_uncaptured();
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let commands = encoder.finish();
        if !rec.params.is_empty() {
            self.queue.write_buffer(&rec.params_buffer, 0, &rec.params);
            rec.params.clear();
        }
        self.queue.submit([commands]);
        self.submits.set(self.submits.get() + 1);
        drop(rec);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Wgpu(e.to_string()));
        }
        self.take_uncaptured()
    }

    /// Submits and waits for the GPU to finish everything (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Wgpu(format!("waiting for the GPU: {e}")))?;
        Ok(())
    }

    /// Copies `bytes` bytes of `src` back to the CPU. The only place that waits for the GPU.
    pub fn read_back(&self, src: &Storage, bytes: u64) -> Result<Vec<u8>> {
        let padded = bytes.next_multiple_of(4).max(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back staging"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|e| e.copy_buffer_to_buffer(src.buffer(), 0, &staging, 0, padded));
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Wgpu(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Wgpu("read-back mapping was dropped".into()))?
            .map_err(|e| Error::Wgpu(format!("mapping the read-back buffer: {e}")))?;
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Wgpu(format!("reading the mapped buffer: {e}")))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
