//! The multi-tensor AdamW against the per-tensor kernels it replaced, bit for bit, and its
//! dispatch count.
//!
//! The reference below drives adamw.wgsl's `adamw_step[_clipped]` and grad_norm.wgsl's
//! `sumsq_chunks` one parameter at a time, exactly as src/optim.rs did before the arenas: one
//! norm partial-sum dispatch per gradient, then the chunk sums, the square root, and one update
//! dispatch per parameter. The same f32 operations in the same order must give the same bits.

use glassgrad::cpu::Rng;
use glassgrad::gpu::{Kernel, grid_1d};
use glassgrad::optim::{AdamW, AdamWParams, CHUNK, NormParams, ParamGroup};
use glassgrad::{Category, DType, Tensor};

use crate::gpu::harness::gpu;

const ADAMW: &str = include_str!("../../shaders/adamw.wgsl");
const GRAD_NORM: &str = include_str!("../../shaders/grad_norm.wgsl");
static STEP: Kernel =
    Kernel { name: "adamw_step", source: ADAMW, entry: "adamw_step", reads: 1, writes: 3 };
static STEP_CLIPPED: Kernel = Kernel {
    name: "adamw_step_clipped",
    source: ADAMW,
    entry: "adamw_step_clipped",
    reads: 2,
    writes: 3,
};
static SUMSQ: Kernel = Kernel {
    name: "grad_norm_sumsq_chunks",
    source: GRAD_NORM,
    entry: "sumsq_chunks",
    reads: 1,
    writes: 1,
};
static SUM: Kernel = Kernel {
    name: "grad_norm_sum_chunks",
    source: GRAD_NORM,
    entry: "sum_chunks",
    reads: 1,
    writes: 1,
};
static FINISH: Kernel = Kernel {
    name: "grad_norm_finish",
    source: GRAD_NORM,
    entry: "finish_norm",
    reads: 1,
    writes: 1,
};

fn norm_params(n: usize, k: usize, offset: usize) -> NormParams {
    NormParams { n: n as u32, k: k as u32, offset: offset as u32, ..bytemuck::Zeroable::zeroed() }
}

/// The per-tensor AdamW: its own moments per parameter, one dispatch per parameter.
struct PerTensor {
    /// (parameter, lr, weight decay, m, v)
    params: Vec<(Tensor, f32, f32, Tensor, Tensor)>,
    step: i32,
}

impl PerTensor {
    fn new(params: &[(Tensor, f32, f32)]) -> PerTensor {
        let zeros = |p: &Tensor| Tensor::zeros(p.gpu(), p.shape()).unwrap();
        let params = params.iter().map(|(p, lr, wd)| (p.clone(), *lr, *wd, zeros(p), zeros(p)));
        PerTensor { params: params.collect(), step: 0 }
    }

    /// ‖g‖ over the parameters with a gradient, as grad_norm() computed it per gradient.
    fn norm(&self) -> Tensor {
        let grads: Vec<Tensor> = self.params.iter().filter_map(|p| p.0.grad()).collect();
        let gpu = grads[0].gpu().clone();
        let total: usize = grads.iter().map(|g| g.numel().div_ceil(CHUNK)).sum();
        let mut partial =
            Tensor::empty(&gpu, &[total], DType::F32, Category::Scratch, "t").unwrap();
        let mut offset = 0;
        for g in &grads {
            let chunks = g.numel().div_ceil(CHUNK);
            let (reads, writes) = ([g.storage()], [partial.storage()]);
            let params = norm_params(g.numel(), CHUNK, offset);
            gpu.dispatch(&SUMSQ, &params, &reads, &writes, grid_1d(chunks, 256)).unwrap();
            offset += chunks;
        }
        while partial.numel() > 1 {
            let n = partial.numel();
            let next =
                Tensor::empty(&gpu, &[n.div_ceil(CHUNK)], DType::F32, Category::Scratch, "t");
            let next = next.unwrap();
            let (reads, writes) = ([partial.storage()], [next.storage()]);
            let groups = grid_1d(n.div_ceil(CHUNK), 256);
            gpu.dispatch(&SUM, &norm_params(n, CHUNK, 0), &reads, &writes, groups).unwrap();
            partial = next;
        }
        let norm = Tensor::empty(&gpu, &[1], DType::F32, Category::Scratch, "t").unwrap();
        let (reads, writes) = ([partial.storage()], [norm.storage()]);
        gpu.dispatch(&FINISH, &norm_params(1, 1, 0), &reads, &writes, [1, 1, 1]).unwrap();
        norm
    }

