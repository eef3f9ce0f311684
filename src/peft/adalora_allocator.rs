//! AdaLoRA's RankAllocator (Zhang et al. 2023), as PEFT's `tuners/adalora/layer.py` computes it:
//! which singular values λ (AdaLoRA's `lora_E`) to keep, from smoothed importance scores.
//!
//! Every step before the final phase, for every entry p of every A, E and B (with its gradient g):
//!   I = |p·g|                                    sensitivity
//!   Ī ← β₁·Ī + (1 − β₁)·I                        smoothed sensitivity  (exp_avg_ipt)
//!   Ū ← β₂·Ū + (1 − β₂)·|I − Ī|                  uncertainty           (exp_avg_unc; Ī already new)
//!   s = Ī·Ū                                      the entry's score
//! Triplet k of a layer (row k of A, λ_k, column k of B) scores
//!   S_k = s(λ_k) + mean_i s(A[k, i]) + mean_o s(B[o, k]).
//! Budget (total kept triplets) at step t, with b₀ = Σ init_r, b_T = target_r × layers:
//!   t ≤ tinit: b₀ (no masking) · t > T − tfinal: b_T · otherwise
//!   b(t) = ⌊(b₀ − b_T)·(1 − (t − tinit)/(T − tfinal − tinit))³ + b_T⌋, masking when t % deltaT = 0.
//! Masking: the threshold is the (b₀ − b)-th smallest S over all layers; every λ_k with S_k ≤ it is
//! set to 0 (ties mask more), and the rank pattern is S_k > threshold per layer.
//! At t = T − tfinal the mask is forced at b_T, that pattern is final and the scores are reset;
//! after it, each step re-applies the final pattern (E's optimizer moments would revive λ).
//! `global_step` counts optimizer steps done (1, 2, …, T): HF Trainer's `state.global_step` after
//! a step, so with tfinal = 0 the last step of a T-step run fixes the final pattern.
//! NOTE: f32 arithmetic in PEFT's order (scores are f32 tensors there), so a threshold tie falls
//! the same way; means are summed in f64 (torch's f32 sum order is not ours; a rounding-level
//! difference could only matter at an exact tie between triplets of different layers).

use std::collections::BTreeMap;

/// One adapted layer's host copy: its name ("transformer.h.0.attn.c_attn"), shapes, values and
/// gradients (the allocator writes masked λ back into `lora_e`).
pub struct Triplets {
    pub name: String,
    pub r: usize,
    pub fan_in: usize,
    pub fan_out: usize,
    pub lora_a: Vec<f32>, // (R, in)
    pub lora_e: Vec<f32>, // (R, 1)
    pub lora_b: Vec<f32>, // (out, R)
    pub grad_a: Vec<f32>, // (R, in)
    pub grad_e: Vec<f32>, // (R, 1)
    pub grad_b: Vec<f32>, // (out, R)
}

/// Which λ of each layer survive: layer name → R flags (PEFT's `rank_pattern`).
pub type RankPattern = BTreeMap<String, Vec<bool>>;

/// The schedule's constants (AdaLoraConfig's fields).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub init_r: usize,
    pub target_r: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub total_step: usize,
}

/// Smoothed sensitivity Ī and uncertainty Ū of one tensor.
#[derive(Clone, Default)]
struct Ema {
    ipt: Vec<f32>,
    unc: Vec<f32>,
}

impl Ema {
    fn update(&mut self, p: &[f32], g: &[f32], beta1: f64, beta2: f64) {
        if self.ipt.len() != p.len() {
            *self = Ema { ipt: vec![0.0; p.len()], unc: vec![0.0; p.len()] };
        }
        let (b1, c1) = (beta1 as f32, (1.0 - beta1) as f32);
        let (b2, c2) = (beta2 as f32, (1.0 - beta2) as f32);
        for k in 0..p.len() {
            let ipt = (p[k] * g[k]).abs();
            self.ipt[k] = b1 * self.ipt[k] + c1 * ipt;
            self.unc[k] = b2 * self.unc[k] + c2 * (ipt - self.ipt[k]).abs();
        }
    }
    fn score(&self, k: usize) -> f32 {
        self.ipt[k] * self.unc[k]
    }
}

/// The allocator's state: the EMAs of every layer's A, E, B (by layer name) and the final pattern.
pub struct RankAllocator {
    pub schedule: Schedule,
    ema: BTreeMap<String, [Ema; 3]>,
    /// The last pattern masking produced (PEFT's `config.rank_pattern`), `None` before any.
    pub rank_pattern: Option<RankPattern>,
}

impl RankAllocator {
    pub fn new(schedule: Schedule) -> RankAllocator {
        RankAllocator { schedule, ema: BTreeMap::new(), rank_pattern: None }
    }

