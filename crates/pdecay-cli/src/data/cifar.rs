//! CIFAR-10 in its binary distribution (Krizhevsky, 2009; <https://www.cs.toronto.edu/~kriz/cifar.html>,
//! "CIFAR-10 binary version"): the folder `cifar-10-batches-bin/` (or the folder above it), or
//! the downloaded `cifar-10-binary.tar.gz` itself, read without unpacking.
//!
//! Each of `data_batch_1.bin` … `data_batch_5.bin` (training) and `test_batch.bin` is a run of
//! 3073-byte records: the label byte (0-9), then the 32×32 red, green and blue planes, each
//! row-major. That is the channel-by-channel layout [`ImageSet`] keeps, so the pixels are used
//! as they are.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::GzDecoder;

use super::images::{Augmentation, CLASSES, ImageSet, ImageShape, ImageSplits};
use super::{MAX_FILE_BYTES, read_bounded};

/// Bytes per record: the label, then 3·32·32 pixels.
pub const RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// The training batches, in the order their images are used.
pub const TRAIN_BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// The test batch.
pub const TEST_BATCH: &str = "test_batch.bin";

/// Every batch file's name, the training batches first.
fn batch_names() -> impl Iterator<Item = &'static str> + Clone {
    TRAIN_BATCHES.into_iter().chain([TEST_BATCH])
}

/// The batch files `present` does not find.
fn missing(present: impl Fn(&str) -> bool) -> Vec<&'static str> {
    batch_names().filter(|n| !present(n)).collect()
}

/// The folder the archive unpacks to.
const FOLDER: &str = "cifar-10-batches-bin";

/// Whether `path` looks like CIFAR-10 (a `.tar.gz` file, or a folder with the batches or with
/// `cifar-10-batches-bin/` in it); anything else is read as Fashion-MNIST.
pub fn is_cifar(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase());
    let archive = name.is_some_and(|n| n.ends_with(".tar.gz") || n.ends_with(".tgz"));
    (path.is_file() && archive)
        || (path.is_dir()
            && (path.join(TRAIN_BATCHES[0]).exists()
                || path.join(TEST_BATCH).exists()
                || path.join(FOLDER).is_dir()))
}

/// Reads CIFAR-10 from `path`: the batches' folder, the folder above it, or the `.tar.gz`.
pub fn load(path: &Path) -> Result<ImageSplits> {
    let mut batches = if path.is_file() {
        from_archive(path)?
    } else {
        let dir = if path.join(FOLDER).is_dir() {
            path.join(FOLDER)
        } else {
            path.to_path_buf()
        };
        from_folder(&dir)?
    };
    let mut take = |name: &str| batches.remove(name).expect("checked present");
    let mut train = Vec::new();
    for name in TRAIN_BATCHES {
        train.push((name, take(name)));
    }
    let test = take(TEST_BATCH);
    let splits = ImageSplits {
        train: image_set(&train)?,
        test: image_set(&[(TEST_BATCH, test)])?,
        source: path.display().to_string(),
    };
    splits.check()?;
    Ok(splits)
}

/// The six batches' bytes, by name, from a folder.
fn from_folder(dir: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let missing = missing(|n| dir.join(n).is_file());
    ensure!(
        missing.is_empty(),
        "{} lacks {} of CIFAR-10's six batch files; expected {} and {TEST_BATCH}. {HOW_TO_GET}",
        dir.display(),
        missing.join(", "),
        TRAIN_BATCHES.join(", ")
    );
    batch_names()
        .map(|n| Ok((n.to_string(), read_bounded(&dir.join(n), "CIFAR-10 batch")?)))
        .collect()
}

/// The six batches' bytes, by name, from the downloaded archive (any folder inside it).
fn from_archive(path: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let damaged = || {
        format!(
            "{} is not a readable .tar.gz (a partial download?); download it again. {HOW_TO_GET}",
            path.display()
        )
    };
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the CIFAR-10 archive {}", path.display()))?;
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    let mut batches = HashMap::new();
    for entry in archive.entries().with_context(damaged)? {
        let entry = entry.with_context(damaged)?;
        let name = entry
            .path()
            .with_context(damaged)?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name.filter(|n| batch_names().any(|b| b == n)) else {
            continue;
        };
        ensure!(
            entry.size() <= MAX_FILE_BYTES,
            "{name} in {} announces {} bytes, more than any CIFAR-10 batch: the archive is damaged",
            path.display(),
            entry.size()
        );
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .with_context(damaged)?;
        batches.insert(name, bytes);
    }
    let missing = missing(|n| batches.contains_key(n));
    ensure!(
        missing.is_empty(),
        "{} holds no {}; is it CIFAR-10's binary version (cifar-10-binary.tar.gz)? {HOW_TO_GET}",
        path.display(),
        missing.join(", ")
    );
    Ok(batches)
}

/// Where a user gets the files.
const HOW_TO_GET: &str = "Get CIFAR-10's binary version from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz and pass the .tar.gz (or the folder it unpacks to) as --data.";

