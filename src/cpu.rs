//! The CPU oracle: a plain f64 array. Every op has a reference forward and backward written with
//! clear loops over this type; the tests compare the GPU against it and it against finite
//! differences.

#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Array {
    pub fn new(shape: &[usize], data: Vec<f64>) -> Array {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "Array::new: data does not fill {shape:?}"
        );
        Array { shape: shape.to_vec(), data }
    }
    pub fn zeros(shape: &[usize]) -> Array {
        Array::new(shape, vec![0.0; shape.iter().product()])
    }
    pub fn from_f32(shape: &[usize], data: &[f32]) -> Array {
        Array::new(shape, data.iter().map(|&x| x as f64).collect())
    }
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&x| x as f32).collect()
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn last_dim(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Number of rows when viewed as [rows, last_dim].
    pub fn rows(&self) -> usize {
        self.numel() / self.last_dim().max(1)
    }
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Array {
        Array::new(&self.shape, self.data.iter().map(|&x| f(x)).collect())
    }
    pub fn zip(&self, other: &Array, f: impl Fn(f64, f64) -> f64) -> Array {
        assert_eq!(self.shape, other.shape, "Array::zip: shapes differ");
        Array::new(&self.shape, self.data.iter().zip(&other.data).map(|(&a, &b)| f(a, b)).collect())
    }
    pub fn reshape(&self, shape: &[usize]) -> Array {
        Array::new(shape, self.data.clone())
    }
    pub fn sum(&self) -> f64 {
        self.data.iter().sum()
    }
    /// Σ self·other: the scalar loss the gradient checks differentiate.
    pub fn dot(&self, other: &Array) -> f64 {
        self.data.iter().zip(&other.data).map(|(a, b)| a * b).sum()
    }
}

/// A small deterministic generator (SplitMix64) for test data and initialisation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn array(&mut self, shape: &[usize], lo: f64, hi: f64) -> Array {
        let n = shape.iter().product();
        Array::new(shape, (0..n).map(|_| self.range(lo, hi)).collect())
    }
}
