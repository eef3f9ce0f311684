//! A checkpoint survives any interruption. The binary is run with the test hook
//! `GLASSGRAD_FAIL_AT=K` (src/io/fault.rs), which aborts it (SIGABRT, no clean-up: a kill -9
//! stand-in) or, with `GLASSGRAD_FAIL_MODE=error`, fails it with an I/O error (disk full) at the
//! K-th write point of its saves. For every K, what is left on disk must either load and resume
//! bit-identically to an uninterrupted run, or be refused with one clear line — never load mixed.
//! The tour's model (2 layers, 64 channels) with 2 steps and a checkpoint after each.

use std::path::Path;
use std::process::{Command, Output};

use glassgrad::model::Gpt2Weights;
use glassgrad::train::manifest;

use crate::gpu::harness::temp_dir;

const TRAIN: &[&str] =
    &["train", "--eval-every", "1", "--batch-size", "2", "--seq-len", "16", "--eval-batches", "1"];

#[derive(Clone, Copy)]
enum Fail {
    None,
    Count,
    Kill(usize),
    Error(usize),
}

fn train(out: &Path, extra: &[&str], fail: Fail) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glassgrad"));
    c.args(TRAIN).arg("--out").arg(out).args(extra);
    if !extra.contains(&"--steps") {
        c.args(["--steps", "2"]);
    }
    c.env_remove("GLASSGRAD_FAIL_AT").env_remove("GLASSGRAD_FAIL_MODE");
    match fail {
        Fail::None => {}
        Fail::Count => {
            c.env("GLASSGRAD_FAIL_AT", "0");
        }
        Fail::Kill(k) => {
            c.env("GLASSGRAD_FAIL_AT", k.to_string());
        }
        Fail::Error(k) => {
            c.env("GLASSGRAD_FAIL_AT", k.to_string()).env("GLASSGRAD_FAIL_MODE", "error");
        }
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The write points a run passes, in order (`write point K: WHAT` lines of the count mode).
fn write_points(out: &Path, extra: &[&str]) -> Vec<String> {
    let o = train(out, extra, Fail::Count);
    assert!(o.status.success(), "{}", stderr(&o));
    let points: Vec<String> = stderr(&o)
        .lines()
        .filter_map(|l| l.strip_prefix("write point "))
        .map(|l| l.split_once(": ").unwrap().1.to_string())
        .collect();
    assert!(points.iter().any(|p| p.starts_with("commit")), "{points:?}");
    points
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
}

/// Nothing of an interrupted save is left behind once the directory has been opened again.
fn assert_clean(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".checkpoint-") && !name.contains(".tmp-"), "{name} left behind");
    }
}

/// Whether `o` failed cleanly: a non-zero exit and exactly one line on stderr, an `error:` line.
fn assert_one_line_error(o: &Output, expect: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail");
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr:\n{err}");
    assert!(err.starts_with("error: ") && err.contains(expect), "lacks {expect:?}:\n{err}");
}

#[test]
fn a_kill_at_any_write_point_leaves_a_checkpoint_that_resumes_exactly_or_none() {
    let reference = temp_dir("ckpt-ref");
    let o = train(&reference, &[], Fail::None);
    assert!(o.status.success(), "{}", stderr(&o));
    let points = write_points(&temp_dir("ckpt-count"), &[]);
    // Two saves of the same files: the first ends at the first "remove the commit directory";
    // the second also removes the first's checkpoint.json before moving its files in.
    let first_save = points.iter().position(|p| p.starts_with("remove the commit")).unwrap() + 1;
    let first_commit = points.iter().position(|p| p.starts_with("commit")).unwrap() + 1;
    assert_eq!(points.len(), 2 * first_save + 1, "{points:?}");
    for file in ["model.safetensors", "optimizer.safetensors", "config.json", "checkpoint.json"] {
        assert!(points.iter().any(|p| p == &format!("write {file}")), "{file} in {points:?}");
        assert!(points.iter().any(|p| p == &format!("move {file}")), "{file} in {points:?}");
    }
    let ks: Vec<usize> = (1..=points.len()).collect();
    // Two processes at a time (each run is ~0.5 s, mostly start-up).
    std::thread::scope(|scope| {
        for chunk in ks.chunks(ks.len().div_ceil(2)) {
            let (reference, points) = (&reference, &points);
            scope.spawn(move || {
                for &k in chunk {
                    let dir = temp_dir(&format!("ckpt-kill-{k}"));
                    let what = &points[k - 1];
                    let o = train(&dir, &[], Fail::Kill(k));
                    assert!(o.status.code().is_none(), "k={k} ({what}): aborted by the hook");
                    let resumed = train(&dir, &["--resume"], Fail::None);
                    if k <= first_commit {
                        // Killed before the first commit (the point is just before its rename): no checkpoint, and --resume says so.
                        assert_one_line_error(&resumed, "holds no checkpoint");
                    } else if stderr(&resumed).contains("already done 2 steps") {
                        // The second save was committed before the kill: it is the final state.
                        assert!(k > first_save, "k={k} ({what})");
                    } else {
                        assert!(resumed.status.success(), "k={k} ({what}): {}", stderr(&resumed));
                    }
                    if k > first_commit {
                        for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
                            assert!(
                                read(&dir, f) == read(reference, f),
                                "k={k} ({what}): {f} differs from the uninterrupted run's"
                            );
                        }
                        assert_eq!(manifest::open(&dir).unwrap().unwrap().step, 2, "k={k}");
                    }
                    assert_clean(&dir);
                    std::fs::remove_dir_all(dir).unwrap();
                }
            });
        }
    });
    std::fs::remove_dir_all(reference).unwrap();
}

