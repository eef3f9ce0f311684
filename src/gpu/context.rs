//! The device handle. One `Gpu` is shared by every tensor made on it (`Rc<Gpu>`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::kernel::Recorder;
use super::memory::Pool;
use crate::error::{Error, Result};

/// What to install when no adapter is found (printed by the error).
const NO_ADAPTER_HELP: &str = "wgpu found no GPU adapter. Install a GPU driver (Vulkan, Metal or DX12). \
On headless Linux install Mesa's lavapipe (a Vulkan driver that runs on the CPU); on Debian 12:\n\
  src=/etc/apt/sources.list.d/debian.sources\n\
  awk 'BEGIN{RS=\"\";ORS=\"\\n\"} NR==1' \"$src\" | sed 's/^Suites:.*/Suites: bookworm-backports/' > /etc/apt/sources.list.d/backports.sources\n\
  apt-get update && apt-get install -y -t bookworm-backports mesa-vulkan-drivers libvulkan1\n\
(on Ubuntu/other Debian: apt-get install mesa-vulkan-drivers libvulkan1). \
WGPU_BACKEND=vulkan|metal|dx12|gl and WGPU_ADAPTER_NAME=<substring> choose among several.";

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::Adapter,
    pub info: wgpu::AdapterInfo,
    /// The limits we requested: the adapter's own, not the WebGPU defaults.
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// `GLASSGRAD_DEBUG` = 1 prints ops and shapes, 2 adds dispatch sizes, 3 shader sources.
    pub debug: u8,
    /// Shaders built with wgpu's runtime checks (see [`checked_from_env`]); set_checked_shaders.
    checked: Cell<bool>,
    pub(crate) pool: RefCell<Pool>,
    pub(crate) recorder: RefCell<Recorder>,
    pub(crate) pipelines: RefCell<super::kernel::PipelineCache>,
    /// Errors wgpu reported outside any error scope; turned into `Err` at the next flush.
    pub(crate) uncaptured: Arc<Mutex<Vec<String>>>,
    /// Counts, for reports and tests: dispatches recorded and submits made since creation.
    pub dispatches: Cell<u64>,
    pub submits: Cell<u64>,
    /// `GLASSGRAD_PROFILE=1`: per-kernel (calls, seconds), each dispatch timed alone.
    pub(crate) profile: RefCell<Option<std::collections::BTreeMap<&'static str, (u64, f64)>>>,
}

impl Gpu {
    /// Picks an adapter (honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`) and creates the device
    /// with the adapter's own limits.
    pub fn new() -> Result<Rc<Gpu>> {
        pollster::block_on(Self::new_async())
    }

    async fn new_async() -> Result<Rc<Gpu>> {
        check_backend_env()?;
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(want) => {
                let want = want.to_lowercase();
                let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| {
                        Error::NoAdapter(format!(
                            "WGPU_ADAPTER_NAME={want} matches none of {names:?}"
                        ))
                    })?
            }
            Err(_) => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(format!("{e}. {NO_ADAPTER_HELP}")))?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Optional features we know how to use; each has a portable fallback.
        let wanted =
            wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("glassgrad device"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| {
                Error::NoAdapter(format!("adapter {} refused a device: {e}", info.name))
            })?;
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock().unwrap().push(e.to_string());
        }));
        let debug = std::env::var("GLASSGRAD_DEBUG").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let recorder = Recorder::new(&device, &limits);
        Ok(Rc::new(Gpu {
            device,
            queue,
            adapter,
            info,
            limits,
            features,
            debug,
            checked: Cell::new(checked_from_env(
                std::env::var("GLASSGRAD_CHECKED").ok().as_deref(),
            )),
            pool: RefCell::new(Pool::default()),
            recorder: RefCell::new(recorder),
            pipelines: RefCell::new(Default::default()),
            uncaptured,
            dispatches: Cell::new(0),
            submits: Cell::new(0),
            profile: RefCell::new(
                std::env::var("GLASSGRAD_PROFILE").is_ok_and(|v| v == "1").then(Default::default),
            ),
        }))
    }

    /// One line naming the adapter: `llvmpipe (LLVM 15.0.6, 256 bits) | Vulkan | Cpu | Mesa 25.0.7`.
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} | {:?} | {:?} | {} {}",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        )
    }

    /// Whether kernels are built with wgpu's runtime checks (clamped indices, guarded integer
    /// division, bounded loops) instead of trusted and unchecked.
    pub fn checked_shaders(&self) -> bool {
        self.checked.get()
    }

    /// Switches the runtime checks for kernels built from now on; already built ones are
    /// dropped so that every kernel is rebuilt in the new mode.
    pub fn set_checked_shaders(&self, on: bool) {
        if self.checked.replace(on) != on {
            *self.pipelines.borrow_mut() = Default::default();
        }
    }

    /// A CPU driver (lavapipe, WARP, SwiftShader) prefers kernels without workgroup memory.
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Errors wgpu reported since the last check, as one `Err`.
    pub(crate) fn take_uncaptured(&self) -> Result<()> {
        let mut errs = self.uncaptured.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("; ");
        errs.clear();
        Err(Error::Wgpu(msg))
    }
}

/// The names wgpu's `WGPU_BACKEND` understands (`Backends::from_comma_list`); wgpu skips any other
/// silently, which would end in the misleading "install a GPU driver" text.
const BACKEND_NAMES: &[&str] =
    &["vulkan", "vk", "dx12", "d3d12", "metal", "mtl", "opengl", "gles", "gl", "webgpu", "noop"];

fn check_backend_env() -> Result<()> {
    let Ok(value) = std::env::var("WGPU_BACKEND") else { return Ok(()) };
    for name in value.split(',') {
        let name = name.trim().to_lowercase();
        if !BACKEND_NAMES.contains(&name.as_str()) {
            return Err(Error::NoAdapter(format!(
                "WGPU_BACKEND={value}: unknown backend {name:?}; valid names (comma-separated): {}",
                BACKEND_NAMES.join(", ")
            )));
        }
    }
    Ok(())
}

/// `GLASSGRAD_CHECKED`: "1" builds shaders with wgpu's runtime checks, "0" without; unset (or
/// anything else), checked in debug builds and unchecked in release builds.
pub fn checked_from_env(value: Option<&str>) -> bool {
    match value {
        Some("1") => true,
        Some("0") => false,
        _ => cfg!(debug_assertions),
    }
}

thread_local! {
    static SHARED: RefCell<Option<Rc<Gpu>>> = const { RefCell::new(None) };
}

impl Gpu {
    /// The calling thread's shared `Gpu`, created on first use (tests and examples use it so that
    /// pipelines are compiled once per thread).
    pub fn shared() -> Result<Rc<Gpu>> {
        SHARED.with(|cell| {
            if let Some(gpu) = cell.borrow().as_ref() {
                return Ok(gpu.clone());
            }
            let gpu = Gpu::new()?;
            *cell.borrow_mut() = Some(gpu.clone());
            Ok(gpu)
        })
    }
}
