//! Layer normalisation over the last dimension as one op forward and one backward, for burn's
//! flex CPU backend.
//!
//! flex has a fused forward, but burn's autodiff has no layer norm of its own: under autodiff
//! it runs the backend's decomposition (mean, subtract, square, mean, add ε, square root,
//! divide, scale, shift), each op a pass with its own buffer and its own backward step. Here
//! autodiff gets one backward step over [`pdecay::layer_norm`]'s row loops, which keep only
//! each row's mean and `1/σ`. Elsewhere [`layer_norm`] is burn's own.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{Tensor, TensorData};
use pdecay::layer_norm as rows;

use crate::flex::{all_f32, on_flex};

/// Layer normalisation as a backend operation (two methods: extensions take no optional
/// tensors).
#[backend_extension(Flex, Autodiff)]
pub(crate) trait FastLayerNorm: Backend {
    /// `(x - μ)/√(σ² + ε)·γ` over the last dimension of `x`.
    fn fast_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, None, epsilon)
    }

    /// `(x - μ)/√(σ² + ε)·γ + β` over the last dimension of `x`.
    fn fast_layer_norm_shifted(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), epsilon)
    }
}

/// What the backward step needs: the input, `γ`, and `(μ, 1/σ)` per row.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Vec<f32>,
}

/// The output and what the backward step needs.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: Option<&FlexTensor>,
    epsilon: f64,
) -> (FlexTensor, Saved) {
    let (x, gamma) = (x.to_contiguous(), gamma.to_contiguous());
    let beta = beta.map(FlexTensor::to_contiguous);
    let (y, stats) = rows::layer_norm(
        x.storage::<f32>(),
        gamma.storage::<f32>(),
        beta.as_ref().map(|b| b.storage::<f32>()),
        epsilon as f32,
    );
    let y = FlexTensor::from_data(TensorData::new(y, x.layout().shape().clone()));
    (y, Saved { x, gamma, stats })
}

/// On flex alone: fused where every value is f32.
fn flex_layer_norm(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: Option<FlexTensor>,
    epsilon: f64,
) -> FlexTensor {
    let f32s = all_f32(&[&x, &gamma]) && beta.as_ref().is_none_or(|b| all_f32(&[b]));
    if !f32s {
        return Flex::layer_norm(x, gamma, beta, epsilon);
    }
    forward(&x, &gamma, beta.as_ref(), epsilon).0
}

impl FastLayerNorm for Flex {
    fn fast_layer_norm(x: FlexTensor, gamma: FlexTensor, epsilon: f64) -> FlexTensor {
        flex_layer_norm(x, gamma, None, epsilon)
    }

    fn fast_layer_norm_shifted(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        flex_layer_norm(x, gamma, Some(beta), epsilon)
    }
}

/// The backward step; `N` is 2 without `β` (`x`, `γ`) and 3 with it.
#[derive(Debug)]
struct LayerNormBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for LayerNormBackward<N> {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Saved { x, gamma, stats } = ops.state;
        let (grad_x, grad_gamma, grad_beta) = rows::layer_norm_backward(
            x.storage::<f32>(),
            gamma.storage::<f32>(),
            &stats,
            grad.storage::<f32>(),
        );
        let width = grad_gamma.len();
        let tensors = [
            TensorData::new(grad_x, x.layout().shape().clone()),
            TensorData::new(grad_gamma, [width]),
            TensorData::new(grad_beta, [width]),
        ];
        for (parent, data) in ops.parents.into_iter().zip(tensors) {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, FlexTensor::from_data(data));
            }
        }
    }
}

