//! Reverse-mode autodiff, define-by-run (micrograd's idea on GPU tensors).
//!
//! Every op computes its output, then calls `out.attach(op, inputs, backward)`: if some input needs
//! a gradient (and grad mode is on) the output keeps a [`Node`] holding the inputs that need one
//! (an input that does not is not held, so its storage can go) and a closure
//! mapping the output gradient to the input gradients. Otherwise the closure is dropped at once,
//! and with it every activation it saved — so a frozen weight costs no activation memory.
//!
//! `backward()` sorts the graph topologically and walks it once in reverse, *adding* gradients
//! where a tensor feeds several ops. Each node is consumed as it is used, freeing its saved
//! activations. Leaves that require grad keep their gradient in `.grad()`.
//!
//! The graph's lifetime (docs/autodiff.md has the long version):
//! - A graph is spent by the `backward()` that walks it. A second backward reaching any of its
//!   interior tensors is refused before any gradient moves (PyTorch's "Trying to backward through
//!   the graph a second time"); build the graph again instead.
//! - `no_grad()` stops recording; `enable_grad()` turns recording back on inside a `no_grad`
//!   region, in particular inside a backward closure, which runs with recording off.
//! - [`checkpoint`] uses both: its forward records nothing, and its backward re-runs the segment
//!   with the tape on, walks that fresh graph, and hands the input gradients on.

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
/// Restores the previous grad mode when dropped (returned by [`no_grad`] and [`enable_grad`]).
pub struct NoGradGuard(bool);

pub fn no_grad() -> NoGradGuard {
    NoGradGuard(GRAD_ENABLED.with(|g| g.replace(false)))
}

/// While alive, ops record a graph again, even inside `no_grad` or a backward closure (torch's
/// `enable_grad`): how a recomputed segment builds its own graph during the backward pass.
pub fn enable_grad() -> NoGradGuard {
    NoGradGuard(GRAD_ENABLED.with(|g| g.replace(true)))
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
    /// The inputs that needed a gradient when the op ran (`None` for the others: holding them
    /// would keep their storage alive until backward for nothing).
    pub inputs: Vec<Option<Tensor>>,
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
            inputs: inputs.iter().map(|t| t.requires_grad().then(|| (*t).clone())).collect(),
            backward: Box::new(backward),
        };
        Tensor(Rc::new(Inner {
            id: self.0.id,
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: self.0.storage.clone(),
            requires_grad: std::cell::Cell::new(true),
            node: std::cell::RefCell::new(Some(node)),
            consumed: std::cell::Cell::new(None),
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
        let mut order = topological_order(self)?;
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), seed.clone());
        // Popped, not iterated: each tensor's handle goes once its node has run, so an op's output
        // is freed as soon as nothing else holds it, not at the end of the walk.
        while let Some(t) = order.pop() {
            let Some(g) = grads.remove(&t.id()) else { continue };
            let node = t.0.node.borrow_mut().take();
            match node {
                Some(node) => {
                    t.0.consumed.set(Some(node.op));
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
                        let (Some(input), Some(gi)) = (input, gi) else { continue };
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

/// Tensors reachable from `root` through nodes, each after all of its inputs. Refuses a graph an
/// earlier backward has spent (any reachable tensor whose node was consumed), before anything runs.
fn topological_order(root: &Tensor) -> Result<Vec<Tensor>> {
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
        if let Some(op) = t.0.consumed.get() {
            return Err(Error::Autograd(format!(
                "backward through a graph a second time: the tensor of shape {:?} made by {op} \
                 was already walked by an earlier backward(), which freed what {op} saved. \
                 Run the forward again and call backward() on the new result",
                t.shape()
            )));
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.0.node.borrow().as_ref() {
            for input in node.inputs.iter().flatten() {
                if input.requires_grad() && !seen.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    Ok(order)
}

/// Gradient checkpointing of one segment (Chen et al. 2016): `f(inputs)` runs with recording off,
/// so nothing inside the segment is saved but its inputs; in the backward pass the segment is run
/// again with the tape on (`enable_grad`), the fresh graph is walked from the output gradient, and
/// the inputs' gradients go on to the rest of the graph. One extra forward buys the segment's
/// activation memory.
///
/// `params` are the leaves `f` reads besides `inputs` (a block's weights, a LoRA's A and B);
/// anything an op computed (a prefix sliced from a table) must be an input instead.
/// They make the output require grad even when no input does — the trap of torch's reentrant
/// checkpoint, where a frozen embedding in front of LoRA layers leaves the adapters without a
/// gradient — and they receive their gradients from the recomputed graph directly.
/// NOTE: `f` must compute the same values twice: dropout inside it must use a fixed seed.
pub fn checkpoint(
    inputs: &[&Tensor],
    params: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor> + 'static,
) -> Result<Tensor> {
    if let Some(p) = params.iter().find(|p| p.0.node.borrow().is_some()) {
        return Err(Error::Autograd(format!(
            "checkpoint: a parameter of shape {:?} was computed by an op; pass it in `inputs`, \
             so the recompute ends at it instead of walking the graph that made it",
            p.shape()
        )));
    }
    let saved: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let out = {
        let _off = no_grad();
        f(&saved)?
    };
    let n_params = params.len();
    let mut all: Vec<&Tensor> = inputs.to_vec();
    all.extend(params);
    Ok(out.attach("checkpoint", &all, move |dout| {
        let _on = enable_grad();
        // Fresh leaves over the same storage: the recomputed graph ends at them.
        let replay: Vec<Tensor> =
            saved.iter().map(|t| t.with_requires_grad(t.requires_grad())).collect();
        let y = f(&replay)?;
        if y.shape() != dout.shape() {
            return Err(Error::Autograd(format!(
                "checkpoint: the recomputed segment gave shape {:?}, the first run {:?}",
                y.shape(),
                dout.shape()
            )));
        }
        if y.requires_grad() {
            y.backward_with(dout)?;
        }
        let mut grads: Vec<Option<Tensor>> = replay.iter().map(|t| t.grad()).collect();
        grads.extend((0..n_params).map(|_| None)); // already accumulated into their .grad
        Ok(grads)
    }))
}