    /// The smoothed sensitivity Ī and uncertainty Ū of `layer`'s A, λ, B (in that order), or
    /// `None` before its first update and after the final mask.
    pub fn ema(&self, layer: &str) -> Option<[(&[f32], &[f32]); 3]> {
        let e = self.ema.get(layer)?;
        Some([0, 1, 2].map(|i| (e[i].ipt.as_slice(), e[i].unc.as_slice())))
    }

    /// (budget, whether to mask) at `step` (PEFT's `budget_schedule`); `layers` adapted layers.
    pub fn budget(&self, step: usize, layers: usize) -> (usize, bool) {
        let s = &self.schedule;
        let (init_bgt, target_bgt) = (s.init_r * layers, s.target_r * layers);
        if step <= s.tinit {
            (init_bgt, false)
        } else if step > s.total_step - s.tfinal {
            (target_bgt, true)
        } else {
            let span = (s.total_step - s.tfinal - s.tinit) as f64;
            let mul_coeff = 1.0 - (step - s.tinit) as f64 / span;
            let b = (init_bgt - target_bgt) as f64 * mul_coeff.powi(3) + target_bgt as f64;
            (b as usize, step.is_multiple_of(s.delta_t))
        }
    }

    fn update_ipt(&mut self, layers: &[Triplets]) {
        let (b1, b2) = (self.schedule.beta1, self.schedule.beta2);
        for l in layers {
            let ema = self.ema.entry(l.name.clone()).or_default();
            ema[0].update(&l.lora_a, &l.grad_a, b1, b2);
            ema[1].update(&l.lora_e, &l.grad_e, b1, b2);
            ema[2].update(&l.lora_b, &l.grad_b, b1, b2);
        }
    }

    /// S_k of every triplet of layer `l` (see the header).
    fn triplet_scores(&self, l: &Triplets) -> Vec<f32> {
        let ema = &self.ema[&l.name];
        (0..l.r)
            .map(|k| {
                let a: f64 = (0..l.fan_in).map(|i| ema[0].score(k * l.fan_in + i) as f64).sum();
                let b: f64 = (0..l.fan_out).map(|o| ema[2].score(o * l.r + k) as f64).sum();
                let (a, b) = ((a / l.fan_in as f64) as f32, (b / l.fan_out as f64) as f32);
                ema[1].score(k) + (a + b)
            })
            .collect()
    }

    /// Zeroes every λ whose triplet scores at or below the (b₀ − budget)-th smallest score.
    fn mask_to_budget(&self, layers: &mut [Triplets], budget: usize) -> RankPattern {
        let scores: Vec<Vec<f32>> = layers.iter().map(|l| self.triplet_scores(l)).collect();
        let mut all: Vec<f32> = scores.iter().flatten().copied().collect();
        all.sort_by(f32::total_cmp);
        let k = all.len().saturating_sub(budget);
        // k = 0 keeps every triplet (torch's kthvalue would refuse k = 0; the budget never asks it).
        let threshold = if k == 0 { f32::NEG_INFINITY } else { all[k - 1] };
        let mut pattern = RankPattern::new();
        for (l, s) in layers.iter_mut().zip(&scores) {
            let keep: Vec<bool> = s.iter().map(|s| *s > threshold).collect();
            apply_pattern(l, &keep);
            pattern.insert(l.name.clone(), keep);
        }
        pattern
    }

    /// PEFT's `AdaLoraModel.update_and_allocate(global_step)`: call after the optimizer step,
    /// while the step's gradients are in `layers`. Masks λ in `layers` in place; returns the
    /// budget of this step.
    pub fn update_and_allocate(&mut self, layers: &mut [Triplets], global_step: usize) -> usize {
        let s = self.schedule.clone();
        let last = s.total_step - s.tfinal;
        let (budget, mask) = self.budget(global_step, layers.len());
        if global_step < last {
            self.update_ipt(layers);
            if mask {
                self.rank_pattern = Some(self.mask_to_budget(layers, budget));
            }
        } else if global_step == last {
            self.rank_pattern = Some(self.mask_to_budget(layers, budget));
            self.ema.clear();
        } else if let Some(pattern) = &self.rank_pattern {
            for l in layers.iter_mut() {
                if let Some(keep) = pattern.get(&l.name) {
                    apply_pattern(l, keep);
                }
            }
        }
        budget
    }
}

/// λ_k = 0 where `keep[k]` is false.
fn apply_pattern(l: &mut Triplets, keep: &[bool]) {
    for (e, keep) in l.lora_e.iter_mut().zip(keep) {
        if !keep {
            *e = 0.0;
        }
    }
}
