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
//!
//! [`bias_relu_max_pool_2x2`] is `max_pool_2x2(relu(x + bias))`, what a CNN does after each
//! convolution, in one pass forward and one backward ([`pdecay::pool::max_unpool_2x2`]): the
//! bias, the ReLU and the pooling each read and wrote the convolution's full-size output, and
//! again for their gradients. Values and `∂x` are the three ops' exactly; `∂bias` differs by
//! summation order only.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::tensor::activation::relu;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

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

/// `max_pool_2x2(relu(x + bias))` as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait BiasReluMaxPool2x2: Backend {
    /// The pooled `[B, C, H/2, W/2]` of `relu(x + bias)`, `bias` `[C]`.
    fn bias_relu_max_pool_2x2(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        relu_pool_composite::<Self>(x, bias)
    }
}

/// `max_pool2d(relu(x + bias))` in the backend's own three ops.
pub(super) fn relu_pool_composite<B: Backend>(
    x: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let channels = bias.shape()[0];
    let bias = B::float_reshape(bias, Shape::new([1, channels, 1, 1]));
    let x = B::relu(B::float_add(x, bias));
    generic_max_pool_2x2_with_indices::<B>(x).0
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
        if !poolable(&x) {
            return generic_max_pool_2x2_with_indices::<Self>(x);
        }
        let (values, indices) = pool(&x, None);
        let shape = values.layout().shape().clone();
        // burn's index tensors are i64
        let indices: Vec<i64> = indices.into_iter().map(i64::from).collect();
        (
            values,
            FlexTensor::from_data(TensorData::new(indices, shape)),
        )
    }
}

impl BiasReluMaxPool2x2 for Flex {
    fn bias_relu_max_pool_2x2(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        if !poolable(&x) || bias.dtype() != DType::F32 {
            return relu_pool_composite::<Self>(x, bias);
        }
        pool(&x, Some(&bias)).0
    }
}

/// Whether `pdecay::pool` takes `x`: f32, with planes whose indices fit its i32 (burn's own
/// pooling takes any other).
fn poolable(x: &FlexTensor) -> bool {
    let [_, _, height, width] = dims4(x);
    x.dtype() == DType::F32 && i32::try_from(height * width).is_ok()
}

/// `[B, C, H, W]` of a rank-4 tensor.
fn dims4(t: &FlexTensor) -> [usize; 4] {
    let d = t.layout().shape().to_vec();
    [d[0], d[1], d[2], d[3]]
}

/// The planes of `x` `[B, C, H, W]` (f32) pooled, each candidate through `relu(x + bias)`
/// when there is a `bias` `[C]`: the values `[B, C, H/2, W/2]` and each one's index in its
/// plane (-1 where the ReLU passes no gradient). Odd last rows and columns are dropped.
fn pool(x: &FlexTensor, bias: Option<&FlexTensor>) -> (FlexTensor, Vec<i32>) {
    let x = x.to_contiguous();
    let [batch, channels, height, width] = dims4(&x);
    let bias = bias.map(|b| b.to_contiguous());
    let bias = bias.as_ref().map(|b| b.storage::<f32>());
    let input = x.storage::<f32>();
    let (planes, out_len, plane_len) =
        (batch * channels, (height / 2) * (width / 2), height * width);
    let mut values = vec![0.0f32; planes * out_len];
    let mut indices = vec![0i32; planes * out_len];
    if out_len > 0 {
        let chunk = planes_per_task(planes, channels, out_len);
        values
            .par_chunks_mut(chunk * out_len)
            .zip(indices.par_chunks_mut(chunk * out_len))
            .enumerate()
            .for_each(|(i, (values, indices))| {
                let first = i * chunk * plane_len;
                let planes = values.len() / out_len;
                let input = &input[first..first + planes * plane_len];
                match bias {
                    None => {
                        pdecay::pool::max_pool_2x2(input, planes, height, width, values, indices)
                    }
                    Some(bias) => pdecay::pool::bias_relu_max_pool_2x2(
                        input, planes, height, width, bias, values, indices,
                    ),
                }
            });
    }
    let shape = [batch, channels, height / 2, width / 2];
    (
        FlexTensor::from_data(TensorData::new(values, shape)),
        indices,
    )
}

