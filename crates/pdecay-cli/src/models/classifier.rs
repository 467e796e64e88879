//! The image classifiers: the MLP, the 2023 blog's CNN and the ResNets.

use super::kind::ModelKind;
use super::resnet::{ResNet, ResNetConfig};
use super::sparse::{SparseCandidate, linear};
use crate::data::ImageShape;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use pdecay_burn::{bias_relu_max_pool_2x2, conv2d_relu_max_pool_2x2, dense_conv2d, sparse_conv2d};

/// A multi-layer perceptron on flattened images.
#[derive(Module, Debug)]
pub struct Mlp {
    hidden: Vec<Linear>,
    output: Linear,
}

impl Mlp {
    /// `inputs` → each of `hidden` (ReLU) → `classes`.
    pub fn new(inputs: usize, hidden: &[usize], classes: usize, device: &Device) -> Self {
        let mut width = inputs;
        let hidden = hidden
            .iter()
            .map(|&h| {
                let layer = LinearConfig::new(width, h).init(device);
                width = h;
                layer
            })
            .collect();
        Self {
            hidden,
            output: LinearConfig::new(width, classes).init(device),
        }
    }

    /// Logits for a `[batch, inputs]` input.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// [`Mlp::forward`] with the linear layers whose entry of `sparse` is true (in
    /// [`Classifier::sparse_candidates`]' order; missing entries are false) run over their
    /// weights' non-zeros.
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let x = self
            .hidden
            .iter()
            .enumerate()
            .fold(x, |x, (i, layer)| relu(linear(layer, x, on(i))));
        linear(&self.output, x, on(self.hidden.len()))
    }
}

/// The stride and zero padding of `layer`, a square kernel padded to keep the size at stride 1
/// (`k/2` on every side), as every convolution of pdecay's models is.
pub fn conv_geometry(layer: &Conv2d) -> (usize, usize) {
    (layer.stride[0], layer.kernel_size[0] / 2)
}

/// The `[channels, height, width]` that `layer` makes of an input of `input`.
pub fn conv_output(layer: &Conv2d, [_, height, width]: [usize; 3]) -> [usize; 3] {
    let (stride, padding) = conv_geometry(layer);
    let shape = pdecay::im2col::ConvShape {
        batch: 1,
        channels: layer.weight.dims()[1],
        height,
        width,
        kernel: layer.kernel_size[0],
        stride,
        padding,
    };
    let (h, w) = shape.output_size();
    [layer.weight.dims()[0], h, w]
}

/// `layer`'s output, over its kernel's non-zeros when `sparse`, else dense (directly on the
/// images for a kernel with few taps, see [`dense_conv2d`]).
pub(super) fn conv(layer: &Conv2d, x: Tensor<4>, sparse: bool) -> Tensor<4> {
    conv_with(layer, x, sparse, layer.bias.as_ref().map(|b| b.val()))
}

/// `max_pool_2x2(relu(layer(x)))`, the bias added in the pooling's pass
/// ([`bias_relu_max_pool_2x2`]) instead of over the convolution's full-size output, and the
/// four as one op where the convolution runs with the batch innermost
/// ([`conv2d_relu_max_pool_2x2`]).
pub(crate) fn conv_relu_pool(layer: &Conv2d, x: Tensor<4>, sparse: bool) -> Tensor<4> {
    let Some(bias) = &layer.bias else {
        return bias_relu_max_pool_2x2(conv_with(layer, x, sparse, None), None);
    };
    let (stride, padding) = conv_geometry(layer);
    conv2d_relu_max_pool_2x2(x, layer.weight.val(), bias.val(), stride, padding, sparse)
}

/// [`conv`] with `bias` in place of the layer's.
fn conv_with(layer: &Conv2d, x: Tensor<4>, sparse: bool, bias: Option<Tensor<1>>) -> Tensor<4> {
    let (stride, padding) = conv_geometry(layer);
    let weight = layer.weight.val();
    if sparse {
        sparse_conv2d(x, weight, bias, stride, padding)
    } else {
        dense_conv2d(x, weight, bias, stride, padding)
    }
}

/// The CNN of the authors' 2023 blog post on Fashion-MNIST.
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    dense: Linear,
    dropout: Dropout,
    output: Linear,
}

impl Cnn {
    /// The blog's widths: 32 and 64 conv channels, 128 dense units.
    pub const WIDTHS: [usize; 3] = [32, 64, 128];

    /// For images of `shape` (padding keeps the size through each conv); `widths` are the
    /// channels of the two convs and the dense units ([`Cnn::WIDTHS`], or fewer after
    /// `pdecay compact`).
    pub fn new(shape: ImageShape, widths: [usize; 3], classes: usize, device: &Device) -> Self {
        let [c1, c2, units] = widths;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        let pooled = (shape.height / 4) * (shape.width / 4);
        Self {
            conv1: conv(shape.channels, c1),
            conv2: conv(c1, c2),
            dense: LinearConfig::new(c2 * pooled, units).init(device),
            dropout: DropoutConfig::new(0.2).init(),
            output: LinearConfig::new(units, classes).init(device),
        }
    }

