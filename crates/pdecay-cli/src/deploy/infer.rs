//! Inference from a model file: dense and compact files run as burn models (the flex
//! backend's gemm and conv), sparse files on CSR products that touch only the non-zero weights
//! (convolutions as im2col + CSR).

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use pdecay::csr::{Csr, transpose};
use pdecay::im2col::ConvShape;

use super::model_file::{Format, ModelFile, Stored};
use std::time::Instant;

use super::resnet_infer::FoldedResNet;
use crate::data::{ImageSet, ImageShape, ImageSplits};
use crate::models::{Classifier, ModelKind};

/// One layer of the sparse MLP: `y = relu?(W·x + b)`.
struct SparseLayer {
    weight: Csr,
    bias: Vec<f32>,
}

/// An MLP on CSR weights.
pub struct SparseMlp {
    layers: Vec<SparseLayer>,
}

impl SparseMlp {
    fn new(file: &ModelFile) -> Self {
        let layers = file
            .tensors
            .chunks(2)
            .map(|pair| {
                let (w, b) = (&pair[0], &pair[1]);
                let weight = match &w.stored {
                    Stored::Sparse(csr) => csr.clone(),
                    Stored::Dense(values) => {
                        Csr::from_dense(values, w.shape[0], w.shape[1], file.threshold as f32)
                    }
                };
                SparseLayer {
                    weight,
                    bias: b.dense(),
                }
            })
            .collect();
        Self { layers }
    }

    /// Logits `[batch, classes]` of `x` (`[batch, inputs]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        if batch == 0 {
            return Vec::new();
        }
        let last = self.layers.len() - 1;
        if batch == 1 {
            let mut h = x.to_vec();
            for (k, layer) in self.layers.iter().enumerate() {
                let mut y = vec![0.0; layer.weight.rows];
                layer.weight.matvec(&h, Some(&layer.bias), &mut y);
                if k < last {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                h = y;
            }
            return h;
        }
        let inputs = x.len() / batch;
        let mut h_t = transpose(x, batch, inputs);
        for (k, layer) in self.layers.iter().enumerate() {
            let mut y_t = vec![0.0; layer.weight.rows * batch];
            layer
                .weight
                .matmul_t(&h_t, batch, Some(&layer.bias), &mut y_t);
            if k < last {
                y_t.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h_t = y_t;
        }
        let classes = self.layers[last].weight.rows;
        transpose(&h_t, classes, batch)
    }
}

/// The CNN with CSR weights: conv2 as im2col + CSR, the dense layers as CSR products, conv1
/// (few input channels: 288 weights on grey images) directly. Images run in parallel.
pub struct SparseCnn {
    conv1: (Vec<f32>, Vec<f32>),
    conv2: SparseLayer,
    dense: SparseLayer,
    output: SparseLayer,
    shape: ImageShape,
}

/// `[channels, h, w]` → `[channels, h/2, w/2]`, the max of each 2×2 window (an odd last row
/// or column is dropped, as burn's pooling does).
fn max_pool(x: &[f32], channels: usize, (h, w): (usize, usize)) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = vec![0.0; channels * ho * wo];
    for c in 0..channels {
        for i in 0..ho {
            for j in 0..wo {
                let at = |di: usize, dj: usize| x[c * h * w + (2 * i + di) * w + 2 * j + dj];
                out[c * ho * wo + i * wo + j] = at(0, 0).max(at(0, 1)).max(at(1, 0)).max(at(1, 1));
            }
        }
    }
    out
}

