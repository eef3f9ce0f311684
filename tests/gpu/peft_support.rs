//! What every method's test against PEFT does, written once: load PEFT's adapter directory
//! (tests/data/<method>_ref/<case>, made by scripts/make_methods_reference.py on the small random
//! GPT-2 of tests/data/gpt2_ref), compare logits, loss and every trainable gradient with PEFT's,
//! round-trip the files bit for bit, check the gradient along a random direction against a
//! central finite difference, and check that exactly the adapter trains (and, for every method
//! at once, that the optimizer keeps state for it alone).

use std::path::{Path, PathBuf};

use glassgrad::Tensor;
use glassgrad::io::{TensorFile, TokenFile};
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::peft::Adapter;
use glassgrad::peft::files;

use crate::gpu::harness::{gpu, grad_options, temp_dir};

pub const GPT2_REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");
pub const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// max |got − want| / max |want|: the relative error of a whole tensor.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

pub fn base() -> Gpt2 {
    let weights = Gpt2Weights::load(Path::new(GPT2_REF).join("model")).unwrap();
    Gpt2::from_weights(&gpu(), &weights).unwrap()
}

/// tests/data/<method>_ref/<case>.
pub fn case_dir(method: &str, case: &str) -> PathBuf {
    Path::new(DATA).join(format!("{method}_ref")).join(case)
}

/// The reference tokens: ids (B, T) and next-token targets (B, T), -100 ignored.
pub fn tokens() -> (Tensor, Tensor) {
    let t = TokenFile::read(Path::new(GPT2_REF).join("tokens.safetensors")).unwrap();
    let ids = Tensor::from_u32(&gpu(), &t.input_ids, &[t.batch, t.seq_len]).unwrap();
    let targets = Tensor::from_u32(&gpu(), &t.shifted_targets(), &[t.batch, t.seq_len]).unwrap();
    (ids, targets)
}

pub fn logits_and_loss(model: &Gpt2, opts: &ForwardOptions) -> (Vec<f32>, f32) {
    let (ids, targets) = tokens();
    let out = model.forward(&ids, opts).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    (out.logits.to_vec().unwrap(), loss.item().unwrap())
}

pub fn set(t: &Tensor, values: &[f32]) {
    t.gpu().upload(t.storage(), bytemuck::cast_slice(values)).unwrap();
}

/// Loads PEFT's adapter of `method`/`case` through `files::load`, runs forward and backward, and
/// compares with PEFT: logits and loss within `tol` of their scale, every gradient within `tol`
/// of its tensor's max |want|, the trainable counts exactly; every trainable parameter has a
/// nonzero gradient and every frozen one none. Returns the model and adapter for more checks.
pub fn matches_peft(method: &str, case: &str, tol: f64) -> (Gpt2, Box<dyn Adapter>) {
    let adapter_dir = case_dir(method, case).join("adapter");
    matches_peft_with(method, case, tol, |model| files::load(model, &adapter_dir).unwrap())
}

