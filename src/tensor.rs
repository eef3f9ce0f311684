//! The one tensor type: a shape, GPU storage, and (when it takes part in autodiff) a node.
//!
//! Storage is contiguous row-major. `reshape` is a view (it shares the storage). Element types:
//! f32 for everything that trains; u32 and u8 for indices and packed 4-bit weights (u8 data is
//! stored four to a 32-bit word, since WGSL has no 8-bit storage type).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::autograd::Node;
use crate::error::{Error, Result, shape_err};
use crate::gpu::{Category, Gpu, Storage};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    U8,
}

impl DType {
    /// Bytes one element takes in storage.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::U8 => 1,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) storage: Rc<Storage>,
    /// Settable in place on a leaf (freezing a parameter); always true on an op's output that
    /// has a node.
    pub(crate) requires_grad: Cell<bool>,
    /// How this tensor was made, when some input needed a gradient. Taken by `backward()`.
    pub(crate) node: RefCell<Option<Node>>,
    /// The op whose node an earlier `backward()` consumed: this tensor is an interior node of a
    /// spent graph, not a leaf, and a second backward through it is an error.
    pub(crate) consumed: Cell<Option<&'static str>>,
    /// The accumulated gradient of a leaf that requires grad. A frozen tensor never has one.
    pub(crate) grad: RefCell<Option<Tensor>>,
}

