//! Files: safetensors tensors, token files, and the atomic write every saver goes through.
//!
//! - [`safetensors`]: read a file into named tensors ({dtype, shape, bytes}) with f32 conversion;
//!   write one atomically with metadata `{"format": "pt"}`.
//! - [`tokens`]: the token file of docs/interfaces (`input_ids` i64 [B, T], optional `labels`).

pub mod fault;
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
/// crash. Creates the parent directory if needed. Only a regular file is ever replaced: a
/// symlink, FIFO, device node or directory at `path` is refused by name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        Error::Input(format!("cannot {what} {}: {e}", path.display()))
    };
    check_regular_file(path)?;
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
        // The test hook's write point sits half-way through the data: a torn temp file.
        f.write_all(&bytes[..bytes.len() / 2])?;
        fault::write_point(&format!("write {}", file_name.to_string_lossy()))?;
        f.write_all(&bytes[bytes.len() / 2..])?;
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

/// What is at `path`, if it is not a regular file: "a symbolic link", "a FIFO", ….
fn not_regular(path: &Path) -> Option<&'static str> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_char_device() || t.is_block_device() {
            return Some("a device node");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some(if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    })
}

/// Refuses to write over anything but a regular file (or nothing), naming what is there.
pub fn check_regular_file(path: &Path) -> Result<()> {
    match not_regular(path) {
        None => Ok(()),
        Some(what) => Err(Error::Input(format!(
            "refusing to write {}: it is {what}; glassgrad writes only regular files (give a new file name)",
            path.display()
        ))),
    }
}
