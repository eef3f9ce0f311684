//! 02 — Our GPT-2 computes exactly what transformers computes (llm.c's test_gpt2.c, in Rust).
//!
//! tests/data/gpt2_ref holds a small random GPT2LMHeadModel saved by transformers
//! (V=97, 32 positions, C=24, 2 layers, 3 heads), a batch of token ids with some labels set to -100,
//! and what PyTorch computed for it: the logits, the loss, and the gradient of every parameter
//! (scripts/make_gpt2_reference.py wrote them). We load the same files, run one forward and one
//! backward on the GPU, and compare. The tied embedding's gradient includes the LM head's part,
//! because the same tensor is used twice and autodiff adds both contributions.
//!
//! Run: cargo run --release --example 02_gpt2_matches_transformers
//! Expected output (lavapipe, Mesa 25.0.7; digits of the errors may vary with the driver):
//!   adapter: llvmpipe (LLVM 15.0.6, 256 bits) | Vulkan | Cpu | …
//!   model: 17592 parameters; batch 2 × 17 tokens, 29 of 34 targets counted
//!   logits                                   OK (max rel err 3.7e-7)
//!   loss 5.122941 (transformers 5.122941)    OK (max rel err 0.0e0)
//!   grad transformer.wpe.weight              OK (max rel err 5.1e-7)
//!   … (28 gradients)
//!   grad transformer.ln_f.weight             OK (max rel err 9.5e-8)
//!   overall okay: true

use glassgrad::io::{IGNORE_INDEX, TensorFile, TokenFile};
use glassgrad::model::Gpt2Weights;
use glassgrad::model::gpt2::{ForwardOptions, Gpt2};
use glassgrad::{Gpu, Result, Tensor};

const REF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpt2_ref");

/// max |got − want| / max |want| over a whole tensor.
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-12);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    let weights = Gpt2Weights::load(format!("{REF}/model"))?;
    let tokens = TokenFile::read(format!("{REF}/tokens.safetensors"))?;
    let expected = TensorFile::read(format!("{REF}/expected.safetensors"))?;
    let model = Gpt2::from_weights(&gpu, &weights)?;

    // transformers' loss: position t predicts labels[t + 1]; the last position predicts nothing.
    let (b, t) = (tokens.batch, tokens.seq_len);
    let targets = tokens.shifted_targets();
    let counted = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
    println!(
        "model: {} parameters; batch {b} × {t} tokens, {counted} of {} targets counted",
        model.num_parameters(),
        b * t
    );

    let ids = Tensor::from_u32(&gpu, &tokens.input_ids, &[b, t])?; // (B, T)
    let targets = Tensor::from_u32(&gpu, &targets, &[b, t])?; // (B, T)
    let out = model.forward(&ids, &ForwardOptions::default())?; // logits (B, T, V)
    let loss = Gpt2::loss(&out.logits, &targets)?; // (1)
    loss.backward()?;

    // Tolerances of the parity test: logits and loss 1e-4 relative, gradients 1e-3.
    let mut all_ok = true;
    let mut report = |what: String, err: f64, tol: f64| {
        let ok = err <= tol;
        all_ok &= ok;
        println!("{what:<40} {} (max rel err {err:.1e})", if ok { "OK" } else { "NOT OK" });
    };
    report("logits".into(), rel_err(&out.logits.to_vec()?, &expected.f32("logits")?.1), 1e-4);
    let (got, want) = (loss.item()?, expected.f32("loss")?.1[0]);
    report(
        format!("loss {got:.6} (transformers {want:.6})"),
        ((got - want) / want).abs() as f64,
        1e-4,
    );
    for (name, p) in model.named_parameters() {
        let grad = p.grad().expect("every parameter is trainable here").to_vec()?;
        report(
            format!("grad {name}"),
            rel_err(&grad, &expected.f32(&format!("grad.{name}"))?.1),
            1e-3,
        );
    }
    println!("overall okay: {all_ok}");
    Ok(())
}
