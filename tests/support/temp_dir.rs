//! A scratch directory for one test, removed when its guard drops, so that nothing piles up in the
//! system temp dir (the guard also drops when the test panics). Shared by the gpu and io tests.

use std::path::{Path, PathBuf};

pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, empty `glassgrad-test-{name}-{pid}` under the system temp dir (`name` keeps tests
    /// apart, the process id keeps runs apart).
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("glassgrad-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
