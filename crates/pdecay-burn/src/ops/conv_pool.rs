//! `max_pool_2x2(relu(conv2d(x, W) + b))`, a CNN's convolution block, as one op on burn's
//! flex CPU backend where the convolution runs through lanes at stride 1: over the kernel's
//! non-zeros with 32 taps per output channel or more (the CNN's conv2), or over all of it
//! (both of the CNN's convolutions).
//!
//! Through lanes the convolution's output is position-major, `[H, W, O, B]`. Run as two ops,
//! [`super::sparse_conv2d`] converts it to `[B, O, H, W]` for [`super::bias_relu_max_pool_2x2`]
//! and converts the gradient the pooling gives back to position-major for its backward
//! products: a transpose of the full-size output each way, about half of the layout changes
//! that took 15% of a sparse CNN step. Here the pooling reads the position-major output
//! ([`pdecay::lane_pool`]) and writes `∂y` where the backward products read it, so only the
//! pooled quarter changes layout. Values and gradients are the two ops', up to the summation
//! order of `∂b`.

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};
use pdecay::im2col::ConvShape;
use pdecay::{lane_conv, lane_gemm, lane_pool};

use super::pool::{bias_relu_max_pool_2x2, relu_pool_composite};
use super::sparse_conv::{
    self, Input, conv_options, dense_conv2d, geometry, gradients, sparse_conv2d,
};
use crate::flex::{all_f32, on_flex};

/// The convolution block as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait ConvReluPool: Backend {
    /// `max_pool_2x2(relu(conv2d(x, w) + bias))` for `x` `[B, C, H, W]`, a square kernel `w`
    /// `[O, C, k, k]` at stride 1 with zero `padding` on every side, and `bias` `[O]`: over
    /// `w`'s non-zeros, or over all its entries (every gradient computed) when `every_weight`.
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        let _ = every_weight;
        composite::<Self>(x, w, bias, padding)
    }
}

/// The block in the backend's own ops.
fn composite<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: FloatTensor<B>,
    padding: usize,
) -> FloatTensor<B> {
    let y = B::conv2d(x, w, None, conv_options(1, padding));
    relu_pool_composite::<B>(y, bias)
}

/// What the backward step needs: the convolution's (through lanes) and each pooled output's
/// window corner.
#[derive(Debug, Clone)]
struct Saved {
    conv: sparse_conv::Saved,
    corners: Arc<Vec<i8>>,
}

/// The block's output `[B, O, H'/2, W'/2]` and what its backward step needs.
fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    bias: &FlexTensor,
    padding: usize,
    every_weight: bool,
) -> (FlexTensor, Saved) {
    let x = x.to_contiguous();
    let (shape, w) = geometry(&x, w, 1, padding, every_weight);
    let (y, input) = if every_weight {
        let (y, saved) = lane_gemm::forward_positions(&w.values, x.storage::<f32>(), &shape);
        (y, Input::DenseLanes(Arc::new(saved)))
    } else {
        let (y, saved) = lane_conv::forward_positions(&w, x.storage::<f32>(), &shape);
        (y, Input::Lanes(Arc::new(saved)))
    };
    let (ho, wo) = shape.output_size();
    let (batch, outputs) = (shape.batch, w.rows);
    let bias = bias.to_contiguous();
    let (pooled, corners) =
        lane_pool::bias_relu_max_pool(&y, [ho, wo, outputs, batch], bias.storage::<f32>());
    let pooled = lane_conv::from_positions(&pooled, [ho / 2, wo / 2, outputs, batch]);
    let output = FlexTensor::from_data(TensorData::new(pooled, [batch, outputs, ho / 2, wo / 2]));
    let saved = Saved {
        conv: sparse_conv::Saved {
            w: Arc::new(w),
            input,
            shape,
        },
        corners: Arc::new(corners),
    };
    (output, saved)
}

