//! Causal attention for burn's flex CPU backend: the softmax of the scores in one pass, or the
//! whole attention as one op, forward and backward.
//!
//! A causal attention layer turns the scores `S = Q·Kᵀ` of each head into weights
//! `P = softmax(c·S + M)`, with `c = 1/√d` and `M` the mask that is `-∞` above the diagonal,
//! so position `t` attends to positions `0..=t` only. Composed from burn's ops that is four
//! passes over `[B, H, T, T]` (scale, build the mask, fill, softmax), each with its own buffer and,
//! under autodiff, its own backward pass; flex's softmax also calls a scalar `exp` per element.
//! Here one pass computes row `t`'s first `t + 1` weights with the vectorised
//! [`pdecay::kernel::exp`] and writes zeros after them; the backward step is the softmax's,
//! `∂S_j = c·P_j·(∂P_j - Σ_k P_k·∂P_k)`, which is zero above the diagonal because `P` is.
//!
//! As a burn backend extension: flex gets the loops, autodiff a backward step that keeps the
//! weights, and [`causal_softmax`] falls back to burn's composite on other devices.
//!
//! [`causal_attention`] goes further: the whole attention of every head from the fused `qkv`
//! projection as one op ([`pdecay::attention`]: the products read and write the heads in place
//! through strides), so none of the composite's slices, transposes and copies are made.
//! [`causal_attention_composite`] is the composite, for other devices and for dropout on the
//! weights.

use std::sync::Arc;

use burn::backend::TensorMetadata;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use pdecay::attention::{self, AttentionShape, softmax_backward_rows, softmax_rows};

use crate::flex::{CHUNK, in_chunks, on_flex, sole_contiguous};

/// Causal softmax as a backend operation, over the last two dimensions (`[.., T, S]`: row `t`
/// sees columns `0..=t`).
#[backend_extension(Flex, Autodiff)]
pub(crate) trait CausalSoftmax: Backend {
    /// `softmax(scale·S + M)` along the last dimension, `M` being `-∞` above the diagonal.
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        generic_causal_softmax::<Self>(scores, scale)
    }

    /// The gradient with respect to the scores, from the weights `probs` and their gradient.
    fn causal_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        generic_causal_softmax_backward::<Self>(probs, grad, scale)
    }
}

