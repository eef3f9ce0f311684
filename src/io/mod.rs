//! Files: safetensors tensors, token files, and the atomic write every saver goes through.
//!
//! - [`safetensors`]: read a file into named tensors ({dtype, shape, bytes}) with f32 conversion;
//!   write one atomically with metadata `{"format": "pt"}`.
//! - [`tokens`]: the token file of docs/interfaces (`input_ids` i64 [B, T], optional `labels`).

pub mod safetensors;
pub mod tokens;

pub use self::safetensors::{Dtype, NamedTensor, TensorFile, write_safetensors};
pub use self::tokens::{IGNORE_INDEX, TokenFile};

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` so that `path` holds either the old contents or all of the new ones,
/// never a prefix: write a temp file in the same directory (a rename is atomic only within one
/// file system), fsync it, rename it over `path`, then fsync the directory so the rename survives a
/// crash. Creates the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Input(format!("cannot {what} {}: {e}", path.display()))
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail("create the directory for", e))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Input(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Directory fsync makes the rename durable; not every platform allows opening a directory.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| fail("write", e))
}
