use std::path::{Path, PathBuf};

use crate::temp_dir::TempDir;

/// tests/data/… inside the repository.
pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// A fresh, empty scratch directory for one test, removed when the returned guard drops.
pub fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("io-{name}"))
}

/// Asserts that `r` is an error whose message contains every one of `parts`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(r: glassgrad::Result<T>, parts: &[&str]) {
    let msg = match r {
        Ok(v) => panic!("expected an error containing {parts:?}, got Ok({v:?})"),
        Err(e) => e.to_string(),
    };
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} does not contain {p:?}");
    }
}
