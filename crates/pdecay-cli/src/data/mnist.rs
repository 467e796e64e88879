//! Fashion-MNIST / MNIST as image sets, from a folder of IDX files or the embedded subset.
//!
//! Where the data comes from, in order: `--data DIR`, `$PDECAY_DATA`, then
//! `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist` package). The embedded
//! subset (5,500 train and 1,000 test images, class-balanced, from the original files) is what
//! the demo trains on with no download.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

use super::idx::{decode_idx, read_idx};

/// Number of classes of (Fashion-)MNIST.
pub const CLASSES: usize = 10;

/// Side of the images the models take (Fashion-MNIST and MNIST).
pub const IMAGE_SIDE: usize = 28;

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Pixels, `len × rows × cols`, row-major, 0-255.
    pub pixels: Vec<u8>,
    /// One label per image, `0..CLASSES`.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_size(&self) -> usize {
        self.rows * self.cols
    }

    /// `source` moved by (`dy`, `dx`) pixels, then mirrored left-right if `flip`, into `out`;
    /// pixels moved in from outside the image are 0 (background).
    fn shifted(&self, source: &[u8], dy: i64, dx: i64, flip: bool, out: &mut [u8]) {
        let (rows, cols) = (self.rows as i64, self.cols as i64);
        for r in 0..rows {
            for c in 0..cols {
                let c_out = if flip { cols - 1 - c } else { c };
                let (sr, sc) = (r - dy, c - dx);
                let inside = (0..rows).contains(&sr) && (0..cols).contains(&sc);
                out[(r * cols + c_out) as usize] = if inside {
                    source[(sr * cols + sc) as usize]
                } else {
                    0
                };
            }
        }
    }

    /// Mean and standard deviation of the pixels scaled to [0, 1].
    pub fn pixel_stats(&self) -> (f64, f64) {
        let n = self.pixels.len().max(1) as f64;
        let mean = self.pixels.iter().map(|&p| p as f64 / 255.0).sum::<f64>() / n;
        let var = self
            .pixels
            .iter()
            .map(|&p| (p as f64 / 255.0 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    /// The images at `indices` as a `[batch, rows·cols]` tensor, normalised with `(mean, std)`,
    /// and their labels.
    pub fn batch(
        &self,
        indices: &[usize],
        stats: (f64, f64),
        device: &Device,
    ) -> (Tensor<2>, Tensor<1, Int>) {
        self.augmented_batch(indices, stats, device, None)
    }

    /// The images at `indices`, normalised with `stats`, row-major `[indices.len(), pixels]`.
    pub fn normalized(&self, indices: &[usize], stats: (f64, f64)) -> Vec<f32> {
        let size = self.image_size();
        let stats = (stats.0 as f32, stats.1 as f32);
        indices
            .iter()
            .flat_map(|&i| normalize(&self.pixels[i * size..(i + 1) * size], stats))
            .collect()
    }

    /// Like [`Self::batch`]; with `augment`, each image is shifted by a random offset of up to
    /// ±2 pixels in each direction (zero-filled) and mirrored left-right with probability 1/2.
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        stats: (f64, f64),
        device: &Device,
        mut augment: Option<&mut StdRng>,
    ) -> (Tensor<2>, Tensor<1, Int>) {
        let size = self.image_size();
        let (mean, std) = (stats.0 as f32, stats.1 as f32);
        let mut values = Vec::with_capacity(indices.len() * size);
        let mut image = vec![0u8; size];
        for &i in indices {
            let source = &self.pixels[i * size..(i + 1) * size];
            let pixels = match augment.as_deref_mut() {
                Some(rng) => {
                    let (dy, dx) = (rng.random_range(-2i64..=2), rng.random_range(-2i64..=2));
                    let flip = rng.random_bool(0.5);
                    self.shifted(source, dy, dx, flip, &mut image);
                    &image[..]
                }
                None => source,
            };
            values.extend(normalize(pixels, (mean, std)));
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(values, [indices.len(), size]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

/// Pixels scaled to [0, 1], then standardised with the training set's `(mean, std)`.
fn normalize(pixels: &[u8], (mean, std): (f32, f32)) -> impl Iterator<Item = f32> + '_ {
    pixels.iter().map(move |&p| (p as f32 / 255.0 - mean) / std)
}

/// The train and test splits, and where they came from.
#[derive(Debug, Clone)]
pub struct ImageSplits {
    /// Training images.
    pub train: ImageSet,
    /// Test images.
    pub test: ImageSet,
    /// Where the data came from (a folder, or "embedded subset").
    pub source: String,
}

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
        rows: images.dims[1],
        cols: images.dims[2],
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

/// pdecay's classifiers (and their model files) take 28×28 images (Fashion-MNIST, MNIST):
/// other sizes, in either split, are refused, as is a split without images.
pub fn check_image_size(splits: &ImageSplits) -> Result<()> {
    for (split, images) in [("training", &splits.train), ("test", &splits.test)] {
        let (rows, cols) = (images.rows, images.cols);
        ensure!(
            rows == IMAGE_SIDE && cols == IMAGE_SIDE,
            "the {split} images in {} are {rows}x{cols}; pdecay's classifiers take {IMAGE_SIDE}x{IMAGE_SIDE} images (Fashion-MNIST, MNIST)",
            splits.source
        );
        ensure!(
            !images.is_empty(),
            "{} has no {split} images: nothing to train on or to measure",
            splits.source
        );
    }
    Ok(())
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
    if (train.rows, train.cols) != (test.rows, test.cols) {
        bail!(
            "train images are {}x{} but test images {}x{}",
            train.rows,
            train.cols,
            test.rows,
            test.cols
        );
    }
    Ok(ImageSplits {
        train,
        test,
        source: dir.display().to_string(),
    })
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

    #[test]
    fn embedded_subset_is_class_balanced_real_data() {
        let data = embedded();
        assert_eq!((data.train.len(), data.test.len()), (5500, 1000));
        assert_eq!((data.train.rows, data.train.cols), (28, 28));
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
        let (mean, std) = data.train.pixel_stats();
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
            (data.train.len(), data.test.len(), data.train.rows),
            (5, 2, 2)
        );
        let (x, y) = data.train.batch(&[0, 4], (0.0, 1.0), &Device::default());
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
    fn augmentation_shifts_and_flips_by_hand() {
        // one 3x3 image 1..9
        let set = ImageSet {
            pixels: (1..=9).collect(),
            labels: vec![0],
            rows: 3,
            cols: 3,
        };
        let mut out = vec![0u8; 9];
        set.shifted(&set.pixels, 1, 0, false, &mut out);
        assert_eq!(out, vec![0, 0, 0, 1, 2, 3, 4, 5, 6]);
        set.shifted(&set.pixels, 0, -1, false, &mut out);
        assert_eq!(out, vec![2, 3, 0, 5, 6, 0, 8, 9, 0]);
        set.shifted(&set.pixels, 0, 0, true, &mut out);
        assert_eq!(out, vec![3, 2, 1, 6, 5, 4, 9, 8, 7]);
        // seeded: the same seed gives the same batch, another seed another one
        use rand::SeedableRng;
        let data = embedded();
        let idx: Vec<usize> = (0..16).collect();
        let stats = data.train.pixel_stats();
        let d = Device::default();
        let batch = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            data.train
                .augmented_batch(&idx, stats, &d, Some(&mut rng))
                .0
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        assert_eq!(batch(1), batch(1));
        assert_ne!(batch(1), batch(2));
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
