//! BitFit: only biases train. PEFT has no BitFit, so there is no reference file: the checks are
//! that exactly the biases train and get gradients, that a bias gradient equals the full model's
//! gradient of that bias (freezing changes nothing upstream), that the file round-trips and
//! restores the trained values, and that a bad module name is named.

use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::bitfit::{BitFitConfig, inject};
use glassgrad::peft::files;

use crate::gpu::harness::{grad_options, temp_dir};
use crate::peft_support::*;

fn backward(model: &Gpt2) {
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &grad_options()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
}

#[test]
fn bitfit_trains_exactly_the_biases_with_the_full_models_gradients() {
    let full = base();
    backward(&full);
    let mut model = base();
    let bitfit = inject(&mut model, &BitFitConfig::default()).unwrap();
    // 2 blocks × (24 + 72 + 24 + 24 + 96 + 24) + ln_f 24.
    assert_eq!(model.num_trainable_parameters(), 2 * 264 + 24);
    backward(&model);
    only_the_adapter_trains(&model, &bitfit);
    for (key, t) in bitfit.named_parameters(&model) {
        let name = key.strip_prefix("base_model.model.").unwrap();
        let want = full.parameter(name).unwrap().grad().unwrap().to_vec().unwrap();
        // The same kernels on the same values; only the frozen weights skip their gradient.
        let e = rel_err(&t.grad().unwrap().to_vec().unwrap(), &want);
        assert!(e <= 1e-6, "{key}: rel err {e:.3e} against the full model's gradient");
    }
    directional_derivative(&model, &bitfit, &grad_options());
}

#[test]
fn bitfit_files_round_trip_and_restore_the_biases() {
    let mut model = base();
    let config =
        BitFitConfig { bias_modules: vec!["c_attn".into(), "ln_f".into()], ..Default::default() };
    let bitfit = inject(&mut model, &config).unwrap();
    assert_eq!(model.num_trainable_parameters(), 2 * 72 + 24);
    for (i, (_, t)) in bitfit.named_parameters(&model).iter().enumerate() {
        let v: Vec<f32> = (0..t.numel()).map(|j| 0.01 * (i * 7 + j) as f32).collect();
        set(t, &v);
    }
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("bitfit-roundtrip");
    files::save(&model, &bitfit, &dir).unwrap();
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    assert_eq!(loaded.peft_type(), "BITFIT");
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert_eq!(got, want, "the saved biases are the trained ones");
    let dir2 = temp_dir("bitfit-roundtrip2");
    files::save(&again, loaded.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
}

#[test]
fn bitfit_bad_module_is_named() {
    let mut model = base();
    let config = BitFitConfig { bias_modules: vec!["q_proj".into()], ..Default::default() };
    let e = error_of(inject(&mut model, &config));
    assert!(e.contains("q_proj") && e.contains("ln_1"), "{e}");
}
