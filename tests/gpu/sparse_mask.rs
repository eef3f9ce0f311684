//! Selective masking (src/peft/sparse_mask.rs): a fixed 0.5% of the projections' entries train
//! through W + scatter(indices, values). PEFT has none, so no reference file: the checks are that
//! the model starts as the base, that the values' gradient is the dense gradient of W read at the
//! selected entries (and nothing else trains), a directional finite difference, merge = the
//! adapter's logits, the file round trip, the Fisher selection against scores summed on the
//! host, and bad input. The optimizer's K-sized state is in
//! `peft_support::every_method_trains_alone_with_optimizer_state_for_itself_only`.

use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::files;
use glassgrad::peft::sparse_mask::{
    SparseMaskConfig, fisher_scores, inject, magnitude_scores, plan, select,
};

use crate::gpu::harness::temp_dir;
use crate::peft_support::*;

/// The four projections of the 2-block test model hold 2 × (1728 + 576 + 2304 + 2304) = 13,824
/// weights; 0.5% of them is K = round(69.12) = 69.
const K: usize = 69;

fn masked(config: &SparseMaskConfig) -> (Gpt2, glassgrad::peft::sparse_mask::SparseMaskModel) {
    let mut model = base();
    let scores = magnitude_scores(&model, config).unwrap();
    let total: usize = plan(&model, config).unwrap().iter().map(|(_, n)| n).sum();
    let indices = select(&scores, config.budget(total));
    let adapter = inject(&mut model, config, &indices).unwrap();
    (model, adapter)
}

/// Nonzero deltas, so every path of the gradient is exercised.
fn perturb(model: &Gpt2, adapter: &dyn Adapter) {
    for (i, (_, t)) in adapter.named_parameters(model).iter().enumerate() {
        let v: Vec<f32> = (0..t.numel()).map(|j| 0.02 * (((i + 3 * j) % 9) as f32 - 4.0)).collect();
        set(t, &v);
    }
}

#[test]
fn mask_starts_at_the_base_and_its_gradient_is_dw_at_the_selected_entries() {
    let (model, adapter) = masked(&SparseMaskConfig::default());
    assert_eq!(adapter.num_selected(), K);
    assert_eq!(model.num_trainable_parameters(), K, "the values, nothing else");
    let (got, _) = logits_and_loss(&model, &ForwardOptions::default());
    let (want, _) = logits_and_loss(&base(), &ForwardOptions::default());
    // W + 0 is W's bits; c_fc's bias and GELU run unfused under an adapter (one rounding).
    assert!(rel_err(&got, &want) <= 1e-6, "values = 0: the base");

    perturb(&model, &adapter);
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    only_the_adapter_trains(&model, &adapter);

    // The same weights, merged, trained densely: dvalues[k] must be dW[indices[k]].
    let dense = base();
    for (name, delta) in &adapter.layers {
        let w = dense.parameter(&format!("{name}.weight")).unwrap();
        let mut v = w.to_vec().unwrap();
        for (i, d) in delta.indices.to_vec_u32().unwrap().iter().zip(delta.values.to_vec().unwrap())
        {
            v[*i as usize] += d;
        }
        set(&w, &v);
    }
    dense.set_trainable(|n| n.ends_with(".weight")).unwrap();
    let out = dense.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    let mut worst = 0f64;
    for (name, delta) in &adapter.layers {
        let dw =
            dense.parameter(&format!("{name}.weight")).unwrap().grad().unwrap().to_vec().unwrap();
        let want: Vec<f32> =
            delta.indices.to_vec_u32().unwrap().iter().map(|i| dw[*i as usize]).collect();
        let got = delta.values.grad().unwrap().to_vec().unwrap();
        // Same math, different kernels' summation order (fused c_fc epilogue): f32 rounding.
        worst = worst.max(rel_err(&got, &want));
        assert!(rel_err(&got, &want) <= 1e-4, "{name}: dvalues ≠ dW at the indices");
    }
    println!("sparse mask: dvalues = dW[indices] within {worst:.2e}");
    directional_derivative(&model, &adapter, &ForwardOptions::default());
}