/// Planes per rayon task: one plane is a few microseconds of work, so only many of them are
/// worth the threads; a whole number of `[channels]` rows, so each task starts at channel 0.
fn planes_per_task(planes: usize, channels: usize, out_len: usize) -> usize {
    let per_task = if planes * out_len >= 1 << 16 {
        planes.div_ceil(rayon::current_num_threads() * 4)
    } else {
        planes
    };
    per_task.next_multiple_of(channels.max(1)).max(1)
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

/// What the fused op's backward step needs: each output's index in its plane (-1: no
/// gradient) and the input's `[B, C, H, W]`.
#[derive(Debug, Clone)]
struct Winners {
    indices: Arc<Vec<i32>>,
    dims: [usize; 4],
}

/// The fused op's backward step: `∂x` the output gradient at each window's maximum where the
/// ReLU passed it, `∂bias` its sum per channel.
fn unpool(
    winners: &Winners,
    grad: &FlexTensor,
    _x_tracked: bool,
) -> (Option<FlexTensor>, FlexTensor) {
    let [batch, channels, height, width] = winners.dims;
    let grad = grad.to_contiguous();
    let grad = grad.storage::<f32>();
    let (planes, out_len, plane_len) =
        (batch * channels, (height / 2) * (width / 2), height * width);
    let mut dx = vec![0.0f32; planes * plane_len];
    let mut sums = vec![0.0f32; planes];
    let chunk = planes_per_task(planes, channels, out_len);
    dx.par_chunks_mut((chunk * plane_len).max(1))
        .zip(sums.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(i, (dx, sums))| {
            let outputs = i * chunk * out_len..(i * chunk + sums.len()) * out_len;
            let (grad, indices) = (&grad[outputs.clone()], &winners.indices[outputs]);
            pdecay::pool::max_unpool_2x2(grad, indices, sums.len(), height, width, dx, sums);
        });
    // the batch summed in order, per channel
    let mut bias_grad = vec![0.0f32; channels];
    for image in sums.chunks_exact(channels.max(1)) {
        for (b, &s) in bias_grad.iter_mut().zip(image) {
            *b += s;
        }
    }
    let dx = FlexTensor::from_data(TensorData::new(dx, winners.dims));
    (
        Some(dx),
        FlexTensor::from_data(TensorData::new(bias_grad, [channels])),
    )
}

/// The fused op's backward step, from the winners its forward pass recorded.
#[derive(Debug)]
struct BiasReluMaxPool2x2Backward;

impl Backward<Flex, 2> for BiasReluMaxPool2x2Backward {
    type State = Winners;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        super::product_backward(ops, grads, unpool);
    }
}

impl<C: CheckpointStrategy> BiasReluMaxPool2x2 for Autodiff<Flex, C> {
    fn bias_relu_max_pool_2x2(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        if !poolable(x.primitive()) || bias.primitive().dtype() != DType::F32 {
            return relu_pool_composite::<Self>(x, bias);
        }
        match BiasReluMaxPool2x2Backward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let dims = dims4(x.primitive());
                let (output, indices) = pool(x.primitive(), Some(bias.primitive()));
                let indices = Arc::new(indices);
                prep.finish(Winners { indices, dims }, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(pool(x.primitive(), Some(bias.primitive())).0),
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

/// `max_pool_2x2(relu(x + bias))` for `x` `[B, C, H, W]` and `bias` `[C]` (a convolution's
/// output before its bias): one pass forward and one backward on the flex CPU backend (with
/// or without autodiff), burn's three ops elsewhere and without a bias.
///
/// # Panics
/// If `bias` does not have one value per channel of `x`.
pub fn bias_relu_max_pool_2x2(x: Tensor<4>, bias: Option<Tensor<1>>) -> Tensor<4> {
    let Some(bias) = bias else {
        return max_pool_2x2(relu(x));
    };
    let channels = x.dims()[1];
    assert_eq!(
        bias.dims()[0],
        channels,
        "bias_relu_max_pool_2x2: one bias per channel"
    );
    if on_flex(&x.device(), true) {
        Tensor::from_dispatch(<Dispatch as BiasReluMaxPool2x2>::bias_relu_max_pool_2x2(
            x.into_dispatch(),
            bias.into_dispatch(),
        ))
    } else {
        max_pool_2x2(relu(x + bias.reshape([1, channels, 1, 1])))
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
    fn the_fused_op_is_bias_relu_and_pooling() {
        let device = Device::flex().autodiff();
        for [b, c, h, w] in [[2, 3, 6, 8], [1, 2, 7, 5], [8, 32, 28, 28], [5, 64, 13, 14]] {
            let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            // a third of the inputs exactly minus their channel's bias: ties at zero after it
            let bias = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &device);
            let tied = x.clone().lower_elem(-0.5);
            let x = x.mask_where(
                tied,
                bias.clone()
                    .neg()
                    .reshape([1, c, 1, 1])
                    .expand([b, c, h, w]),
            );
            let (x, bias) = (x.require_grad(), bias.require_grad());
            let weights = Tensor::<4>::random([b, c, h / 2, w / 2], Distribution::Default, &device);
            let fused = bias_relu_max_pool_2x2(x.clone(), Some(bias.clone()));
            let composite = burn_pool(relu(x.clone() + bias.clone().reshape([1, c, 1, 1])));
            assert_eq!(fused.clone().into_data(), composite.clone().into_data());
            let grads = |y: Tensor<4>| {
                let grads = (y * weights.clone()).sum().backward();
                (x.grad(&grads).unwrap(), bias.grad(&grads).unwrap())
            };
            let ((dx, db), (want_dx, want_db)) = (grads(fused), grads(composite));
            assert_eq!(dx.into_data(), want_dx.into_data());
            // the bias's gradient sums the same terms (all positive: the weights are in
            // [0, 1)) in another order: two recursive sums of n terms differ by at most
            // 2·n·ε times their sum
            let terms = (b * (h / 2) * (w / 2)) as f32;
            let largest: f32 = want_db.clone().max().into_scalar();
            let diff: f32 = (db - want_db).abs().max().into_scalar();
            assert!(diff <= 2.0 * terms * f32::EPSILON * largest, "{diff}");
            // without autodiff and without a bias
            let x = x.inner();
            let bias = bias.inner();
            let plain = bias_relu_max_pool_2x2(x.clone(), Some(bias.clone()));
            let want = burn_pool(relu(x.clone() + bias.reshape([1, c, 1, 1])));
            assert_eq!(plain.into_data(), want.into_data());
            let unbiased = bias_relu_max_pool_2x2(x.clone(), None);
            assert_eq!(unbiased.into_data(), burn_pool(relu(x)).into_data());
        }
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
                if !device.is_autodiff() {
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
