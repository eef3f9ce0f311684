//! Training: the learning-rate schedule, the log and loss curve, checkpoint files.

pub mod checkpoint;
pub mod log;
pub mod manifest;
pub mod schedule;

pub use log::{LogRecord, TrainLog};
pub use schedule::LrSchedule;
pub mod tasks;
pub mod trainer;
