//! Several adapters on one base, against PEFT (tests/data/combine_ref, written by
//! scripts/make_combine_reference.py): `set_adapter` for each name and `__base__`, batches that
//! mix adapters per row (`adapter_names`), `add_weighted_adapter` with linear, cat and svd, and
//! the bad inputs (duplicate and unknown names, weights that do not match, unequal ranks for
//! linear, an adapter for another base, adapters that cannot share a base), each refused by name
//! with the model left as it was.

use std::path::{Path, PathBuf};

use glassgrad::io::TensorFile;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::combine::{Combination, add_weighted_adapter};
use glassgrad::peft::multi::AdapterSet;
use glassgrad::peft::save_adapter;

use crate::gpu::harness::{gpu, temp_dir};
use crate::lora::{base, logits_and_loss, rel_err, tokens};

const COMBINE_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/combine_ref");

fn dir(name: &str) -> PathBuf {
    Path::new(COMBINE_REF).join(name)
}

fn expected(key: &str) -> Vec<f32> {
    let file = TensorFile::read(dir("expected.safetensors")).unwrap();
    file.f32(key).unwrap().1
}

fn load_set(model: &mut Gpt2, names: &[&str]) -> AdapterSet {
    let dirs: Vec<(String, PathBuf)> = names.iter().map(|n| (n.to_string(), dir(n))).collect();
    let list: Vec<(String, &Path)> = dirs.iter().map(|(n, d)| (n.clone(), d.as_path())).collect();
    AdapterSet::load(model, &list).unwrap()
}

/// f32 forward through 2 blocks on both sides, in different orders: a few ulps of the largest
/// logit; 1e-4 of max |want| leaves room for that and is far below any adapter's effect (>1e-2).
const LOGITS_TOL: f64 = 1e-4;

#[test]
fn named_adapters_switch_and_mix_per_row_as_peft() {
    let mut model = base();
    let set = load_set(&mut model, &["a", "b", "c"]);
    for name in ["a", "b", "c", "__base__"] {
        set.set_adapter(name).unwrap();
        let e = rel_err(&logits_and_loss(&model).0, &expected(&format!("logits.{name}")));
        println!("set_adapter({name}): logits max rel err {e:.2e}");
        assert!(e <= LOGITS_TOL, "{name}: rel err {e:.3e}");
    }
    for rows in [["b", "__base__"], ["a", "b"]] {
        set.set_adapter_per_row(&rows).unwrap();
        let want = expected(&format!("logits.mixed.{}", rows.join(",")));
        let e = rel_err(&logits_and_loss(&model).0, &want);
        println!("adapter per row {rows:?}: logits max rel err {e:.2e}");
        assert!(e <= LOGITS_TOL, "{rows:?}: rel err {e:.3e}");
    }
    // PEFT's model names, with the adapter's name; the file keys per adapter without it.
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"transformer.h.0.attn.c_attn.lora_A.b.weight".to_string()));
    assert!(set.named_parameters(2).iter().all(|(k, _)| k.contains("c_attn.lora_")));
    // A mixed batch trains both adapters through slice and concat; c (unused, so frozen) and the
    // base get no gradient.
    set.set_adapter_per_row(&["a", "b"]).unwrap();
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        for (key, t) in set.named_parameters(i) {
            let g = t.grad().map(|g| g.to_vec().unwrap());
            let nonzero = g.as_ref().is_some_and(|g| g.iter().any(|v| *v != 0.0));
            assert_eq!(nonzero, *name != "c", "{name}: {key}");
        }
    }
    // Only the adapters in use train (PEFT's set_adapter freezes the others).
    for (name, t) in model.named_parameters() {
        let trains = name.contains(".lora_") && !name.contains(".c.");
        assert_eq!(t.requires_grad(), trains, "{name}");
        if !trains {
            assert!(t.grad().is_none(), "frozen {name} got a gradient");
        }
    }
}