/// [`matches_peft`] with the adapter put on the base by `attach` instead of loaded from PEFT's
/// directory (prefix tuning's reparameterization, whose MLP PEFT's file does not hold).
pub fn matches_peft_with(
    method: &str,
    case: &str,
    tol: f64,
    attach: impl FnOnce(&mut Gpt2) -> Box<dyn Adapter>,
) -> (Gpt2, Box<dyn Adapter>) {
    let dir = case_dir(method, case);
    let mut model = base();
    let adapter = attach(&mut model);
    let expected = TensorFile::read(dir.join("expected.safetensors")).unwrap();
    let (ids, targets) = tokens();
    let out = model.forward(&ids, &grad_options()).unwrap();
    let loss = Gpt2::loss(&out.logits, &targets).unwrap();
    loss.backward().unwrap();

    let (shape, want) = expected.f32("logits").unwrap();
    assert_eq!(out.logits.shape(), shape.as_slice(), "{case}: logits shape");
    let e = rel_err(&out.logits.to_vec().unwrap(), &want);
    assert!(e <= tol, "{case}: logits differ from PEFT: rel err {e:.3e}");
    println!("{case}: logits OK (max rel err {e:.2e})");
    let (_, want) = expected.f32("loss").unwrap();
    let got = loss.item().unwrap();
    let e = ((got - want[0]) / want[0]).abs() as f64;
    assert!(e <= tol, "{case}: loss {got} vs PEFT {}", want[0]);
    println!("{case}: loss {got} vs PEFT {} OK (rel err {e:.2e})", want[0]);

    let counts = expected.get("trainable_params").unwrap().to_i64("trainable_params").unwrap();
    let ours = [model.num_trainable_parameters() as i64, model.num_parameters() as i64];
    assert_eq!(ours, counts[..2], "{case}: (trainable, all) vs PEFT's");
    println!("{case}: {}", model.trainable_summary());

    let params = adapter.named_parameters(&model);
    let mut worst = 0f64;
    for (key, p) in &params {
        let (shape, want) = expected.f32(&format!("grad.{key}")).unwrap();
        assert_eq!(p.shape(), shape.as_slice(), "{key}");
        let got = p.grad().unwrap_or_else(|| panic!("{key} got no gradient")).to_vec().unwrap();
        assert!(got.iter().any(|g| *g != 0.0), "{key}: gradient is all zeros");
        let e = rel_err(&got, &want);
        worst = worst.max(e);
        assert!(e <= tol, "{case}: gradient of {key} differs from PEFT: rel err {e:.3e}");
    }
    println!("{case}: {} gradients OK (max rel err {worst:.2e})", params.len());
    let n_grads = expected.tensors.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(params.len(), n_grads, "{case}: PEFT trains exactly these tensors");
    only_the_adapter_trains(&model, adapter.as_ref());
    (model, adapter)
}

/// Every trainable parameter of the model is the adapter's and has a nonzero gradient; every
/// frozen one has none.
pub fn only_the_adapter_trains(model: &Gpt2, adapter: &dyn Adapter) {
    let ids: Vec<u64> = adapter.named_parameters(model).iter().map(|(_, t)| t.id()).collect();
    for (name, t) in model.named_parameters() {
        let ours = ids.contains(&t.id());
        assert_eq!(t.requires_grad(), ours, "{name}: trainable = {}", t.requires_grad());
        match t.grad() {
            Some(g) if ours => {
                assert!(g.to_vec().unwrap().iter().any(|g| *g != 0.0), "{name}: zero gradient")
            }
            None if ours => panic!("{name} trains but got no gradient"),
            Some(_) => panic!("frozen {name} got a gradient"),
            None => {}
        }
    }
}

/// PEFT's adapter directory, loaded and saved, gives PEFT's bytes; ours, loaded and saved
/// again, gives ours.
pub fn round_trips(method: &str, case: &str) {
    let peft_dir = case_dir(method, case).join("adapter");
    let mut model = base();
    let adapter = files::load(&mut model, &peft_dir).unwrap();
    let dir = temp_dir(&format!("{method}-{case}-roundtrip"));
    files::save(&model, adapter.as_ref(), &dir).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        let ours = std::fs::read(dir.join(file)).unwrap();
        let peft = std::fs::read(peft_dir.join(file)).unwrap();
        assert!(ours == peft, "{case}: our {file} differs from PEFT's");
    }
    let mut again = base();
    let adapter2 = files::load(&mut again, &dir).unwrap();
    let dir2 = temp_dir(&format!("{method}-{case}-roundtrip2"));
    files::save(&again, adapter2.as_ref(), &dir2).unwrap();
    for file in [files::CONFIG_FILE, files::WEIGHTS_FILE] {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), std::fs::read(dir2.join(file)).unwrap());
    }
}

