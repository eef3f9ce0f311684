//! f64 references for lora_linear (the `cpu` module of lora_linear.rs), from matmul's: forward
//! and backward → [dx, dW, (db), dx_d, dA, dB] over 2-D operands.

use crate::cpu::Array;
use crate::ops::matmul::cpu as mm;

pub fn lora_linear(
    x: &Array,
    weight: &Array,
    bias: Option<&Array>,
    x_lora: &Array,
    lora_a: &Array,
    lora_b: &Array,
    scaling: f64,
) -> Array {
    let base = mm::linear(x, weight, bias);
    let down = mm::matmul_t(x_lora, lora_a, false, true);
    let up = mm::matmul_t(&down, lora_b, false, true);
    Array::new(&base.shape, base.data.iter().zip(&up.data).map(|(b, u)| b + scaling * u).collect())
}

#[allow(clippy::too_many_arguments)]
pub fn lora_linear_backward(
    x: &Array,
    weight: &Array,
    bias: Option<&Array>,
    x_lora: &Array,
    lora_a: &Array,
    lora_b: &Array,
    scaling: f64,
    dy: &Array,
) -> Vec<Array> {
    let mut grads = mm::linear_backward(x, weight, bias, dy); // [dx, dW, (db)]
    let down = mm::matmul_t(x_lora, lora_a, false, true);
    let u = Array::new(&dy.shape, dy.data.iter().map(|d| scaling * d).collect());
    let [ddown, db]: [Array; 2] =
        mm::matmul_t_backward(&down, lora_b, false, true, &u).try_into().unwrap();
    grads.extend(mm::matmul_t_backward(x_lora, lora_a, false, true, &ddown)); // [dx_d, dA]
    grads.push(db);
    grads
}