/// The backend's own ops: scale, add the `0 / -∞` mask, softmax.
fn generic_causal_softmax<B: Backend>(scores: FloatTensor<B>, scale: f32) -> FloatTensor<B> {
    let dims = scores.shape().to_vec();
    let rank = dims.len();
    let (time, keys) = (dims[rank - 2], dims[rank - 1]);
    let mask: Vec<f32> = (0..time * keys)
        .map(|i| {
            if i % keys > i / keys {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mut mask_shape = vec![1; rank];
    mask_shape[rank - 2..].copy_from_slice(&[time, keys]);
    let mask = TensorData::new(mask, mask_shape).convert_dtype(scores.dtype());
    let mask = B::float_from_data(mask, &scores.device());
    let scaled = B::float_mul_scalar(scores, scale.into());
    B::softmax(B::float_add(scaled, mask), rank - 1)
}

/// The backend's own ops: `scale·P·(∂P - Σ P·∂P)`.
fn generic_causal_softmax_backward<B: Backend>(
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> FloatTensor<B> {
    let last = probs.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(probs.clone(), grad.clone()), last);
    let centred = B::float_sub(grad, dot);
    B::float_mul_scalar(B::float_mul(centred, probs), scale.into())
}

/// burn's composite at the tensor level (what the GPT did before): scale, mask the future with
/// `-∞`, softmax.
fn causal_softmax_composite(scores: Tensor<4>, scale: f64) -> Tensor<4> {
    let [batch, heads, time, keys] = scores.dims();
    // true above the diagonal: position t never sees t + 1, t + 2, ...
    let future = Tensor::<2, Bool>::tril_mask([time, keys], 0, &scores.device())
        .unsqueeze::<4>()
        .expand([batch, heads, time, keys]);
    softmax(
        scores
            .mul_scalar(scale)
            .mask_fill(future, f32::NEG_INFINITY),
        3,
    )
}

/// Runs `rows` (one of `pdecay::attention`'s two row loops) over `input` and `output` in
/// whole-row chunks, in parallel when there is enough work.
fn over_rows(
    input: &[f32],
    output: &mut [f32],
    time: usize,
    scale: f32,
    rows: fn(&[f32], &mut [f32], usize, usize, f32),
) {
    let rows_per_task = (CHUNK / time).max(1);
    in_chunks(input, output, rows_per_task * time, |i, input, output| {
        rows(input, output, time, i * rows_per_task, scale)
    });
}

/// `[.., T, T]` → `T`, or `None` when the last two dimensions differ or the dtype is not f32.
fn square_f32(tensor: &FlexTensor) -> Option<usize> {
    let dims = tensor.layout().shape().to_vec();
    let rank = dims.len();
    (tensor.dtype() == DType::F32 && rank >= 2 && dims[rank - 1] == dims[rank - 2])
        .then(|| dims[rank - 1])
}

impl CausalSoftmax for Flex {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        let Some(time) = square_f32(&scores).filter(|&t| t > 0) else {
            return generic_causal_softmax::<Self>(scores, scale);
        };
        let scores = sole_contiguous(scores);
        let mut probs = vec![0.0f32; scores.layout().num_elements()];
        over_rows(
            scores.storage::<f32>(),
            &mut probs,
            time,
            scale,
            softmax_rows,
        );
        FlexTensor::from_data(TensorData::new(probs, scores.layout().shape().clone()))
    }

    fn causal_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        let Some(time) = square_f32(&probs).filter(|&t| t > 0 && grad.dtype() == DType::F32) else {
            return generic_causal_softmax_backward::<Self>(probs, grad, scale);
        };
        let probs = sole_contiguous(probs);
        let mut grad = sole_contiguous(grad);
        // the gradient is usually held by nobody else: then it is overwritten in place
        let out = grad.storage_mut::<f32>();
        over_rows(
            probs.storage::<f32>(),
            out,
            time,
            scale,
            softmax_backward_rows,
        );
        grad
    }
}

/// The backward step: the softmax's, from the weights it produced.
#[derive(Debug)]
struct CausalSoftmaxBackward;

impl<B: Backend + CausalSoftmax> Backward<B, 1> for CausalSoftmaxBackward {
    /// The weights and the scale.
    type State = (FloatTensor<B>, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (probs, scale) = ops.state;
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::causal_softmax_backward(probs, grad, scale));
        }
    }
}

impl<B: Backend + CausalSoftmax, C: CheckpointStrategy> CausalSoftmax for Autodiff<B, C> {
    fn causal_softmax(scores: FloatTensor<Self>, scale: f32) -> FloatTensor<Self> {
        match CausalSoftmaxBackward
            .prepare::<C>([scores.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let probs = B::causal_softmax(scores.into_primitive(), scale);
                prep.finish((probs.clone(), scale), probs)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::causal_softmax(scores.into_primitive(), scale))
            }
        }
    }
}

/// Causal attention weights `softmax(scale·S + M)` of scores `[B, H, T, S]` along the last
/// dimension, `M` being `-∞` above the diagonal (row `t` sees columns `0..=t`): one pass on the
/// flex CPU backend (with or without autodiff), burn's composite elsewhere. `scale` is
/// `1/√head_size` and must be a finite number > 0 (a caller's constant, so a panic otherwise).
pub fn causal_softmax(scores: Tensor<4>, scale: f64) -> Tensor<4> {
    assert!(
        scale.is_finite() && scale > 0.0,
        "causal_softmax: scale must be a finite number > 0, got {scale}"
    );
    if on_flex(&scores.device(), true) {
        Tensor::from_dispatch(<Dispatch as CausalSoftmax>::causal_softmax(
            scores.into_dispatch(),
            scale as f32,
        ))
    } else {
        causal_softmax_composite(scores, scale)
    }
}

/// Causal self-attention over a fused `qkv` projection as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait CausalAttention: Backend {
    /// The `[B, T, D]` output of `heads`-headed causal attention over `qkv` `[B, T, 3·D]`.
    fn causal_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self>;
}