#[test]
fn mask_merges_into_the_adapters_logits_and_round_trips() {
    let (model, adapter) = masked(&SparseMaskConfig::default());
    perturb(&model, &adapter);
    let (want, _) = logits_and_loss(&model, &ForwardOptions::default());
    let dir = temp_dir("sparse-mask-roundtrip");
    files::save(&model, &adapter, &dir).unwrap();
    let mut again = base();
    let loaded = files::load(&mut again, &dir).unwrap();
    assert_eq!(loaded.peft_type(), "SPARSE_MASK");
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    assert_eq!(got, want, "the saved indices and values are the adapter's");
    let dir2 = temp_dir("sparse-mask-roundtrip2");
    files::save(&again, loaded.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
    let merged = loaded.merge_and_unload(&mut again).unwrap();
    assert_eq!(merged, 8, "every projection of both blocks holds selected entries");
    assert_eq!(again.named_parameters().len(), base().named_parameters().len(), "deltas gone");
    let (got, _) = logits_and_loss(&again, &ForwardOptions::default());
    // W + S formed once on the host instead of on the GPU per forward: the same f32 add.
    assert!(rel_err(&got, &want) <= 1e-6, "merged = adapter ({:.2e})", rel_err(&got, &want));
}

/// Fisher scores are Σ_batches (∂L/∂W)², checked against dense gradients summed on the host, and
/// the selection takes exactly the largest of them.
#[test]
fn fisher_selection_picks_the_largest_accumulated_squared_gradients() {
    let config = SparseMaskConfig {
        mask_by: "fisher".into(),
        fisher_batches: 2,
        sparsity: 0.01,
        ..SparseMaskConfig::default()
    };
    let (ids, targets) = tokens();
    let rows = |m: &Gpt2, b: usize| {
        let (t, all) = (17, ids.to_vec_u32().unwrap());
        let tg = targets.to_vec_u32().unwrap();
        let gpu = m.gpu();
        let x = glassgrad::Tensor::from_u32(gpu, &all[b * t..(b + 1) * t], &[1, t]).unwrap();
        let y = glassgrad::Tensor::from_u32(gpu, &tg[b * t..(b + 1) * t], &[1, t]).unwrap();
        let out = m.forward(&x, &ForwardOptions::default()).unwrap();
        Gpt2::loss(&out.logits, &y)
    };
    let model = base();
    let scores = fisher_scores(&model, &config, |b| rows(&model, b)).unwrap();
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "flags restored");
    // On the host: one dense backward per batch, squares summed.
    let names: Vec<String> = plan(&model, &config).unwrap().into_iter().map(|(n, _)| n).collect();
    let mut want: Vec<Vec<f64>> = vec![];
    for b in 0..2 {
        let m = base();
        m.set_trainable(|n| names.iter().any(|l| n == format!("{l}.weight"))).unwrap();
        rows(&m, b).unwrap().backward().unwrap();
        for (l, name) in names.iter().enumerate() {
            let g =
                m.parameter(&format!("{name}.weight")).unwrap().grad().unwrap().to_vec().unwrap();
            let sq = g.iter().map(|g| (*g as f64).powi(2));
            match want.get_mut(l) {
                Some(w) => w.iter_mut().zip(sq).for_each(|(w, s)| *w += s),
                None => want.push(sq.collect()),
            }
        }
    }
    for (got, want) in scores.iter().zip(&want) {
        let want: Vec<f32> = want.iter().map(|w| *w as f32).collect();
        assert!(rel_err(got, &want) <= 1e-5, "Fisher scores = Σ g²");
    }
    let k = config.budget(13_824);
    assert_eq!(k, 138);
    let picked = select(&scores, k);
    assert_eq!(picked.iter().map(Vec::len).sum::<usize>(), k);
    let (mut min_in, mut max_out) = (f64::INFINITY, 0f64);
    for (l, layer) in want.iter().enumerate() {
        for (i, s) in layer.iter().enumerate() {
            if picked[l].contains(&(i as u32)) {
                min_in = min_in.min(*s);
            } else {
                max_out = max_out.max(*s);
            }
        }
    }
    println!("Fisher: smallest picked {min_in:.3e}, largest left out {max_out:.3e}");
    assert!(min_in >= max_out * (1.0 - 1e-5), "the largest scores are the picked ones");
}

#[test]
fn selection_is_a_global_budget_with_ties_to_the_lower_layer_and_index() {
    let scores = vec![vec![1.0, 3.0, 3.0, 0.5], vec![3.0, 0.0], vec![5.0]];
    assert_eq!(select(&scores, 2), vec![vec![1], vec![], vec![0]]);
    assert_eq!(select(&scores, 4), vec![vec![1, 2], vec![0], vec![0]]);
    assert_eq!(select(&scores, 99).iter().map(Vec::len).sum::<usize>(), 7, "at most all");
}

#[test]
fn mask_bad_input_is_named() {
    let mut model = base();
    let none = vec![vec![]; 8];
    for (config, needle) in [
        (SparseMaskConfig { sparsity: 0.0, ..Default::default() }, "sparsity 0"),
        (SparseMaskConfig { sparsity: 1.5, ..Default::default() }, "(0, 1]"),
        (SparseMaskConfig { mask_by: "random".into(), ..Default::default() }, "\"random\""),
        (SparseMaskConfig { target_modules: vec!["lm_head".into()], ..Default::default() }, "wte"),
        (
            SparseMaskConfig { target_modules: vec!["q_proj".into()], ..Default::default() },
            "q_proj",
        ),
    ] {
        let e = error_of(inject(&mut model, &config, &none));
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let bad = vec![vec![5, 5]; 8];
    let e = error_of(inject(&mut model, &SparseMaskConfig::default(), &bad));
    assert!(e.contains("strictly increasing") && e.contains("transformer.h.0"), "{e}");
    assert_eq!(model.num_trainable_parameters(), model.num_parameters(), "nothing changed");
}
