//! A ResNet from a model file on CSR products, BatchNorm folded into the convolutions.
//!
//! In evaluation BatchNorm is an affine map per channel, `y = γ·(x − μ)/√(σ² + ε) + β` with the
//! running mean μ and variance σ², so a convolution followed by it is one convolution with
//! the weights and a bias
//!
//! ```text
//! s_c = γ_c / √(σ²_c + ε),   W'_c = s_c · W_c,   b'_c = β_c − μ_c · s_c
//! ```
//!
//! (output channel `c`). Scaling keeps every zero weight zero, so the folded network is as
//! sparse as the trained one; the support is taken from the unfolded weights (|w| at or above
//! the file's threshold), as a sparse file stores it. Convolutions run as im2col + CSR, the
//! residual additions and ReLUs in place, images in parallel.

use anyhow::{Context, Result, ensure};
use pdecay::csr::Csr;
use rayon::prelude::*;

use super::infer::im2col;
use super::model_file::{ModelFile, ModelTensor, Stored};
use crate::data::ImageShape;
use crate::models::ResNetConfig;

/// burn's and PyTorch's BatchNorm ε.
const BATCH_NORM_EPSILON: f64 = 1e-5;

/// The factor `s = γ / √(σ² + ε)` that folding a BatchNorm channel of gain `gamma` and running
/// variance `var` multiplies its convolution's weights by (its bias is then `β − μ·s`).
pub(crate) fn fold_scale(gamma: f32, var: f32) -> f64 {
    gamma as f64 / (var as f64 + BATCH_NORM_EPSILON).sqrt()
}

/// A convolution with its BatchNorm folded in: CSR of `[out, in·k·k]` and a bias per output.
struct FoldedConv {
    weight: Csr,
    bias: Vec<f32>,
    inputs: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl FoldedConv {
    /// `[inputs, h, w]` → (`[out, h', w']`, h', w').
    fn forward(&self, x: &[f32], h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        let (cols, ho, wo) = im2col(
            x,
            self.inputs,
            (h, w),
            self.kernel,
            self.stride,
            self.padding,
        );
        let mut y = vec![0.0; self.weight.rows * ho * wo];
        self.weight
            .matmul_t(&cols, ho * wo, Some(&self.bias), &mut y);
        (y, ho, wo)
    }
}

/// `relu(conv2(relu(conv1(x))) + shortcut(x))`, BatchNorms folded.
struct FoldedBlock {
    conv1: FoldedConv,
    conv2: FoldedConv,
    shortcut: Option<FoldedConv>,
}

/// A ResNet from a model file, BatchNorm folded into its convolutions, on CSR weights.
pub struct FoldedResNet {
    stem: FoldedConv,
    blocks: Vec<FoldedBlock>,
    linear: Csr,
    linear_bias: Vec<f32>,
    shape: ImageShape,
}

fn relu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.max(0.0));
}

