//! The exact GELU, `x·Φ(x)`, and its derivative, vectorised for burn's flex CPU backend.
//!
//! flex computes both with a scalar `erf` and `exp` per element (libm calls that do not
//! vectorise): 13% of the CPU GPT's training step (bench/README.md). Here `Φ` comes from
//! Abramowitz and Stegun's formula 7.1.26, `erfc(u) ≈ t·(a₁ + a₂t + a₃t² + a₄t³ + a₅t⁴)·e^(-u²)`
//! with `t = 1/(1 + 0.3275911·u)` and `|error| <= 1.5e-7`, and `e^(-u²)` from the branch-free
//! [`pdecay::kernel::exp`]. With `u = |x|/√2` the same `e^(-u²) = e^(-x²/2)` is also the normal
//! density's, so the derivative `Φ(x) + x·φ(x)` costs one `exp` too. Writing `1 - Φ(|x|)` as the
//! formula's product (not `1 - erf`) avoids cancellation in the negative tail, but the formula's
//! bound is absolute: relative to `Φ(x)` itself the error grows in the far tail (0.2% at x = -5,
//! 1% at -8), where GELU is below 1e-6 in magnitude.
//!
//! The op is a burn backend extension: flex gets these loops, autodiff a backward step that
//! calls the derivative's loop, and [`gelu`] falls back to burn's own GELU on other devices.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ActivationOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Tensor, TensorData};
use pdecay::kernel::normal_cdf_and_density;

use crate::flex::{CHUNK, in_chunks, on_flex, sole_contiguous};

/// The exact GELU as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait FastGelu: Backend {
    /// `x·Φ(x)`, elementwise.
    fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// `grad·(Φ(x) + x·φ(x))`, elementwise: the gradient with respect to `x`.
    fn fast_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu_backward(x, grad)
    }
}

pdecay::dispatched! {
    /// `out[i] = x[i]·Φ(x[i])`.
    fn gelu_chunk(x: &[f32], out: &mut [f32]) {
        for (y, &x) in out.iter_mut().zip(x) {
            *y = x * normal_cdf_and_density(x).0;
        }
    }
}

pdecay::dispatched! {
    /// `grad[i] *= Φ(x[i]) + x[i]·φ(x[i])`.
    fn gelu_backward_chunk(x: &[f32], grad: &mut [f32]) {
        for (g, &x) in grad.iter_mut().zip(x) {
            let (cdf, density) = normal_cdf_and_density(x);
            *g *= cdf + x * density;
        }
    }
}

/// `out = gelu(x)`.
fn gelu_slice(x: &[f32], out: &mut [f32]) {
    in_chunks(x, out, CHUNK, |_, x, out| gelu_chunk(x, out));
}

/// `grad = grad · gelu'(x)`.
fn gelu_backward_slice(x: &[f32], grad: &mut [f32]) {
    in_chunks(x, grad, CHUNK, |_, x, grad| gelu_backward_chunk(x, grad));
}

impl FastGelu for Flex {
    fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return Self::gelu(x);
        }
        let x = sole_contiguous(x);
        let mut out = vec![0.0f32; x.layout().num_elements()];
        gelu_slice(x.storage::<f32>(), &mut out);
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }

    fn fast_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return Self::gelu_backward(x, grad);
        }
        let x = sole_contiguous(x);
        let mut grad = sole_contiguous(grad);
        // the gradient is usually held by nobody else: then it is overwritten in place
        gelu_backward_slice(x.storage::<f32>(), grad.storage_mut::<f32>());
        grad
    }
}

/// The backward step: the output gradient times `gelu'(x)`.
#[derive(Debug)]
struct GeluBackward;

impl<B: Backend + FastGelu> Backward<B, 1> for GeluBackward {
    /// The input, checkpointed.
    type State = NodeId;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [parent] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let x = checkpointer.retrieve_node_output(ops.state);
        if let Some(node) = parent {
            grads.register::<B>(node.id, B::fast_gelu_backward(x, grad));
        }
    }
}

