//! GPT-2 small's shapes (V = 50257, C = 768, NH = 12, n_positions = 1024) under a 128 MiB binding
//! limit — lavapipe's own and WebGPU's default, forced on adapters that allow more. wte alone is
//! 154 MB, so this runs the split embedding and LM head at their real size. Random weights built
//! in Rust (transformers' initialisation, `Gpt2Weights::init`; nothing is downloaded), 2 of the
//! 12 layers to keep it fast (every layer has the same shapes), T = 7 positions: logits at every
//! position and the loss against a plain f64 forward written out below (independent of the GPU
//! ops: its own loops for LayerNorm, attention, gelu_new and the products).

use glassgrad::Tensor;
use glassgrad::cpu::Rng;
use glassgrad::gpu::limit_bindings_to;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::model::{Gpt2Config, Gpt2Weights};

use crate::gpu::harness::{Tol, compare, gpu};

const LAYERS: usize = 2;
const T: usize = 7;

/// The f64 reference: logits (T, V) of one sequence.
fn reference_logits(w: &Gpt2Weights, ids: &[u32]) -> Vec<Vec<f64>> {
    let c = w.config.n_embd;
    let nh = w.config.n_head;
    let hs = c / nh;
    let p = |name: &str| -> Vec<f64> {
        w.params[name].data.iter().map(|&v| v as f64).collect::<Vec<f64>>()
    };
    // y = x·W + b, W stored (in, out).
    let linear = |x: &[f64], wt: &[f64], b: &[f64]| -> Vec<f64> {
        let out = b.len();
        let mut y = b.to_vec();
        for (i, xi) in x.iter().enumerate() {
            for (j, yj) in y.iter_mut().enumerate() {
                *yj += xi * wt[i * out + j];
            }
        }
        y
    };
    let layernorm = |x: &[f64], g: &[f64], b: &[f64]| -> Vec<f64> {
        let mean = x.iter().sum::<f64>() / c as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + 1e-5).sqrt();
        (0..c).map(|k| (x[k] - mean) * inv * g[k] + b[k]).collect()
    };
    let gelu_new = |x: f64| {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    };
    let (wte, wpe) = (p("transformer.wte.weight"), p("transformer.wpe.weight"));
    let mut x: Vec<Vec<f64>> = ids
        .iter()
        .enumerate()
        .map(|(t, &id)| (0..c).map(|k| wte[id as usize * c + k] + wpe[t * c + k]).collect())
        .collect(); // (T, C)
    for l in 0..LAYERS {
        let q = |s: &str| p(&format!("transformer.h.{l}.{s}"));
        let qkv: Vec<Vec<f64>> = x
            .iter()
            .map(|xt| {
                let h = layernorm(xt, &q("ln_1.weight"), &q("ln_1.bias"));
                linear(&h, &q("attn.c_attn.weight"), &q("attn.c_attn.bias")) // (3C)
            })
            .collect();
        for (t, xt) in x.iter_mut().enumerate() {
            let mut y = vec![0.0; c];
            for head in 0..nh {
                let at = |s: usize, part: usize, k: usize| qkv[s][part * c + head * hs + k];
                let scores: Vec<f64> = (0..=t)
                    .map(|s| (0..hs).map(|k| at(t, 0, k) * at(s, 1, k)).sum::<f64>())
                    .map(|v| v / (hs as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|v| (v - m).exp()).sum();
                for (s, score) in scores.iter().enumerate() {
                    for k in 0..hs {
                        y[head * hs + k] += (score - m).exp() / z * at(s, 2, k);
                    }
                }
            }
            let a = linear(&y, &q("attn.c_proj.weight"), &q("attn.c_proj.bias"));
            xt.iter_mut().zip(&a).for_each(|(xi, ai)| *xi += ai);
        }
        for xt in x.iter_mut() {
            let h = layernorm(xt, &q("ln_2.weight"), &q("ln_2.bias"));
            let f: Vec<f64> = linear(&h, &q("mlp.c_fc.weight"), &q("mlp.c_fc.bias"))
                .into_iter()
                .map(gelu_new)
                .collect();
            let m = linear(&f, &q("mlp.c_proj.weight"), &q("mlp.c_proj.bias"));
            xt.iter_mut().zip(&m).for_each(|(xi, mi)| *xi += mi);
        }
    }
    let (g, b) = (p("transformer.ln_f.weight"), p("transformer.ln_f.bias"));
    let v = w.config.vocab_size;
    x.iter()
        .map(|xt| {
            let h = layernorm(xt, &g, &b);
            (0..v).map(|j| (0..c).map(|k| h[k] * wte[j * c + k]).sum()).collect()
        })
        .collect()
}

