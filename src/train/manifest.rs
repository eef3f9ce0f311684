//! A checkpoint as one unit: it is complete and loads, or it is absent and the previous one is
//! intact. Never a new model beside an old optimizer or config.
//!
//! Layout (in the checkpoint directory `DIR`, beside the Hugging Face files):
//!   DIR/checkpoint.json                 the manifest, written last:
//!                                       {"step": 81, "files": {"model.safetensors":
//!                                        {"bytes": 436040, "hash": "…"}, …}}
//!   DIR/.checkpoint-staging/            a save in progress (deleted on the next start)
//!   DIR/.checkpoint-commit/             a complete save being moved into place (finished on the
//!                                       next start)
//!
//! A save: (1) write every file into `.checkpoint-staging/`, then its manifest; (2) rename the
//! directory to `.checkpoint-commit/` — the commit point; (3) remove `DIR/checkpoint.json`, move
//! each file over its old copy, move the manifest last; (4) remove `.checkpoint-commit/`.
//! A crash before (2) leaves the old checkpoint untouched (the staging directory is stale); a crash
//! after (2) is rolled forward by [`open`]. Loading checks every file against the manifest (size
//! and a 64-bit FNV-1a hash), so a directory changed by hand is refused by name, never loaded mixed.
//! `hash` is FNV-1a over little-endian 8-byte words (the tail zero-padded), as 16 hex digits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::fault::write_point;

pub const MANIFEST_FILE: &str = "checkpoint.json";
const STAGING_DIR: &str = ".checkpoint-staging";
const COMMIT_DIR: &str = ".checkpoint-commit";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub bytes: u64,
    pub hash: String,
}

/// What `checkpoint.json` holds: the optimizer step the files were saved after, and every file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub step: u64,
    pub files: BTreeMap<String, FileEntry>,
}

/// FNV-1a over 8-byte words (see the module comment), as 16 hex digits.
pub fn hash_bytes(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Input(format!("cannot {what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes renames durable; not every platform allows opening a directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Saves a checkpoint of `step` into `dir` as one unit: `write(staging)` writes every file into
/// the staging directory; then the manifest is written and the whole is committed (module comment).
pub fn save_unit(dir: &Path, step: u64, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_err("remove", &staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| io_err("create", &staging, e))?;
    let result = (|| {
        write(&staging)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&staging).map_err(|e| io_err("list", &staging, e))? {
            let path = entry.map_err(|e| io_err("list", &staging, e))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).map_err(|e| io_err("read back", &path, e))?;
            files.insert(name, FileEntry { bytes: bytes.len() as u64, hash: hash_bytes(&bytes) });
        }
        let manifest = Manifest { step, files };
        let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n";
        crate::io::write_atomic(&staging.join(MANIFEST_FILE), text.as_bytes())?;
        sync_dir(&staging);
        let commit = dir.join(COMMIT_DIR);
        write_point("commit (rename staging to commit)")
            .and_then(|()| std::fs::rename(&staging, &commit))
            .map_err(|e| io_err("commit the checkpoint in", dir, e))?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        // A failed save (disk full, …) leaves the previous checkpoint as it was.
        let _ = std::fs::remove_dir_all(&staging);
        return result;
    }
    roll_forward(dir)
}

/// Moves a committed save into place (step 3 and 4 of the module comment). Idempotent: a file
/// already moved is skipped, so a crash during it is finished by running it again.
fn roll_forward(dir: &Path) -> Result<()> {
    let commit = dir.join(COMMIT_DIR);
    let staged_manifest = commit.join(MANIFEST_FILE);
    // Until the manifest itself is moved, DIR/checkpoint.json (if any) is the old one.
    let manifest_path =
        if staged_manifest.exists() { staged_manifest.clone() } else { dir.join(MANIFEST_FILE) };
    let manifest = read_manifest(&manifest_path)?;
    let old = dir.join(MANIFEST_FILE);
    if staged_manifest.exists() && old.exists() {
        write_point("remove the old checkpoint.json")
            .and_then(|()| std::fs::remove_file(&old))
            .map_err(|e| io_err("remove", &old, e))?;
    }
    for name in manifest.files.keys() {
        let (from, to) = (commit.join(name), dir.join(name));
        if from.exists() {
            crate::io::check_regular_file(&to)?;
            write_point(&format!("move {name}"))
                .and_then(|()| std::fs::rename(&from, &to))
                .map_err(|e| io_err("move into place", &to, e))?;
        }
    }
    sync_dir(dir);
    if staged_manifest.exists() {
        write_point("move checkpoint.json")
            .and_then(|()| std::fs::rename(&staged_manifest, &old))
            .map_err(|e| io_err("move into place", &old, e))?;
        sync_dir(dir);
    }
    write_point("remove the commit directory")
        .and_then(|()| std::fs::remove_dir_all(&commit))
        .map_err(|e| io_err("remove", &commit, e))?;
    sync_dir(dir);
    Ok(())
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err("read", path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::Input(format!("{}: not a valid checkpoint manifest: {e}", path.display()))
    })
}

/// Opens the checkpoint directory `dir` for loading: finishes a committed save that was
/// interrupted, removes what an interrupted uncommitted save left (the staging directory, temp
/// files), and checks every file against the manifest. Returns the manifest, or None when `dir`
/// holds no checkpoint of ours (a plain model directory, or nothing).
pub fn open(dir: &Path) -> Result<Option<Manifest>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    if dir.join(COMMIT_DIR).is_dir() {
        roll_forward(dir)?;
    }
    remove_stale(dir)?;
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let manifest = read_manifest(&path)?;
    verify(dir, &manifest)?;
    Ok(Some(manifest))
}

/// Checks each file of `manifest` in `dir`; the error names the file and what differs.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<()> {
    for (name, want) in &manifest.files {
        let path = dir.join(name);
        let refuse = |what: String| {
            Err(Error::Input(format!(
                "{}: {what}, but {MANIFEST_FILE} (step {}) lists {} bytes with hash {}; the \
                 checkpoint was changed or is incomplete, refusing to load a mixed checkpoint",
                path.display(),
                manifest.step,
                want.bytes,
                want.hash
            )))
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => return refuse(format!("cannot be read ({e})")),
        };
        let hash = hash_bytes(&bytes);
        if bytes.len() as u64 != want.bytes || hash != want.hash {
            return refuse(format!("has {} bytes with hash {hash}", bytes.len()));
        }
    }
    Ok(())
}

/// Deletes an uncommitted staging directory and `.NAME.tmp-PID` files of write_atomic.
fn remove_stale(dir: &Path) -> Result<()> {
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io_err("remove the stale", &staging, e))?;
    }
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") && entry.path().is_file() {
            let path: PathBuf = entry.path();
            std::fs::remove_file(&path).map_err(|e| io_err("remove the stale", &path, e))?;
        }
    }
    Ok(())
}

/// Whether `dir` holds a model (ours or any transformers directory) that a new run would replace.
pub fn holds_model(dir: &Path) -> bool {
    ["model.safetensors", MANIFEST_FILE, "config.json", COMMIT_DIR]
        .iter()
        .any(|f| dir.join(f).exists())
}