    fn step(&mut self, max_norm: Option<f32>) {
        let norm = max_norm.map(|_| self.norm());
        self.step += 1;
        let (b1, b2, eps) = (0.9f32, 0.95f32, 1e-8f32);
        for (p, lr, wd, m, v) in &self.params {
            let Some(g) = p.grad() else { continue };
            let params = AdamWParams {
                n: p.numel() as u32,
                lr: *lr,
                beta1: b1,
                beta2: b2,
                eps,
                weight_decay: *wd,
                bias_correction1: (1.0 - (b1 as f64).powi(self.step)) as f32,
                bias_correction2: (1.0 - (b2 as f64).powi(self.step)) as f32,
                max_norm: max_norm.unwrap_or(0.0),
                ..bytemuck::Zeroable::zeroed()
            };
            let writes = [p.storage(), m.storage(), v.storage()];
            let groups = grid_1d(p.numel(), 256);
            let gpu = p.gpu();
            match &norm {
                Some(n) => {
                    let reads = [g.storage(), n.storage()];
                    gpu.dispatch(&STEP_CLIPPED, &params, &reads, &writes, groups).unwrap()
                }
                None => gpu.dispatch(&STEP, &params, &[g.storage()], &writes, groups).unwrap(),
            }
        }
    }
}

/// Odd sizes around the workgroup (256) and the norm's chunk (1024), 1 and 3 included.
const SIZES: [usize; 12] = [1, 3, 17, 65, 255, 257, 1023, 1024, 1025, 2049, 5, 700];

/// Three AdamW steps of parameters of `SIZES` in three groups (different lr and weight decay),
/// one of them frozen and one without a gradient at step 2, through `AdamW` and through the
/// per-tensor reference. Returns both runs' parameters and moments.
fn three_steps(clip: Option<f32>, bucket_elements: Option<usize>) -> [Vec<Vec<f32>>; 2] {
    let gpu = gpu();
    let mut rng = Rng::new(77);
    let data: Vec<Vec<f32>> = SIZES.iter().map(|&n| rng.array(&[n], -1.0, 1.0).to_f32()).collect();
    let weights: Vec<Vec<f32>> =
        SIZES.iter().map(|&n| rng.array(&[n], -3.0, 3.0).to_f32()).collect();
    let hyper = |k: usize| [(0.01f32, 0.1f32), (0.003, 0.0), (0.05, 0.01)][k % 3];
    let frozen = 4; // never trains: no state, never touched
    let skipped = 7; // no gradient at step 2: skipped (torch semantics)
    let make = |k: usize| Tensor::parameter(&gpu, &data[k], &[SIZES[k]], k != frozen).unwrap();
    let (ours, theirs): (Vec<Tensor>, Vec<Tensor>) =
        (0..SIZES.len()).map(|k| (make(k), make(k))).unzip();
    let groups = (0..3)
        .map(|gi| ParamGroup {
            params: (0..SIZES.len()).filter(|k| k % 3 == gi).map(|k| ours[k].clone()).collect(),
            lr: hyper(gi).0,
            weight_decay: hyper(gi).1,
        })
        .collect();
    let mut adamw = AdamW::new(groups, 0.9, 0.95, 1e-8).unwrap();
    if let Some(n) = bucket_elements {
        adamw.split_buckets_at(n).unwrap();
    }
    // In the optimizer's order, group by group: the norm's partial sums follow it.
    let trainable: Vec<(Tensor, f32, f32)> = (0..3)
        .flat_map(|gi| (0..SIZES.len()).filter(move |k| k % 3 == gi))
        .filter(|&k| k != frozen)
        .map(|k| (theirs[k].clone(), hyper(k % 3).0, hyper(k % 3).1))
        .collect();
    let mut reference = PerTensor::new(&trainable);
    for step in 1..=3 {
        for params in [&ours, &theirs] {
            for (k, p) in params.iter().enumerate() {
                if k == frozen || (step == 2 && k == skipped) {
                    continue;
                }
                let w = Tensor::from_f32(&gpu, &weights[k], &[SIZES[k]]).unwrap();
                p.mul(&w).unwrap().sum_all().unwrap().backward().unwrap(); // dL/dp = w
            }
        }
        match clip {
            Some(max_norm) => drop(adamw.step_clipped(max_norm).unwrap()),
            None => adamw.step().unwrap(),
        }
        reference.step(clip);
        adamw.zero_grad();
        theirs.iter().for_each(Tensor::zero_grad);
    }
    assert_eq!(ours[frozen].to_vec().unwrap(), data[frozen], "the frozen parameter is untouched");
    let values = |ps: &[Tensor]| ps.iter().map(|p| p.to_vec().unwrap()).collect::<Vec<_>>();
    let mut got = values(&ours);
    got.extend(adamw.state().unwrap().into_iter().skip(1).map(|(_, v)| v));
    let mut want = values(&theirs);
    for (_, _, _, m, v) in &reference.params {
        want.extend([m.to_vec().unwrap(), v.to_vec().unwrap()]);
    }
    [got, want]
}