/// What the backward step needs: the input and the weights.
#[derive(Debug, Clone)]
struct SavedAttention {
    qkv: FlexTensor,
    probs: Arc<Vec<f32>>,
    shape: AttentionShape,
}

/// The output `[B, T, D]` and what the backward step needs.
fn attention_forward(qkv: FlexTensor, heads: usize) -> (FlexTensor, SavedAttention) {
    let qkv = qkv.to_contiguous();
    let [batch, time, three_width] = qkv.layout().shape().to_vec()[..] else {
        unreachable!("causal_attention checks the rank")
    };
    let shape = AttentionShape {
        batch,
        time,
        heads,
        head: three_width / (3 * heads),
    };
    let (out, probs) = attention::causal_attention(qkv.storage::<f32>(), &shape);
    let out = FlexTensor::from_data(TensorData::new(out, [batch, time, shape.width()]));
    let probs = Arc::new(probs);
    (out, SavedAttention { qkv, probs, shape })
}

impl CausalAttention for Flex {
    fn causal_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        attention_forward(qkv, heads).0
    }
}

/// The backward step, from the input and weights the forward pass saved.
#[derive(Debug)]
struct CausalAttentionBackward;

impl Backward<Flex, 1> for CausalAttentionBackward {
    type State = SavedAttention;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let Some(node) = parent else { return };
        let SavedAttention { qkv, probs, shape } = ops.state;
        let grad = grad.to_contiguous();
        let grad_qkv = attention::causal_attention_backward(
            qkv.storage::<f32>(),
            &probs,
            grad.storage::<f32>(),
            &shape,
        );
        let dims = qkv.layout().shape().clone();
        grads.register::<Flex>(
            node.id,
            FlexTensor::from_data(TensorData::new(grad_qkv, dims)),
        );
    }
}

