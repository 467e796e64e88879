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
use super::classifier::{conv, conv_output};
use super::sparse::SparseCandidate;
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

    /// The block's output; `sparse` flags its convolutions (`conv1`, `conv2`, the shortcut's),
    /// missing entries dense.
    fn forward(&self, x: Tensor<4>, sparse: &[bool]) -> Tensor<4> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let out = relu(self.bn1.forward(conv(&self.conv1, x.clone(), on(0))));
        let out = self.bn2.forward(conv(&self.conv2, out, on(1)));
        let skip = match &self.shortcut {
            Some(s) => s.bn.forward(conv(&s.conv, x, on(2))),
            None => x,
        };
        relu(out + skip)
    }

    /// The block's convolutions as sparse-training candidates under `prefix`, for an input of
    /// `input` (`[channels, height, width]`), and the block's output shape.
    fn sparse_candidates<'a>(
        &'a self,
        prefix: &str,
        input: [usize; 3],
        into: &mut Vec<(String, SparseCandidate<'a>)>,
    ) -> [usize; 3] {
        let inner = conv_output(&self.conv1, input);
        into.push((
            format!("{prefix}.conv1"),
            SparseCandidate::Conv(&self.conv1, input),
        ));
        into.push((
            format!("{prefix}.conv2"),
            SparseCandidate::Conv(&self.conv2, inner),
        ));
        if let Some(s) = &self.shortcut {
            into.push((
                format!("{prefix}.shortcut.conv"),
                SparseCandidate::Conv(&s.conv, input),
            ));
        }
        conv_output(&self.conv2, inner)
    }

    /// How many sparse-training candidates the block has.
    fn candidates(&self) -> usize {
        2 + usize::from(self.shortcut.is_some())
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

    /// Logits for a `[batch, values]` input of square images; `sparse` flags the layers that
    /// run over their weights' non-zeros (sparse training), in [`ResNet::sparse_candidates`]'
    /// order, missing entries dense.
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let x = super::classifier::unflatten(x, self.conv1.weight.dims()[1]);
        let x = relu(self.bn1.forward(conv(&self.conv1, x, on(0))));
        let mut at = 1;
        let x = self.stages.iter().flatten().fold(x, |x, block| {
            let flags = sparse.get(at..).unwrap_or(&[]);
            at += block.candidates();
            block.forward(x, flags)
        });
        // global average pool: [batch, channels, h, w] -> [batch, channels]
        let x = x.mean_dim(3).mean_dim(2).flatten::<2>(1, 3);
        super::sparse::linear(&self.linear, x, on(at))
    }

    /// The layers sparse training can run over their non-zeros, in forward order, named as in
    /// the parameter paths (`conv1`, `stages.i.j.conv1`, `stages.i.j.conv2`,
    /// `stages.i.j.shortcut.conv`, `linear`), each convolution with its input's shape for
    /// images of `image` (`[channels, height, width]`).
    pub fn sparse_candidates(&self, image: [usize; 3]) -> Vec<(String, SparseCandidate<'_>)> {
        let mut all = vec![(
            "conv1".to_string(),
            SparseCandidate::Conv(&self.conv1, image),
        )];
        let mut shape = conv_output(&self.conv1, image);
        for (i, stage) in self.stages.iter().enumerate() {
            for (j, block) in stage.iter().enumerate() {
                shape = block.sparse_candidates(&format!("stages.{i}.{j}"), shape, &mut all);
            }
        }
        all.push(("linear".to_string(), SparseCandidate::Linear(&self.linear)));
        all
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
                x = stage.iter().fold(x, |x, b| b.forward(x, &[]));
                assert_eq!(x.dims()[2..], [side; 2], "{shape}");
            }
            assert_eq!(x.dims()[1], 32);
            let flat = Tensor::<2>::zeros([2, shape.values()], &device);
            assert_eq!(net.forward_with(flat, &[]).dims(), [2, 10]);
        }
    }

    #[test]
    fn every_convolution_can_run_sparse_with_the_dense_outputs() {
        let device = Device::default();
        let net = ResNet::new(
            &ResNetConfig::resnet20(4),
            ImageShape::new(2, 9, 9),
            10,
            &device,
        );
        let candidates = net.sparse_candidates([2, 9, 9]);
        // the stem, two convolutions in each of 9 blocks, two projections, the head
        assert_eq!(candidates.len(), 1 + 9 * 2 + 2 + 1);
        let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[..4],
            [
                "conv1",
                "stages.0.0.conv1",
                "stages.0.0.conv2",
                "stages.0.1.conv1"
            ]
        );
        assert!(names.contains(&"stages.1.0.shortcut.conv"));
        assert_eq!(names.last(), Some(&"linear"));
        // the input shapes follow the strides: layer2.0 takes 9x9, its conv2 and layer2.1 5x5
        let shape_of = |name: &str| match candidates.iter().find(|(n, _)| n == name).unwrap().1 {
            SparseCandidate::Conv(_, input) => input,
            SparseCandidate::Linear(_) | SparseCandidate::PooledConv(..) => {
                panic!("{name} is a conv without pooling")
            }
        };
        assert_eq!(shape_of("stages.1.0.conv1"), [4, 9, 9]);
        assert_eq!(shape_of("stages.1.0.shortcut.conv"), [4, 9, 9]);
        assert_eq!(shape_of("stages.1.0.conv2"), [8, 5, 5]);
        assert_eq!(shape_of("stages.2.1.conv1"), [16, 3, 3]);
        // all sparse (flex's sparse product) against all dense
        let x = Tensor::<2>::random(
            [3, 2 * 81],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let dense = net.forward_with(x.clone(), &[]);
        let sparse = net.forward_with(x, &vec![true; candidates.len()]);
        let worst = (dense - sparse).abs().max().into_scalar::<f32>();
        assert!(worst <= 1e-4, "{worst}");
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
        let train = net.forward_with(x(), &[]);
        let after = running(&net);
        assert_ne!(before, after);
        let conv = net.conv1.forward(x().reshape([2, 1, 4, 4]));
        let batch_mean = conv.mean_dim(3).mean_dim(2).mean_dim(0).flatten::<1>(0, 3);
        after.assert_approx_eq::<f32>(&batch_mean.mul_scalar(0.1).into_data(), Default::default());
        // evaluation uses them and leaves them alone, and differs from the training output
        let valid = net.valid();
        let inner = Device::default();
        let xv = Tensor::<2>::from_data(TensorData::new(values.clone(), [2, 16]), &inner);
        let eval = valid.forward_with(xv.clone(), &[]);
        assert_eq!(running(&valid), after);
        assert_eq!(
            valid.forward_with(xv, &[]).into_data(),
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