/// Central finite difference along one random direction d over all the adapter's parameters θ:
/// (L(θ + hd) − L(θ − hd)) / 2h = ⟨∇L, d⟩ + O(h²), with the h² term removed by Richardson
/// extrapolation, (4·D(h/2) − D(h))/3. What is left is the f32 noise of the loss (≈1e-6 on a
/// loss of 5) over 2h, ≤ 1e-3 absolute, plus the h⁴ term (≤ 0.5% measured on these methods'
/// derivatives of 0.01–0.5; measured errors 1.3e-4 to 1.8e-3). A wrong or missing gradient term
/// is off by O(1) relative. `opts` lets a caller check the checkpointed path too.
pub fn directional_derivative(model: &Gpt2, adapter: &dyn Adapter, opts: &ForwardOptions) {
    let params = adapter.named_parameters(model);
    params.iter().for_each(|(_, p)| p.zero_grad()); // a gradient from an earlier backward
    let (ids, targets) = tokens();
    let out = model.forward(&ids, opts).unwrap();
    Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
    let mut rng = glassgrad::cpu::Rng::new(11);
    let mut analytic = 0f64;
    let mut dirs = vec![];
    for (_, p) in &params {
        let g = p.grad().unwrap().to_vec().unwrap();
        let d: Vec<f32> = (0..p.numel()).map(|_| rng.normal() as f32).collect();
        analytic += g.iter().zip(&d).map(|(g, d)| *g as f64 * *d as f64).sum::<f64>();
        dirs.push(d);
    }
    let originals: Vec<Vec<f32>> = params.iter().map(|(_, p)| p.to_vec().unwrap()).collect();
    let loss_at = |step: f32| {
        for ((_, p), (o, d)) in params.iter().zip(originals.iter().zip(&dirs)) {
            set(p, &o.iter().zip(d).map(|(o, d)| o + step * d).collect::<Vec<_>>());
        }
        let _g = glassgrad::autograd::no_grad();
        logits_and_loss(model, &ForwardOptions::default()).1 as f64
    };
    let central = |h: f32| (loss_at(h) - loss_at(-h)) / (2.0 * h as f64);
    let h = 1e-3;
    let numeric = (4.0 * central(h / 2.0) - central(h)) / 3.0;
    for ((_, p), o) in params.iter().zip(&originals) {
        set(p, o);
    }
    let e = (numeric - analytic).abs();
    println!(
        "{}: directional derivative {analytic:.6} vs finite difference {numeric:.6}",
        adapter.peft_type()
    );
    assert!(analytic.abs() > 1e-3, "the direction sees the loss change");
    assert!(e <= 1e-3 + 1e-2 * analytic.abs(), "{analytic} vs {numeric}");
}

