//! AdamW and gradient clipping over parameters larger than one binding (src/optim/arena.rs: such a
//! parameter is cut into pieces across buckets). GPT-2 small's wte (154 MB) against a 128 MiB
//! binding is the real case; here a small limit is forced on the test's thread
//! (`limit_bindings_to`), so the pieces appear at toy shapes:
//!   1. three steps, clipped and not, split against unsplit: parameters, moments and the norm
//!      bit for bit (AdamW is elementwise; pieces are whole multiples of the norm's 1024-value
//!      chunk, so the norm adds the same partial sums in the same order), the pieces re-cut
//!      between steps with the moments carried over;
//!   2. `clip_grad_norm` (the unfused clipping) split against unsplit: norm and clipped gradients;
//!   3. full fine-tuning through `train` of a toy GPT-2 whose wte exceeds the limit: no longer
//!      refused, and it ends where the unsplit run ends (within f32 rounding: the fused head's
//!      vocabulary chunks follow the limit too, so the loss sums in another order).
//!   4. an unsplit optimizer's state loaded into a split one: the next step gives the same bits.

use glassgrad::Tensor;
use glassgrad::cpu::Rng;
use glassgrad::data::TokenDataset;
use glassgrad::gpu::limit_bindings_to;
use glassgrad::model::Gpt2Config;
use glassgrad::model::gpt2::Gpt2;
use glassgrad::optim::{AdamW, ParamGroup};
use glassgrad::tokenizer::{CharTokenizer, Tokenizer};
use glassgrad::train::trainer::{TrainOptions, train};

use crate::gpu::harness::{gpu, temp_dir};

/// 8 KiB: buckets of 2,048 values, so 5,000 and 2,049 are cut into pieces of 2,048 (two norm
/// chunks each); after the re-cut at 1,500 values, pieces of 1,024.
const LIMIT: u64 = 8 << 10;
const SIZES: [usize; 6] = [5000, 17, 2049, 700, 3, 1025];

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Parameters of `SIZES` in two groups (lr, weight decay differ), and their AdamW; built under
/// `limit` when given.
fn setup(limit: Option<u64>) -> (Vec<Tensor>, AdamW) {
    let gpu = gpu();
    let mut rng = Rng::new(18);
    let params: Vec<Tensor> = SIZES
        .iter()
        .map(|&n| Tensor::parameter(&gpu, &rng.array(&[n], -1.0, 1.0).to_f32(), &[n], true))
        .collect::<Result<_, _>>()
        .unwrap();
    let group = |k: usize, lr: f32, weight_decay: f32| ParamGroup {
        params: params.iter().skip(k).step_by(2).cloned().collect(),
        lr,
        weight_decay,
    };
    let _limit = limit.map(limit_bindings_to);
    let adamw = AdamW::new(vec![group(0, 0.01, 0.1), group(1, 0.003, 0.0)], 0.9, 0.95, 1e-8);
    (params, adamw.unwrap())
}

/// dL/dp = a fixed random vector per parameter and step (computed with no forced limit).
fn backward(params: &[Tensor], step: usize) {
    let mut rng = Rng::new(100 + step as u64);
    for (p, &n) in params.iter().zip(&SIZES) {
        let w = Tensor::from_f32(p.gpu(), &rng.array(&[n], -2.0, 2.0).to_f32(), &[n]).unwrap();
        p.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    }
}

/// Three steps; the split run re-cuts its pieces (1,500-value buckets) after the first step.
/// Returns the parameters, the optimizer state and the norm of each step, all as bits.
fn three_steps(limit: Option<u64>, clip: Option<f32>) -> (Vec<Vec<u32>>, usize) {
    let (params, mut adamw) = setup(limit);
    let mut out = vec![];
    let mut buckets = adamw.num_buckets();
    for step in 0..3 {
        backward(&params, step);
        let _limit = limit.map(limit_bindings_to);
        if step == 1 && limit.is_some() {
            adamw.split_buckets_at(1500).unwrap();
        }
        match clip {
            Some(max_norm) => {
                out.push(bits(&adamw.step_clipped(max_norm).unwrap().unwrap().to_vec().unwrap()))
            }
            None => adamw.step().unwrap(),
        }
        buckets = buckets.max(adamw.num_buckets());
        adamw.zero_grad();
    }
    out.extend(params.iter().map(|p| bits(&p.to_vec().unwrap())));
    out.extend(adamw.state().unwrap().iter().map(|(_, v)| bits(v)));
    (out, buckets)
}

#[test]
fn adamw_over_parameters_larger_than_one_binding_gives_the_unsplit_bits() {
    for clip in [None, Some(0.5), Some(1e6)] {
        let (want, one) = three_steps(None, clip);
        let (got, buckets) = three_steps(Some(LIMIT), clip);
        assert_eq!(one, 1, "unsplit: one bucket");
        // 10,794 values in buckets of 2,048, then 1,500: at least 6, then at least 8.
        assert!(buckets >= 8, "the forced limit cut only {buckets} buckets");
        assert_eq!(got.len(), want.len());
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == w, "clip {clip:?}: entry {k} (norms, params, then state) differs");
        }
        println!(
            "OK split AdamW, clip {clip:?}: {} tensors bit-identical, {buckets} buckets",
            got.len()
        );
    }
}