/// The `kernel`×`kernel` patches of one `[channels, h, w]` image, zero-padded by `padding` and
/// taken every `stride` pixels: `[channels·kernel², h'·w']` (`pdecay::im2col`), with `(h', w')`.
pub(crate) fn im2col(
    x: &[f32],
    channels: usize,
    (height, width): (usize, usize),
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (Vec<f32>, usize, usize) {
    let shape = ConvShape {
        batch: 1,
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
    };
    let (ho, wo) = shape.output_size();
    (pdecay::im2col::im2col(x, &shape), ho, wo)
}

impl SparseCnn {
    fn new(file: &ModelFile) -> Self {
        let find = |name: &str| {
            file.tensors
                .iter()
                .find(|t| t.name == name)
                .expect("a checked CNN file has every tensor")
        };
        let layer = |name: &str| {
            let (w, b) = (
                find(&format!("{name}.weight")),
                find(&format!("{name}.bias")),
            );
            let weight = match &w.stored {
                Stored::Sparse(csr) => csr.clone(),
                Stored::Dense(values) => Csr::from_dense(
                    values,
                    w.shape[0],
                    values.len() / w.shape[0],
                    file.threshold as f32,
                ),
            };
            SparseLayer {
                weight,
                bias: b.dense(),
            }
        };
        Self {
            conv1: (
                find("Cnn.conv1.weight").dense(),
                find("Cnn.conv1.bias").dense(),
            ),
            conv2: layer("Cnn.conv2"),
            dense: layer("Cnn.dense"),
            output: layer("Cnn.output"),
            shape: file.config.image_shape,
        }
    }

    fn image_logits(&self, image: &[f32]) -> Vec<f32> {
        let relu = |v: &mut Vec<f32>| v.iter_mut().for_each(|x| *x = x.max(0.0));
        let size = (self.shape.height, self.shape.width);
        // conv1: few input channels, so its im2col is [channels·9, h·w] and the product small
        let (w1, b1) = &self.conv1;
        let c1 = b1.len();
        let (patches, _, _) = im2col(image, self.shape.channels, size, 3, 1, 1);
        let n = size.0 * size.1;
        let taps = patches.len() / n.max(1);
        let mut h = vec![0.0; c1 * n];
        for c in 0..c1 {
            let out = &mut h[c * n..(c + 1) * n];
            out.fill(b1[c]);
            for k in 0..taps {
                let w = w1[c * taps + k];
                if w != 0.0 {
                    for (o, p) in out.iter_mut().zip(&patches[k * n..(k + 1) * n]) {
                        *o += w * p;
                    }
                }
            }
        }
        relu(&mut h);
        let h = max_pool(&h, c1, size);
        let size = (size.0 / 2, size.1 / 2);
        let n = size.0 * size.1;
        let (patches, _, _) = im2col(&h, c1, size, 3, 1, 1);
        let c2 = self.conv2.weight.rows;
        let mut h = vec![0.0; c2 * n];
        self.conv2
            .weight
            .matmul_t(&patches, n, Some(&self.conv2.bias), &mut h);
        relu(&mut h);
        let h = max_pool(&h, c2, size);
        let mut d = vec![0.0; self.dense.weight.rows];
        self.dense.weight.matvec(&h, Some(&self.dense.bias), &mut d);
        relu(&mut d);
        let mut logits = vec![0.0; self.output.weight.rows];
        self.output
            .weight
            .matvec(&d, Some(&self.output.bias), &mut logits);
        logits
    }

    /// Logits `[batch, classes]` of `x` (`[batch, pixels]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        use rayon::prelude::*;
        if batch == 0 {
            return Vec::new();
        }
        let pixels = x.len() / batch;
        x.par_chunks(pixels)
            .flat_map_iter(|image| self.image_logits(image))
            .collect()
    }
}

/// A model ready to run.
pub enum Engine {
    /// Dense weights in a burn model (boxed: the model is large next to the CSR variant).
    Dense(Box<Classifier>, Device),
    /// CSR weights (sparse MLP files).
    Sparse(SparseMlp),
    /// CSR weights (sparse CNN files).
    SparseCnn(Box<SparseCnn>),
    /// CSR weights with BatchNorm folded in (sparse and compact ResNet files).
    FoldedResNet(Box<FoldedResNet>),
}

impl Engine {
    /// The engine for a file: CSR products for a sparse file, burn's dense ops otherwise;
    /// a compacted ResNet (in any format), whose blocks burn cannot build narrower, runs folded
    /// on CSR too.
    pub fn new(file: &ModelFile) -> Result<Self> {
        Ok(match (file.format, file.config.model) {
            (Format::Sparse, ModelKind::Mlp) => Self::Sparse(SparseMlp::new(file)),
            (Format::Sparse, ModelKind::Cnn) => Self::SparseCnn(Box::new(SparseCnn::new(file))),
            (format, ModelKind::Resnet18 | ModelKind::Resnet20)
                if format != Format::Dense || !file.inner_widths.is_empty() =>
            {
                Self::FoldedResNet(Box::new(FoldedResNet::new(file)?))
            }
            (_, ModelKind::Gpt) => {
                anyhow::bail!("model files hold the image classifiers, not the GPT")
            }
            _ => {
                let device = Device::flex();
                Self::Dense(Box::new(file.to_model(&device)?), device)
            }
        })
    }

    /// Logits `[batch, classes]` of `x` (`[batch, pixels]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        match self {
            Self::Dense(_, _) if batch == 0 => Vec::new(),
            Self::Dense(model, device) => {
                let pixels = x.len() / batch;
                let input =
                    Tensor::<2>::from_data(TensorData::new(x.to_vec(), [batch, pixels]), device);
                model
                    .forward(input)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 logits")
            }
            Self::Sparse(mlp) => mlp.logits(x, batch),
            Self::SparseCnn(cnn) => cnn.logits(x, batch),
            Self::FoldedResNet(net) => net.logits(x, batch),
        }
    }
}

