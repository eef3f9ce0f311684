//! 01 — What the engine does for you: one compute dispatch in raw wgpu, the same through
//! glassgrad, and a gradient through `backward()` checked against finite differences.
//!
//! Run: `cargo run --release --example 01_raw_wgpu_and_autodiff`
//!
//! Expected output (from Mesa's lavapipe; the adapter line is your machine's, and the last digits of
//! the finite differences and of the max difference may differ on other drivers):
//! ```text
//! adapter: llvmpipe (LLVM 15.0.6, 256 bits) | Vulkan | Cpu | llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)
//! part 1, raw wgpu:   y = 2x + 1 = [-5.0, -3.0, -1.0, 1.0, 3.0, 5.0, 7.0, 9.0]
//! part 2, glassgrad:  y = 2x + 1 = [-5.0, -3.0, -1.0, 1.0, 3.0, 5.0, 7.0, 9.0]
//! part 3, L = Σ tanh(x)·w = -0.007797
//!   i        x        w    dL/dx (backward)   dL/dx (finite diff.)
//!   0   0.2662  -0.4290          -0.399955              -0.399944
//!   1   0.9831   0.5880           0.253340               0.253348
//!   2   1.8840  -0.1917          -0.016922              -0.016923
//!   3  -0.2226   0.2108           0.200732               0.200728
//!   4  -0.2229  -0.0901          -0.085789              -0.085787
//!   5   1.0516   0.0602           0.023331               0.023331
//!   6   1.5094  -0.1281          -0.022752              -0.022753
//!   7   0.0923  -0.6659          -0.660293              -0.660272
//! max |backward − finite difference| = 2.1e-5
//! ```

use glassgrad::cpu::Rng;
use glassgrad::{Gpu, Result, Tensor};

/// The kernel of part 1: one invocation per number, 64 invocations per workgroup.
const SHADER: &str = r#"
@group(0) @binding(0) var<storage, read> x: array<f32>;        // (n)
@group(0) @binding(1) var<storage, read_write> y: array<f32>;  // (n)

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&y)) { return; }   // the last workgroup may run past the end
    y[i] = 2.0 * x[i] + 1.0;
}
"#;

/// Part 1: every step of one dispatch, by hand.
fn raw_wgpu(x: &[f32]) -> Vec<f32> {
    use wgpu::util::DeviceExt;
    pollster::block_on(async {
        // 1. The instance: the entry point to every backend (Vulkan, Metal, DX12, GL) compiled in.
        //    `_from_env` honours WGPU_BACKEND=vulkan|metal|dx12|gl.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        // 2. The adapter: one physical GPU (or a CPU driver such as lavapipe) on one backend.
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
            .expect("no GPU adapter");
        // 3. The device (our logical connection: creates objects) and its queue (runs commands).
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("example device"),
                ..Default::default()
            })
            .await
            .expect("no device");
        let bytes = std::mem::size_of_val(x) as u64;
        // 4. Buffers. `x` is uploaded at creation; `y` is written by the shader; `staging` is the
        //    only kind the CPU may map, so `y` is copied into it at the end.
        let x_buf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("x"),
            contents: bytemuck::cast_slice(x),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let y_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("y"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // 5. The shader module: WGSL, translated by naga to the backend's language (SPIR-V here).
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("y = 2x + 1"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        // 6. The pipeline: the compiled entry point. `layout: None` derives the bind group layout
        //    from the shader (glassgrad writes it out instead, from each kernel's reads/writes).
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("y = 2x + 1"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        // 7. The bind group: which buffer goes to which @binding.
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("x, y"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: x_buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: y_buf.as_entire_binding() },
            ],
        });
        // 8. The encoder records commands; nothing runs yet.
        let mut encoder = device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("example") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("example"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            // 9. The dispatch: ⌈8 / 64⌉ = 1 workgroup of 64 invocations; 56 of them return early.
            pass.dispatch_workgroups((x.len() as u32).div_ceil(64), 1, 1);
        }
        // 10. The copy y → staging, recorded after the pass, so it sees the shader's writes.
        encoder.copy_buffer_to_buffer(&y_buf, 0, &staging, 0, bytes);
        // Submitting hands the commands to the GPU; this call does not wait.
        queue.submit([encoder.finish()]);
        // 11. Map: ask for CPU access, then wait until the GPU is done and the mapping is ready.
        staging.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map failed"));
        device.poll(wgpu::PollType::wait_indefinitely()).expect("poll failed");
        // 12. Read the mapped bytes as f32.
        let view = staging.slice(..).get_mapped_range().expect("mapped range");
        let y = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        y
    })
}

fn main() -> Result<()> {
    let gpu = Gpu::shared()?;
    println!("adapter: {}", gpu.describe());
    let x: Vec<f32> = (0..8).map(|i| i as f32 - 3.0).collect(); // (8) = [-3 .. 4]

    // Part 1: 12 steps for one line of math.
    println!("part 1, raw wgpu:   y = 2x + 1 = {:?}", raw_wgpu(&x));

    // Part 2: the same through the engine. Each op records one dispatch of its kernel into one
    // open command encoder; `to_vec` submits, waits, and reads back.
    let xt = Tensor::from_f32(&gpu, &x, &[8])?; // (8)
    let one = Tensor::full(&gpu, &[8], 1.0)?; // (8)
    let y = xt.scale(2.0)?.add(&one)?; // (8)
    println!("part 2, glassgrad:  y = 2x + 1 = {:?}", y.to_vec()?);

    // Part 3: L = Σᵢ tanh(xᵢ)·wᵢ, so dL/dxᵢ = (1 − tanh²xᵢ)·wᵢ. backward() gets it by running each
    // op's backward in reverse; we check it against (L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h.
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..8).map(|_| rng.range(-2.0, 2.0) as f32).collect(); // (8)
    let w: Vec<f32> = (0..8).map(|_| rng.range(-1.0, 1.0) as f32).collect(); // (8)
    let wt = Tensor::from_f32(&gpu, &w, &[8])?; // (8), a constant: no gradient
    let loss = |x: &[f32]| -> Result<f32> {
        let _no_graph = glassgrad::autograd::no_grad();
        Tensor::from_f32(&gpu, x, &[8])?.tanh()?.mul(&wt)?.sum_all()?.item()
    };
    let xp = Tensor::parameter(&gpu, &x, &[8], true)?; // (8), a leaf that wants dL/dx
    let l = xp.tanh()?.mul(&wt)?.sum_all()?; // (1)
    l.backward()?;
    let grad = xp.grad().expect("x requires grad").to_vec()?; // (8)
    // f32 central differences: h = 1e-2 balances truncation (~h²/6·|f'''|) against rounding
    // (~ε·|L|/h); both are near 1e-5 here.
    let h = 1e-2f32;
    println!("part 3, L = Σ tanh(x)·w = {:.6}", l.item()?);
    println!("  i        x        w    dL/dx (backward)   dL/dx (finite diff.)");
    let mut max_diff = 0f32;
    for i in 0..8 {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += h;
        minus[i] -= h;
        let fd = (loss(&plus)? - loss(&minus)?) / (2.0 * h);
        max_diff = max_diff.max((fd - grad[i]).abs());
        println!("  {i}  {:>7.4}  {:>7.4}  {:>17.6}  {:>21.6}", x[i], w[i], grad[i], fd);
    }
    println!("max |backward − finite difference| = {max_diff:.1e}");
    assert!(max_diff < 1e-3, "the gradient does not match its finite difference");
    Ok(())
}