#[test]
fn multi_tensor_adamw_gives_the_per_tensor_bits_over_many_odd_sizes() {
    for clip in [None, Some(0.5), Some(1e6)] {
        for buckets in [None, Some(1500)] {
            let [got, want] = three_steps(clip, buckets);
            assert_eq!(got.len(), want.len());
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let same = g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same && g.len() == w.len(),
                    "clip {clip:?} buckets {buckets:?}: tensor {k} differs"
                );
            }
            println!(
                "OK AdamW clip {clip:?}, buckets of {buckets:?}: {} tensors bit-identical",
                got.len()
            );
        }
    }
}

/// Dispatches of one clipped step: 2 per bucket + the chunk sums + the root, however many
/// tensors share the bytes.
#[test]
fn the_step_is_a_constant_number_of_dispatches() {
    let gpu = gpu();
    let count = |tensors: usize, bucket_elements: Option<usize>| {
        // 4,096 values in all, split into `tensors` parameters.
        let params: Vec<Tensor> = (0..tensors)
            .map(|k| {
                let n = 4096 / tensors + usize::from(k < 4096 % tensors);
                Tensor::parameter(&gpu, &vec![0.5; n], &[n], true).unwrap()
            })
            .collect();
        let group = ParamGroup { params: params.clone(), lr: 0.1, weight_decay: 0.0 };
        let mut adamw = AdamW::new(vec![group], 0.9, 0.95, 1e-8).unwrap();
        if let Some(n) = bucket_elements {
            adamw.split_buckets_at(n).unwrap();
        }
        for p in &params {
            p.sum_all().unwrap().backward().unwrap();
        }
        gpu.synchronize().unwrap();
        let before = gpu.dispatches.get();
        adamw.step_clipped(1.0).unwrap();
        let step_clipped = gpu.dispatches.get() - before;
        let before = gpu.dispatches.get();
        adamw.step().unwrap();
        (step_clipped, gpu.dispatches.get() - before, adamw.num_buckets())
    };
    // One bucket: sumsq, chunk sum (4 partials → 1), root, update; the plain step: the update.
    for tensors in [1, 2, 7, 64, 300] {
        assert_eq!(count(tensors, None), (4, 1, 1), "{tensors} tensors");
    }
    // Buckets of 1,024 values: 4 buckets, each a sumsq and an update.
    assert_eq!(count(64, Some(1024)), (2 * 4 + 2, 4, 4));
    println!("OK AdamW step: 4 dispatches clipped, 1 plain, for 1 to 300 tensors of 4,096 values");
}
