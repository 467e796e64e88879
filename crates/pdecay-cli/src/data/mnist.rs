//! Fashion-MNIST / MNIST as image sets, from a folder of IDX files or the embedded subset.
//!
//! Where the data comes from, in order: `--data DIR`, `$PDECAY_DATA`, then
//! `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist` package). The embedded
//! subset (5,500 train and 1,000 test images, class-balanced, from the original files) is what
//! the demo trains on with no download.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::idx::{decode_idx, read_idx};
use super::images::{Augmentation, CLASSES, ImageSet, ImageShape, ImageSplits};

const FILES: [(&str, &str); 2] = [("train", "train"), ("test", "t10k")];

fn image_set(
    images: super::idx::IdxArray,
    labels: super::idx::IdxArray,
    what: &str,
) -> Result<ImageSet> {
    if images.dims.len() != 3 {
        bail!(
            "{what} images must have 3 dimensions, found {:?}",
            images.dims
        );
    }
    if images.dims[0] != labels.dims[0] {
        bail!(
            "{what}: {} images but {} labels; the image and label files do not belong together",
            images.dims[0],
            labels.dims[0]
        );
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l as usize >= CLASSES) {
        bail!(
            "{what}: label {bad} is out of range (expected 0-9): not an (Fashion-)MNIST label file"
        );
    }
    Ok(ImageSet {
        pixels: images.data,
        labels: labels.data,
        shape: ImageShape::new(1, images.dims[1], images.dims[2]),
        augmentation: Augmentation::FASHION_MNIST,
    })
}

/// Finds `<prefix>-<kind>-ubyte` in `dir`, gzip'd or not.
fn find_file(dir: &Path, prefix: &str, kind: &str) -> Result<PathBuf> {
    let base = format!("{prefix}-{kind}-ubyte");
    for name in [format!("{base}.gz"), base.clone()] {
        let path = dir.join(&name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("{} has no {base} or {base}.gz", dir.display())
}

/// Loads the four IDX files from `dir`.
pub fn load_dir(dir: &Path) -> Result<ImageSplits> {
    if !dir.exists() {
        bail!("{} does not exist", dir.display());
    }
    if !dir.is_dir() {
        bail!(
            "{} is a file; give the folder that holds the four IDX files",
            dir.display()
        );
    }
    let mut sets = Vec::new();
    for (what, prefix) in FILES {
        let images = read_idx(&find_file(dir, prefix, "images-idx3")?, 3)?;
        let labels = read_idx(&find_file(dir, prefix, "labels-idx1")?, 1)?;
        sets.push(image_set(images, labels, what)?);
    }
    let test = sets.pop().unwrap();
    let train = sets.pop().unwrap();
    let splits = ImageSplits {
        train,
        test,
        source: dir.display().to_string(),
    };
    splits.check()?;
    Ok(splits)
}

macro_rules! embedded_file {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/fashion-mnist-subset/",
            $name
        ))
    };
}

/// The embedded Fashion-MNIST subset: 5,500 train and 1,000 test images, class-balanced.
pub fn embedded() -> ImageSplits {
    let decode = |bytes: &[u8], rank, name: &str| {
        decode_idx(bytes, rank, Path::new(name)).expect("the embedded data is valid")
    };
    let train = image_set(
        decode(
            embedded_file!("train-images-idx3-ubyte.gz"),
            3,
            "embedded train images",
        ),
        decode(
            embedded_file!("train-labels-idx1-ubyte.gz"),
            1,
            "embedded train labels",
        ),
        "train",
    )
    .expect("the embedded data is valid");
    let test = image_set(
        decode(
            embedded_file!("t10k-images-idx3-ubyte.gz"),
            3,
            "embedded test images",
        ),
        decode(
            embedded_file!("t10k-labels-idx1-ubyte.gz"),
            1,
            "embedded test labels",
        ),
        "test",
    )
    .expect("the embedded data is valid");
    ImageSplits {
        train,
        test,
        source: "embedded Fashion-MNIST subset".into(),
    }
}