impl FoldedResNet {
    /// The network of a checked ResNet file (dense, sparse or compact).
    pub fn new(file: &ModelFile) -> Result<Self> {
        let config = ResNetConfig::of(file.config.model, file.config.widths())
            .context("FoldedResNet takes ResNet files")?;
        let find = |name: &str| -> Result<&ModelTensor> {
            file.tensors
                .iter()
                .find(|t| t.name == name)
                .with_context(|| format!("the ResNet file lacks {name}"))
        };
        let threshold = file.threshold as f32;
        let conv = |conv: &str, bn: &str, stride: usize| -> Result<FoldedConv> {
            let w = find(&format!("{conv}.weight"))?;
            ensure!(w.shape.len() == 4, "{} is not a conv kernel", w.name);
            let stat = |key: &str| find(&format!("{bn}.{key}")).map(ModelTensor::dense);
            let (gamma, beta, mean, var) = (
                stat("weight")?,
                stat("bias")?,
                stat("running_mean")?,
                stat("running_var")?,
            );
            let out = w.shape[0];
            ensure!(
                [&gamma, &beta, &mean, &var].iter().all(|v| v.len() == out),
                "{bn} has not one value per output channel of {conv}"
            );
            let mut weight = match &w.stored {
                Stored::Sparse(csr) => csr.clone(),
                Stored::Dense(values) => {
                    Csr::from_dense(values, out, values.len() / out.max(1), threshold)
                }
            };
            let mut bias = Vec::with_capacity(out);
            for c in 0..out {
                let scale = fold_scale(gamma[c], var[c]);
                let row = weight.row_offsets[c] as usize..weight.row_offsets[c + 1] as usize;
                weight.values[row]
                    .iter_mut()
                    .for_each(|v| *v = (*v as f64 * scale) as f32);
                bias.push((beta[c] as f64 - mean[c] as f64 * scale) as f32);
            }
            Ok(FoldedConv {
                weight,
                bias,
                inputs: w.shape[1],
                kernel: w.shape[2],
                stride,
                // 3×3 convs pad by 1, the 1×1 projections not at all
                padding: w.shape[2] / 2,
            })
        };
        let mut blocks = Vec::new();
        for (i, &(_, stride, count)) in config.stages.iter().enumerate() {
            for j in 0..count {
                let block = format!("layer{}.{j}", i + 1);
                let stride = if j == 0 { stride } else { 1 };
                let has_shortcut = file
                    .tensors
                    .iter()
                    .any(|t| t.name == format!("{block}.shortcut.0.weight"));
                blocks.push(FoldedBlock {
                    conv1: conv(&format!("{block}.conv1"), &format!("{block}.bn1"), stride)?,
                    conv2: conv(&format!("{block}.conv2"), &format!("{block}.bn2"), 1)?,
                    shortcut: has_shortcut
                        .then(|| {
                            conv(
                                &format!("{block}.shortcut.0"),
                                &format!("{block}.shortcut.1"),
                                stride,
                            )
                        })
                        .transpose()?,
                });
            }
        }
        let linear = find("linear.weight")?;
        let linear_weight = match &linear.stored {
            Stored::Sparse(csr) => csr.clone(),
            Stored::Dense(values) => {
                Csr::from_dense(values, linear.shape[0], linear.shape[1], threshold)
            }
        };
        Ok(Self {
            stem: conv("conv1", "bn1", 1)?,
            blocks,
            linear: linear_weight,
            linear_bias: find("linear.bias")?.dense(),
            shape: file.config.image_shape,
        })
    }

    fn image_logits(&self, image: &[f32]) -> Vec<f32> {
        let (mut x, mut h, mut w) = self
            .stem
            .forward(image, self.shape.height, self.shape.width);
        relu(&mut x);
        for block in &self.blocks {
            let (mut inner, hi, wi) = block.conv1.forward(&x, h, w);
            relu(&mut inner);
            let (mut out, ho, wo) = block.conv2.forward(&inner, hi, wi);
            match &block.shortcut {
                Some(s) => {
                    let (skip, _, _) = s.forward(&x, h, w);
                    out.iter_mut().zip(&skip).for_each(|(o, s)| *o += s);
                }
                None => out.iter_mut().zip(&x).for_each(|(o, s)| *o += s),
            }
            relu(&mut out);
            (x, h, w) = (out, ho, wo);
        }
        // global average pool over each channel's h·w values
        let plane = (h * w).max(1);
        let pooled: Vec<f32> = x
            .chunks_exact(plane)
            .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
            .collect();
        let mut logits = vec![0.0; self.linear.rows];
        self.linear
            .matvec(&pooled, Some(&self.linear_bias), &mut logits);
        logits
    }