    /// Logits for a `[batch, values]` input of square images.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// [`Cnn::forward`] with its layers (`conv1`, `conv2`, `dense`, `output`) run over their
    /// weights' non-zeros where `sparse` says (see [`Mlp::forward_with`]).
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let x = unflatten(x, self.conv1.weight.dims()[1]);
        // each convolution's bias, ReLU and 2x2 max pooling (burn's MaxPool2d) in one pass
        let x = conv_relu_pool(&self.conv1, x, on(0));
        let x = conv_relu_pool(&self.conv2, x, on(1));
        let x = x.flatten::<2>(1, 3);
        let x = self.dropout.forward(relu(linear(&self.dense, x, on(2))));
        linear(&self.output, x, on(3))
    }

    /// The input `[channels, height, width]` of each convolution, for images of `shape`.
    fn conv_inputs(&self, shape: [usize; 3]) -> [[usize; 3]; 2] {
        let [c, h, w] = shape;
        [[c, h, w], [self.conv1.weight.dims()[0], h / 2, w / 2]]
    }
}

/// `[batch, channels·side·side]` rows as `[batch, channels, side, side]` images.
pub(super) fn unflatten(x: Tensor<2>, channels: usize) -> Tensor<4> {
    let [batch, values] = x.dims();
    let side = ((values / channels.max(1)) as f64).sqrt().round() as usize;
    x.reshape([batch, channels, side, side])
}

/// One of the image classifiers.
// One value per run: the size difference of the variants costs nothing, and burn's Module derive
// does not see through a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    /// The MLP.
    Mlp(Mlp),
    /// The CNN.
    Cnn(Cnn),
    /// ResNet-18 or ResNet-20.
    ResNet(ResNet),
}

impl Classifier {
    /// Builds `kind` for images of `shape` and 10 classes; `widths` are the MLP's hidden
    /// widths, the CNN's three widths (see [`Cnn::new`]; any other length gives the blog's) or
    /// a ResNet's stem width (none gives the standard network's).
    /// The GPT is not an image classifier: callers check [`ModelKind::is_classifier`] first
    /// (asking for it here builds the MLP).
    pub fn new(kind: ModelKind, shape: ImageShape, widths: &[usize], device: &Device) -> Self {
        let classes = crate::data::images::CLASSES;
        match (kind, ResNetConfig::of(kind, widths)) {
            (_, Some(config)) => Self::ResNet(ResNet::new(&config, shape, classes, device)),
            (ModelKind::Cnn, None) => {
                let widths = widths.try_into().unwrap_or(Cnn::WIDTHS);
                Self::Cnn(Cnn::new(shape, widths, classes, device))
            }
            _ => Self::Mlp(Mlp::new(shape.values(), widths, classes, device)),
        }
    }

    /// Logits for a `[batch, pixels]` input.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// Logits with the layers marked in `sparse` (in [`Classifier::sparse_candidates`]'
    /// order) run over their weights' non-zeros.
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward_with(x, sparse),
            Self::Cnn(m) => m.forward_with(x, sparse),
            Self::ResNet(m) => m.forward_with(x, sparse),
        }
    }

    /// The layers that sparse training can run over their non-zeros, in forward order (the
    /// order of [`Classifier::forward_with`]'s flags), named as in the model's parameter paths
    /// (`hidden.0`, `output`; the CNN's `conv1`, `conv2`, `dense`, `output`; a ResNet's
    /// `conv1`, each block's `stages.i.j.conv1`, `conv2` and `shortcut.conv`, and `linear`). A
    /// convolution comes with its input's shape for images of `shape` (`[channels, height,
    /// width]`).
    pub fn sparse_candidates(&self, shape: [usize; 3]) -> Vec<(String, SparseCandidate<'_>)> {
        let linear = |name: &str, l| (name.to_string(), SparseCandidate::Linear(l));
        match self {
            Self::Mlp(m) => m
                .hidden
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("hidden.{i}"), SparseCandidate::Linear(l)))
                .chain([linear("output", &m.output)])
                .collect(),
            Self::Cnn(m) => {
                let [in1, in2] = m.conv_inputs(shape);
                vec![
                    (
                        "conv1".to_string(),
                        SparseCandidate::PooledConv(&m.conv1, in1),
                    ),
                    (
                        "conv2".to_string(),
                        SparseCandidate::PooledConv(&m.conv2, in2),
                    ),
                    linear("dense", &m.dense),
                    linear("output", &m.output),
                ]
            }
            Self::ResNet(m) => m.sparse_candidates(shape),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_reference_networks() {
        let device = Device::default();
        let mlp = Classifier::new(
            ModelKind::Mlp,
            ImageShape::FASHION_MNIST,
            &[300, 100],
            &device,
        );
        assert_eq!(
            mlp.num_params(),
            784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
        );
        let cnn = Classifier::new(ModelKind::Cnn, ImageShape::FASHION_MNIST, &[], &device);
        assert_eq!(cnn.num_params(), 421_642);
        // on CIFAR-10: conv1 takes 3 channels, the dense layer 64·8·8 inputs
        let rgb = Classifier::new(ModelKind::Cnn, ImageShape::CIFAR10, &[], &device);
        assert_eq!(
            rgb.num_params(),
            421_642 + 2 * 9 * 32 + 64 * (8 * 8 - 7 * 7) * 128
        );
        let x3 = Tensor::<2>::zeros([2, 3 * 32 * 32], &device);
        assert_eq!(rgb.forward(x3).dims(), [2, 10]);
        let x = Tensor::<2>::zeros([3, 784], &device);
        assert_eq!(cnn.forward(x.clone()).dims(), [3, 10]);
        assert_eq!(mlp.forward(x).dims(), [3, 10]);
    }
}