/// Debian's `dataset-fashion-mnist` puts the files here.
pub const SYSTEM_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Resolves the data: `explicit` (`--data`), else `$PDECAY_DATA`, else [`SYSTEM_DIR`]. Fails
/// with the list of places searched and how to get the data.
pub fn resolve_image_data(explicit: Option<&Path>) -> Result<ImageSplits> {
    if let Some(dir) = explicit {
        return load_dir(dir).with_context(|| format!("loading --data {}", dir.display()));
    }
    let mut searched = Vec::new();
    // set but empty (`PDECAY_DATA= pdecay train`) counts as not set
    match std::env::var_os("PDECAY_DATA").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            return load_dir(&dir)
                .with_context(|| format!("loading $PDECAY_DATA={}", dir.display()));
        }
        None => searched.push("$PDECAY_DATA (not set)".to_string()),
    }
    let system = Path::new(SYSTEM_DIR);
    if system.is_dir() {
        return load_dir(system).with_context(|| format!("loading {SYSTEM_DIR}"));
    }
    searched.push(format!("{SYSTEM_DIR} (missing)"));
    bail!(
        "no Fashion-MNIST data found; looked in: --data (not given), {}.\n\
         Get it with `apt-get install dataset-fashion-mnist`, or put the four IDX files \
         (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, \
         t10k-labels-idx1-ubyte.gz) in a folder and pass --data FOLDER.",
        searched.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::encode_idx;
    use burn::tensor::Device;

    #[test]
    fn embedded_subset_is_class_balanced_real_data() {
        let data = embedded();
        assert_eq!((data.train.len(), data.test.len()), (5500, 1000));
        assert_eq!(data.shape(), ImageShape::FASHION_MNIST);
        for class in 0..CLASSES as u8 {
            assert_eq!(
                data.train.labels.iter().filter(|&&l| l == class).count(),
                550
            );
            assert_eq!(
                data.test.labels.iter().filter(|&&l| l == class).count(),
                100
            );
        }
        let [(mean, std)] = data.train.pixel_stats()[..] else {
            panic!("one channel")
        };
        // Fashion-MNIST's pixel mean is 0.286, std 0.353
        assert!(
            (mean - 0.286).abs() < 0.01 && (std - 0.353).abs() < 0.01,
            "{mean} {std}"
        );
    }

    fn write_set(dir: &Path, prefix: &str, n_images: usize, n_labels: usize) {
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&[n_images, 2, 2], &vec![7; n_images * 4]),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&[n_labels], &vec![3; n_labels]),
        )
        .unwrap();
    }

    #[test]
    fn loads_uncompressed_files_and_catches_count_mismatch() {
        let dir = tempdir("mnist-ok");
        write_set(&dir, "train", 5, 5);
        write_set(&dir, "t10k", 2, 2);
        let data = load_dir(&dir).unwrap();
        assert_eq!(
            (data.train.len(), data.test.len(), data.train.shape.height),
            (5, 2, 2)
        );
        let (x, y) = data.train.batch(&[0, 4], &[(0.0, 1.0)], &Device::default());
        assert_eq!(x.dims(), [2, 4]);
        assert_eq!(
            y.into_data().convert::<i64>().try_to_vec::<i64>().unwrap(),
            vec![3, 3]
        );

        let dir = tempdir("mnist-mismatch");
        write_set(&dir, "train", 5, 4);
        write_set(&dir, "t10k", 2, 2);
        let err = format!("{:#}", load_dir(&dir).unwrap_err());
        assert!(err.contains("5 images but 4 labels"), "{err}");
    }

    #[test]
    fn seeded_augmentation_repeats_and_differs_between_seeds() {
        use rand::SeedableRng;
        use rand::rngs::StdRng;
        let data = embedded();
        let idx: Vec<usize> = (0..16).collect();
        let stats = data.train.pixel_stats();
        let d = Device::default();
        let batch = |seed, max_rotation_degrees| {
            let mut rng = StdRng::seed_from_u64(seed);
            data.train
                .augmented_batch(
                    &idx,
                    &stats,
                    &d,
                    Some(crate::data::AugmentDraws {
                        rng: &mut rng,
                        max_rotation_degrees,
                    }),
                )
                .0
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(batch(1, 0.0), batch(1, 0.0));
        assert_ne!(batch(1, 0.0), batch(2, 0.0));
        // a rotation is drawn from the same stream, after the shift and flip
        assert_eq!(batch(1, 10.0), batch(1, 10.0));
        assert_ne!(batch(1, 10.0), batch(1, 0.0));
    }

    #[test]
    fn missing_files_and_data_name_where_to_look() {
        let dir = tempdir("mnist-empty");
        let err = format!("{:#}", resolve_image_data(Some(&dir)).unwrap_err());
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pdecay-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
