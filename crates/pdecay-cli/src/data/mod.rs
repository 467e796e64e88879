//! Data sets: Fashion-MNIST (or MNIST) from IDX files and the embedded subset; character-level
//! text for the GPT.
//!
//! A run names its data with one string (`data` in config.toml): [`EMBEDDED`], a folder of IDX
//! files, or a text file for the GPT; unset means `$PDECAY_DATA`, then the system folder.

pub mod idx;
pub mod mnist;
pub mod text;

use std::path::{Path, PathBuf};

use anyhow::Result;

pub use mnist::{ImageSplits, check_image_size};
pub use text::TextData;

/// The value of `data` that selects the embedded Fashion-MNIST subset.
pub const EMBEDDED: &str = "embedded";

/// The data of a run: images for the classifiers, a text for the GPT.
pub enum RunData {
    /// Fashion-MNIST or the embedded subset.
    Images(ImageSplits),
    /// A character-level text.
    Text(TextData),
}

/// The images `source` names (see the module docs).
pub fn load_images(source: Option<&str>) -> Result<ImageSplits> {
    match source {
        Some(EMBEDDED) => Ok(mnist::embedded()),
        Some(dir) => mnist::resolve_image_data(Some(Path::new(dir))),
        None => mnist::resolve_image_data(None),
    }
}

/// The text file `source` names, split for windows of `block_size` characters.
pub fn load_text(source: Option<&str>, block_size: usize) -> Result<TextData> {
    let path = match source {
        Some(EMBEDDED) | None => anyhow::bail!(
            "--model gpt trains on a text file: give --data FILE, a UTF-8 text (e.g. Tiny Shakespeare: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt)"
        ),
        Some(path) => PathBuf::from(path),
    };
    TextData::load(&path, block_size)
}
