//! 2x2 max pooling with stride 2 for burn's flex CPU backend, forward and backward.
//!
//! burn's `MaxPool2d` on flex goes through a generic 3-d pooling kernel that computes each
//! output's window bounds and walks it with bounds checks: about 24 ns per output, 17% of a CNN
//! training step (bench/README.md). For the 2x2 / stride 2 window every CNN here uses, the four
//! candidates of an output sit at fixed offsets, so one pass over each input plane does it
//! ([`pdecay::pool`], which chooses without branches).
//!
//! The op is a burn backend extension. Flex gets the fast forward. Autodiff records the
//! argmax of each window and, on the way back, hands it to the backend's own
//! `max_pool2d_with_indices_backward`, the scatter that `MaxPool2d` uses too. Values, indices
//! and gradients are therefore exactly those of `MaxPool2d([2, 2])`, ties included: the first
//! maximum in row-major window order wins, and a NaN wins as in PyTorch. [`max_pool_2x2`] falls
//! back to burn's own pooling on any other device (CUDA).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::flex::on_flex;

const KERNEL: [usize; 2] = [2, 2];
const STRIDE: [usize; 2] = [2, 2];
const PADDING: [usize; 2] = [0, 0];
const DILATION: [usize; 2] = [1, 1];

/// 2x2, stride-2 max pooling as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait MaxPool2x2: Backend {
    /// The pooled `[B, C, H/2, W/2]` and, for each output, the index of its maximum within its
    /// input plane (`row * W + col`, i64), as `max_pool2d_with_indices` gives them.
    fn max_pool_2x2_with_indices(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        generic_max_pool_2x2_with_indices::<Self>(x)
    }

    /// The pooled `[B, C, H/2, W/2]`.
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::max_pool_2x2_with_indices(x).0
    }
}

/// The backend's own `max_pool2d_with_indices` with the 2x2 / stride-2 window.
fn generic_max_pool_2x2_with_indices<B: Backend>(
    x: FloatTensor<B>,
) -> (FloatTensor<B>, IntTensor<B>) {
    let pooled = B::max_pool2d_with_indices(
        x,
        KERNEL,
        STRIDE,
        PADDING,
        DILATION,
        false,
        burn::tensor::IntDType::I64,
    );
    (pooled.output, pooled.indices)
}

impl MaxPool2x2 for Flex {
    fn max_pool_2x2_with_indices(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        if x.dtype() != DType::F32 {
            return generic_max_pool_2x2_with_indices::<Self>(x);
        }
        let x = x.to_contiguous();
        let dims = x.layout().shape().to_vec();
        let [batch, channels, height, width] = [dims[0], dims[1], dims[2], dims[3]];
        let (values, indices) = pool_planes(x.storage::<f32>(), batch * channels, height, width);
        let shape = [batch, channels, height / 2, width / 2];
        (
            FlexTensor::from_data(TensorData::new(values, shape)),
            FlexTensor::from_data(TensorData::new(indices, shape)),
        )
    }
}

/// Pools `planes` contiguous `height x width` planes; odd last rows and columns are dropped.
fn pool_planes(input: &[f32], planes: usize, height: usize, width: usize) -> (Vec<f32>, Vec<i64>) {
    let out_len = (height / 2) * (width / 2);
    let mut values = vec![0.0f32; planes * out_len];
    let mut indices = vec![0i64; planes * out_len];
    let plane_len = height * width;
    // one plane is a few microseconds of work: only many of them are worth the threads
    let chunk = if planes * out_len >= 1 << 16 {
        planes.div_ceil(rayon::current_num_threads() * 4).max(1)
    } else {
        planes.max(1)
    };
    if out_len > 0 {
        values
            .par_chunks_mut(chunk * out_len)
            .zip(indices.par_chunks_mut(chunk * out_len))
            .enumerate()
            .for_each(|(i, (values, indices))| {
                let first = i * chunk * plane_len;
                let planes = values.len() / out_len;
                let input = &input[first..first + planes * plane_len];
                pdecay::pool::max_pool_2x2(input, planes, height, width, values, indices);
            });
    }
    (values, indices)
}

/// The backward step: the output gradient goes back to each window's maximum.
#[derive(Debug)]
struct MaxPool2x2Backward;

impl<B: Backend> Backward<B, 1> for MaxPool2x2Backward {
    /// The input (checkpointed) and the argmax indices.
    type State = (NodeId, IntTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, indices) = ops.state;
        let x = checkpointer.retrieve_node_output(x_state);
        if let Some(node) = parent {
            let x_grad = B::max_pool2d_with_indices_backward(
                x, KERNEL, STRIDE, PADDING, DILATION, false, grad, indices,
            )
            .x_grad;
            grads.register::<B>(node.id, x_grad);
        }
    }
}

impl<B: Backend + MaxPool2x2, C: CheckpointStrategy> MaxPool2x2 for Autodiff<B, C> {
    fn max_pool_2x2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match MaxPool2x2Backward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let (output, indices) = B::max_pool_2x2_with_indices(x.into_primitive());
                prep.finish((x_state, indices), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool_2x2(x.into_primitive())),
        }
    }
}

/// 2x2 max pooling with stride 2 of `[B, C, H, W]`: burn's `MaxPool2d([2, 2])`, computed by the
/// fast kernel on the flex CPU backend (with or without autodiff) and by burn elsewhere.
pub fn max_pool_2x2(x: Tensor<4>) -> Tensor<4> {
    if on_flex(&x.device(), true) {
        Tensor::from_dispatch(<Dispatch as MaxPool2x2>::max_pool_2x2(x.into_dispatch()))
    } else {
        burn::tensor::module::max_pool2d(x, MaxPoolOptions::new(KERNEL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn burn_pool(x: Tensor<4>) -> Tensor<4> {
        burn::tensor::module::max_pool2d(x, MaxPoolOptions::new(KERNEL))
    }

    #[test]
    fn values_and_gradients_equal_burns_max_pool() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            for [b, c, h, w] in [
                [2, 3, 6, 8],
                [1, 2, 7, 5],
                [4, 32, 28, 28],
                [16, 33, 13, 14],
            ] {
                let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
                // ReLU-like inputs: many exact ties at zero
                let x = x.clamp_min(0.0);
                assert_eq!(
                    max_pool_2x2(x.clone()).into_data(),
                    burn_pool(x.clone()).into_data()
                );
                if device == Device::flex() {
                    continue;
                }
                let x = x.require_grad();
                let weights =
                    Tensor::<4>::random([b, c, h / 2, w / 2], Distribution::Default, &device);
                let grad = |y: Tensor<4>| {
                    let grads = (y * weights.clone()).sum().backward();
                    x.grad(&grads).unwrap().into_data()
                };
                assert_eq!(grad(max_pool_2x2(x.clone())), grad(burn_pool(x.clone())));
            }
        }
    }
}
