//! VeRA against PEFT (tests/data/vera_ref, scripts/make_methods_reference.py): r = 4 on c_attn,
//! both c_proj and c_fc, so the shared A (4, 96) and B (96, 4) are sliced differently per layer;
//! λ_b ≠ 0. The file holds PEFT's projections (save_projection), which we must use exactly.

use glassgrad::model::gpt2::ForwardOptions;
use glassgrad::peft::Adapter;
use glassgrad::peft::files;
use glassgrad::peft::vera::{VeraConfig, inject};

use crate::gpu::harness::{grad_options, temp_dir};
use crate::peft_support::*;

#[test]
fn vera_matches_peft_logits_loss_and_gradients() {
    // As for LoRA: f32 on both sides in other orders; 1e-4 of the scale.
    matches_peft("vera", "vera", 1e-4);
}

#[test]
fn vera_files_round_trip_bit_identically() {
    round_trips("vera", "vera");
}

#[test]
fn vera_gradients_agree_with_a_finite_difference() {
    let (model, adapter) = matches_peft("vera", "vera", 1e-4);
    directional_derivative(&model, adapter.as_ref(), &grad_options());
}

#[test]
fn vera_merges_into_the_weights() {
    let mut model = base();
    let adapter = files::load(&mut model, case_dir("vera", "vera").join("adapter")).unwrap();
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (plain, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert!(rel_err(&plain, &want) > 1e-2, "the adapter has an effect");
    assert_eq!(adapter.merge_and_unload(&mut model).unwrap(), 8);
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    // x·(W + ΔW) vs x·W + the VeRA term: one f32 rounding of W + ΔW; 1e-5 of the scale.
    let e = rel_err(&got, &want);
    println!("merged vs adapter logits: rel err {e:.2e}");
    assert!(e <= 1e-5, "merged logits differ: {e:.3e}");
}

#[test]
fn fresh_vera_starts_at_the_base_and_saves_its_projections() {
    let mut model = base();
    let config = VeraConfig {
        r: 8,
        target_modules: vec!["c_attn".into(), "c_fc".into()],
        ..VeraConfig::default()
    };
    let vera = inject(&mut model, &config, 1).unwrap();
    // Per layer R + out: (8 + 72) + (8 + 96), two layers.
    assert_eq!(model.num_trainable_parameters(), 2 * (8 + 72 + 8 + 96));
    assert_eq!(vera.vera_a.shape(), &[8, 24]);
    assert_eq!(vera.vera_b.shape(), &[96, 8]);
    // Kaiming-uniform bounds √(6/fan_in): A's fan_in 24, B's 8.
    let a = vera.vera_a.to_vec().unwrap();
    assert!(a.iter().all(|x| x.abs() <= (6f32 / 24.0).sqrt()) && a.iter().any(|x| x.abs() > 0.3));
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert_eq!(got, want, "λ_b = 0 is the base exactly");
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    glassgrad::model::gpt2::Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    // λ_d's gradient is λ_b-weighted, so zero at λ_b = 0: check λ_b's, then step λ_b away.
    for (key, t) in vera.named_parameters(&model) {
        if key.ends_with("lambda_b") {
            assert!(t.grad().unwrap().to_vec().unwrap().iter().any(|g| *g != 0.0), "{key}");
        }
    }
    let dir = temp_dir("vera-fresh");
    files::save(&model, &vera, &dir).unwrap();
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    let saved = loaded.tensors_to_save(&again).unwrap();
    let a_back = saved.iter().find(|(k, _)| k == "base_model.vera_A").unwrap().1.to_vec().unwrap();
    assert_eq!(a_back, a, "the projections travel with the file");
}

#[test]
fn vera_projections_that_do_not_cover_the_layers_are_refused() {
    // PEFT's file made for c_attn, c_proj, c_fc: A is (4, 96). Cut it to 24 columns and ask
    // for mlp.c_proj (96 inputs) too.
    let src = case_dir("vera", "vera").join("adapter");
    let dir = temp_dir("vera-narrow");
    std::fs::copy(src.join(files::CONFIG_FILE), dir.join(files::CONFIG_FILE)).unwrap();
    let file = glassgrad::io::TensorFile::read(src.join(files::WEIGHTS_FILE)).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for (k, t) in &file.tensors {
        let (shape, data) = file.f32(k).unwrap();
        let t = if k == "base_model.vera_A" {
            let cut: Vec<f32> = (0..4).flat_map(|r| data[r * 96..r * 96 + 24].to_vec()).collect();
            glassgrad::io::NamedTensor::from_f32(&[4, 24], &cut)
        } else {
            let _ = t;
            glassgrad::io::NamedTensor::from_f32(&shape, &data)
        };
        tensors.insert(k.clone(), t);
    }
    let bytes =
        glassgrad::io::safetensors::to_bytes(tensors.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
    std::fs::write(dir.join(files::WEIGHTS_FILE), bytes).unwrap();
    let mut model = base();
    let e = error_of(files::load(&mut model, &dir));
    assert!(e.contains("vera_A") && e.contains("[4, 24]") && e.contains("mlp.c_proj"), "{e}");
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "nothing changed");
    let e = error_of(inject(&mut model, &VeraConfig { r: 0, ..VeraConfig::default() }, 0));
    assert!(e.contains("r must be at least 1"), "{e}");
}
