//! Prompt tuning against PEFT (tests/data/prompt_ref, scripts/make_methods_reference.py):
//! Vt = 5 virtual tokens in front of the reference tokens, a table of N(0, 0.5²) values. The
//! logits are the real tokens' positions only; the reference loss is transformers' rule on
//! them (see the script). Also: mixed-task batches (each row its own prompt), generation with
//! the KV cache, and bad input.

use glassgrad::model::generate::{SampleOptions, generate};
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::files;
use glassgrad::peft::prompt_tuning::{PromptTuningConfig, inject};
use glassgrad::{Tensor, autograd};

use crate::gpu::harness::{gpu, grad_options, temp_dir};
use crate::peft_support::*;

#[test]
fn prompt_tuning_matches_peft_logits_loss_and_gradient() {
    // f32 on both sides in other summation orders; 1e-4 of the scale, as for LoRA.
    matches_peft("prompt", "prompt", 1e-4);
}

#[test]
fn prompt_tuning_files_round_trip_bit_identically() {
    round_trips("prompt", "prompt");
}

#[test]
fn prompt_tuning_gradient_agrees_with_a_finite_difference() {
    let (model, adapter) = matches_peft("prompt", "prompt", 1e-4);
    directional_derivative(&model, adapter.as_ref(), &grad_options());
}

/// Greedy continuation without any cache: the whole sequence through `forward` each step.
fn greedy_without_cache(model: &Gpt2, prompt: &[u32], n: usize) -> Vec<u32> {
    let _g = autograd::no_grad();
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let x = Tensor::from_u32(&gpu(), &ids, &[1, ids.len()]).unwrap();
        let logits = model.forward(&x, &ForwardOptions::default()).unwrap().logits;
        let v = logits.shape()[2];
        let last = logits.to_vec().unwrap()[(ids.len() - 1) * v..].to_vec();
        let best = (0..v).max_by(|a, b| last[*a].total_cmp(&last[*b])).unwrap();
        ids.push(best as u32);
    }
    ids[prompt.len()..].to_vec()
}

/// `generate` (KV cache, virtual positions in the cache) picks what the uncached forward picks.
pub fn generate_matches_the_uncached_forward(model: &Gpt2) {
    let prompt = [9u32, 25, 67, 3];
    let opts = SampleOptions { max_new_tokens: 6, temperature: 0.0, top_k: 0, seed: 0 };
    let cached = generate(model, &prompt, &opts).unwrap();
    assert_eq!(cached, greedy_without_cache(model, &prompt, 6), "cache vs no cache");
}

#[test]
fn prompt_tuning_generates_with_the_kv_cache() {
    let mut model = base();
    files::load(&mut model, case_dir("prompt", "prompt").join("adapter")).unwrap();
    generate_matches_the_uncached_forward(&model);
}

#[test]
fn a_batch_may_mix_tasks_each_row_with_its_own_prompt() {
    // Task 1: a fresh prompt, saved and loaded as a second table beside PEFT's.
    let other = temp_dir("prompt-task1");
    {
        let mut model = base();
        let config = PromptTuningConfig { num_virtual_tokens: 5, ..PromptTuningConfig::default() };
        let fresh = inject(&mut model, &config, 3).unwrap();
        files::save(&model, &fresh, &other).unwrap();
    }
    let single = |dir: &std::path::Path| {
        let mut model = base();
        files::load(&mut model, dir).unwrap();
        logits_and_loss(&model, &ForwardOptions::default()).0
    };
    let task0 = single(&case_dir("prompt", "prompt").join("adapter"));
    let task1 = single(&other);
    let mut model = base();
    let prompts = glassgrad::peft::prompt_tuning::load(
        &mut model,
        &case_dir("prompt", "prompt").join("adapter"),
    )
    .unwrap();
    assert_eq!(prompts.load_task(&model, &other).unwrap(), 1);
    prompts.set_row_tasks(Some(vec![1, 0])).unwrap();
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    let mixed = out.logits.to_vec().unwrap();
    let half = mixed.len() / 2;
    // Row 0 ran with task 1 and row 1 with task 0: the same computation as the single-task runs.
    assert!(rel_err(&mixed[..half], &task1[..half]) <= 1e-6, "row 0 = task 1's");
    assert!(rel_err(&mixed[half..], &task0[half..]) <= 1e-6, "row 1 = task 0's");
    assert!(rel_err(&task0, &task1) > 1e-2, "the two prompts differ in effect");
    only_the_adapter_trains(&model, &prompts); // task 1's table is loaded frozen
    assert!(prompts.set_row_tasks(Some(vec![0, 2])).is_err(), "no task 2");

    // `generate` runs one row: tasks set for two rows are refused with what to pass instead,
    // and set_task picks one task for any batch size.
    let opts = SampleOptions { max_new_tokens: 3, temperature: 0.0, top_k: 0, seed: 1 };
    let e = generate(&model, &[1, 2, 3], &opts).unwrap_err().to_string();
    assert!(e.contains("batch of 2 rows") && e.contains("set_task"), "{e}");
    prompts.set_task(1).unwrap();
    let row0 = ids.to_vec_u32().unwrap();
    let t = row0.len() / 2;
    let one = Tensor::from_u32(&gpu(), &row0[..t], &[1, t]).unwrap();
    let alone = model.forward(&one, &ForwardOptions::default()).unwrap().logits.to_vec().unwrap();
    assert!(rel_err(&alone, &task1[..half]) <= 1e-6, "one row with task 1 = task 1's row 0");
    assert_eq!(generate(&model, &[1, 2, 3], &opts).unwrap().len(), 3);
}

#[test]
fn prompt_tuning_bad_input_is_named() {
    let mut model = base();
    let zero = PromptTuningConfig { num_virtual_tokens: 0, ..PromptTuningConfig::default() };
    let e = error_of(inject(&mut model, &zero, 0));
    assert!(e.contains("num_virtual_tokens = 0"), "{e}");
    // n_positions = 32: Vt = 20 + the 17 reference tokens do not fit.
    inject(&mut model, &PromptTuningConfig::default(), 0).unwrap();
    let (ids, _) = tokens();
    let e = error_of(model.forward(&ids, &ForwardOptions::default()));
    assert!(e.contains("20 virtual tokens") && e.contains("n_positions 32"), "{e}");
    let e = error_of(Box::new(prompt_model(&mut base())).merge_and_unload(&mut base()));
    assert!(e.contains("cannot be merged"), "{e}");
    let e = error_of(inject(
        &mut model,
        &PromptTuningConfig { num_virtual_tokens: 2, ..PromptTuningConfig::default() },
        0,
    ));
    assert!(e.contains("already carries an input adapter"), "{e}");
}

fn prompt_model(model: &mut Gpt2) -> glassgrad::peft::prompt_tuning::PromptTuningModel {
    let config = PromptTuningConfig { num_virtual_tokens: 3, ..PromptTuningConfig::default() };
    inject(model, &config, 0).unwrap()
}
