//! Labelled image sets of any shape (channels × height × width), as the classifiers take them:
//! normalised per channel, augmented as their data set is, batched into tensors.

use std::fmt;

use anyhow::{Result, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Number of classes of every image data set pdecay reads (Fashion-MNIST, MNIST, CIFAR-10).
pub const CLASSES: usize = 10;

/// The shape of one image: `channels × height × width`. In a config file, `[C, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[usize; 3]", into = "[usize; 3]")]
pub struct ImageShape {
    /// Colour channels (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Fashion-MNIST's and MNIST's 28×28 grey images.
    pub const FASHION_MNIST: Self = Self::new(1, 28, 28);
    /// CIFAR-10's 32×32 RGB images.
    pub const CIFAR10: Self = Self::new(3, 32, 32);

    /// `channels × height × width`.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Values per image (`channels · height · width`).
    pub fn values(self) -> usize {
        self.channels * self.height * self.width
    }
}

impl From<[usize; 3]> for ImageShape {
    fn from([channels, height, width]: [usize; 3]) -> Self {
        Self::new(channels, height, width)
    }
}

impl From<ImageShape> for [usize; 3] {
    fn from(s: ImageShape) -> Self {
        [s.channels, s.height, s.width]
    }
}

impl fmt::Display for ImageShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// How a data set's training images are augmented (`augment = true`): a random shift of up to
/// `max_shift` pixels in each direction, the pixels moved in filled as `fill` says, then a
/// left-right mirror with probability 1/2.
///
/// A crop of size H×W at a random offset of the image padded by `k` on each side is a shift by
/// up to ±`k`: CIFAR's "random crop of the 4-pixel padded image" is `max_shift = 4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Augmentation {
    /// The largest shift, in pixels, in each direction.
    pub max_shift: usize,
    /// What the pixels moved in from outside the image are.
    pub fill: Fill,
}

/// The pixels a shift moves in from outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// 0: Fashion-MNIST's black background.
    Zero,
    /// The image mirrored at its border without repeating the edge (PyTorch's `reflect`
    /// padding): row -1 is row 1.
    Reflect,
}

impl Augmentation {
    /// Fashion-MNIST's and MNIST's: ±2 pixels, zero-filled.
    pub const FASHION_MNIST: Self = Self {
        max_shift: 2,
        fill: Fill::Zero,
    };
    /// The authors' CIFAR-10 training: random 32×32 crops of the 4-pixel reflect-padded image.
    pub const CIFAR10: Self = Self {
        max_shift: 4,
        fill: Fill::Reflect,
    };
}

/// The random draws of one batch's augmentation (`augment = true`): the shift and flip of the
/// data set's [`Augmentation`], then, when `max_rotation_degrees > 0`, a rotation by an angle
/// drawn uniformly from ±`max_rotation_degrees` (the authors' optional ±10°).
pub struct AugmentDraws<'a> {
    /// Where every draw comes from, in the order dy, dx, flip, angle.
    pub rng: &'a mut StdRng,
    /// The largest rotation, in degrees (0: none, and no angle is drawn).
    pub max_rotation_degrees: f64,
}