impl<B: Backend + FastGelu, C: CheckpointStrategy> FastGelu for Autodiff<B, C> {
    fn fast_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let output = B::fast_gelu(x.into_primitive());
                prep.finish(x_state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_gelu(x.into_primitive())),
        }
    }
}

/// The exact GELU `x·Φ(x)` (burn's `activation::gelu`), computed by the vectorised loops on the
/// flex CPU backend (with or without autodiff) and by burn elsewhere. Values and gradients lie
/// within 1e-6·max(1, |burn's value|) of burn's.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if on_flex(&x.device(), true) {
        Tensor::from_dispatch(<Dispatch as FastGelu>::fast_gelu(x.into_dispatch()))
    } else {
        burn::tensor::activation::gelu(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::assert_close;
    use burn::tensor::{Device, Distribution};

    /// Φ(x) in f64: std has no `erfc`, so the density is integrated by Simpson's rule.
    fn normal_cdf_f64(x: f64) -> f64 {
        // Φ(x) = 1/2 + ∫₀ˣ φ; for x < 0, Φ(x) = 1 - Φ(-x) would lose the tail, so integrate
        // the tail ∫_{-∞}^{x} φ directly from -12 (where it is below 1e-32).
        let density = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let (from, to) = (-12.0, x);
        let steps = 20_000;
        let h = (to - from) / steps as f64;
        let inner: f64 = (1..steps)
            .map(|i| density(from + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        (density(from) + inner + density(to)) * h / 3.0
    }

    #[test]
    fn the_normal_cdf_matches_a_numerical_integral() {
        for i in -80..=80 {
            let x = i as f32 / 10.0;
            let (cdf, density) = normal_cdf_and_density(x);
            let exact = normal_cdf_f64(x as f64);
            assert!(
                (cdf as f64 - exact).abs() < 2.5e-7,
                "Φ({x}) = {cdf} vs {exact}"
            );
            let exact_density = (-0.5 * (x as f64).powi(2)).exp() * 0.398_942_280_401_432_7;
            assert!((density as f64 - exact_density).abs() < 1e-7, "φ({x})");
        }
        // far in the lower tail the value is small but still relatively close
        let (cdf, _) = normal_cdf_and_density(-5.0);
        let exact = normal_cdf_f64(-5.0);
        assert!(
            ((cdf as f64 - exact) / exact).abs() < 0.05,
            "{cdf} vs {exact}"
        );
    }

    #[test]
    fn special_values_follow_burns_gelu() {
        let x = [
            0.0f32,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -100.0,
            100.0,
        ];
        let mut out = [0.0f32; 6];
        gelu_slice(&x, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], f32::INFINITY);
        assert!(out[2].is_nan() && out[3].is_nan());
        assert_eq!(out[4], 0.0);
        assert_eq!(out[5], 100.0);
        let mut grad = [1.0f32; 6];
        gelu_backward_slice(&x, &mut grad);
        assert_eq!(grad[0], 0.5);
        assert!(grad[3].is_nan());
        assert_eq!(grad[4], 0.0);
        assert_eq!(grad[5], 1.0);
    }

    /// The formula's error in `Φ` (1.5e-7) and rounding, relative.
    const TOLERANCE: f32 = 1e-6;

    /// Values on both devices and gradients through autodiff against burn's own GELU, on a
    /// tensor long enough for the parallel path, with a transposed (non-contiguous) input and a
    /// broadcast output gradient (that of `sum`).
    #[test]
    fn values_and_gradients_match_burns_gelu() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let base = Tensor::<2>::random([300, 257], Distribution::Normal(0.0, 3.0), &device);
            let x = base.transpose();
            assert_close(
                gelu(x.clone()).into_data(),
                burn::tensor::activation::gelu(x.clone()).into_data(),
                TOLERANCE,
                "values",
            );
            if !device.is_autodiff() {
                continue;
            }
            let grad = |f: fn(Tensor<2>) -> Tensor<2>| {
                let x = x.clone().detach().require_grad();
                let grads = f(x.clone()).sum().backward();
                x.grad(&grads).unwrap().into_data()
            };
            assert_close(
                grad(gelu),
                grad(burn::tensor::activation::gelu),
                TOLERANCE,
                "gradients",
            );
        }
    }
}
