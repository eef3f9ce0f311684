//! Reverse-mode autodiff, define-by-run (micrograd's idea on GPU tensors).
//!
//! Every op computes its output, then calls `out.attach(op, inputs, backward)`: if some input needs
//! a gradient (and grad mode is on) the output keeps a [`Node`] holding the inputs and a closure
//! mapping the output gradient to the input gradients. Otherwise the closure is dropped at once,
//! and with it every activation it saved — so a frozen weight costs no activation memory.
//!
//! `backward()` sorts the graph topologically and walks it once in reverse, *adding* gradients
//! where a tensor feeds several ops. Each node is consumed as it is used, freeing its saved
//! activations. Leaves that require grad keep their gradient in `.grad()`.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::gpu::Category;
use crate::tensor::{Inner, Tensor};

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// While alive, ops record no graph (inference, optimizer updates, the backward pass itself).
pub struct NoGradGuard(bool);

pub fn no_grad() -> NoGradGuard {
    NoGradGuard(GRAD_ENABLED.with(|g| g.replace(false)))
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.0));
    }
}

/// Maps the output gradient to one gradient per input (`None` where an input needs none).
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

pub struct Node {
    pub op: &'static str,
    pub inputs: Vec<Tensor>,
    pub backward: BackwardFn,
}

impl Tensor {
    /// Makes `self` (an op's fresh output) remember how to send gradients to `inputs`.
    pub fn attach(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Tensor {
        if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            return self; // `backward` and what it saved are dropped here
        }
        if self.gpu().debug >= 1 {
            let shapes: Vec<_> = inputs.iter().map(|t| t.shape().to_vec()).collect();
            eprintln!("[glassgrad] {op:<16} {shapes:?} -> {:?}", self.shape());
        }
        let node = Node {
            op,
            inputs: inputs.iter().map(|t| (*t).clone()).collect(),
            backward: Box::new(backward),
        };
        Tensor(Rc::new(Inner {
            id: self.0.id,
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: self.0.storage.clone(),
            requires_grad: true,
            node: std::cell::RefCell::new(Some(node)),
            grad: std::cell::RefCell::new(None),
        }))
    }

    /// Backward from a one-element tensor (the loss), seeded with 1.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a one-element tensor (a loss), got shape {:?}; use backward_with(seed)",
                self.shape()
            )));
        }
        let seed = Tensor::full(self.gpu(), self.shape(), 1.0)?;
        self.backward_with(&seed)
    }

    /// Backward seeded with `seed` = dL/dself (same shape as self).
    pub fn backward_with(&self, seed: &Tensor) -> Result<()> {
        if seed.shape() != self.shape() {
            return Err(Error::Autograd(format!(
                "seed shape {:?} differs from tensor shape {:?}",
                seed.shape(),
                self.shape()
            )));
        }
        if !self.requires_grad() {
            return Err(Error::Autograd("backward() on a tensor that does not require grad (every input was frozen, or it was made under no_grad)".into()));
        }
        let _guard = no_grad();
        let order = topological_order(self);
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), seed.clone());
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else { continue };
            let node = t.0.node.borrow_mut().take();
            match node {
                Some(node) => {
                    if t.gpu().debug >= 1 {
                        eprintln!("[glassgrad] backward {:<16} dout {:?}", node.op, g.shape());
                    }
                    let input_grads = (node.backward)(&g)?;
                    if input_grads.len() != node.inputs.len() {
                        return Err(Error::Autograd(format!(
                            "{}: backward returned {} gradients for {} inputs",
                            node.op,
                            input_grads.len(),
                            node.inputs.len()
                        )));
                    }
                    for (input, gi) in node.inputs.iter().zip(input_grads) {
                        let Some(gi) = gi else { continue };
                        if !input.requires_grad() {
                            continue;
                        }
                        if gi.shape() != input.shape() {
                            return Err(Error::Autograd(format!(
                                "{}: gradient of shape {:?} for an input of shape {:?}",
                                node.op,
                                gi.shape(),
                                input.shape()
                            )));
                        }
                        let sum = match grads.remove(&input.id()) {
                            Some(prev) => prev.add(&gi)?,
                            None => gi,
                        };
                        grads.insert(input.id(), sum);
                    }
                }
                None if t.requires_grad() => {
                    // A leaf: accumulate into .grad (gradient accumulation across backward calls).
                    let mut slot = t.0.grad.borrow_mut();
                    let total = match slot.take() {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    };
                    total.set_category(Category::Gradients);
                    *slot = Some(total.detach());
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// Tensors reachable from `root` through nodes, each after all of its inputs.
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative DFS: (tensor, children pushed?) — deep graphs must not overflow the stack.
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.0.node.borrow().as_ref() {
            for input in &node.inputs {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}