#[test]
fn clipping_over_parameters_larger_than_one_binding_gives_the_unsplit_norm_and_gradients() {
    let run = |limit: Option<u64>| {
        let (params, adamw) = setup(limit);
        backward(&params, 0);
        let _limit = limit.map(limit_bindings_to);
        let norm = adamw.clip_grad_norm(0.5).unwrap();
        let grads: Vec<Vec<u32>> =
            params.iter().map(|p| bits(&p.grad().unwrap().to_vec().unwrap())).collect();
        (norm.to_bits(), grads, adamw.num_buckets())
    };
    let (want_norm, want, _) = run(None);
    let (norm, got, buckets) = run(Some(LIMIT));
    assert!(buckets > 1, "no split happened");
    assert_eq!(norm, want_norm, "norm {} vs {}", f32::from_bits(norm), f32::from_bits(want_norm));
    assert!(got == want, "clipped gradients differ");
    assert!(f32::from_bits(norm) > 0.5, "the norm must exceed max_norm so clipping scales");
    println!("OK split clip: norm {} bit-identical over {buckets} buckets", f32::from_bits(norm));
}

/// 200 distinct characters, so the toy model's wte (200 × 16 × 4 = 12.8 KB) is its largest
/// tensor and exceeds the 8 KiB limit while c_fc (16 × 64 × 4 = 4 KB) and the activations of
/// B1 T8 fit.
fn toy_run(limit: Option<u64>) -> (f32, Vec<f32>) {
    let text: String =
        (0..2000).map(|i| char::from_u32(0x100 + (i * 7 % 200) as u32).unwrap()).collect();
    let chars = CharTokenizer::from_text(&text);
    assert_eq!(chars.vocab_size(), 200);
    let data = TokenDataset::split(&chars.encode(&text).unwrap(), 0.2).unwrap();
    let config = Gpt2Config::new(200, 8, 16, 1, 2);
    let mut model = Gpt2::new_random(&gpu(), config, 3).unwrap();
    let out = temp_dir("big_optim_train");
    let opts = TrainOptions {
        steps: 3,
        batch_size: 1,
        seq_len: 8,
        grad_accum: 1,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup: 1,
        weight_decay: 0.1,
        grad_clip: 1.0,
        eval_every: 3,
        eval_batches: 1,
        seed: 5,
        out: out.to_path_buf(),
        resume: false,
        stop_after: None,
        checkpoint_every: None,
    };
    let _limit = limit.map(limit_bindings_to);
    let summary = train(&mut model, &data, &Tokenizer::Char(chars), &opts, |_| {})
        .unwrap_or_else(|e| panic!("full fine-tuning under limit {limit:?} was refused: {e}"));
    let wte = model.named_parameters().into_iter().find(|(n, _)| n.ends_with("wte.weight"));
    (summary.train_loss, wte.unwrap().1.to_vec().unwrap())
}

#[test]
fn full_fine_tuning_trains_a_wte_larger_than_one_binding() {
    let (want_loss, want_wte) = toy_run(None);
    let (loss, wte) = toy_run(Some(LIMIT));
    // Three steps through the fused head, whose chunks follow the limit: the same sums in
    // another order, so f32 rounding (~1e-7 relative) carried through three updates.
    assert!(((loss - want_loss) / want_loss).abs() < 1e-4, "loss {loss} vs {want_loss}");
    let worst = wte.iter().zip(&want_wte).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "wte differs by {worst} from the unsplit run");
    println!(
        "OK full fine-tuning under an 8 KiB limit: loss {loss} vs {want_loss}, wte within {worst:.1e}"
    );
}

/// A checkpoint's moments written by an unsplit optimizer load into a split one (each piece takes
/// its range of the parameter's moments), and the next step then gives the unsplit bits.
#[test]
fn a_split_optimizer_loads_unsplit_state_and_steps_to_the_same_bits() {
    let (params, mut unsplit) = setup(None);
    backward(&params, 0);
    unsplit.step_clipped(0.5).unwrap();
    unsplit.zero_grad();
    let state = unsplit.state().unwrap();
    let (copies, mut split) = setup(Some(LIMIT));
    for (c, p) in copies.iter().zip(&params) {
        let gpu = p.gpu();
        gpu.upload(c.storage(), bytemuck::cast_slice(&p.to_vec().unwrap())).unwrap();
    }
    {
        let _limit = limit_bindings_to(LIMIT);
        split.load_state(&state).unwrap();
        assert!(split.num_buckets() > 1, "no split happened");
    }
    backward(&params, 1);
    backward(&copies, 1);
    unsplit.step_clipped(0.5).unwrap();
    {
        let _limit = limit_bindings_to(LIMIT);
        split.step_clipped(0.5).unwrap();
    }
    for (k, (c, p)) in copies.iter().zip(&params).enumerate() {
        assert!(bits(&c.to_vec().unwrap()) == bits(&p.to_vec().unwrap()), "parameter {k} differs");
    }
    let (got, want) = (split.state().unwrap(), unsplit.state().unwrap());
    assert!(got.iter().zip(&want).all(|(g, w)| g.0 == w.0 && bits(&g.1) == bits(&w.1)));
    assert_eq!(got.len(), want.len());
    println!("OK split optimizer loaded unsplit state: {} entries bit-identical", got.len());
}
