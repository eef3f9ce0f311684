//! Prefix tuning against PEFT (tests/data/prefix_ref, scripts/make_methods_reference.py): Vt = 5
//! keys and values per layer, the real tokens' positions starting at Vt; and with the
//! reparameterization MLP (Vt = 4, hidden 16), whose own parameters' gradients are compared and
//! whose file holds only the table. Also: checkpointing gives the same gradients, generation
//! with the KV cache, and bad input.

use glassgrad::io::TensorFile;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::files;
use glassgrad::peft::prefix_tuning::{PrefixTuningConfig, inject};

use crate::gpu::harness::{grad_options, temp_dir};
use crate::peft_support::*;
use crate::prompt_tuning::generate_matches_the_uncached_forward;

#[test]
fn prefix_tuning_matches_peft_logits_loss_and_gradients() {
    // f32 on both sides in other summation orders; 1e-4 of the scale, as for LoRA.
    matches_peft("prefix", "prefix", 1e-4);
    projection_matches_peft();
}

/// The reparameterized case: our MLP with PEFT's weights (projection.safetensors) gives PEFT's
/// logits, loss and the gradients of the MLP's five tensors.
fn projection_matches_peft() -> (Gpt2, Box<dyn Adapter>) {
    let dir = case_dir("prefix", "prefix_projection");
    matches_peft_with("prefix", "prefix_projection", 1e-4, |model| {
        let config = PrefixTuningConfig {
            num_virtual_tokens: 4,
            prefix_projection: true,
            encoder_hidden_size: Some(16),
            ..PrefixTuningConfig::default()
        };
        let adapter = inject(model, &config, 0).unwrap();
        let weights = TensorFile::read(dir.join("projection.safetensors")).unwrap();
        for (name, t) in adapter.named_parameters(model) {
            let (shape, data) = weights.f32(&name).unwrap();
            assert_eq!(t.shape(), shape.as_slice(), "{name}");
            set(&t, &data);
        }
        Box::new(adapter)
    })
}

#[test]
fn peft_projection_file_loads_as_its_table_and_gives_peft_logits() {
    let dir = case_dir("prefix", "prefix_projection");
    let mut model = base();
    files::load(&mut model, dir.join("adapter")).unwrap();
    assert_eq!(model.num_trainable_parameters(), 4 * 2 * 2 * 24, "the table alone");
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let want = TensorFile::read(dir.join("expected.safetensors")).unwrap().f32("logits").unwrap().1;
    // The saved table is the MLP's output rounded once to f32: 1e-4 of the scale, as above.
    let e = rel_err(&got, &want);
    println!("prefix_projection file: logits rel err {e:.2e}");
    assert!(e <= 1e-4, "rel err {e:.3e}");
}

#[test]
fn prefix_tuning_files_round_trip_bit_identically() {
    round_trips("prefix", "prefix");
    // PEFT saved only the MLP's table; it loads as the plain table and saves the same bytes.
    round_trips("prefix", "prefix_projection");
}

#[test]
fn prefix_tuning_gradients_agree_with_a_finite_difference() {
    for (model, adapter) in [matches_peft("prefix", "prefix", 1e-4), projection_matches_peft()] {
        directional_derivative(&model, adapter.as_ref(), &grad_options());
    }
}

fn fresh_projection(model: &mut Gpt2) -> Box<dyn Adapter> {
    let config = PrefixTuningConfig {
        num_virtual_tokens: 3,
        prefix_projection: true,
        encoder_hidden_size: Some(8),
        ..PrefixTuningConfig::default()
    };
    Box::new(inject(model, &config, 5).unwrap())
}

#[test]
fn checkpointing_gives_the_gradients_of_no_checkpointing() {
    // The prefix keys/values are computed by the MLP in front of every checkpointed segment:
    // the segment must pass their gradient back (the classic trap with a frozen input).
    let grads = |every: Option<usize>| {
        let mut model = base();
        let adapter = fresh_projection(&mut model);
        let (ids, targets) = tokens();
        let opts = ForwardOptions { checkpoint_every: every, ..Default::default() };
        let out = model.forward(&ids, &opts).unwrap();
        Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
        only_the_adapter_trains(&model, adapter.as_ref());
        let named = adapter.named_parameters(&model);
        named.iter().map(|(_, t)| t.grad().unwrap().to_vec().unwrap()).collect::<Vec<_>>()
    };
    let plain = grads(None);
    for k in [1, 2] {
        for (g, want) in grads(Some(k)).iter().zip(&plain) {
            // The recompute runs the same kernels on the same inputs: equal up to the order of
            // gradient accumulation, 1e-6 of the scale.
            let e = rel_err(g, want);
            assert!(e <= 1e-6, "checkpoint_every {k}: rel err {e:.3e}");
        }
    }
}

#[test]
fn a_projection_adapter_saves_its_table_which_gives_the_same_logits() {
    let mut model = base();
    let adapter = fresh_projection(&mut model);
    assert_eq!(model.num_trainable_parameters(), 3 * 24 + (8 * 24 + 8) + (96 * 8 + 96));
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("prefix-projection");
    files::save(&model, adapter.as_ref(), &dir).unwrap();
    let file = glassgrad::io::TensorFile::read(dir.join(files::WEIGHTS_FILE)).unwrap();
    let keys: Vec<&String> = file.tensors.keys().collect();
    assert_eq!(keys, ["prompt_embeddings"], "only the table is saved");
    assert_eq!(file.f32("prompt_embeddings").unwrap().0, [3, 2 * 2 * 24]);
    let mut again = base();
    files::load(&mut again, &dir).unwrap();
    assert_eq!(again.num_trainable_parameters(), 3 * 96, "loaded: the plain table trains");
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert!(rel_err(&got, &want) <= 1e-6, "the table is what the MLP computed");
}

#[test]
fn prefix_tuning_generates_with_the_kv_cache() {
    let mut model = base();
    files::load(&mut model, case_dir("prefix", "prefix").join("adapter")).unwrap();
    generate_matches_the_uncached_forward(&model);
}

#[test]
fn prefix_tuning_bad_input_is_named() {
    let mut model = base();
    let zero = PrefixTuningConfig { num_virtual_tokens: 0, ..PrefixTuningConfig::default() };
    let e = error_of(inject(&mut model, &zero, 0));
    assert!(e.contains("num_virtual_tokens = 0"), "{e}");
    let other = PrefixTuningConfig { token_dim: Some(32), ..PrefixTuningConfig::default() };
    let e = error_of(inject(&mut model, &other, 0));
    assert!(e.contains("token_dim = 32") && e.contains("24"), "{e}");
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "nothing changed");
    // n_positions = 32: Vt = 16 + the 17 reference tokens do not fit.
    let long = PrefixTuningConfig { num_virtual_tokens: 16, ..PrefixTuningConfig::default() };
    inject(&mut model, &long, 0).unwrap();
    let (ids, _) = tokens();
    let e = error_of(model.forward(&ids, &ForwardOptions::default()));
    assert!(e.contains("16 virtual tokens") && e.contains("n_positions 32"), "{e}");
}
