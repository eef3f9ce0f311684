//! The training log: one JSON object per line (`train_log.jsonl`), and a loss-curve SVG drawn
//! from it, both written next to a checkpoint.
//!
//! A line: `{"step": 100, "train_loss": 2.31, "val_loss": 2.40, "lr": 0.0006, "tokens_per_s": 51234.0}`
//! (`val_loss` is null on steps without an evaluation).

use std::io::Write;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const LOG_FILE: &str = "train_log.jsonl";
pub const LOSS_SVG_FILE: &str = "loss.svg";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step: usize,
    pub train_loss: f32,
    pub val_loss: Option<f32>,
    pub lr: f32,
    pub tokens_per_s: f64,
}

/// The records so far, appended to a JSON-lines file as they come (so a crash keeps the history).
#[derive(Debug)]
pub struct TrainLog {
    pub path: PathBuf,
    pub records: Vec<LogRecord>,
}

impl TrainLog {
    /// Starts a new log at `path`, replacing an old one.
    pub fn create(path: impl AsRef<Path>) -> Result<TrainLog> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Input(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&path, b"")
            .map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
        Ok(TrainLog { path, records: Vec::new() })
    }

    /// Appends one record to the file and to `records`.
    pub fn push(&mut self, record: LogRecord) -> Result<()> {
        let line = serde_json::to_string(&record).expect("record serialises") + "\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)
            .map_err(|e| Error::Input(format!("cannot open {}: {e}", self.path.display())))?;
        f.write_all(line.as_bytes())
            .map_err(|e| Error::Input(format!("cannot write {}: {e}", self.path.display())))?;
        self.records.push(record);
        Ok(())
    }

    /// Reads a JSON-lines log; a bad line is an error naming the file and line number.
    pub fn read(path: impl AsRef<Path>) -> Result<Vec<LogRecord>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::Input(format!("{}:{}: bad log line: {e}", path.display(), i + 1))
                })
            })
            .collect()
    }
}

/// Writes a copy of `records` as JSON lines to `path`, atomically (for a checkpoint directory).
pub fn write_log(path: impl AsRef<Path>, records: &[LogRecord]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text += &(serde_json::to_string(r).expect("record serialises") + "\n");
    }
    crate::io::write_atomic(path.as_ref(), text.as_bytes())
}

/// The loss curve (train loss every record, validation loss where present) as SVG text.
pub fn loss_svg(records: &[LogRecord], title: &str) -> Result<String> {
    let mut svg = String::new();
    let plot_err =
        |e: &dyn std::fmt::Display| Error::Input(format!("cannot draw the loss curve: {e}"));
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let val: Vec<(f64, f64)> =
            records.iter().filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64))).collect();
        let train: Vec<(f64, f64)> =
            records.iter().map(|r| (r.step as f64, r.train_loss as f64)).collect();
        let finite = |v: &f64| v.is_finite();
        let ys = train.iter().chain(&val).map(|p| p.1).filter(finite);
        let (lo, hi) =
            ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (lo, hi) = if lo.is_finite() { (lo, hi.max(lo + 1e-3)) } else { (0.0, 1.0) };
        let max_step = records.iter().map(|r| r.step).max().unwrap_or(0).max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_step, (lo - 0.05 * (hi - lo))..(hi + 0.05 * (hi - lo)))
            .map_err(|e| plot_err(&e))?;
        chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| plot_err(&e))?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))
            .map_err(|e| plot_err(&e))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val, RED.stroke_width(2)))
                .map_err(|e| plot_err(&e))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    Ok(svg)
}

/// Draws the loss curve into `path` atomically.
pub fn write_loss_svg(path: impl AsRef<Path>, records: &[LogRecord], title: &str) -> Result<()> {
    let svg = loss_svg(records, title)?;
    crate::io::write_atomic(path.as_ref(), svg.as_bytes())
}