/// Only flex runs the fused attention (the dispatch reaches this impl for flex under autodiff).
impl<C: CheckpointStrategy> CausalAttention for Autodiff<Flex, C> {
    fn causal_attention(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let prep = CausalAttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful();
        let (out, saved) = attention_forward(qkv.primitive().clone(), heads);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(saved, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// Causal attention in burn's tensor ops, with `on_weights` applied to the weights `P`
/// `[B, H, T, T]` before they multiply `V` (dropout, as nanoGPT's `attn_dropout`).
pub fn causal_attention_composite(
    qkv: Tensor<3>,
    heads: usize,
    on_weights: impl FnOnce(Tensor<4>) -> Tensor<4>,
) -> Tensor<3> {
    let [batch, time, three_width] = qkv.dims();
    let width = three_width / 3;
    let head = width / heads;
    let split = |k: usize| {
        qkv.clone()
            .slice([0..batch, 0..time, k * width..(k + 1) * width])
            .reshape([batch, time, heads, head])
            .swap_dims(1, 2)
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let scores = q.matmul(k.swap_dims(2, 3));
    // position t sees 0..=t only: weights softmax(S/√head + M), M = -∞ above the diagonal
    let weights = causal_softmax(scores, 1.0 / (head as f64).sqrt());
    on_weights(weights)
        .matmul(v)
        .swap_dims(1, 2)
        .reshape([batch, time, width])
}

/// Causal self-attention with `heads` heads over a fused projection `qkv` `[B, T, 3·D]` (`Q`,
/// `K`, `V` side by side, each `D = heads·d` wide): each position attends to itself and the
/// positions before it, `softmax(Q·Kᵀ/√d + M)·V` per head, heads side by side in the `[B, T,
/// D]` output. One op on the flex CPU backend with f32 values (`pdecay::attention`: the
/// products read the heads in place and only the weights are kept for the backward pass),
/// [`causal_attention_composite`] elsewhere; the same values and gradients up to summation
/// order.
///
/// # Panics
/// If `heads` is 0 or `qkv`'s last dimension is not a multiple of `3·heads` (a model's
/// constants).
pub fn causal_attention(qkv: Tensor<3>, heads: usize) -> Tensor<3> {
    let three_width = qkv.dims()[2];
    assert!(
        heads > 0 && three_width.is_multiple_of(3 * heads),
        "causal_attention: qkv's last dimension ({three_width}) must be 3 x heads ({heads}) x the head width"
    );
    if on_flex(&qkv.device(), true) && qkv.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as CausalAttention>::causal_attention(
            qkv.into_dispatch(),
            heads,
        ))
    } else {
        causal_attention_composite(qkv, heads, |weights| weights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::assert_close;
    use burn::tensor::{Device, Distribution};

    /// Summation order only (relative).
    const TOLERANCE: f32 = 2e-6;

    /// Values on both devices and gradients through autodiff against burn's composite: big
    /// enough for the parallel path, with chunks that start mid-matrix, a transposed
    /// (non-contiguous) input, and non-square scores (the backend's generic ops).
    #[test]
    fn values_and_gradients_match_the_composite() {
        let scale = 1.0 / 32f64.sqrt();
        for device in [Device::flex(), Device::flex().autodiff()] {
            // [4, 4, 100, 100] and [2, 2, 200, 200]: parallel chunks of 163 and 81 rows, which start
            // mid-matrix; [12, 4, 64, 64] is the GPT's
            let shapes = [
                [2, 3, 5, 5],
                [12, 4, 64, 64],
                [4, 4, 100, 100],
                [2, 2, 200, 200],
                [1, 1, 1, 1],
                [2, 2, 3, 5],
            ];
            for [b, h, t, keys] in shapes {
                let base =
                    Tensor::<4>::random([b, h, keys, t], Distribution::Normal(0.0, 4.0), &device);
                let scores = base.swap_dims(2, 3);
                assert_close(
                    causal_softmax(scores.clone(), scale).into_data(),
                    causal_softmax_composite(scores.clone(), scale).into_data(),
                    TOLERANCE,
                    "values",
                );
                if !device.is_autodiff() {
                    continue;
                }
                let weights = Tensor::<4>::random([b, h, t, keys], Distribution::Default, &device);
                let grad = |f: fn(Tensor<4>, f64) -> Tensor<4>| {
                    let x = scores.clone().detach().require_grad();
                    let grads = (f(x.clone(), scale) * weights.clone()).sum().backward();
                    x.grad(&grads).unwrap().into_data()
                };
                assert_close(
                    grad(causal_softmax),
                    grad(causal_softmax_composite),
                    TOLERANCE,
                    "gradients",
                );
            }
        }
    }

    /// The op against burn's composite on both devices: values, and `∂qkv` through autodiff
    /// for a random loss weighting, on the GPT's shape, one head, batch 1, one position and
    /// odd sizes.
    #[test]
    fn attention_matches_the_composite() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            // [batch, time, heads, head]
            for [b, t, h, d] in [
                [12, 64, 4, 32],
                [2, 5, 1, 3],
                [1, 7, 3, 2],
                [3, 1, 2, 4],
                [2, 37, 2, 5],
            ] {
                let qkv =
                    Tensor::<3>::random([b, t, 3 * h * d], Distribution::Normal(0.0, 1.0), &device);
                let weights = Tensor::<3>::random([b, t, h * d], Distribution::Default, &device);
                let autodiff = device.is_autodiff();
                let run = |fused: bool| {
                    let x = qkv.clone().detach();
                    let x = if autodiff { x.require_grad() } else { x };
                    let out = if fused {
                        causal_attention(x.clone(), h)
                    } else {
                        causal_attention_composite(x.clone(), h, |w| w)
                    };
                    let values = out.clone().into_data();
                    let grad = autodiff.then(|| {
                        x.grad(&(out * weights.clone()).sum().backward())
                            .unwrap()
                            .into_data()
                    });
                    (values, grad)
                };
                let ((values, grad), (expected, expected_grad)) = (run(true), run(false));
                assert_close(values, expected, TOLERANCE, "values");
                if let (Some(grad), Some(expected)) = (grad, expected_grad) {
                    assert_close(grad, expected, TOLERANCE, "gradients");
                }
            }
        }
    }
}
