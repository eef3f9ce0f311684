//! Bottleneck (Houlsby) adapters, serial after attn.c_proj and mlp.c_proj. PEFT has none, so no
//! reference file: the checks are that the adapter starts as the base (W_up = 0), that exactly
//! its tensors train (after one step W_up ≠ 0, so W_down gets a gradient too), a directional
//! finite difference, the file round trip, and bad input.

use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::bottleneck::{BottleneckConfig, inject};
use glassgrad::peft::files;

use crate::gpu::harness::{grad_options, temp_dir};
use crate::peft_support::*;

fn adapted() -> (Gpt2, Box<dyn Adapter>) {
    let mut model = base();
    let config = BottleneckConfig { bottleneck_size: 4, ..BottleneckConfig::default() };
    let adapter = inject(&mut model, &config, 2).unwrap();
    // 2 blocks × 2 layers × (4·24 + 4 + 24·4 + 24).
    assert_eq!(model.num_trainable_parameters(), 4 * 220);
    (model, Box::new(adapter))
}

#[test]
fn bottleneck_starts_at_the_base_and_trains_only_itself() {
    let (model, adapter) = adapted();
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert_eq!(got, want, "W_up = 0, b_up = 0: the base exactly");
    // Move W_up off zero (as a first step would), then every adapter tensor gets a gradient.
    for (key, t) in adapter.named_parameters(&model) {
        if key.contains("adapter_up") {
            let v: Vec<f32> = (0..t.numel()).map(|j| 0.05 * ((j % 7) as f32 - 3.0)).collect();
            set(&t, &v);
        }
    }
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &grad_options()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    only_the_adapter_trains(&model, adapter.as_ref());
    directional_derivative(&model, adapter.as_ref(), &grad_options());
}

#[test]
fn bottleneck_files_round_trip() {
    let (model, adapter) = adapted();
    for (i, (_, t)) in adapter.named_parameters(&model).iter().enumerate() {
        let v: Vec<f32> = (0..t.numel()).map(|j| 0.01 * ((i + j) % 11) as f32 - 0.05).collect();
        set(t, &v);
    }
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("bottleneck-roundtrip");
    files::save(&model, adapter.as_ref(), &dir).unwrap();
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert_eq!(got, want, "the saved tensors are the adapter's");
    let dir2 = temp_dir("bottleneck-roundtrip2");
    files::save(&again, loaded.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
    let e = error_of(loaded.merge_and_unload(&mut again));
    assert!(e.contains("cannot be merged"), "{e}");
}

#[test]
fn bottleneck_bad_input_is_named() {
    let mut model = base();
    let zero = BottleneckConfig { bottleneck_size: 0, ..BottleneckConfig::default() };
    assert!(error_of(inject(&mut model, &zero, 0)).contains("bottleneck_size"));
    let bad =
        BottleneckConfig { target_modules: vec!["q_proj".into()], ..BottleneckConfig::default() };
    assert!(error_of(inject(&mut model, &bad, 0)).contains("q_proj"));
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "nothing changed");
}