/// A handle to a tensor on the GPU. Cloning is cheap (reference counted).
#[derive(Clone)]
pub struct Tensor(pub(crate) Rc<Inner>);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A new tensor with uninitialised storage (for op outputs), counted as `category`.
    pub fn empty(
        gpu: &Rc<Gpu>,
        shape: &[usize],
        dtype: DType,
        category: Category,
        op: &'static str,
    ) -> Result<Tensor> {
        let bytes = (numel(shape) * dtype.size()) as u64;
        let storage = Storage::new(gpu, bytes, category, op)?;
        Ok(Tensor::from_storage(Rc::new(storage), shape.to_vec(), dtype))
    }

    pub(crate) fn from_storage(storage: Rc<Storage>, shape: Vec<usize>, dtype: DType) -> Tensor {
        Tensor(Rc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            dtype,
            storage,
            requires_grad: Cell::new(false),
            node: RefCell::new(None),
            consumed: Cell::new(None),
            grad: RefCell::new(None),
        }))
    }

    /// Uploads f32 data. `data.len()` must equal the product of `shape`.
    pub fn from_f32(gpu: &Rc<Gpu>, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return shape_err(
                "from_f32",
                format!("{} values do not fill shape {shape:?}", data.len()),
            );
        }
        let t = Tensor::empty(gpu, shape, DType::F32, Category::Activations, "from_f32")?;
        gpu.upload(&t.0.storage, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Uploads u32 data (token ids, packed codes).
    pub fn from_u32(gpu: &Rc<Gpu>, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return shape_err(
                "from_u32",
                format!("{} values do not fill shape {shape:?}", data.len()),
            );
        }
        let t = Tensor::empty(gpu, shape, DType::U32, Category::Activations, "from_u32")?;
        gpu.upload(&t.0.storage, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Uploads bytes (packed 4-bit weights); stored four to a word on the GPU.
    pub fn from_u8(gpu: &Rc<Gpu>, data: &[u8], shape: &[usize]) -> Result<Tensor> {
        if data.len() != numel(shape) {
            return shape_err(
                "from_u8",
                format!("{} values do not fill shape {shape:?}", data.len()),
            );
        }
        let t = Tensor::empty(gpu, shape, DType::U8, Category::Quantized, "from_u8")?;
        gpu.upload(&t.0.storage, data)?;
        Ok(t)
    }

    pub fn zeros(gpu: &Rc<Gpu>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32(gpu, &vec![0.0; numel(shape)], shape)
    }

    pub fn full(gpu: &Rc<Gpu>, shape: &[usize], value: f32) -> Result<Tensor> {
        Tensor::from_f32(gpu, &vec![value; numel(shape)], shape)
    }

    /// A trainable leaf (counted as parameters). `requires_grad = false` makes it frozen: it will
    /// never get a gradient buffer, and ops do not save activations just for it.
    pub fn parameter(
        gpu: &Rc<Gpu>,
        data: &[f32],
        shape: &[usize],
        requires_grad: bool,
    ) -> Result<Tensor> {
        let t = Tensor::from_f32(gpu, data, shape)?;
        t.0.storage.set_category(Category::Parameters);
        Ok(t.with_requires_grad(requires_grad))
    }

    /// The same storage as a leaf with the given `requires_grad` (no copy, no history).
    pub fn with_requires_grad(&self, requires_grad: bool) -> Tensor {
        Tensor(Rc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: self.0.storage.clone(),
            requires_grad: Cell::new(requires_grad),
            node: RefCell::new(None),
            consumed: Cell::new(None),
            grad: RefCell::new(None),
        }))
    }

    /// The same values, cut from the graph: no gradient flows through the result.
    pub fn detach(&self) -> Tensor {
        self.with_requires_grad(false)
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }
    /// Size of the last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        *self.0.shape.last().unwrap_or(&1)
    }
    pub fn gpu(&self) -> &Rc<Gpu> {
        &self.0.storage.gpu
    }
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.get()
    }

    /// Freezes (`false`) or unfreezes a leaf in place, for every handle to it (torch's
    /// `requires_grad_`). Freezing drops its gradient. An op's output is not a leaf: its
    /// `requires_grad` follows from its inputs, so this is an error there.
    pub fn set_requires_grad(&self, requires_grad: bool) -> Result<()> {
        if self.0.node.borrow().is_some() || self.0.consumed.get().is_some() {
            return Err(Error::Autograd(format!(
                "set_requires_grad on a tensor of shape {:?} computed by an op: only leaves \
                 (parameters, inputs) can be frozen or unfrozen; use detach() to cut a result",
                self.shape()
            )));
        }
        self.0.requires_grad.set(requires_grad);
        if !requires_grad {
            self.zero_grad();
        }
        Ok(())
    }
    /// The accumulated gradient (leaves only), `None` for a frozen tensor or before `backward()`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.borrow().clone()
    }
    pub fn zero_grad(&self) {
        *self.0.grad.borrow_mut() = None;
    }
    pub fn category(&self) -> Category {
        self.0.storage.category()
    }
    pub fn set_category(&self, c: Category) {
        self.0.storage.set_category(c)
    }

    /// Reads the values back as f32 (waits for the GPU).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if self.dtype() != DType::F32 {
            return Err(Error::Input(format!(
                "to_vec: tensor is {:?}, use to_vec_u32",
                self.dtype()
            )));
        }
        let bytes = self.gpu().read_back(self.storage(), (self.numel() * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        if self.dtype() != DType::U32 {
            return Err(Error::Input(format!("to_vec_u32: tensor is {:?}", self.dtype())));
        }
        let bytes = self.gpu().read_back(self.storage(), (self.numel() * 4) as u64)?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    pub fn to_vec_u8(&self) -> Result<Vec<u8>> {
        if self.dtype() != DType::U8 {
            return Err(Error::Input(format!("to_vec_u8: tensor is {:?}", self.dtype())));
        }
        self.gpu().read_back(self.storage(), self.numel() as u64)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return shape_err(
                "item",
                format!("tensor of shape {:?} has {} elements, not 1", self.shape(), self.numel()),
            );
        }
        Ok(self.to_vec()?[0])
    }

    /// A view with a new shape (same storage, same number of elements). Differentiable.
    /// One dimension may be `usize::MAX` to be inferred.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let mut shape = shape.to_vec();
        if let Some(i) = shape.iter().position(|&d| d == usize::MAX) {
            let rest: usize = shape.iter().filter(|&&d| d != usize::MAX).product();
            if rest == 0 || !self.numel().is_multiple_of(rest) {
                return shape_err(
                    "reshape",
                    format!("cannot infer a dimension of {shape:?} from {:?}", self.shape()),
                );
            }
            shape[i] = self.numel() / rest;
        }
        if numel(&shape) != self.numel() {
            return shape_err(
                "reshape",
                format!("{:?} ({} elements) cannot view as {shape:?}", self.shape(), self.numel()),
            );
        }
        let out = Tensor::from_storage(self.0.storage.clone(), shape, self.dtype());
        let input_shape = self.shape().to_vec();
        // d(reshape)/dx: the gradient is the output gradient viewed in the input's shape.
        Ok(out.attach("reshape", &[self], move |dout| Ok(vec![Some(dout.reshape(&input_shape)?)])))
    }

    pub(crate) fn check_f32(&self, op: &'static str) -> Result<()> {
        if self.dtype() != DType::F32 {
            return Err(Error::Input(format!(
                "{op}: expects an f32 tensor, got {:?} of shape {:?}",
                self.dtype(),
                self.shape()
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(id={}, shape={:?}, {:?}, requires_grad={})",
            self.id(),
            self.shape(),
            self.dtype(),
            self.requires_grad()
        )
    }
}
