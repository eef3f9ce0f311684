//! One error type for the whole engine. Every message names what failed (the op, the shapes, the
//! limit) so that a person can act on it without reading the source.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// No GPU adapter, or the device could not be created.
    NoAdapter(String),
    /// Shapes that do not fit the op: `op`, what was given, what was expected.
    Shape { op: &'static str, message: String },
    /// A hardware or API limit would be exceeded (buffer binding size, workgroups per dimension).
    Limit { op: &'static str, message: String },
    /// A wgpu validation or out-of-memory error, captured instead of panicking.
    Wgpu(String),
    /// Files, formats, configuration: anything the user handed us that is wrong.
    Input(String),
    /// Autodiff misuse (backward from a non-scalar without a seed, …).
    Autograd(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoAdapter(m) => write!(f, "no GPU adapter: {m}"),
            Error::Shape { op, message } => write!(f, "{op}: shape error: {message}"),
            Error::Limit { op, message } => write!(f, "{op}: limit exceeded: {message}"),
            Error::Wgpu(m) => write!(f, "wgpu error: {m}"),
            Error::Input(m) => write!(f, "{m}"),
            Error::Autograd(m) => write!(f, "autograd: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Input(format!("i/o error: {e}"))
    }
}

/// Shorthand used by ops: `shape_err("matmul", format!(...))`.
pub fn shape_err<T>(op: &'static str, message: impl Into<String>) -> Result<T> {
    Err(Error::Shape { op, message: message.into() })
}
