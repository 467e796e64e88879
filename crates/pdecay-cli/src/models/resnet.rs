//! Residual networks for 32×32-scale images (He et al., "Deep Residual Learning", 2016), built
//! from BasicBlocks with BatchNorm, as the paper's CIFAR experiments train them.
//!
//! - **ResNet-18**, the CIFAR variant of the authors' code (and of most CIFAR ResNet-18s): a 3×3
//!   stem of 64 channels without max pooling, stages of 64/128/256/512 channels with strides
//!   1/2/2/2 of two BasicBlocks each, global average pooling, a linear layer to the classes:
//!   11,173,962 parameters on RGB images.
//! - **ResNet-20**, He et al.'s CIFAR network: 16/32/64 channels, three BasicBlocks per stage,
//!   about 0.27M parameters, small enough to train on a CPU. Its shortcuts across a change of
//!   width are 1×1 projections (He et al.'s option B, as ResNet-18's) rather than option A's
//!   zero-padded identity, so both networks are one code path; that adds 2,752 parameters.
//!
//! A BasicBlock is `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, its convolutions
//! without biases (each is followed by a BatchNorm, whose β is the bias). pWD decays the conv
//! and linear weights (rank ≥ 2) and never BatchNorm's γ and β (rank 1).
//!
//! In training (an autodiff device) BatchNorm normalises with each batch's statistics and
//! updates its running mean and variance (momentum 0.1, PyTorch's); evaluated (`model.valid()`)
//! it uses the running statistics, which are part of the checkpoint.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::ModelKind;
use crate::data::ImageShape;

/// The sizes of a ResNet: stem channels, then per stage its channels, stride and blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// Channels of the stem's 3×3 convolution.
    pub stem: usize,
    /// `(channels, stride, blocks)` of each stage.
    pub stages: Vec<(usize, usize, usize)>,
}

impl ResNetConfig {
    /// ResNet-18's standard stem width.
    pub const RESNET18_WIDTH: usize = 64;
    /// ResNet-20's standard stem width.
    pub const RESNET20_WIDTH: usize = 16;

    /// The network of `kind` with the stem width `widths` names (none: the standard one), or
    /// `None` for a model that is not a ResNet.
    pub fn of(kind: ModelKind, widths: &[usize]) -> Option<Self> {
        let width = |standard| widths.first().copied().unwrap_or(standard);
        match kind {
            ModelKind::Resnet18 => Some(Self::resnet18(width(Self::RESNET18_WIDTH))),
            ModelKind::Resnet20 => Some(Self::resnet20(width(Self::RESNET20_WIDTH))),
            _ => None,
        }
    }

    /// The CIFAR ResNet-18 with `width` stem channels (64 is the standard network; stages
    /// double it at each stride 2).
    pub fn resnet18(width: usize) -> Self {
        Self::doubling(width, 4, 2)
    }

    /// He et al.'s CIFAR ResNet-20 with `width` stem channels (16 is the standard network).
    pub fn resnet20(width: usize) -> Self {
        Self::doubling(width, 3, 3)
    }

    /// `stages` stages of `blocks` BasicBlocks; the first keeps the stem's width and
    /// resolution, each further one doubles the channels at stride 2.
    fn doubling(width: usize, stages: usize, blocks: usize) -> Self {
        Self {
            stem: width,
            stages: (0..stages)
                .map(|i| (width << i, if i == 0 { 1 } else { 2 }, blocks))
                .collect(),
        }
    }
}

/// The name PyTorch gives the parameter or buffer at burn path `path` of a [`ResNet`] in the
/// authors' CIFAR ResNet (and kuangliu's `pytorch-cifar`, which it follows): `conv1`, `bn1`,
/// `layer{i+1}.{j}.conv1` for block `j` of stage `i`, `shortcut.0` / `shortcut.1` for the
/// projection's conv and BatchNorm, `linear`; BatchNorm's γ and β are `weight` and `bias`.
/// A leading `ResNet.` (the classifier's variant) is dropped; other paths are kept as they are.
pub fn torch_name(path: &str) -> String {
    let mut parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.first().is_some_and(|p| p == "ResNet") {
        parts.remove(0);
    }
    if parts.first().is_some_and(|p| p == "stages")
        && let Some(stage) = parts.get(1).and_then(|s| s.parse::<usize>().ok())
    {
        parts.splice(0..2, [format!("layer{}", stage + 1)]);
    }
    if let Some(at) = parts.iter().position(|p| p == "shortcut")
        && let Some(inner) = parts.get_mut(at + 1)
    {
        match inner.as_str() {
            "conv" => *inner = "0".into(),
            "bn" => *inner = "1".into(),
            _ => {}
        }
    }
    if let Some(last) = parts.last_mut() {
        match last.as_str() {
            "gamma" => *last = "weight".into(),
            "beta" => *last = "bias".into(),
            _ => {}
        }
    }
    parts.join(".")
}