/// Test accuracy of `engine` on `images`, normalised with `stats` (per channel), in batches
/// of 500.
pub fn accuracy(engine: &Engine, images: &ImageSet, stats: &[(f64, f64)]) -> f64 {
    let indices: Vec<usize> = (0..images.len()).collect();
    let mut correct = 0;
    for chunk in indices.chunks(500) {
        let logits = engine.logits(&images.normalized(chunk, stats), chunk.len());
        let classes = logits.len() / chunk.len();
        for (row, &i) in logits.chunks(classes).zip(chunk) {
            let predicted = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
                .unwrap_or(0);
            correct += usize::from(predicted == images.labels[i] as usize);
        }
    }
    correct as f64 / images.len().max(1) as f64
}

/// The largest |difference| between two engines' logits over the test set.
pub fn max_logit_difference(
    a: &Engine,
    b: &Engine,
    splits: &ImageSplits,
    stats: &[(f64, f64)],
) -> f64 {
    let indices: Vec<usize> = (0..splits.test.len()).collect();
    let mut worst = 0.0f64;
    for chunk in indices.chunks(500) {
        let x = splits.test.normalized(chunk, stats);
        let (la, lb) = (a.logits(&x, chunk.len()), b.logits(&x, chunk.len()));
        for (p, q) in la.iter().zip(&lb) {
            worst = worst.max((p - q).abs() as f64);
        }
    }
    worst
}

/// The median latency in seconds of each engine at batch 1 and batch 64 on images of `shape`,
/// over `repeats` (batch 1) and `repeats / 4` (batch 64) runs that alternate the engines, so
/// that drift in the machine's load hits all alike.
pub fn latencies(engines: &[Engine], shape: ImageShape, repeats: usize) -> Vec<[f64; 2]> {
    let pixels = shape.values();
    // deterministic inputs in the normalised range; latency does not depend on the values
    let input: Vec<f32> = (0..64 * pixels)
        .map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0)
        .collect();
    let mut latency = vec![[0.0f64; 2]; engines.len()];
    for (b, batch) in [1usize, 64].into_iter().enumerate() {
        let x = &input[..batch * pixels];
        for e in engines {
            e.logits(x, batch); // warm-up: allocations, thread pool
        }
        let repeats = if batch == 1 {
            repeats
        } else {
            (repeats / 4).max(1)
        };
        let mut times = vec![Vec::with_capacity(repeats); engines.len()];
        for _ in 0..repeats {
            for (k, e) in engines.iter().enumerate() {
                let start = Instant::now();
                std::hint::black_box(e.logits(x, batch));
                times[k].push(start.elapsed().as_secs_f64());
            }
        }
        for (k, mut t) in times.into_iter().enumerate() {
            t.sort_by(f64::total_cmp);
            latency[k][b] = t[t.len() / 2];
        }
    }
    latency
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    /// A randomly initialised model with 80% of each weight tensor zeroed.
    fn sparse_file(model: ModelKind) -> ModelFile {
        let config = TrainConfig {
            model,
            hidden: vec![32, 16],
            ..TrainConfig::default()
        };
        let classifier = Classifier::new(
            config.model,
            crate::data::ImageShape::FASHION_MNIST,
            config.widths(),
            &Device::default(),
        );
        let mut file =
            ModelFile::from_model(&classifier, &config, Format::Dense, 1e-13, vec![(0.0, 1.0)]);
        for t in file.tensors.iter_mut().filter(|t| t.shape.len() >= 2) {
            let mut values = t.dense();
            values.iter_mut().enumerate().for_each(|(i, v)| {
                if (i * 7) % 10 < 8 {
                    *v = 0.0;
                }
            });
            t.stored = Stored::Dense(values);
        }
        file
    }

    #[test]
    fn sparse_engines_give_burns_logits() {
        for model in [ModelKind::Mlp, ModelKind::Cnn] {
            let dense = sparse_file(model);
            let sparse = dense.with_format(Format::Sparse);
            let (reference, engine) = (Engine::new(&dense).unwrap(), Engine::new(&sparse).unwrap());
            assert!(
                !matches!(engine, Engine::Dense(..)),
                "{model:?} runs sparse"
            );
            for batch in [1, 5] {
                let x: Vec<f32> = (0..batch * 28 * 28)
                    .map(|i| ((i * 31) % 97) as f32 / 40.0 - 1.2)
                    .collect();
                let (a, b) = (reference.logits(&x, batch), engine.logits(&x, batch));
                assert_eq!(a.len(), batch * 10);
                let worst = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-4,
                    "{model:?} batch {batch}: logits differ by {worst}"
                );
            }
        }
    }
}
