//! Causal softmax of attention scores in one pass, forward and backward, for burn's flex CPU
//! backend.
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
use pdecay::kernel::exp;

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

pdecay::dispatched! {
    /// Weights of whole `time`-long rows; `first_row` is the index of the first row within its
    /// `time x time` matrix.
    fn softmax_rows(scores: &[f32], probs: &mut [f32], time: usize, first_row: usize, scale: f32) {
        let rows = scores.chunks_exact(time).zip(probs.chunks_exact_mut(time));
        for (r, (row, out)) in rows.enumerate() {
            let seen = (first_row + r) % time + 1;
            let (row, (out, future)) = (&row[..seen], out.split_at_mut(seen));
            // scale > 0, so the scaled row's maximum is the scaled maximum
            let max = scale * row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for (p, &s) in out.iter_mut().zip(row) {
                *p = exp(scale * s - max);
            }
            let inverse_sum = 1.0 / out.iter().sum::<f32>();
            for p in out.iter_mut() {
                *p *= inverse_sum;
            }
            future.fill(0.0);
        }
    }
}

pdecay::dispatched! {
    /// `grad_j = scale·P_j·(grad_j - Σ_k P_k·grad_k)` over whole rows, zero above the diagonal.
    fn softmax_backward_rows(probs: &[f32], grad: &mut [f32], time: usize, first_row: usize, scale: f32) {
        let rows = probs.chunks_exact(time).zip(grad.chunks_exact_mut(time));
        for (r, (row, out)) in rows.enumerate() {
            let seen = (first_row + r) % time + 1;
            let (row, (out, future)) = (&row[..seen], out.split_at_mut(seen));
            let dot: f32 = row.iter().zip(out.iter()).map(|(p, g)| p * g).sum();
            for (g, &p) in out.iter_mut().zip(row) {
                *g = scale * p * (*g - dot);
            }
            future.fill(0.0);
        }
    }
}

/// Runs `rows` (one of the two loops above) over `input` and `output` in whole-row chunks,
/// in parallel when there is enough work.
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn assert_close(ours: TensorData, theirs: TensorData, what: &str) {
        let ours = ours.try_to_vec::<f32>().unwrap();
        let theirs = theirs.try_to_vec::<f32>().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * b.abs().max(1.0),
                "{what}[{i}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn a_hand_worked_three_by_three() {
        // scale 0.5 of [[2, 9, 9], [0, 2 ln 3, 9], [2, 2, 2]]: row 0 is [1, 0, 0]; row 1 is
        // softmax([0, ln 3]) = [1/4, 3/4]; row 2 is uniform
        let ln3 = 3.0f32.ln();
        let scores = [2.0, 9.0, 9.0, 0.0, 2.0 * ln3, 9.0, 2.0, 2.0, 2.0];
        let mut probs = [f32::NAN; 9];
        softmax_rows(&scores, &mut probs, 3, 0, 0.5);
        let third = 1.0 / 3.0;
        let expected = [1.0, 0.0, 0.0, 0.25, 0.75, 0.0, third, third, third];
        for (p, e) in probs.iter().zip(expected) {
            assert!((p - e).abs() < 1e-6, "{probs:?}");
        }
        // backward of row 1 with grad [1, 5, 7]: dot = 1/4 + 15/4 = 4, so 0.5·[1/4·(1-4),
        // 3/4·(5-4)] = [-3/8, 3/8] and 0 in the masked column whatever its gradient
        let mut grad = [0.0, 0.0, 0.0, 1.0, 5.0, 7.0, 0.0, 0.0, 0.0];
        softmax_backward_rows(&probs, &mut grad, 3, 0, 0.5);
        assert!((grad[3] + 0.375).abs() < 1e-6 && (grad[4] - 0.375).abs() < 1e-6);
        assert_eq!(grad[5], 0.0);
    }

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
                    "values",
                );
                if device == Device::flex() {
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
                    "gradients",
                );
            }
        }
    }
}