/// A 3×3 convolution with padding 1 and no bias.
fn conv3x3(inputs: usize, outputs: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([inputs, outputs], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

fn batch_norm(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels).init(device)
}

/// The projection of a BasicBlock's input where its width or resolution changes: a strided
/// 1×1 convolution and a BatchNorm.
#[derive(Module, Debug)]
pub struct Shortcut {
    conv: Conv2d,
    bn: BatchNorm,
}

/// Two 3×3 convolutions with BatchNorm and ReLU, and the residual connection.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<Shortcut>,
}

impl BasicBlock {
    fn new(inputs: usize, outputs: usize, stride: usize, device: &Device) -> Self {
        let shortcut = (stride != 1 || inputs != outputs).then(|| Shortcut {
            conv: Conv2dConfig::new([inputs, outputs], [1, 1])
                .with_stride([stride, stride])
                .with_bias(false)
                .init(device),
            bn: batch_norm(outputs, device),
        });
        Self {
            conv1: conv3x3(inputs, outputs, stride, device),
            bn1: batch_norm(outputs, device),
            conv2: conv3x3(outputs, outputs, 1, device),
            bn2: batch_norm(outputs, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = self.bn2.forward(self.conv2.forward(out));
        let skip = match &self.shortcut {
            Some(s) => s.bn.forward(s.conv.forward(x)),
            None => x,
        };
        relu(out + skip)
    }
}

/// A ResNet of BasicBlocks (see the module docs).
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    /// `stages[i][j]`: block `j` of stage `i` (the authors' `layer{i+1}.{j}`).
    stages: Vec<Vec<BasicBlock>>,
    linear: Linear,
}

impl ResNet {
    /// `config`'s network for images of `shape` and `classes` classes. Any height and width
    /// work: the global average pool takes whatever resolution the last stage leaves.
    pub fn new(config: &ResNetConfig, shape: ImageShape, classes: usize, device: &Device) -> Self {
        let mut width = config.stem;
        let stages = config
            .stages
            .iter()
            .map(|&(channels, stride, blocks)| {
                (0..blocks)
                    .map(|b| {
                        let block = BasicBlock::new(
                            width,
                            channels,
                            if b == 0 { stride } else { 1 },
                            device,
                        );
                        width = channels;
                        block
                    })
                    .collect()
            })
            .collect();
        Self {
            conv1: conv3x3(shape.channels, config.stem, 1, device),
            bn1: batch_norm(config.stem, device),
            stages,
            linear: LinearConfig::new(width, classes).init(device),
        }
    }

    /// Logits for a `[batch, values]` input of square images; with `sparse_head`, the final
    /// linear layer runs over its weight's non-zeros (sparse training).
    pub fn forward_with(&self, x: Tensor<2>, sparse_head: bool) -> Tensor<2> {
        let x = super::classifier::unflatten(x, self.conv1.weight.dims()[1]);
        let x = relu(self.bn1.forward(self.conv1.forward(x)));
        let x = self
            .stages
            .iter()
            .flatten()
            .fold(x, |x, block| block.forward(x));
        // global average pool: [batch, channels, h, w] -> [batch, channels]
        let x = x.mean_dim(3).mean_dim(2).flatten::<2>(1, 3);
        super::classifier::linear(&self.linear, x, sparse_head)
    }