/// The error message of a result that must fail.
pub fn error_of<T>(r: glassgrad::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// Every method, fresh from `inject`: AdamW over the whole registry keeps moments for the
/// adapter alone (2 × 4 bytes per trainable number), and two steps (the second reaches what
/// the first unlocks: VeRA's λ_d once λ_b ≠ 0, a bottleneck's W_down once W_up ≠ 0) give every
/// trainable parameter a nonzero gradient and leave every frozen one unchanged, with none.
#[test]
fn every_method_trains_alone_with_optimizer_state_for_itself_only() {
    use glassgrad::optim::{AdamW, ParamGroup};
    use glassgrad::peft::{bitfit, bottleneck, ia3, prefix_tuning, prompt_tuning, vera};
    type Make = fn(&mut Gpt2) -> Box<dyn Adapter>;
    let methods: [(&str, Make); 9] = [
        ("ia3", |m| Box::new(ia3::inject(m, &Default::default(), 1).unwrap())),
        ("vera", |m| {
            let config = vera::VeraConfig { r: 8, ..Default::default() };
            Box::new(vera::inject(m, &config, 1).unwrap())
        }),
        ("prompt", |m| {
            let config =
                prompt_tuning::PromptTuningConfig { num_virtual_tokens: 3, ..Default::default() };
            Box::new(prompt_tuning::inject(m, &config, 1).unwrap())
        }),
        ("prefix", |m| {
            let config = prefix_tuning::PrefixTuningConfig {
                num_virtual_tokens: 3,
                prefix_projection: true,
                ..Default::default()
            };
            Box::new(prefix_tuning::inject(m, &config, 1).unwrap())
        }),
        ("bitfit", |m| Box::new(bitfit::inject(m, &Default::default()).unwrap())),
        ("bottleneck", |m| {
            let config = bottleneck::BottleneckConfig { bottleneck_size: 4, ..Default::default() };
            Box::new(bottleneck::inject(m, &config, 1).unwrap())
        }),
        ("parallel adapter", |m| {
            let config = bottleneck::BottleneckConfig {
                target_modules: vec!["attn".into(), "mlp".into()],
                ..bottleneck::BottleneckConfig::parallel(4, 4.0)
            };
            Box::new(bottleneck::inject(m, &config, 1).unwrap())
        }),
        ("sparse mask 0.5%", |m| {
            use glassgrad::peft::sparse_mask::{self, SparseMaskConfig};
            let config = SparseMaskConfig::default();
            let scores = sparse_mask::magnitude_scores(m, &config).unwrap();
            let total: usize = scores.iter().map(Vec::len).sum();
            let picked = sparse_mask::select(&scores, config.budget(total));
            let mask = sparse_mask::inject(m, &config, &picked).unwrap();
            assert_eq!(mask.num_selected(), 69, "0.5% of 13,824");
            Box::new(mask)
        }),
        ("mam", |m| {
            let prefix =
                prefix_tuning::PrefixTuningConfig { num_virtual_tokens: 3, ..Default::default() };
            let first = Box::new(prefix_tuning::inject(m, &prefix, 1).unwrap());
            let c = glassgrad::peft::composite::compose(m, first, "parallel adapter", |m| {
                let config = bottleneck::BottleneckConfig::parallel(4, 4.0);
                Ok(Box::new(bottleneck::inject(m, &config, 1)?))
            });
            Box::new(c.unwrap())
        }),
    ];
    for (method, make) in methods {
        let gpu = gpu();
        let mut model = base();
        let adapter = make(&mut model);
        let frozen: Vec<(String, Vec<f32>)> = model
            .named_parameters()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .map(|(n, t)| (n, t.to_vec().unwrap()))
            .collect();
        let params: Vec<Tensor> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
        let before = gpu.memory().live(glassgrad::Category::Optimizer);
        let group = ParamGroup { params, lr: 1e-2, weight_decay: 0.0 };
        let mut opt = AdamW::new(vec![group], 0.9, 0.999, 1e-8).unwrap();
        let trainable = model.num_trainable_parameters();
        let numbers: usize = adapter.named_parameters(&model).iter().map(|(_, t)| t.numel()).sum();
        assert_eq!(
            trainable, numbers,
            "{method}: the registry's trainable numbers are the adapter's"
        );
        let bytes = gpu.memory().live(glassgrad::Category::Optimizer) - before;
        assert_eq!(bytes, (2 * 4 * trainable) as u64, "{method}: moments for the adapter only");
        for _ in 0..2 {
            opt.zero_grad();
            let (ids, targets) = tokens();
            let out = model.forward(&ids, &ForwardOptions::default()).unwrap();
            Gpt2::loss(&out.logits, &targets).unwrap().backward().unwrap();
            opt.step().unwrap();
        }
        only_the_adapter_trains(&model, adapter.as_ref());
        for (name, values) in &frozen {
            let now = model.parameter(name).unwrap().to_vec().unwrap();
            assert!(&now == values, "{method}: frozen {name} changed");
        }
        println!("{method}: {}", model.trainable_summary());
    }
}
