//! The runtime: adapter limits, checked shaders, memory accounting, frozen parameters, bad input.

use glassgrad::gpu::{Kernel, checked_from_env};
use glassgrad::{Category, Error, Gpu, Tensor, autograd};

use crate::gpu::harness::gpu;

#[test]
fn the_device_gets_the_adapters_limits_not_the_webgpu_defaults() {
    let gpu = gpu();
    println!("adapter: {}", gpu.describe());
    // The defaults are the WebGPU minimum (256 invocations per workgroup, 256 MiB buffers, where
    // lavapipe has 1024 and 2 GiB): the device must have been created with the adapter's own.
    assert_eq!(gpu.device.limits(), gpu.adapter.limits(), "{}", gpu.describe());
    assert_eq!(gpu.limits, gpu.device.limits());
}

/// GLASSGRAD_CHECKED=1 (the default in debug builds) builds kernels with wgpu's runtime checks.
/// Seen from a kernel: an index past a fixed-size array reads its last element, and an integer
/// division by zero gives the dividend (WGSL's defined results); unchecked, both are undefined
/// (on lavapipe, unchecked: a[9] happened to read 4.0 as well, and 7 / 0 gave 4294967295).
#[test]
fn checked_shaders_clamp_indices_and_guard_division() {
    static PROBE: Kernel = Kernel {
        name: "test_checked_probe",
        source: "struct Params { i: u32, d: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1) fn main() {
    var a = array<f32, 4>(1.0, 2.0, 3.0, 4.0);
    y[0] = a[p.i];
    y[1] = f32(7u / p.d);
}",
        entry: "main",
        reads: 0,
        writes: 1,
    };
    // The switch as read from the environment, on the shared device and by its parser.
    let env = std::env::var("GLASSGRAD_CHECKED").ok();
    assert_eq!(gpu().checked_shaders(), checked_from_env(env.as_deref()));
    assert!(checked_from_env(Some("1")) && !checked_from_env(Some("0")));
    assert_eq!(checked_from_env(None), cfg!(debug_assertions));
    // A device of its own: turning the switch rebuilds every kernel made on it.
    let gpu = Gpu::new().unwrap();
    gpu.set_checked_shaders(true);
    let y = Tensor::zeros(&gpu, &[2]).unwrap();
    gpu.dispatch(&PROBE, &[9u32, 0, 0, 0], &[], &[y.storage()], [1, 1, 1]).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![4.0, 7.0], "a[9] of a[0..4] and 7 / 0, checked");
}

#[test]
fn frozen_parameters_get_no_gradient_and_trainable_ones_do() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[1.0, 2.0, 3.0], &[3], true).unwrap();
    let frozen = Tensor::parameter(&gpu, &[0.5, -1.0, 4.0], &[3], false).unwrap();
    let x = Tensor::from_f32(&gpu, &[1.0, -2.0, 0.5, 3.0, 1.0, -1.0], &[2, 3]).unwrap();
    // L = Σ tanh(x·w + frozen): dL/dw ≠ 0, frozen gets nothing.
    let loss = x.mul(&w).unwrap().add(&frozen).unwrap().tanh().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let g = w.grad().expect("trainable parameter has a gradient").to_vec().unwrap();
    assert!(g.iter().all(|v| *v != 0.0), "every element of dL/dw is nonzero: {g:?}");
    assert!(frozen.grad().is_none(), "a frozen parameter has no gradient buffer");
    assert!(x.grad().is_none());
}

#[test]
fn no_grad_records_nothing_and_detach_cuts_the_graph() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[1.0, 2.0], &[2], true).unwrap();
    {
        let _g = autograd::no_grad();
        assert!(!w.exp().unwrap().requires_grad());
    }
    assert!(w.exp().unwrap().requires_grad());
    assert!(!w.exp().unwrap().detach().requires_grad());
    let err = w.detach().sum_all().unwrap().backward().unwrap_err();
    assert!(matches!(err, Error::Autograd(_)), "{err}");
}

#[test]
fn gradients_accumulate_across_uses_and_calls() {
    let gpu = gpu();
    let w = Tensor::parameter(&gpu, &[3.0], &[1], true).unwrap();
    // L = w·w + w  → dL/dw = 2w + 1 = 7; twice → 14.
    for _ in 0..2 {
        w.mul(&w).unwrap().add(&w).unwrap().sum_all().unwrap().backward().unwrap();
    }
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![14.0]);
}

#[test]
fn memory_is_counted_by_category_with_peaks() {
    let gpu = gpu();
    let before = gpu.memory();
    let p = Tensor::parameter(&gpu, &vec![1.0; 1000], &[1000], true).unwrap();
    let mid = gpu.memory();
    assert_eq!(mid.live(Category::Parameters) - before.live(Category::Parameters), 4000);
    let y = p.scale(2.0).unwrap().sum_all().unwrap();
    y.backward().unwrap();
    let after = gpu.memory();
    assert!(after.live(Category::Gradients) >= before.live(Category::Gradients) + 4000);
    assert!(after.total_peak >= after.total_live);
    drop((p, y));
    println!("{}", gpu.memory_report());
}

#[test]
fn shape_mismatch_is_an_error_naming_op_and_shapes() {
    let gpu = gpu();
    let a = Tensor::zeros(&gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(&gpu, &[2]).unwrap();
    let e = a.add(&b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[2]"), "{e}");
    let e = a.reshape(&[4]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("[4]"), "{e}");
}

#[test]
fn a_tensor_over_the_buffer_limit_is_an_error_naming_the_limit() {
    // A buffer may exceed one binding (ops bind it in windows, tests/gpu/big.rs), not this.
    let gpu = gpu();
    let max = gpu.limits.max_buffer_size as usize;
    let e = Tensor::empty(
        &gpu,
        &[max / 4 + 1],
        glassgrad::DType::F32,
        Category::Activations,
        "test_alloc",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Limit { .. }) && msg.contains("max_buffer_size"), "{msg}");
}

#[test]
fn too_many_workgroups_is_an_error_naming_the_limit() {
    let gpu = gpu();
    static K: Kernel = Kernel {
        name: "test_copy",
        source: "@group(0) @binding(0) var<uniform> n: u32;\n@group(0) @binding(1) var<storage, read_write> y: array<f32>;\n@compute @workgroup_size(1) fn main() { y[0] = f32(n); }",
        entry: "main",
        reads: 0,
        writes: 1,
    };
    let y = Tensor::zeros(&gpu, &[1]).unwrap();
    let e = gpu.dispatch(&K, &0u32, &[], &[y.storage()], [70_000, 1, 1]).unwrap_err().to_string();
    assert!(e.contains("65535") && e.contains("test_copy"), "{e}");
}

#[test]
fn wgpu_validation_errors_are_returned_not_panics() {
    let gpu = gpu();
    static BAD: Kernel = Kernel {
        name: "test_bad_shader",
        source: "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }",
        entry: "main",
        reads: 0,
        writes: 1,
    };
    let y = Tensor::zeros(&gpu, &[1]).unwrap();
    let e = gpu.dispatch(&BAD, &0u32, &[], &[y.storage()], [1, 1, 1]).unwrap_err();
    assert!(matches!(e, Error::Wgpu(_)), "{e}");
    assert!(e.to_string().contains("test_bad_shader"), "{e}");
    // The device still works afterwards.
    assert_eq!(Tensor::full(&gpu, &[2], 3.0).unwrap().to_vec().unwrap(), vec![3.0, 3.0]);
}
