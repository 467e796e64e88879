//! Data sets: Fashion-MNIST (or MNIST) from IDX files and the embedded subset, CIFAR-10 from its
//! binary batches; character-level text for the GPT.
//!
//! A run names its data with one string (`data` in config.toml): [`EMBEDDED`], a folder of IDX
//! files, CIFAR-10's folder or `.tar.gz`, or a text file for the GPT; unset means
//! `$PDECAY_DATA`, then the system folder (Fashion-MNIST).

pub mod cifar;
pub mod idx;
pub mod images;
pub mod mnist;
pub mod text;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

pub use images::{AugmentDraws, ChannelStats, ImageSet, ImageShape, ImageSplits};
pub use text::TextData;

/// The largest input file pdecay reads whole (a text, a model file): 2 GiB. Past it, a file is
/// refused instead of read until memory runs out (`--data /dev/zero` once grew without end).
pub const MAX_FILE_BYTES: u64 = 1 << 31;

/// The bytes of the file at `path`, `what` it is for the messages; a file (or stream) longer
/// than [`MAX_FILE_BYTES`] is an error, read no further than one byte past the bound.
pub fn read_bounded(path: &Path, what: &str) -> Result<Vec<u8>> {
    read_at_most(path, what, MAX_FILE_BYTES)
}

fn read_at_most(path: &Path, what: &str, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    ensure!(
        bytes.len() as u64 <= limit,
        "{} is longer than {limit} bytes, more than any {what} pdecay reads: is it the right file?",
        path.display()
    );
    Ok(bytes)
}

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
        Some(path) if cifar::is_cifar(Path::new(path)) => {
            cifar::load(Path::new(path)).with_context(|| format!("loading --data {path}"))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_after_its_bound_not_read_forever() {
        let message = read_at_most(Path::new("/dev/zero"), "text file", 1000)
            .unwrap_err()
            .to_string();
        assert!(message.contains("longer than 1000 bytes"), "{message}");
        let dir = std::env::temp_dir().join(format!("pdecay-bounded-{}", std::process::id()));
        std::fs::write(&dir, [7u8; 1000]).unwrap();
        assert_eq!(read_at_most(&dir, "text file", 1000).unwrap().len(), 1000);
        std::fs::remove_file(&dir).unwrap();
    }
}