/// `∂x` (when asked), `∂W` (at the non-zeros, zero elsewhere, unless every weight took part)
/// and `∂b` from the pooled output's gradient `grad` `[B, O, H'/2, W'/2]`.
fn backward(
    saved: &Saved,
    grad: &FlexTensor,
    with_x_grad: bool,
) -> (Option<FlexTensor>, FlexTensor, FlexTensor) {
    let Saved { conv, corners } = saved;
    let sparse_conv::Saved { w, input, shape } = conv;
    let grad = grad.to_contiguous();
    let (ho, wo) = shape.output_size();
    let (batch, outputs) = (shape.batch, w.rows);
    let grad = lane_conv::to_positions(grad.storage::<f32>(), [batch, outputs, ho / 2, wo / 2], 0);
    let pad = lane_conv::grad_padding(shape);
    let (dy, bias_grad) = lane_pool::max_unpool(&grad, corners, [ho, wo, outputs, batch], pad);
    let (dx, at_support) = match input {
        Input::Lanes(lanes) => lane_conv::backward_positions(w, lanes, &dy, with_x_grad),
        Input::DenseLanes(lanes) => {
            lane_gemm::backward_positions(&w.values, lanes, &dy, with_x_grad)
        }
        Input::Images(_) => unreachable!("the block's forward runs through lanes"),
    };
    let (x_grad, w_grad) = gradients(w, shape, dx, &at_support);
    let bias_grad = FlexTensor::from_data(TensorData::new(bias_grad, [outputs]));
    (x_grad, w_grad, bias_grad)
}

impl ConvReluPool for Flex {
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &w, &bias]) {
            return composite::<Self>(x, w, bias, padding);
        }
        forward(&x, &w, &bias, padding, every_weight).0
    }
}

/// The backward step, from the kernel, input and window corners the forward pass saved.
#[derive(Debug)]
struct ConvReluPoolBackward;

impl Backward<Flex, 3> for ConvReluPoolBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_parent, w_parent, bias_parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_grad, w_grad, bias_grad) = backward(&ops.state, &grad, x_parent.is_some());
        if let (Some(node), Some(x_grad)) = (x_parent, x_grad) {
            grads.register::<Flex>(node.id, x_grad);
        }
        if let Some(node) = w_parent {
            grads.register::<Flex>(node.id, w_grad);
        }
        if let Some(node) = bias_parent {
            grads.register::<Flex>(node.id, bias_grad);
        }
    }
}

