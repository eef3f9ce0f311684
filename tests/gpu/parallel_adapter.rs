//! Parallel bottleneck adapters (He et al.) beside attention and the MLP, and the MAM adapter:
//! prefix tuning + a scaled parallel adapter beside the MLP, as a `Composite` of two methods.
//! No PEFT reference exists for either; the checks are that W_up = 0 starts the model at the base
//! (MAM: at prefix tuning alone), that exactly the parts' tensors train with nonzero gradients,
//! a directional finite difference, the file round trips, and the composition errors.

use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::bottleneck::{BottleneckConfig, inject};
use glassgrad::peft::composite::{Composite, compose};
use glassgrad::peft::prefix_tuning::{self, PrefixTuningConfig};
use glassgrad::peft::{Adapter, LoraConfig, files, ia3, lora, prompt_tuning};

use crate::gpu::harness::temp_dir;
use crate::peft_support::*;

fn both_sublayers(scaling: f64) -> BottleneckConfig {
    BottleneckConfig {
        target_modules: vec!["attn".into(), "mlp".into()],
        ..BottleneckConfig::parallel(4, scaling)
    }
}

/// W_up off zero (as a first step would move it), so W_down gets a gradient too.
fn move_up(model: &Gpt2, adapter: &dyn Adapter) {
    for (key, t) in adapter.named_parameters(model) {
        if key.contains("adapter_up") {
            let v: Vec<f32> = (0..t.numel()).map(|j| 0.05 * ((j % 7) as f32 - 3.0)).collect();
            set(&t, &v);
        }
    }
}

fn backward(model: &Gpt2) {
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
}

#[test]
fn parallel_adapter_starts_at_the_base_and_trains_only_itself() {
    let mut model = base();
    let adapter = inject(&mut model, &both_sublayers(2.0), 3).unwrap();
    // 2 blocks × 2 sublayers × (4·24 + 4 + 24·4 + 24).
    assert_eq!(model.num_trainable_parameters(), 4 * 220);
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&base(), &ForwardOptions::default());
    assert_eq!(got, want, "W_up = 0, b_up = 0: the base exactly");
    move_up(&model, &adapter);
    backward(&model);
    only_the_adapter_trains(&model, &adapter);
    directional_derivative(&model, &adapter, &ForwardOptions::default());
    // Under gradient checkpointing the adapters are recomputed with their blocks.
    let opts = ForwardOptions { checkpoint_every: Some(1), ..Default::default() };
    directional_derivative(&model, &adapter, &opts);
}

#[test]
fn parallel_adapter_scaling_scales_its_term() {
    let run = |s: f64| {
        let mut model = base();
        let adapter = inject(&mut model, &both_sublayers(s), 3).unwrap();
        move_up(&model, &adapter);
        logits_and_loss(&model, &ForwardOptions::default()).0
    };
    let b = logits_and_loss(&base(), &ForwardOptions::default()).0;
    let (one, four) = (run(1.0), run(4.0));
    let d1: f64 = one.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum();
    let d4: f64 = four.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum();
    println!("parallel adapter: |Δlogits| at s = 1: {d1:.4}, at s = 4: {d4:.4}");
    assert!(d1 > 1e-3 && d4 > 2.0 * d1, "s = 4 moves the logits more than s = 1");
}

#[test]
fn parallel_adapter_files_round_trip() {
    let mut model = base();
    let adapter = inject(&mut model, &both_sublayers(4.0), 3).unwrap();
    move_up(&model, &adapter);
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("parallel-roundtrip");
    files::save(&model, &adapter, &dir).unwrap();
    let config = std::fs::read_to_string(dir.join(files::CONFIG_FILE)).unwrap();
    assert!(config.contains("\"placement\": \"parallel\"") && config.contains("\"scaling\": 4.0"));
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert_eq!(got, want);
    let dir2 = temp_dir("parallel-roundtrip2");
    files::save(&again, loaded.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
}

/// He et al.'s MAM adapter: prefix tuning and a parallel adapter beside the MLP, scaled by 4.
fn mam(model: &mut Gpt2) -> Composite {
    let prefix = PrefixTuningConfig { num_virtual_tokens: 3, ..Default::default() };
    let first = Box::new(prefix_tuning::inject(model, &prefix, 5).unwrap());
    compose(model, first, "parallel adapter", |m| {
        Ok(Box::new(inject(m, &BottleneckConfig::parallel(4, 4.0), 6)?))
    })
    .unwrap()
}

#[test]
fn mam_starts_at_prefix_tuning_and_trains_both_parts() {
    let mut model = base();
    let composite = mam(&mut model);
    // Prefix: 3 × 2 layers × 2 × 24; parallel adapters: 2 blocks × 220.
    assert_eq!(model.num_trainable_parameters(), 288 + 440);
    let mut alone = base();
    let prefix = PrefixTuningConfig { num_virtual_tokens: 3, ..Default::default() };
    prefix_tuning::inject(&mut alone, &prefix, 5).unwrap();
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&alone, &ForwardOptions::default());
    assert_eq!(got, want, "W_up = 0: the prefix-tuned model exactly");
    move_up(&model, &composite);
    backward(&model);
    only_the_adapter_trains(&model, &composite);
    directional_derivative(&model, &composite, &ForwardOptions::default());
}

