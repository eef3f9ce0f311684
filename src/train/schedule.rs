//! The learning-rate schedule: linear warmup, then cosine decay to a floor (GPT-2/nanoGPT's).
//!
//!   step < warmup:            lr = max_lr · (step + 1) / warmup
//!   warmup ≤ step < total:    lr = min_lr + ½(1 + cos(π·(step − warmup)/(total − warmup)))·(max_lr − min_lr)
//!   step ≥ total:             lr = min_lr
//! NOTE: warmup uses step + 1 so the very first step does not have lr = 0 (a wasted step).

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub max_lr: f32,
    pub min_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// A constant learning rate.
    pub fn constant(lr: f32) -> LrSchedule {
        LrSchedule { max_lr: lr, min_lr: lr, warmup_steps: 0, total_steps: 0 }
    }

    /// The learning rate for 0-based `step`.
    pub fn lr(&self, step: usize) -> f32 {
        if step < self.warmup_steps {
            return self.max_lr * (step + 1) as f32 / self.warmup_steps as f32;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let progress =
            (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64; // [0, 1)
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()); // 1 → 0
        (self.min_lr as f64 + coeff * (self.max_lr - self.min_lr) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::LrSchedule;

    #[test]
    fn warmup_is_linear_then_cosine_reaches_the_floor() {
        let s = LrSchedule { max_lr: 1e-3, min_lr: 1e-4, warmup_steps: 10, total_steps: 110 };
        // Warmup: lr(k) = 1e-3 · (k + 1)/10.
        assert!((s.lr(0) - 1e-4).abs() < 1e-9);
        assert!((s.lr(4) - 5e-4).abs() < 1e-9);
        assert!((s.lr(9) - 1e-3).abs() < 1e-9);
        // First decay step has progress 0: the peak.
        assert!((s.lr(10) - 1e-3).abs() < 1e-9);
        // Halfway (progress ½): cos(π/2) = 0, so lr = min + ½(max − min) = 5.5e-4.
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-8);
        // At and past the end: the floor.
        assert_eq!(s.lr(110), 1e-4);
        assert_eq!(s.lr(10_000), 1e-4);
        // Monotone decreasing after warmup.
        for k in 10..110 {
            assert!(s.lr(k + 1) <= s.lr(k), "lr rose at step {k}");
        }
    }

    #[test]
    fn constant_and_no_warmup() {
        let c = LrSchedule::constant(3e-4);
        assert_eq!(c.lr(0), 3e-4);
        assert_eq!(c.lr(999), 3e-4);
        let s = LrSchedule { max_lr: 2.0, min_lr: 0.0, warmup_steps: 0, total_steps: 4 };
        // progress 0, ¼, ½, ¾ → ½(1 + cos πp)·2 = 2, 1 + √½, 1, 1 − √½.
        let want = [2.0, 1.0 + 0.5f32.sqrt(), 1.0, 1.0 - 0.5f32.sqrt(), 0.0];
        for (k, w) in want.iter().enumerate() {
            assert!((s.lr(k) - w).abs() < 1e-6, "step {k}: {} vs {w}", s.lr(k));
        }
    }
}