/// Only flex runs the fused block (the dispatch reaches this impl for flex under autodiff).
impl<C: CheckpointStrategy> ConvReluPool for Autodiff<Flex, C> {
    fn conv_relu_pool(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        if !all_f32(&[x.primitive(), w.primitive(), bias.primitive()]) {
            return composite::<Self>(x, w, bias, padding);
        }
        let prep = ConvReluPoolBackward
            .prepare::<C>([x.node(), w.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (x, w, bias) = (x.primitive(), w.primitive(), bias.primitive());
        let (output, saved) = forward(x, w, bias, padding, every_weight);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(saved, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// `max_pool_2x2(relu(conv2d(x, weight) + bias))` for `x` `[B, C, H, W]`, a square kernel
/// `weight` `[O, C, k, k]` with `stride` and zero `padding` on every side, and `bias` `[O]`:
/// over the kernel's non-zeros when `sparse` ([`sparse_conv2d`]), else over all of it
/// ([`dense_conv2d`]), then [`bias_relu_max_pool_2x2`]. On flex, at stride 1, the four are
/// one op whose pooling reads the lanes' layout where the convolution runs through lanes: a
/// sparse kernel with `pdecay::lane_conv::LANES_FROM_TAPS` taps or more, and a dense kernel of
/// any width. The values and gradients are the same up to summation order.
///
/// # Panics
/// If the kernel is not square, its input channels are not `x`'s, or `bias` does not have one
/// value per output channel.
pub fn conv2d_relu_max_pool_2x2(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
    sparse: bool,
) -> Tensor<4> {
    let [outputs, channels, kernel, _] = weight.dims();
    let [batch, _, height, width] = x.dims();
    let shape = ConvShape {
        batch,
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
    };
    // a sparse kernel with few taps (a first layer) runs faster directly on the images; dense,
    // its block runs faster in lanes, where the pooling costs a fifth of the images' pooling
    let lanes = lane_conv::pays(&shape) || (!sparse && lane_conv::supports(&shape));
    let fused =
        on_flex(&x.device(), true) && lanes && x.dims()[1] == channels && bias.dims() == [outputs];
    if !fused {
        let y = if sparse {
            sparse_conv2d(x, weight, None, stride, padding)
        } else {
            dense_conv2d(x, weight, None, stride, padding)
        };
        return bias_relu_max_pool_2x2(y, Some(bias));
    }
    assert_eq!(
        weight.dims()[3],
        kernel,
        "conv2d_relu_max_pool_2x2 takes square kernels"
    );
    Tensor::from_dispatch(<Dispatch as ConvReluPool>::conv_relu_pool(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        padding,
        !sparse,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation::relu;
    use burn::tensor::module::max_pool2d;
    use burn::tensor::ops::MaxPoolOptions;
    use burn::tensor::{Device, Distribution};

    /// A kernel with about `zeros` of its entries exactly zero (a hash of the position).
    fn kernel(dims: [usize; 4], zeros: f64, device: &Device) -> Tensor<4> {
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| {
                let h = (i as u64 ^ 0x5EED).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                let u = h as f64 / (1u64 << 24) as f64;
                if u < zeros {
                    0.0
                } else {
                    (u as f32 - 0.5) * 0.5
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(values, dims), device)
    }

    /// A block of `x`, the kernel and the bias.
    type Block<'a> = dyn Fn(Tensor<4>, Tensor<4>, Tensor<1>) -> Tensor<4> + 'a;

    /// The block's output and gradients `[y, ∂x, ∂W]` and `∂b` for the loss `Σ y ⊙ g`, with
    /// `∂x` zeros when `x` is not tracked.
    fn outputs(
        block: &Block<'_>,
        [x, w, g]: [&Tensor<4>; 3],
        b: &Tensor<1>,
        track_x: bool,
    ) -> ([Vec<f32>; 3], Vec<f32>) {
        let x = if track_x {
            x.clone().require_grad()
        } else {
            x.clone()
        };
        let (w, b) = (w.clone().require_grad(), b.clone().require_grad());
        let y = block(x.clone(), w.clone(), b.clone());
        let grads = (y.clone() * g.clone()).sum().backward();
        let vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        let dx = x.grad(&grads).map(vec).unwrap_or_default();
        let db = b
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        ([vec(y.inner()), dx, vec(w.grad(&grads).unwrap())], db)
    }

    /// The fused block against the convolution and the fused pooling as two ops: the same
    /// products, so the same values, winners, `∂x` and `∂W` bit for bit; `∂b` sums the same
    /// terms in another order. And against burn's own conv2d, bias, ReLU and pooling within
    /// summation-order noise.
    fn check(x_dims: [usize; 4], outputs_: usize, padding: usize, zeros: f64, sparse: bool) {
        let device = Device::flex().autodiff();
        let [_, channels, _, _] = x_dims;
        let x = Tensor::<4>::random(x_dims, Distribution::Normal(0.0, 1.0), &device);
        let w = kernel([outputs_, channels, 3, 3], zeros, &device);
        let b = Tensor::<1>::random([outputs_], Distribution::Normal(0.0, 0.3), &device);
        let fused: &Block = &move |x, w, b| conv2d_relu_max_pool_2x2(x, w, b, 1, padding, sparse);
        let two_ops: &Block = &move |x, w, b| {
            let y = if sparse {
                sparse_conv2d(x, w, None, 1, padding)
            } else {
                dense_conv2d(x, w, None, 1, padding)
            };
            bias_relu_max_pool_2x2(y, Some(b))
        };
        let burns: &Block = &move |x, w, b| {
            let y = burn::tensor::module::conv2d(x, w, Some(b), conv_options(1, padding));
            max_pool2d(relu(y), MaxPoolOptions::new([2, 2]))
        };
        let g_dims = fused(x.clone(), w.clone(), b.clone()).dims();
        let g = Tensor::<4>::random(g_dims, Distribution::Normal(0.0, 1.0), &device);
        let case = format!("{x_dims:?} -> {outputs_}, padding {padding}, {zeros} zeros");
        // a first layer's two ops run directly on the images: other sums, checked against
        // burn's below
        let same_products = channels * 9 >= lane_conv::LANES_FROM_TAPS;
        for track_x in [true, false].into_iter().filter(|_| same_products) {
            let (got, db) = outputs(fused, [&x, &w, &g], &b, track_x);
            let (want, want_db) = outputs(two_ops, [&x, &w, &g], &b, track_x);
            // (not assert_eq: its message would print every value)
            assert!(got == want, "{case}, x tracked: {track_x}");
            // sums of a few hundred terms of order 1 in another order
            for (d, e) in db.iter().zip(&want_db) {
                assert!(
                    (d - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "db {d} {e}, {case}"
                );
            }
        }
        let ([y, dx, dw], db) = outputs(fused, [&x, &w, &g], &b, true);
        let ([want_y, want_dx, want_dw], want_db) = outputs(burns, [&x, &w, &g], &b, true);
        let support = w.clone().inner().into_data().try_to_vec::<f32>().unwrap();
        for (what, got, want) in [
            ("y", &y, &want_y),
            ("dx", &dx, &want_dx),
            ("db", &db, &want_db),
        ] {
            for (d, e) in got.iter().zip(want) {
                assert!(
                    (d - e).abs() <= 1e-3 * (1.0 + e.abs()),
                    "{what} {d} {e}, {case}"
                );
            }
        }
        for ((d, e), w) in dw.iter().zip(&want_dw).zip(&support) {
            if sparse && *w == 0.0 {
                assert_eq!(*d, 0.0, "dw at a zero, {case}");
            } else {
                assert!(
                    (d - e).abs() <= 1e-3 * (1.0 + e.abs()),
                    "dw {d} {e}, {case}"
                );
            }
        }
    }

    #[test]
    fn the_block_is_the_convolution_then_the_pooling() {
        // the CNN's conv2 (batch 4), sparse and dense; odd output sizes (the last row and
        // column dropped by the pooling); no padding; batch 1; an empty kernel (every output
        // relu(b): ties in every window)
        check([4, 32, 14, 14], 64, 1, 0.9, true);
        check([4, 32, 14, 14], 64, 1, 0.0, false);
        check([2, 4, 7, 9], 3, 1, 0.5, true);
        check([3, 5, 6, 7], 4, 0, 0.3, false);
        check([1, 8, 5, 4], 6, 1, 0.7, true);
        check([2, 4, 6, 6], 5, 1, 1.0, true);
        // a dense first layer (9 taps) runs through lanes too
        check([3, 1, 9, 8], 5, 1, 0.0, false);
    }

    #[test]
    fn without_lanes_it_is_the_two_ops() {
        // a sparse kernel of few taps (a first layer) and stride 2: the convolution, then the
        // fused pooling
        let device = Device::flex().autodiff();
        for (channels, stride) in [(1, 1), (8, 2)] {
            let x = Tensor::<4>::random([2, channels, 8, 8], Distribution::Default, &device);
            let w = kernel([4, channels, 3, 3], 0.5, &device);
            let b = Tensor::<1>::random([4], Distribution::Default, &device);
            let y = conv2d_relu_max_pool_2x2(x.clone(), w.clone(), b.clone(), stride, 1, true);
            let want = bias_relu_max_pool_2x2(sparse_conv2d(x, w, None, stride, 1), Some(b));
            assert_eq!(y.into_data(), want.into_data());
        }
    }
}
