//! The image classifiers: the MLP and the 2023 blog's CNN.

use super::kind::ModelKind;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use pdecay_burn::{max_pool_2x2, sparse_linear};

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
    /// [`Classifier::linear_layers`]' order; missing entries are false) run over their
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

/// `layer`'s output, over its weight's non-zeros when `sparse` (sparse training: the same values
/// up to summation order, no gradient for the zero weights).
fn linear(layer: &Linear, x: Tensor<2>, sparse: bool) -> Tensor<2> {
    if sparse {
        sparse_linear(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
    } else {
        layer.forward(x)
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

    /// For `side`×`side` single-channel images (padding keeps the size through each conv);
    /// `widths` are the channels of the two convs and the dense units ([`Cnn::WIDTHS`], or
    /// fewer after `pdecay compact`).
    pub fn new(side: usize, widths: [usize; 3], classes: usize, device: &Device) -> Self {
        let [c1, c2, units] = widths;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        let pooled = side / 2 / 2;
        Self {
            conv1: conv(1, c1),
            conv2: conv(c1, c2),
            dense: LinearConfig::new(c2 * pooled * pooled, units).init(device),
            dropout: DropoutConfig::new(0.2).init(),
            output: LinearConfig::new(units, classes).init(device),
        }
    }

    /// Logits for a `[batch, side·side]` input.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// [`Cnn::forward`] with its dense layers (`dense`, `output`) run over their weights'
    /// non-zeros where `sparse` says (see [`Mlp::forward_with`]).
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let [batch, pixels] = x.dims();
        let side = (pixels as f64).sqrt() as usize;
        let x = x.reshape([batch, 1, side, side]);
        // 2x2 max pooling, stride 2 (burn's MaxPool2d, with a fast kernel on the CPU)
        let x = max_pool_2x2(relu(self.conv1.forward(x)));
        let x = max_pool_2x2(relu(self.conv2.forward(x)));
        let x = x.flatten::<2>(1, 3);
        let x = self.dropout.forward(relu(linear(&self.dense, x, on(0))));
        linear(&self.output, x, on(1))
    }
}

/// Either classifier.
// One value per run: the size difference of the variants costs nothing, and burn's Module derive
// does not see through a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    /// The MLP.
    Mlp(Mlp),
    /// The CNN.
    Cnn(Cnn),
}

impl Classifier {
    /// Builds `kind` for `side`×`side` images and 10 classes; `widths` are the MLP's hidden
    /// widths or the CNN's three widths (see [`Cnn::new`]; any other length gives the blog's).
    /// The GPT is not an image classifier: callers check [`ModelKind::is_classifier`] first
    /// (asking for it here builds the MLP).
    pub fn new(kind: ModelKind, side: usize, widths: &[usize], device: &Device) -> Self {
        match kind {
            ModelKind::Mlp | ModelKind::Gpt => Self::Mlp(Mlp::new(side * side, widths, 10, device)),
            ModelKind::Cnn => {
                let widths = widths.try_into().unwrap_or(Cnn::WIDTHS);
                Self::Cnn(Cnn::new(side, widths, 10, device))
            }
        }
    }

    /// Logits for a `[batch, pixels]` input.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, &[])
    }

    /// Logits with the linear layers marked in `sparse` (in [`Classifier::linear_layers`]'
    /// order) run over their weights' non-zeros.
    pub fn forward_with(&self, x: Tensor<2>, sparse: &[bool]) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward_with(x, sparse),
            Self::Cnn(m) => m.forward_with(x, sparse),
        }
    }

    /// The linear layers that sparse training can run over their non-zeros, in forward order,
    /// named as in the model's parameter paths (`hidden.0`, `output`; the CNN's `dense`,
    /// `output`).
    pub fn linear_layers(&self) -> Vec<(String, &Linear)> {
        match self {
            Self::Mlp(m) => m
                .hidden
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("hidden.{i}"), l))
                .chain([("output".to_string(), &m.output)])
                .collect(),
            Self::Cnn(m) => vec![
                ("dense".to_string(), &m.dense),
                ("output".to_string(), &m.output),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_the_reference_networks() {
        let device = Device::default();
        let mlp = Classifier::new(ModelKind::Mlp, 28, &[300, 100], &device);
        assert_eq!(
            mlp.num_params(),
            784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
        );
        let cnn = Classifier::new(ModelKind::Cnn, 28, &[], &device);
        assert_eq!(cnn.num_params(), 421_642);
        let x = Tensor::<2>::zeros([3, 784], &device);
        assert_eq!(cnn.forward(x.clone()).dims(), [3, 10]);
        assert_eq!(mlp.forward(x).dims(), [3, 10]);
    }
}
