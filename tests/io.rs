//! File formats, tokenizers, data and training helpers: everything that needs no GPU.
//! Run: `cargo test --release --test io`.

#[path = "io/common.rs"]
mod common;
#[path = "io/files.rs"]
mod files;
#[path = "io/model.rs"]
mod model;
#[path = "support/temp_dir.rs"]
mod temp_dir;
#[path = "io/text.rs"]
mod text;
