//! A test hook that fails the process at one chosen *write point* (every step of a save that
//! changes what is on disk: a file half written, a directory renamed, a file moved, one removed).
//!
//!   GLASSGRAD_FAIL_AT=0          count only: print `write point K: WHAT` to stderr at each one
//!   GLASSGRAD_FAIL_AT=K          also abort the process (SIGABRT, no clean-up: a kill -9
//!                                stand-in) at the K-th write point, 1-based
//!   GLASSGRAD_FAIL_MODE=error    at the K-th point return an I/O error instead (a disk-full
//!                                stand-in: the caller's error path runs)
//!
//! Unset (the normal case) it costs one cached environment lookup. The kill-at-every-write-point
//! test (tests/gpu/checkpoint.rs) drives the binary through every K.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Hook {
    target: u64,
    error: bool,
}

fn hook() -> Option<&'static Hook> {
    static HOOK: OnceLock<Option<Hook>> = OnceLock::new();
    HOOK.get_or_init(|| {
        let target = std::env::var("GLASSGRAD_FAIL_AT").ok()?.trim().parse().ok()?;
        let error = std::env::var("GLASSGRAD_FAIL_MODE").is_ok_and(|m| m == "error");
        Some(Hook { target, error })
    })
    .as_ref()
}

/// Marks one write point named `what` (e.g. "stage model.safetensors"). Returns the injected
/// error in error mode; aborts the process in kill mode; otherwise does nothing.
pub fn write_point(what: &str) -> std::io::Result<()> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Some(hook) = hook() else { return Ok(()) };
    let k = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!("write point {k}: {what}");
    if k == hook.target {
        if hook.error {
            return Err(std::io::Error::other(format!(
                "injected failure at write point {k} ({what}; GLASSGRAD_FAIL_AT)"
            )));
        }
        std::process::abort();
    }
    Ok(())
}