/// Per-channel `(mean, std)` of the pixels scaled to [0, 1]: inputs are `(p/255 - mean) / std`.
pub type ChannelStats = Vec<(f64, f64)>;

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Pixels, `len × channels × height × width` (each image channel by channel, each channel
    /// row-major), 0-255.
    pub pixels: Vec<u8>,
    /// One label per image, `0..CLASSES`.
    pub labels: Vec<u8>,
    /// The shape of every image.
    pub shape: ImageShape,
    /// How the set is augmented when a run asks for it.
    pub augmentation: Augmentation,
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

    /// Values per image.
    pub fn image_size(&self) -> usize {
        self.shape.values()
    }

    /// `source` moved by (`dy`, `dx`) pixels, then mirrored left-right if `flip`, into `out`;
    /// pixels moved in from outside the image are filled as [`Augmentation::fill`] says.
    fn shifted(&self, source: &[u8], dy: i64, dx: i64, flip: bool, out: &mut [u8]) {
        let (rows, cols) = (self.shape.height as i64, self.shape.width as i64);
        let plane = (rows * cols) as usize;
        let reflect = |i: i64, n: i64| match i {
            i if i < 0 => (-i).min(n - 1),
            i if i >= n => (2 * (n - 1) - i).max(0),
            i => i,
        };
        for (source, out) in source.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            for r in 0..rows {
                for c in 0..cols {
                    let c_out = if flip { cols - 1 - c } else { c };
                    let (sr, sc) = (r - dy, c - dx);
                    let inside = (0..rows).contains(&sr) && (0..cols).contains(&sc);
                    out[(r * cols + c_out) as usize] = match (inside, self.augmentation.fill) {
                        (true, _) => source[(sr * cols + sc) as usize],
                        (false, Fill::Zero) => 0,
                        (false, Fill::Reflect) => {
                            source[(reflect(sr, rows) * cols + reflect(sc, cols)) as usize]
                        }
                    };
                }
            }
        }
    }

    /// `source` rotated by `degrees` (counter-clockwise as displayed, rows pointing down) about
    /// the image's centre, into `out`: torchvision's `RandomRotation` defaults, nearest
    /// neighbour, the corners moved in from outside filled with 0.
    fn rotated(&self, source: &[u8], degrees: f64, out: &mut [u8]) {
        let (rows, cols) = (self.shape.height, self.shape.width);
        let plane = rows * cols;
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (cy, cx) = ((rows as f64 - 1.0) / 2.0, (cols as f64 - 1.0) / 2.0);
        for r in 0..rows {
            for c in 0..cols {
                // the inverse rotation of the output pixel finds its source: x right, y up;
                // one source position serves every channel
                let (x, y) = (c as f64 - cx, cy - r as f64);
                let (sx, sy) = (cos * x + sin * y, -sin * x + cos * y);
                let (sr, sc) = ((cy - sy).round(), (sx + cx).round());
                let inside = (0.0..rows as f64).contains(&sr) && (0.0..cols as f64).contains(&sc);
                let from = sr as usize * cols + sc as usize;
                for channel in (0..source.len()).step_by(plane.max(1)) {
                    out[channel + r * cols + c] = if inside { source[channel + from] } else { 0 };
                }
            }
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1]; a channel
    /// without variation gets the std 1 (only its mean is removed), where dividing by its 0
    /// would make every input NaN.
    pub fn pixel_stats(&self) -> ChannelStats {
        let plane = self.shape.height * self.shape.width;
        (0..self.shape.channels)
            .map(|channel| {
                let values = || {
                    self.pixels
                        .chunks_exact(self.image_size().max(1))
                        .flat_map(move |image| &image[channel * plane..(channel + 1) * plane])
                        .map(|&p| p as f64 / 255.0)
                };
                let n = (self.len() * plane).max(1) as f64;
                let mean = values().sum::<f64>() / n;
                let var = values().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                (mean, if var > 0.0 { var.sqrt() } else { 1.0 })
            })
            .collect()
    }

    /// The images at `indices` as a `[batch, values]` tensor, normalised with `stats`, and
    /// their labels.
    pub fn batch(
        &self,
        indices: &[usize],
        stats: &[(f64, f64)],
        device: &Device,
    ) -> (Tensor<2>, Tensor<1, Int>) {
        self.augmented_batch(indices, stats, device, None)
    }

    /// The images at `indices`, normalised with `stats`, row-major `[indices.len(), values]`.
    pub fn normalized(&self, indices: &[usize], stats: &[(f64, f64)]) -> Vec<f32> {
        let size = self.image_size();
        let mut values = Vec::with_capacity(indices.len() * size);
        for &i in indices {
            self.normalize_into(&self.pixels[i * size..(i + 1) * size], stats, &mut values);
        }
        values
    }

    /// Like [`Self::batch`]; with `augment`, each image is shifted and mirrored at random as
    /// [`ImageSet::augmentation`] says, then rotated if [`AugmentDraws`] asks (the draws: dy,
    /// dx, the flip, then the angle).
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        stats: &[(f64, f64)],
        device: &Device,
        mut augment: Option<AugmentDraws<'_>>,
    ) -> (Tensor<2>, Tensor<1, Int>) {
        let size = self.image_size();
        let shift = self.augmentation.max_shift as i64;
        let mut values = Vec::with_capacity(indices.len() * size);
        let (mut image, mut turned) = (vec![0u8; size], vec![0u8; size]);
        for &i in indices {
            let source = &self.pixels[i * size..(i + 1) * size];
            let pixels = match augment.as_mut() {
                Some(AugmentDraws {
                    rng,
                    max_rotation_degrees,
                }) => {
                    let (dy, dx) = (
                        rng.random_range(-shift..=shift),
                        rng.random_range(-shift..=shift),
                    );
                    let flip = rng.random_bool(0.5);
                    self.shifted(source, dy, dx, flip, &mut image);
                    let max = *max_rotation_degrees;
                    if max > 0.0 {
                        self.rotated(&image, rng.random_range(-max..=max), &mut turned);
                        &turned[..]
                    } else {
                        &image[..]
                    }
                }
                None => source,
            };
            self.normalize_into(pixels, stats, &mut values);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| self.labels[i] as i64).collect();
        (
            Tensor::from_data(TensorData::new(values, [indices.len(), size]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }

    /// One image's pixels scaled to [0, 1], then standardised channel by channel with `stats`.
    fn normalize_into(&self, pixels: &[u8], stats: &[(f64, f64)], out: &mut Vec<f32>) {
        let plane = self.shape.height * self.shape.width;
        for (channel, &(mean, std)) in pixels.chunks_exact(plane.max(1)).zip(stats) {
            let (mean, std) = (mean as f32, std as f32);
            out.extend(channel.iter().map(|&p| (p as f32 / 255.0 - mean) / std));
        }
    }
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

impl ImageSplits {
    /// The shape of the images (both splits share it).
    pub fn shape(&self) -> ImageShape {
        self.train.shape
    }

    /// Both splits hold images, of one shape.
    pub fn check(&self) -> Result<()> {
        let (train, test) = (self.train.shape, self.test.shape);
        ensure!(
            train == test,
            "the training images in {} are {train} but the test images {test}: the splits do not belong together",
            self.source
        );
        for (split, images) in [("training", &self.train), ("test", &self.test)] {
            ensure!(
                !images.is_empty(),
                "{} has no {split} images: nothing to train on or to measure",
                self.source
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(shape: ImageShape, pixels: Vec<u8>, fill: Fill) -> ImageSet {
        ImageSet {
            labels: vec![0; pixels.len() / shape.values()],
            pixels,
            shape,
            augmentation: Augmentation { max_shift: 2, fill },
        }
    }

    #[test]
    fn shifts_fill_with_zeros_or_the_reflection_and_flips_by_hand() {
        // one 3x3 image 1..9
        let zero = set(ImageShape::new(1, 3, 3), (1..=9).collect(), Fill::Zero);
        let mut out = vec![0u8; 9];
        zero.shifted(&zero.pixels, 1, 0, false, &mut out);
        assert_eq!(out, vec![0, 0, 0, 1, 2, 3, 4, 5, 6]);
        zero.shifted(&zero.pixels, 0, -1, false, &mut out);
        assert_eq!(out, vec![2, 3, 0, 5, 6, 0, 8, 9, 0]);
        zero.shifted(&zero.pixels, 0, 0, true, &mut out);
        assert_eq!(out, vec![3, 2, 1, 6, 5, 4, 9, 8, 7]);
        // reflect: row -1 is row 1, column 3 is column 1 (the edge is not repeated)
        let reflect = set(ImageShape::new(1, 3, 3), (1..=9).collect(), Fill::Reflect);
        reflect.shifted(&reflect.pixels, 1, 0, false, &mut out);
        assert_eq!(out, vec![4, 5, 6, 1, 2, 3, 4, 5, 6]);
        reflect.shifted(&reflect.pixels, 0, -1, false, &mut out);
        assert_eq!(out, vec![2, 3, 2, 5, 6, 5, 8, 9, 8]);
        reflect.shifted(&reflect.pixels, -2, 2, false, &mut out);
        assert_eq!(out, vec![9, 8, 7, 6, 5, 4, 3, 2, 1]);
        // two channels move together, each within its own plane
        let two = set(ImageShape::new(2, 1, 3), vec![1, 2, 3, 4, 5, 6], Fill::Zero);
        let mut out = vec![0u8; 6];
        two.shifted(&two.pixels, 0, 1, false, &mut out);
        assert_eq!(out, vec![0, 1, 2, 0, 4, 5]);
    }

    #[test]
    fn rotations_by_hand() {
        // one 3x3 image 1..9 and its 90° turns: counter-clockwise as displayed
        let image = set(ImageShape::new(1, 3, 3), (1..=9).collect(), Fill::Zero);
        let mut out = vec![0u8; 9];
        image.rotated(&image.pixels, 0.0, &mut out);
        assert_eq!(out, image.pixels);
        image.rotated(&image.pixels, 90.0, &mut out);
        assert_eq!(out, vec![3, 6, 9, 2, 5, 8, 1, 4, 7]);
        image.rotated(&image.pixels, -90.0, &mut out);
        assert_eq!(out, vec![7, 4, 1, 8, 5, 2, 9, 6, 3]);
        image.rotated(&image.pixels, 180.0, &mut out);
        assert_eq!(out, vec![9, 8, 7, 6, 5, 4, 3, 2, 1]);
        // 45°: the centre stays, the edges' middles move to the corners counter-clockwise
        image.rotated(&image.pixels, 45.0, &mut out);
        assert_eq!((out[4], out[0], out[2], out[6], out[8]), (5, 2, 6, 4, 8));
        // a 1x3 row turned 90° has only its centre inside: the rest is filled with 0
        let row = set(ImageShape::new(1, 1, 3), vec![1, 2, 3], Fill::Zero);
        let mut out3 = vec![9u8; 3];
        row.rotated(&row.pixels, 90.0, &mut out3);
        assert_eq!(out3, vec![0, 2, 0]);
        // channels turn together, each within its own plane
        let two = set(
            ImageShape::new(2, 2, 2),
            vec![1, 2, 3, 4, 5, 6, 7, 8],
            Fill::Zero,
        );
        let mut out = vec![0u8; 8];
        two.rotated(&two.pixels, 90.0, &mut out);
        assert_eq!(out, vec![2, 4, 1, 3, 6, 8, 5, 7]);
    }

    #[test]
    fn a_small_rotation_fills_only_the_corners_and_turns_counter_clockwise() {
        // 28x28 without zeros: ±10° fills only the corners (a wrong sign or axis in the inverse
        // map would still fill corners, hence the dot below)
        let shape = ImageShape::new(1, 28, 28);
        let pixels: Vec<u8> = (0..784).map(|i| 1 + (i % 250) as u8).collect();
        let image = set(shape, pixels.clone(), Fill::Zero);
        let mut out = vec![0u8; 784];
        image.rotated(&pixels, 10.0, &mut out);
        let filled = out.iter().filter(|&&v| v == 0).count();
        assert!(filled > 0 && filled < 784 / 10, "{filled} pixels filled");
        assert!(out[0] == 0 && out[783] == 0 && out[14 * 28 + 14] == pixels[14 * 28 + 14]);
        // a pixel at the right edge moves up (counter-clockwise): 13.5·sin 10° = 2.3 rows
        let mut dot = vec![0u8; 784];
        dot[14 * 28 + 27] = 255;
        let one = set(shape, dot.clone(), Fill::Zero);
        one.rotated(&dot, 10.0, &mut out);
        let at = out
            .iter()
            .position(|&v| v == 255)
            .expect("the dot stays inside");
        assert_eq!((at / 28, at % 28), (12, 27));
    }

    #[test]
    fn normalisation_is_per_channel() {
        // channel 0 of both images: 0 and 255 (mean 0.5, std 0.5); channel 1: 51 everywhere
        let set = set(ImageShape::new(2, 1, 1), vec![0, 51, 255, 51], Fill::Zero);
        let stats = set.pixel_stats();
        assert!((stats[0].0 - 0.5).abs() < 1e-12 && (stats[0].1 - 0.5).abs() < 1e-12);
        // channel 1 is constant: its std is taken as 1, not the 0 that would make NaNs
        assert!((stats[1].0 - 0.2).abs() < 1e-12 && stats[1].1 == 1.0);
        let values = set.normalized(&[1, 0], &[(0.5, 0.5), (0.2, 0.1)]);
        let expected = [1.0, 0.0, -1.0, 0.0];
        for (v, e) in values.iter().zip(expected) {
            assert!((v - e).abs() < 1e-6, "{values:?}");
        }
    }

    #[test]
    fn a_shape_reads_and_writes_as_an_array() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Holder {
            image_shape: ImageShape,
        }
        let text = toml::to_string(&Holder {
            image_shape: ImageShape::CIFAR10,
        })
        .unwrap();
        assert_eq!(text.trim(), "image_shape = [3, 32, 32]");
        let back: Holder = toml::from_str(&text).unwrap();
        assert_eq!(back.image_shape, ImageShape::CIFAR10);
        assert_eq!(ImageShape::FASHION_MNIST.to_string(), "1x28x28");
    }
}