/// The images of `batches` (name, bytes), in order, as one set.
fn image_set(batches: &[(&str, Vec<u8>)]) -> Result<ImageSet> {
    let records: usize = batches.iter().map(|(_, b)| b.len() / RECORD_BYTES).sum();
    let mut pixels = Vec::with_capacity(records * (RECORD_BYTES - 1));
    let mut labels = Vec::with_capacity(records);
    for (name, bytes) in batches {
        ensure!(
            !bytes.is_empty() && bytes.len() % RECORD_BYTES == 0,
            "{name} has {} bytes, not a whole number of CIFAR-10's {RECORD_BYTES}-byte records (a label byte and 3x32x32 pixels): the file is truncated or not a CIFAR-10 batch. {HOW_TO_GET}",
            bytes.len()
        );
        for (i, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            let label = record[0];
            if label as usize >= CLASSES {
                bail!(
                    "{name}: record {i} has label {label}, expected 0-9; CIFAR-100's files (two label bytes per record) are not CIFAR-10's. {HOW_TO_GET}"
                );
            }
            labels.push(label);
            pixels.extend_from_slice(&record[1..]);
        }
    }
    Ok(ImageSet {
        pixels,
        labels,
        shape: ImageShape::CIFAR10,
        augmentation: Augmentation::CIFAR10,
    })
}

/// CIFAR-10 batch files for tests and benchmarks: `records` pairs of (label, pixels), the
/// pixels 3072 bytes each, as one batch file's bytes.
pub fn encode_batch(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|(label, pixels)| std::iter::once(*label).chain(pixels.iter().copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pdecay-cifar-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Record `k` of batch `b`: label (b + k) % 10, pixel j = (b·7 + k·3 + j) % 256.
    fn record(b: usize, k: usize) -> (u8, Vec<u8>) {
        let pixels = (0..3072)
            .map(|j| ((b * 7 + k * 3 + j) % 256) as u8)
            .collect();
        (((b + k) % 10) as u8, pixels)
    }

    fn write_batches(dir: &Path, per_batch: usize) {
        for (b, name) in batch_names().enumerate() {
            let records: Vec<_> = (0..per_batch).map(|k| record(b, k)).collect();
            std::fs::write(dir.join(name), encode_batch(&records)).unwrap();
        }
    }

    fn check_values(data: &ImageSplits, per_batch: usize) {
        assert_eq!(data.shape(), ImageShape::CIFAR10);
        assert_eq!(
            (data.train.len(), data.test.len()),
            (5 * per_batch, per_batch)
        );
        // training image 3 is batch 1's record 0 (per_batch 3); the test set is batch 5's
        let (label, pixels) = record(1, 0);
        assert_eq!(data.train.labels[3], label);
        assert_eq!(&data.train.pixels[3 * 3072..4 * 3072], &pixels[..]);
        // red plane first: pixel (row 0, col 1) of channel 1 (green) is byte 1024 + 1
        assert_eq!(data.train.pixels[3 * 3072 + 1025], pixels[1025]);
        let (label, pixels) = record(5, 2);
        assert_eq!(data.test.labels[2], label);
        assert_eq!(&data.test.pixels[2 * 3072..], &pixels[..]);
        assert_eq!(data.train.augmentation, Augmentation::CIFAR10);
    }

    #[test]
    fn reads_the_batches_from_the_folder_the_folder_above_and_the_archive() {
        let root = tempdir("read");
        let dir = root.join(FOLDER);
        std::fs::create_dir_all(&dir).unwrap();
        write_batches(&dir, 3);
        for path in [&dir, &root] {
            assert!(is_cifar(path));
            check_values(&load(path).unwrap(), 3);
        }
        // the .tar.gz as downloaded: cifar-10-batches-bin/ with the six files and others
        let archive = root.join("cifar-10-binary.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all(FOLDER, &dir).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        assert!(is_cifar(&archive));
        check_values(&load(&archive).unwrap(), 3);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn damaged_or_missing_files_are_clear_errors() {
        let err = |dir: &Path| format!("{:#}", load(dir).unwrap_err());
        let dir = tempdir("bad");
        write_batches(&dir, 2);
        std::fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
        let message = err(&dir);
        assert!(
            message.contains("lacks data_batch_4.bin") && message.contains("cifar-10-binary"),
            "{message}"
        );
        write_batches(&dir, 2);
        let truncated = &encode_batch(&[record(0, 0), record(0, 1)])[..RECORD_BYTES + 100];
        std::fs::write(dir.join("data_batch_2.bin"), truncated).unwrap();
        let message = err(&dir);
        assert!(
            message.contains("data_batch_2.bin has 3173 bytes") && message.contains("truncated"),
            "{message}"
        );
        write_batches(&dir, 2);
        std::fs::write(dir.join(TEST_BATCH), encode_batch(&[(10, vec![0; 3072])])).unwrap();
        let message = err(&dir);
        assert!(message.contains("record 0 has label 10"), "{message}");
        std::fs::write(dir.join(TEST_BATCH), []).unwrap();
        assert!(err(&dir).contains("test_batch.bin has 0 bytes"));
        // a broken archive, and one without the batches
        let archive = dir.join("cifar-10-binary.tar.gz");
        std::fs::write(&archive, b"\x1f\x8b not really gzip").unwrap();
        let message = format!("{:#}", load(&archive).unwrap_err());
        assert!(message.contains("not a readable .tar.gz"), "{message}");
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.append_path_with_name(dir.join(TEST_BATCH), "readme.html")
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let message = format!("{:#}", load(&archive).unwrap_err());
        assert!(message.contains("holds no data_batch_1.bin"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