#[test]
fn a_new_run_with_another_config_that_fails_mid_save_leaves_the_old_checkpoint_or_the_new() {
    // The old checkpoint: the tour's model after 2 steps. The new run: 1 layer, 1 step.
    let (old_ref, new_ref) = (temp_dir("ckpt-old"), temp_dir("ckpt-new"));
    assert!(train(&old_ref, &[], Fail::None).status.success());
    let new_args = ["--overwrite", "--n-layer", "1", "--steps", "1"];
    assert!(train(&new_ref, &new_args, Fail::None).status.success());
    // A copy of the old checkpoint, every file of it.
    let copy_old = |name: &str| {
        let dir = temp_dir(name);
        for e in std::fs::read_dir(&old_ref).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        dir
    };
    let points = write_points(&copy_old("ckpt-new-count"), &new_args);
    for k in 1..=points.len() {
        let dir = copy_old(&format!("ckpt-swap-{k}"));
        // Odd points: a kill; even points: an I/O error (disk full), which must be one line.
        let o = if k % 2 == 1 {
            let o = train(&dir, &new_args, Fail::Kill(k));
            assert!(o.status.code().is_none(), "k={k}: aborted by the hook");
            o
        } else {
            let o = train(&dir, &new_args, Fail::Error(k));
            let last = stderr(&o).trim_end().lines().last().unwrap_or("").to_string();
            assert!(!o.status.success() && o.status.code().is_some(), "k={k}");
            assert!(last.starts_with("error: ") && last.contains("injected failure"), "{last}");
            o
        };
        drop(o);
        let m = manifest::open(&dir).unwrap_or_else(|e| panic!("k={k} ({}): {e}", points[k - 1]));
        let step = m.expect("a checkpoint is always there").step;
        let loaded = Gpt2Weights::load(&dir).unwrap();
        let want = if step == 2 { &old_ref } else { &new_ref };
        assert_eq!(loaded.config.n_layer, if step == 2 { 2 } else { 1 }, "k={k}: config and step");
        for f in ["config.json", "model.safetensors", "optimizer.safetensors"] {
            assert!(read(&dir, f) == read(want, f), "k={k} ({}): {f} is mixed", points[k - 1]);
        }
        assert_clean(&dir);
        std::fs::remove_dir_all(dir).unwrap();
    }
    for d in [old_ref, new_ref] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_checkpoint_changed_after_saving_is_refused_by_name() {
    let dir = temp_dir("ckpt-tamper");
    assert!(train(&dir, &[], Fail::None).status.success());
    // An older optimizer file beside the newer model (what file-by-file saving used to leave).
    let mut bytes = read(&dir, "optimizer.safetensors");
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(dir.join("optimizer.safetensors"), bytes).unwrap();
    let o = train(&dir, &["--resume", "--steps", "3"], Fail::None);
    assert_one_line_error(&o, "optimizer.safetensors");
    assert!(stderr(&o).contains("mixed"), "{}", stderr(&o));
    // And the files that generate reads are checked the same way.
    let g = Command::new(env!("CARGO_BIN_EXE_glassgrad"))
        .args(["generate", "--model"])
        .arg(&*dir)
        .output()
        .unwrap();
    assert_one_line_error(&g, "optimizer.safetensors");
    // The library's loader refuses it too.
    let err = Gpt2Weights::load(&dir).unwrap_err().to_string();
    assert!(err.contains("optimizer.safetensors") && err.contains("mixed"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
