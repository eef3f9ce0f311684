//! The runtime: adapter report, memory accounting, frozen parameters, bad input.

use glassgrad::gpu::Kernel;
use glassgrad::{Category, Error, Tensor, autograd};

use crate::gpu::harness::gpu;

#[test]
fn adapter_is_reported() {
    let gpu = gpu();
    println!("adapter: {}", gpu.describe());
    assert!(!gpu.info.name.is_empty());
    // We asked for the adapter's own limits, not the WebGPU defaults (128 MiB on lavapipe).
    assert_eq!(
        gpu.limits.max_storage_buffer_binding_size,
        gpu.adapter.limits().max_storage_buffer_binding_size
    );
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
fn a_tensor_over_the_binding_limit_is_an_error_naming_the_limit() {
    let gpu = gpu();
    let max = gpu.limits.max_storage_buffer_binding_size as usize;
    let e = Tensor::empty(
        &gpu,
        &[max / 4 + 1],
        glassgrad::DType::F32,
        Category::Activations,
        "test_alloc",
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::Limit { .. }) && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
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
