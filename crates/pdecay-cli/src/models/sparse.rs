//! What sparse training needs of a model: its layers that can run over their weights'
//! non-zeros, and the linear layer's two products (`pdecay_burn::dense_linear`, or
//! `pdecay_burn::sparse_linear`).

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use pdecay_burn::{dense_linear, sparse_linear};

/// `layer`'s output: burn's `Linear` values and gradients bit for bit, or over its weight's
/// non-zeros when `sparse` (sparse training: the same values up to summation order, no
/// gradient for the zero weights).
pub(super) fn linear(layer: &Linear, x: Tensor<2>, sparse: bool) -> Tensor<2> {
    let (weight, bias) = (layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
    if sparse {
        sparse_linear(x, weight, bias)
    } else {
        dense_linear(x, weight, bias)
    }
}

/// A layer that sparse training can run over its weight's non-zeros.
#[derive(Debug, Clone, Copy)]
pub enum SparseCandidate<'a> {
    /// A linear layer (`pdecay_burn::sparse_linear`).
    Linear(&'a Linear),
    /// A convolution (`pdecay_burn::sparse_conv2d`) with its input's `[channels, height,
    /// width]`.
    Conv(&'a Conv2d, [usize; 3]),
    /// A convolution whose output goes through its bias, ReLU and 2x2 max pooling (the CNN's,
    /// `pdecay_burn::conv2d_relu_max_pool_2x2`), with its input's `[channels, height, width]`:
    /// timed as that block, which is what it runs.
    PooledConv(&'a Conv2d, [usize; 3]),
}

impl SparseCandidate<'_> {
    /// The layer's weight, flattened.
    pub fn weight_values(&self) -> Tensor<1> {
        match self {
            Self::Linear(l) => l.weight.val().flatten(0, 1),
            Self::Conv(c, _) | Self::PooledConv(c, _) => c.weight.val().flatten(0, 3),
        }
    }
}

/// [`linear`] for the GPT's `[batch, time, inputs]` activations: every position is a row of
/// one product, dense too (on rank 3, burn keeps a block of 64 positions per batched product
/// and packs the weight once per sequence).
pub(super) fn linear_3d(layer: &Linear, x: Tensor<3>, sparse: bool) -> Tensor<3> {
    let [batch, time, inputs] = x.dims();
    let y = linear(layer, x.reshape([batch * time, inputs]), sparse);
    let outputs = y.dims()[1];
    y.reshape([batch, time, outputs])
}