#[test]
fn mam_files_round_trip_in_one_directory() {
    let mut model = base();
    let composite = mam(&mut model);
    move_up(&model, &composite);
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("mam-roundtrip");
    files::save(&model, &composite, &dir).unwrap();
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    assert_eq!(loaded.peft_type(), "COMPOSITE");
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert_eq!(got, want, "both parts loaded");
    assert_eq!(again.num_trainable_parameters(), 288 + 440, "both parts train again");
    let dir2 = temp_dir("mam-roundtrip2");
    files::save(&again, loaded.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
    // A part's tensor missing from the file is named.
    let text = std::fs::read_to_string(dir.join(files::CONFIG_FILE)).unwrap();
    std::fs::write(dir.join(files::CONFIG_FILE), text.replace("prompt_embeddings", "nope"))
        .unwrap();
    let e = error_of(files::load(&mut base(), &dir));
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn methods_that_share_a_slot_do_not_compose() {
    // Two input methods.
    let mut model = base();
    let prompt = prompt_tuning::PromptTuningConfig { num_virtual_tokens: 2, ..Default::default() };
    let first = Box::new(prompt_tuning::inject(&mut model, &prompt, 1).unwrap());
    let e = error_of(compose(&mut model, first, "prefix tuning", |m| {
        let c = PrefixTuningConfig { num_virtual_tokens: 2, ..Default::default() };
        Ok(Box::new(prefix_tuning::inject(m, &c, 1)?))
    }));
    assert!(e.contains("PROMPT_TUNING + prefix tuning do not compose"), "{e}");
    assert!(e.contains("input adapter"), "{e}");
    // Two methods on one Linear (LoRA and IA3 on c_attn).
    let mut model = base();
    let first = Box::new(lora::inject(&mut model, &LoraConfig::default(), 1).unwrap());
    let e = error_of(compose(&mut model, first, "IA3", |m| {
        Ok(Box::new(ia3::inject(m, &ia3::Ia3Config::default(), 1)?))
    }));
    assert!(e.contains("do not compose") && e.contains("c_attn already carries"), "{e}");
    // Two parallel adapters beside one MLP.
    let mut model = base();
    let first = Box::new(inject(&mut model, &BottleneckConfig::parallel(4, 1.0), 1).unwrap());
    let e = error_of(compose(&mut model, first, "parallel adapter", |m| {
        Ok(Box::new(inject(m, &BottleneckConfig::parallel(4, 1.0), 2)?))
    }));
    assert!(e.contains("already has an adapter beside it"), "{e}");
    // Methods in different slots do compose: LoRA on c_attn + a parallel adapter.
    let mut model = base();
    let first = Box::new(lora::inject(&mut model, &LoraConfig::default(), 1).unwrap());
    let both = compose(&mut model, first, "parallel adapter", |m| {
        Ok(Box::new(inject(m, &BottleneckConfig::parallel(4, 1.0), 2)?))
    })
    .unwrap();
    let n: usize = both.named_parameters(&model).iter().map(|(_, t)| t.numel()).sum();
    assert_eq!(model.num_trainable_parameters(), n);
}

#[test]
fn parallel_adapter_bad_input_is_named() {
    let mut model = base();
    let bad = BottleneckConfig { target_modules: vec!["c_fc".into()], ..both_sublayers(1.0) };
    let e = error_of(inject(&mut model, &bad, 0));
    assert!(e.contains("\"c_fc\" is not a sublayer"), "{e}");
    let text = r#"{"peft_type": "BOTTLENECK", "bottleneck_size": 4, "scaling": 2.0}"#;
    let e = error_of(BottleneckConfig::from_json_str(text, "cfg"));
    assert!(e.contains("parallel adapters only"), "{e}");
    let text = r#"{"peft_type": "BOTTLENECK", "placement": "sideways"}"#;
    assert!(error_of(BottleneckConfig::from_json_str(text, "cfg")).contains("sideways"));
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "nothing changed");
}