    /// Logits `[batch, classes]` of `x` (`[batch, values]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        if batch == 0 {
            return Vec::new();
        }
        x.par_chunks(x.len() / batch)
            .flat_map_iter(|image| self.image_logits(image))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::deploy::infer::Engine;
    use crate::deploy::model_file::Format;
    use crate::models::{Classifier, ModelKind};
    use burn::tensor::Device;

    /// A pseudo-random value in [-1, 1) for index `i` of stream `seed`.
    fn noise(seed: usize, i: usize) -> f32 {
        let x = ((i as u64 + 1) * 0x9E37_79B9 + seed as u64 * 0x85EB_CA6B) % 10_007;
        x as f32 / 5_003.5 - 1.0
    }

    /// A `kind` ResNet of stem width `width` on `shape` images, as a dense file: 70% of each
    /// weight tensor zero, and BatchNorm with running statistics and gains far from their
    /// initial 0 and 1 (so that folding has something to fold).
    pub(crate) fn resnet_file(kind: ModelKind, shape: ImageShape, width: usize) -> ModelFile {
        let config = TrainConfig {
            model: kind,
            resnet_width: Some(width),
            image_shape: shape,
            ..TrainConfig::default()
        };
        let model = Classifier::new(kind, shape, config.widths(), &Device::default());
        let stats = vec![(0.0, 1.0); shape.channels];
        let mut file = ModelFile::from_model(&model, &config, Format::Dense, 1e-13, stats);
        for (seed, t) in file.tensors.iter_mut().enumerate() {
            let mut values = t.dense();
            for (i, v) in values.iter_mut().enumerate() {
                let r = noise(seed, i);
                *v = if t.name.ends_with("running_var") {
                    0.2 + r * r
                } else if t.name.ends_with("running_mean") || t.shape.len() == 1 {
                    0.5 * r
                } else if (i * 7 + seed) % 10 < 7 {
                    0.0
                } else {
                    *v
                };
            }
            t.stored = Stored::Dense(values);
        }
        file
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn folded_batch_norm_on_csr_gives_burns_evaluation_logits() {
        for (kind, shape, width) in [
            (ModelKind::Resnet20, ImageShape::FASHION_MNIST, 4),
            (ModelKind::Resnet18, ImageShape::CIFAR10, 2),
            (ModelKind::Resnet20, ImageShape::new(2, 9, 9), 3),
        ] {
            let dense = resnet_file(kind, shape, width);
            let sparse = dense.with_format(Format::Sparse);
            let burn = Engine::new(&dense).unwrap();
            assert!(matches!(burn, Engine::Dense(..)));
            let folded = Engine::new(&sparse).unwrap();
            assert!(matches!(folded, Engine::FoldedResNet(..)));
            for batch in [1, 3] {
                let x: Vec<f32> = (0..batch * shape.values())
                    .map(|i| noise(99, i) * 2.0)
                    .collect();
                let (a, b) = (burn.logits(&x, batch), folded.logits(&x, batch));
                assert_eq!(a.len(), batch * 10);
                // the logits are O(1): without the fold (or with the wrong ε, stride or
                // padding) they differ by far more
                assert!(a.iter().any(|v| v.abs() > 0.05), "{a:?}");
                let off = worst(&a, &b);
                assert!(off <= 1e-4, "{kind:?} {shape} batch {batch}: {off}");
            }
        }
    }

    #[test]
    fn the_fold_is_the_formula() {
        // one channel, a 1x1 "image": conv weight w, then BatchNorm (γ, β, μ, σ²)
        let (w, gamma, beta, mean, var) = (2.0f64, 1.5, 0.25, 0.5, 3.0);
        let mut file = resnet_file(ModelKind::Resnet20, ImageShape::new(1, 1, 1), 1);
        let set = |file: &mut ModelFile, name: &str, v: f64| {
            let t = file.tensors.iter_mut().find(|t| t.name == name).unwrap();
            let n = t.params();
            t.stored = Stored::Dense(vec![v as f32; n]);
        };
        set(&mut file, "conv1.weight", 0.0);
        // the stem's centre tap only: a 1x1 image sees no other
        let stem = file
            .tensors
            .iter_mut()
            .find(|t| t.name == "conv1.weight")
            .unwrap();
        if let Stored::Dense(v) = &mut stem.stored {
            v[4] = w as f32;
        }
        for (key, v) in [
            ("weight", gamma),
            ("bias", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            set(&mut file, &format!("bn1.{key}"), v);
        }
        let net = FoldedResNet::new(&file).unwrap();
        let scale = gamma / (var + BATCH_NORM_EPSILON).sqrt();
        assert_eq!(net.stem.weight.values, [(w * scale) as f32]);
        assert_eq!(net.stem.bias, [(beta - mean * scale) as f32]);
        // 3x3 kernels pad by 1, stride from the stage: layer2.0 halves, layer2.1 keeps
        assert_eq!((net.stem.padding, net.stem.stride), (1, 1));
        assert_eq!(net.blocks[3].conv1.stride, 2);
        assert_eq!(net.blocks[4].conv1.stride, 1);
        let shortcut = net.blocks[3].shortcut.as_ref().unwrap();
        assert_eq!(
            (shortcut.kernel, shortcut.padding, shortcut.stride),
            (1, 0, 2)
        );
        assert!(net.blocks[0].shortcut.is_none());
    }
}