/// Under autodiff on flex: fused, with its backward step, where every value is f32.
fn autodiff_layer_norm<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    gamma: FloatTensor<Autodiff<Flex, C>>,
    beta: Option<FloatTensor<Autodiff<Flex, C>>>,
    epsilon: f64,
) -> FloatTensor<Autodiff<Flex, C>> {
    let f32s = all_f32(&[x.primitive(), gamma.primitive()])
        && beta.as_ref().is_none_or(|b| all_f32(&[b.primitive()]));
    if !f32s {
        return Autodiff::<Flex, C>::layer_norm(x, gamma, beta, epsilon);
    }
    let (y, saved) = forward(
        x.primitive(),
        gamma.primitive(),
        beta.as_ref().map(|b| b.primitive()),
        epsilon,
    );
    match beta {
        Some(beta) => match LayerNormBackward::<3>
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(saved, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match LayerNormBackward::<2>
            .prepare::<C>([x.node(), gamma.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(saved, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    }
}

/// Only flex runs the fused op (the dispatch reaches this impl for flex under autodiff).
impl<C: CheckpointStrategy> FastLayerNorm for Autodiff<Flex, C> {
    fn fast_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        autodiff_layer_norm::<C>(x, gamma, None, epsilon)
    }

    fn fast_layer_norm_shifted(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        autodiff_layer_norm::<C>(x, gamma, Some(beta), epsilon)
    }
}

/// Layer normalisation over the last dimension, `(x - μ)/√(σ² + ε)·γ + β` with the biased
/// variance (burn's `LayerNorm` and `burn::tensor::module::layer_norm`): one pass forward and
/// one backward on the flex CPU backend with f32 values, burn's op elsewhere. The same values
/// and gradients up to summation order.
///
/// # Panics
/// If `gamma` (and `beta`) are not as wide as `x`'s last dimension (a model's constants).
pub fn layer_norm<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Option<Tensor<1>>,
    epsilon: f64,
) -> Tensor<D> {
    let width = x.dims()[D - 1];
    assert!(
        gamma.dims() == [width] && beta.as_ref().is_none_or(|b| b.dims() == [width]),
        "layer_norm: gamma and beta must be as wide as x's last dimension ({width})"
    );
    if on_flex(&x.device(), true) {
        let (x, gamma) = (x.into_dispatch(), gamma.into_dispatch());
        Tensor::from_dispatch(match beta {
            Some(beta) => <Dispatch as FastLayerNorm>::fast_layer_norm_shifted(
                x,
                gamma,
                beta.into_dispatch(),
                epsilon,
            ),
            None => <Dispatch as FastLayerNorm>::fast_layer_norm(x, gamma, epsilon),
        })
    } else {
        burn::tensor::module::layer_norm(x, gamma, beta, epsilon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::assert_close;
    use burn::tensor::{Device, Distribution};

    /// Summation order only (relative).
    const TOLERANCE: f32 = 2e-5;

    /// Values on both devices and the gradients of `x`, `γ` and `β` through autodiff against
    /// burn's own layer norm, with and without `β`, on the GPT's shape and odd ones.
    #[test]
    fn values_and_gradients_match_burns() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            for (dims, with_beta) in [([12, 64, 128], false), ([3, 5, 7], true), ([1, 1, 1], true)]
            {
                let width = dims[2];
                let normal = Distribution::Normal(0.0, 2.0);
                let x = Tensor::<3>::random(dims, normal, &device);
                let gamma = Tensor::<1>::random([width], normal, &device);
                let beta = with_beta.then(|| Tensor::<1>::random([width], normal, &device));
                let weights = Tensor::<3>::random(dims, Distribution::Default, &device);
                let run = |fused: bool| {
                    let track = |t: Tensor<1>| {
                        if device.is_autodiff() {
                            t.require_grad()
                        } else {
                            t
                        }
                    };
                    let x = if device.is_autodiff() {
                        x.clone().require_grad()
                    } else {
                        x.clone()
                    };
                    let (gamma, beta) = (track(gamma.clone()), beta.clone().map(track));
                    let y = if fused {
                        layer_norm(x.clone(), gamma.clone(), beta.clone(), 1e-5)
                    } else {
                        burn::tensor::module::layer_norm(
                            x.clone(),
                            gamma.clone(),
                            beta.clone(),
                            1e-5,
                        )
                    };
                    let values = y.clone().into_data();
                    let grads = device.is_autodiff().then(|| {
                        let grads = (y * weights.clone()).sum().backward();
                        let mut all = vec![
                            x.grad(&grads).unwrap().into_data(),
                            gamma.grad(&grads).unwrap().into_data(),
                        ];
                        all.extend(beta.map(|b| b.grad(&grads).unwrap().into_data()));
                        all
                    });
                    (values, grads)
                };
                let ((values, grads), (expected, expected_grads)) = (run(true), run(false));
                assert_close(values, expected, TOLERANCE, "values");
                assert_eq!(grads.is_some(), device.is_autodiff());
                for (i, (g, e)) in grads
                    .into_iter()
                    .flatten()
                    .zip(expected_grads.into_iter().flatten())
                    .enumerate()
                {
                    assert_close(g, e, TOLERANCE, &format!("gradient {i}"));
                }
            }
        }
    }
}
