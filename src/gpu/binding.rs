//! Binding limits: a buffer may be larger than one binding, and then ops bind it in windows.
//!
//! wgpu has two limits: `max_buffer_size` (2 GiB on lavapipe) for a buffer, and
//! `max_storage_buffer_binding_size` (128 MiB on lavapipe and WebGPU's default) for what one
//! shader binding may see. GPT-2 small's wte (50257 × 768 f32 = 154 MB) fits the first and not the
//! second. So a tensor's storage is one buffer up to `max_buffer_size`, and an op that supports it
//! binds a [`Window`] of whole rows at a time (`row_windows`), one dispatch per window; an op that
//! does not is refused by `dispatch` with an error naming the kernel, the size and the limit.
//!
//! NOTE: a window's offset must be a multiple of `min_storage_buffer_offset_alignment` (256 on
//! most adapters), so windows hold a multiple of `align / gcd(row_bytes, align)` rows.
//!
//! Tests force a small limit on their thread ([`limit_bindings_to`]), so that every split path runs
//! at toy shapes, the way `fold_dispatches_at` forces the 2-D workgroup fold.

use std::cell::Cell;
use std::ops::Range;

use super::Gpu;
use super::memory::Storage;
use crate::error::{Error, Result};

thread_local! {
    /// A binding limit below the adapter's, on this thread (tests); 0 = the adapter's own.
    static FORCED_LIMIT: Cell<u64> = const { Cell::new(0) };
}

/// Until the guard drops, ops on this thread treat `bytes` as the binding limit (if it is below
/// the adapter's). For tests: the split paths then run at toy shapes.
pub fn limit_bindings_to(bytes: u64) -> BindingLimitGuard {
    assert!(bytes >= 256, "a forced binding limit of {bytes} bytes is below one aligned window");
    BindingLimitGuard(FORCED_LIMIT.with(|l| l.replace(bytes)))
}

/// Restores the previous binding limit when dropped.
pub struct BindingLimitGuard(u64);

impl Drop for BindingLimitGuard {
    fn drop(&mut self) {
        FORCED_LIMIT.with(|l| l.set(self.0));
    }
}

/// Part of a storage bound as one shader binding: `bytes` bytes from `offset`.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    pub storage: &'a Storage,
    pub offset: u64,
    pub bytes: u64,
}

impl Storage {
    /// The whole storage as one binding.
    pub fn whole(&self) -> Window<'_> {
        Window { storage: self, offset: 0, bytes: self.bytes }
    }

    /// Rows `rows` of a row-major storage whose rows take `row_bytes` each.
    pub fn rows(&self, rows: &Range<usize>, row_bytes: usize) -> Window<'_> {
        Window {
            storage: self,
            offset: (rows.start * row_bytes) as u64,
            bytes: (rows.len() * row_bytes) as u64,
        }
    }
}

impl Gpu {
    /// The largest binding ops may use: the adapter's `max_storage_buffer_binding_size`, or the
    /// smaller limit a test forced with [`limit_bindings_to`].
    pub fn max_binding(&self) -> u64 {
        let adapter = self.limits.max_storage_buffer_binding_size;
        match FORCED_LIMIT.with(Cell::get) {
            0 => adapter,
            forced => forced.min(adapter),
        }
    }

    /// Splits `rows` rows of `row_bytes` each into consecutive ranges that each fit one binding
    /// and start at an aligned offset. One range when everything fits (the unsplit path).
    /// `what` names the tensor for the error when not even the smallest aligned run of rows fits.
    pub fn row_windows(
        &self,
        what: &str,
        rows: usize,
        row_bytes: usize,
    ) -> Result<Vec<Range<usize>>> {
        self.row_windows_at_most(what, rows, row_bytes, usize::MAX)
    }

    /// `row_windows` with at most `max_rows` rows in a window (for an op whose other tensors
    /// grow with the window too).
    pub fn row_windows_at_most(
        &self,
        what: &str,
        rows: usize,
        row_bytes: usize,
        max_rows: usize,
    ) -> Result<Vec<Range<usize>>> {
        self.windows(what, rows, row_bytes, max_rows, 1)
    }

    /// `row_windows` for a matrix whose windows are also taken of per-row vectors of 4-byte
    /// entries (an op's targets [N] and lse [N] beside its logits [N, V]): their offsets must be
    /// aligned as well, so windows hold a multiple of align / 4 rows.
    pub fn rows_with_vectors(
        &self,
        what: &str,
        rows: usize,
        row_bytes: usize,
    ) -> Result<Vec<Range<usize>>> {
        let align = self.limits.min_storage_buffer_offset_alignment as usize;
        self.windows(what, rows, row_bytes, usize::MAX, align / 4)
    }

    fn windows(
        &self,
        what: &str,
        rows: usize,
        row_bytes: usize,
        max_rows: usize,
        min_step: usize,
    ) -> Result<Vec<Range<usize>>> {
        let limit = self.max_binding();
        if (rows * row_bytes) as u64 <= limit && rows <= max_rows {
            return Ok(std::iter::once(0..rows).collect()); // one window: the unsplit path
        }
        let align = self.limits.min_storage_buffer_offset_alignment as usize;
        // Rows per aligned offset. Both steps are powers of two (align is), so the larger one is
        // a multiple of the other.
        let step = (align / gcd(row_bytes, align)).max(min_step);
        let per_window = (limit as usize / row_bytes).min(max_rows) / step * step;
        if per_window == 0 {
            return Err(Error::Limit {
                op: "row_windows",
                message: format!(
                    "{what}: no window of whole rows fits one binding: windows must hold a \
                     multiple of {step} rows of {row_bytes} bytes (to start at {align}-byte \
                     aligned offsets), at most {} rows, within the binding limit of {limit} bytes \
                     (max_storage_buffer_binding_size of {})",
                    max_rows.min(limit as usize / row_bytes),
                    self.info.name
                ),
            });
        }
        Ok((0..rows).step_by(per_window).map(|r| r..(r + per_window).min(rows)).collect())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