    /// The final linear layer, named as in the parameter paths.
    pub fn head(&self) -> (&'static str, &Linear) {
        ("linear", &self.linear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use pdecay_burn::trained_param_count;

    /// Parameters of a BasicBlock from `i` to `o` channels (BatchNorm: γ and β).
    fn block(i: usize, o: usize, projection: bool) -> usize {
        let convs = 9 * i * o + 9 * o * o + 2 * 2 * o;
        convs + if projection { i * o + 2 * o } else { 0 }
    }

    #[test]
    fn parameter_counts_are_the_reference_networks() {
        let device = Device::default();
        let rgb = ImageShape::CIFAR10;
        // ResNet-18: the count PyTorch gives the authors' (and kuangliu's) CIFAR ResNet-18
        let r18 = ResNet::new(&ResNetConfig::resnet18(64), rgb, 10, &device);
        assert_eq!(trained_param_count(&r18), 11_173_962);
        // burn's own count adds BatchNorm's running mean and variance (4,800 channels)
        assert_eq!(r18.num_params(), 11_173_962 + 2 * 4_800);
        // ResNet-20 by hand: stem, 3 stages of 3 blocks, two with a projection, the head
        let by_hand = 9 * 3 * 16
            + 2 * 16
            + 3 * block(16, 16, false)
            + block(16, 32, true)
            + 2 * block(32, 32, false)
            + block(32, 64, true)
            + 2 * block(64, 64, false)
            + 64 * 10
            + 10;
        let r20 = ResNet::new(&ResNetConfig::resnet20(16), rgb, 10, &device);
        assert_eq!(trained_param_count(&r20), by_hand);
        assert_eq!(by_hand, 272_474);
        // one grey channel: only the stem's weight changes (9·(3-1)·16 fewer)
        let grey = ResNet::new(
            &ResNetConfig::resnet20(16),
            ImageShape::FASHION_MNIST,
            10,
            &device,
        );
        assert_eq!(trained_param_count(&grey), by_hand - 9 * 2 * 16);
    }

    #[test]
    fn parameters_take_the_authors_pytorch_names() {
        let net = ResNet::new(
            &ResNetConfig::resnet20(2),
            ImageShape::CIFAR10,
            10,
            &Device::default(),
        );
        let names: Vec<String> = pdecay_burn::parameter_values(&net)
            .into_iter()
            .map(|p| torch_name(&format!("ResNet.{}", p.name)))
            .collect();
        for expected in [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "layer1.0.conv1.weight",
            "layer1.2.bn2.running_var",
            "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.weight",
            "layer2.0.shortcut.1.running_mean",
            "layer3.2.conv2.weight",
            "linear.weight",
            "linear.bias",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        // one name per tensor: 1 + 9 blocks of 2 conv-BN pairs + 2 projections, + linear
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names.len(), 5 * (1 + 9 * 2 + 2) + 2);
        assert!(
            names
                .iter()
                .all(|n| !n.contains("stages") && !n.contains("gamma"))
        );
        // other paths are left as they are
        assert_eq!(torch_name("Mlp.hidden.0.weight"), "Mlp.hidden.0.weight");
    }

    #[test]
    fn shapes_through_every_stage_at_32_and_28_pixels() {
        let device = Device::default();
        for (shape, sides) in [
            (ImageShape::CIFAR10, [32, 32, 16, 8, 4]),
            (ImageShape::FASHION_MNIST, [28, 28, 14, 7, 4]),
        ] {
            let net = ResNet::new(&ResNetConfig::resnet18(4), shape, 10, &device);
            let x = Tensor::<4>::zeros([2, shape.channels, shape.height, shape.width], &device);
            let mut x = relu(net.bn1.forward(net.conv1.forward(x)));
            assert_eq!(x.dims()[2..], [sides[0]; 2]);
            for (stage, &side) in net.stages.iter().zip(&sides[1..]) {
                x = stage.iter().fold(x, |x, b| b.forward(x));
                assert_eq!(x.dims()[2..], [side; 2], "{shape}");
            }
            assert_eq!(x.dims()[1], 32);
            let flat = Tensor::<2>::zeros([2, shape.values()], &device);
            assert_eq!(net.forward_with(flat, false).dims(), [2, 10]);
        }
    }

    #[test]
    fn batch_norm_trains_on_batch_statistics_and_evaluates_on_running_ones() {
        let device = Device::default().autodiff();
        let net = ResNet::new(
            &ResNetConfig::resnet20(2),
            ImageShape::new(1, 4, 4),
            3,
            &device,
        );
        let values: Vec<f32> = (0..2 * 16).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let x = || Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 16]), &device);
        // burn keeps a training forward's update pending until the state is synced, as
        // `valid()` (evaluation) does
        let running = |net: &ResNet| net.valid().bn1.running_mean.value().into_data();
        let before = running(&net);
        // a training forward updates the running statistics: mean_new = 0.9·0 + 0.1·batch mean
        let train = net.forward_with(x(), false);
        let after = running(&net);
        assert_ne!(before, after);
        let conv = net.conv1.forward(x().reshape([2, 1, 4, 4]));
        let batch_mean = conv.mean_dim(3).mean_dim(2).mean_dim(0).flatten::<1>(0, 3);
        after.assert_approx_eq::<f32>(&batch_mean.mul_scalar(0.1).into_data(), Default::default());
        // evaluation uses them and leaves them alone, and differs from the training output
        let valid = net.valid();
        let inner = Device::default();
        let xv = Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 16]), &inner);
        let eval = valid.forward_with(xv.clone(), false);
        assert_eq!(running(&valid), after);
        assert_eq!(
            valid.forward_with(xv, false).into_data(),
            eval.clone().into_data()
        );
        let (t, e) = (
            train.into_data().try_to_vec::<f32>().unwrap(),
            eval.into_data().try_to_vec::<f32>().unwrap(),
        );
        assert!(
            t.iter().zip(&e).any(|(a, b)| (a - b).abs() > 1e-4),
            "{t:?} {e:?}"
        );
    }
}
