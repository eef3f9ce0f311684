//! IA3 against PEFT (tests/data/ia3_ref, scripts/make_methods_reference.py): targets c_attn and
//! mlp.c_fc (output scales) and mlp.c_proj (feed-forward: input scale), l ≠ 1. Logits, loss and
//! every ia3_l gradient; the files both ways; merge; a finite difference; bad configs.

use glassgrad::model::gpt2::ForwardOptions;
use glassgrad::peft::Adapter;
use glassgrad::peft::ia3::{Ia3Config, inject};

use crate::gpu::harness::grad_options;
use crate::peft_support::*;

#[test]
fn ia3_matches_peft_logits_loss_and_gradients() {
    // f32 through 2 blocks on both sides, summed in other orders: a few ulps of the largest
    // value; 1e-4 of the scale leaves room for that and catches any wrong or missing term.
    matches_peft("ia3", "ia3", 1e-4);
}

#[test]
fn ia3_files_round_trip_bit_identically() {
    round_trips("ia3", "ia3");
}

#[test]
fn ia3_gradients_agree_with_a_finite_difference() {
    let (model, adapter) = matches_peft("ia3", "ia3", 1e-4);
    directional_derivative(&model, adapter.as_ref(), &grad_options());
}

#[test]
fn ia3_merges_into_the_weights() {
    let mut model = base();
    let adapter =
        glassgrad::peft::files::load(&mut model, case_dir("ia3", "ia3").join("adapter")).unwrap();
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (plain, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert!(rel_err(&plain, &want) > 1e-2, "the adapter has an effect");
    assert_eq!(adapter.merge_and_unload(&mut model).unwrap(), 6);
    assert!(model.named_parameters().iter().all(|(n, _)| !n.contains("ia3_l")));
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    // W·l and b·l rounded once to f32 instead of scaling the activations: 1e-5 of the scale.
    let e = rel_err(&got, &want);
    println!("merged vs adapter logits: rel err {e:.2e}");
    assert!(e <= 1e-5, "merged logits differ: {e:.3e}");
}

#[test]
fn fresh_ia3_starts_at_the_base_and_trains_only_its_vectors() {
    let mut model = base();
    let ia3 = inject(&mut model, &Ia3Config::default(), 1).unwrap();
    // PEFT's GPT-2 defaults: c_attn (72 outputs) and mlp.c_proj (96 inputs) in 2 layers.
    assert_eq!(model.num_trainable_parameters(), 2 * (72 + 96));
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert_eq!(got, want, "l = 1 is the base exactly");
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    glassgrad::model::gpt2::Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    only_the_adapter_trains(&model, &ia3);
    let json = ia3.config_json();
    let back = Ia3Config::from_json_str(&json, "ours").unwrap();
    assert_eq!(back.to_json_string(), json, "our config reads back as itself");
}

#[test]
fn ia3_bad_configs_are_named() {
    let mut model = base();
    let config = Ia3Config {
        target_modules: vec!["c_attn".into()],
        feedforward_modules: vec!["mlp.c_proj".into()],
        ..Ia3Config::default()
    };
    let e = error_of(inject(&mut model, &config, 0));
    assert!(e.contains("feedforward_modules") && e.contains("mlp.c_proj"), "{e}");
    let config = Ia3Config {
        target_modules: vec!["q_proj".into()],
        feedforward_modules: vec![],
        ..Ia3Config::default()
    };
    let e = error_of(inject(&mut model, &config, 0));
    assert!(e.contains("q_proj") && e.contains("matches no module"), "{e}");
    let text = std::fs::read_to_string(case_dir("ia3", "ia3").join("adapter/adapter_config.json"))
        .unwrap()
        .replace("\"modules_to_save\": null", "\"modules_to_save\": [\"ln_f\"]");
    let e = error_of(Ia3Config::from_json_str(&text, "edited"));
    assert!(e.contains("modules_to_save"), "{e}");
    assert!(model.num_trainable_parameters() == model.num_parameters(), "nothing changed");
}