#[test]
fn weighted_adapters_match_peft_add_weighted_adapter() {
    for (case, names, weights, comb) in [
        ("linear", ["a", "b"], [0.7, -0.4], Combination::Linear),
        ("cat", ["a", "c"], [0.5, 0.8], Combination::Cat),
        ("svd", ["a", "b"], [0.7, 0.5], Combination::Svd),
    ] {
        let mut model = base();
        let dirs: Vec<PathBuf> = names.iter().map(|n| dir(n)).collect();
        let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        let lora = add_weighted_adapter(&mut model, &dirs, &weights, comb, None).unwrap();
        let e = rel_err(&logits_and_loss(&model).0, &expected(&format!("logits.{case}")));
        println!("{case}: logits max rel err {e:.2e}");
        assert!(e <= LOGITS_TOL, "{case}: rel err {e:.3e}");
        let peft = TensorFile::read(dir(case).join("adapter_model.safetensors")).unwrap();
        let ours = lora.named_parameters(&model);
        assert_eq!(ours.len(), peft.tensors.len(), "{case}: the same keys");
        for pair in ours.chunks(2) {
            let [(ka, a), (kb, b)] = pair else { unreachable!() };
            let (sa, wa) = peft.f32(ka).unwrap();
            let (sb, wb) = peft.f32(kb).unwrap();
            assert_eq!((a.shape(), b.shape()), (sa.as_slice(), sb.as_slice()), "{ka}");
            let (ga, gb) = (a.to_vec().unwrap(), b.to_vec().unwrap());
            if comb == Combination::Svd {
                // Singular pairs are unique up to sign: compare B·A (out, in).
                let (r, fan_in) = (sa[0], sa[1]);
                let product = |b: &[f32], a: &[f32]| -> Vec<f32> {
                    let out = b.len() / r;
                    (0..out * fan_in)
                        .map(|k| {
                            let (o, i) = (k / fan_in, k % fan_in);
                            (0..r).map(|j| b[o * r + j] * a[j * fan_in + i]).sum()
                        })
                        .collect()
                };
                let e = rel_err(&product(&gb, &ga), &product(&wb, &wa));
                // f64 SVDs on both sides (torch's LAPACK, our Jacobi), stored in f32: ~1e-6.
                assert!(e <= 1e-5, "{case}: {ka} B·A rel err {e:.3e}");
            } else {
                // The same f64-or-f32 sums of a few products, stored in f32: a few ulps.
                let (ea, eb) = (rel_err(&ga, &wa), rel_err(&gb, &wb));
                assert!(ea <= 1e-6 && eb <= 1e-6, "{case}: {ka} {ea:.2e}, {kb} {eb:.2e}");
            }
        }
        // The combined adapter saves and loads like any LoRA.
        let out = temp_dir(&format!("combined-{case}"));
        save_adapter(&model, &lora, &out).unwrap();
        let mut again = base();
        glassgrad::peft::load_adapter(&mut again, &out).unwrap();
        assert!(rel_err(&logits_and_loss(&again).0, &logits_and_loss(&model).0) == 0.0);
    }
}

#[test]
fn bad_sets_and_combinations_are_refused_by_name_and_change_nothing() {
    let mut model = base();
    let untouched = |model: &Gpt2| {
        assert!(model.named_parameters().iter().all(|(_, t)| t.requires_grad()), "nothing frozen");
        assert!(model.blocks.iter().all(|b| b.c_attn.adapter.is_none()), "nothing wrapped");
    };
    let set_err = |model: &mut Gpt2, list: &[(&str, PathBuf)]| {
        let list: Vec<(String, &Path)> =
            list.iter().map(|(n, d)| (n.to_string(), d.as_path())).collect();
        AdapterSet::load(model, &list).err().unwrap().to_string()
    };
    let e = set_err(&mut model, &[("x", dir("a")), ("x", dir("b"))]);
    assert!(e.contains("\"x\"") && e.contains("twice"), "{e}");
    let e = set_err(&mut model, &[("__base__", dir("a"))]);
    assert!(e.contains("__base__"), "{e}");
    // The second adapter trains base biases: refused after the first was loaded, then undone.
    let bias_all =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lora_ref/bias_all/adapter");
    let e = set_err(&mut model, &[("a", dir("a")), ("biased", bias_all)]);
    assert!(e.contains("biased") && e.contains("bias") && e.contains("outside"), "{e}");
    untouched(&model);
    // An adapter made for another base: its shapes do not fit (and the error names its base).
    let mut other = Gpt2::new_random(
        &gpu(),
        glassgrad::model::config::Gpt2Config { n_embd: 12, ..model.config.clone() },
        1,
    )
    .unwrap();
    let e = set_err(&mut other, &[("a", dir("a"))]);
    assert!(e.contains("shape") && e.contains("different base") && e.contains("gpt2_ref"), "{e}");
    // Bases with one layer fewer or more: unexpected or missing keys, the adapter's base named.
    for n_layer in [1, 3] {
        let config = glassgrad::model::config::Gpt2Config { n_layer, ..model.config.clone() };
        let mut other = Gpt2::new_random(&gpu(), config, 1).unwrap();
        let e = set_err(&mut other, &[("a", dir("a"))]);
        assert!(e.contains("different base") && e.contains("gpt2_ref"), "n_layer {n_layer}: {e}");
    }

    let set = load_set(&mut model, &["a", "b"]);
    let e = set.set_adapter_per_row(&["a", "zz"]).err().unwrap().to_string();
    assert!(e.contains("\"zz\"") && e.contains("a, b"), "{e}");
    set.set_adapter_per_row(&["a", "b", "a"]).unwrap();
    let e = model.forward(&tokens().0, &ForwardOptions::default()).err().unwrap().to_string();
    assert!(e.contains("3 names") && e.contains("[2, 17"), "{e}");
    drop(set);

    let mut model = base();
    let comb_err = |model: &mut Gpt2, names: &[&str], w: &[f64], c: Combination| {
        let dirs: Vec<PathBuf> = names.iter().map(|n| dir(n)).collect();
        let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        add_weighted_adapter(model, &dirs, w, c, None).err().unwrap().to_string()
    };
    let e = comb_err(&mut model, &["a", "b"], &[0.5], Combination::Linear);
    assert!(e.contains("1 weights for 2 adapters"), "{e}");
    let e = comb_err(&mut model, &["a", "c"], &[0.5, 0.5], Combination::Linear);
    assert!(e.contains("linear") && e.contains("equal rank") && e.contains("[4, 2]"), "{e}");
    let dora = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lora_ref/dora/adapter");
    let dirs = [dir("a"), dora];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let e = add_weighted_adapter(&mut model, &dirs, &[1.0, 1.0], Combination::Cat, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("DoRA"), "{e}");
    untouched(&model);
}