#[test]
fn gpt2_small_shapes_under_128_mib_match_an_f64_forward() {
    let gpu = gpu();
    let _limit = limit_bindings_to(128 << 20);
    let config = Gpt2Config::new(50257, 1024, 768, LAYERS, 12);
    let weights = Gpt2Weights::init(&config, 124);
    let model = Gpt2::from_weights(&gpu, &weights).unwrap();
    let wte_bytes = model.wte.numel() as u64 * 4;
    assert!(wte_bytes > gpu.max_binding(), "wte must exceed one binding to test the split");
    let mut rng = Rng::new(3);
    let ids: Vec<u32> = (0..T).map(|_| rng.below(50257) as u32).collect();
    let targets: Vec<u32> = (0..T).map(|_| rng.below(50257) as u32).collect();
    let want = reference_logits(&weights, &ids);

    let ids_t = Tensor::from_u32(&gpu, &ids, &[1, T]).unwrap();
    let targets_t = Tensor::from_u32(&gpu, &targets, &[1, T]).unwrap();
    let logits = model.forward(&ids_t, &ForwardOptions::default()).unwrap().logits;
    let got: Vec<f64> = logits.to_vec().unwrap().iter().map(|&v| v as f64).collect();
    let flat: Vec<f64> = want.iter().flatten().copied().collect();
    // f32 through 2 blocks and a K = 768 head against f64: measured ~1e-6 of the largest logit on
    // lavapipe; the bound is 1e-3.
    let diff = compare("GPT-2 small logits vs f64", &got, &flat, Tol { atol: 0.0, rtol: 1e-3 })
        .unwrap_or_else(|e| panic!("{e}"));
    let scale = flat.iter().fold(0f64, |m, v| m.max(v.abs()));

    // Loss: mean over the T positions of lse − logit[target], in f64 from the reference logits.
    let want_loss = want
        .iter()
        .zip(&targets)
        .map(|(row, &t)| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[t as usize]
        })
        .sum::<f64>()
        / T as f64;
    let unfused = Gpt2::loss(&logits, &targets_t).unwrap().item().unwrap() as f64;
    let fused = model.forward_loss(&ids_t, &targets_t, &ForwardOptions::default()).unwrap();
    // Backward through the split head and embedding at their real size (wte trains).
    fused.backward().unwrap();
    let fused = fused.item().unwrap() as f64;
    for (what, got) in [("unfused", unfused), ("fused", fused)] {
        let rel = ((got - want_loss) / want_loss).abs();
        assert!(rel < 1e-5, "{what} loss {got} vs f64 {want_loss} (rel {rel:.1e})");
    }
    let grad = model.wte.grad().expect("wte gets a gradient").to_vec().unwrap();
    assert!(grad.iter().all(|g| g.is_finite()) && grad.iter().any(|g| *g != 0.0));
    println!(
        "GPT-2 small shapes, {LAYERS} layers, T {T}: logits max |diff| {diff:.2e} (of {scale:.2}), \
         loss f64 {want_loss:.6}, unfused {unfused:.6}, fused {fused:.6}"
    );
}
