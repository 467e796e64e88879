//! The linear layer's dense product `Y = X·W` with its backward step, for burn's flex CPU
//! backend: burn's own product, written straight into its output.
//!
//! burn-flex's matmul allocates each output with `FlexTensor::empty`, which zeroes a byte
//! buffer and then copies it into an aligned one, before gemm overwrites it: two passes over
//! every output of a layer's three products (`Y`, `∂X = ∂Y·Wᵀ`, `∂W = Xᵀ·∂Y`), 4% of a GPT step
//! in a profile. Here the same gemm (the same version, the same threshold for splitting over
//! rayon's pool) writes a fresh `Vec<f32>` that burn then owns, reading `Wᵀ` and `Xᵀ` through
//! strides as burn does (`pdecay::matmul`). With the same gemm calls the values are burn's bit
//! for bit, which a test checks.
//!
//! The backend extension it runs through (flex gets this product, autodiff a backward step,
//! every other device burn's own `X·W + b`) is the linear layer's, shared with the sparse
//! product (`super::linear`).

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use pdecay::matmul::{View, product_new};

use super::linear::{LinearProduct, Weights, linear, matrix_dims};

/// `lhs·rhs` for contiguous `[m, k]` and `[k, n]` tensors, either read transposed (`[k, m]` or
/// `[n, k]` stored) where asked, as a new `[m, n]` tensor.
fn product(lhs: &FlexTensor, lhs_t: bool, rhs: &FlexTensor, rhs_t: bool) -> FlexTensor {
    let ([lr, lc], [rr, rc]) = (matrix_dims(lhs), matrix_dims(rhs));
    let (m, k, n) = (
        if lhs_t { lc } else { lr },
        if lhs_t { lr } else { lc },
        if rhs_t { rr } else { rc },
    );
    let view = |cols: usize, t: bool| {
        let stored = View::rows(cols);
        if t { stored.t() } else { stored }
    };
    let values = product_new(
        [m, n, k],
        (lhs.storage::<f32>(), view(lc, lhs_t)),
        (rhs.storage::<f32>(), view(rc, rhs_t)),
    );
    FlexTensor::from_data(TensorData::new(values, [m, n]))
}

/// What the backward step needs: the input and the weight, contiguous.
#[derive(Debug, Clone)]
pub(super) struct Saved {
    x: FlexTensor,
    w: FlexTensor,
}

/// `Y = X·W`, and what its backward step needs.
fn forward(x: &FlexTensor, w: &FlexTensor) -> (FlexTensor, Saved) {
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let y = product(&x, false, &w, false);
    (y, Saved { x, w })
}

/// `∂X = ∂Y·Wᵀ` (when asked) and `∂W = Xᵀ·∂Y`.
fn backward(
    saved: &Saved,
    grad: &FlexTensor,
    with_x_grad: bool,
) -> (Option<FlexTensor>, FlexTensor) {
    let grad = grad.to_contiguous();
    let x_grad = with_x_grad.then(|| product(&grad, false, &saved.w, true));
    (x_grad, product(&saved.x, true, &grad, false))
}

/// The product and its backward step.
pub(super) const DENSE: LinearProduct<Saved> = LinearProduct { forward, backward };

/// `x·weight + bias` for `x` `[M, K]` and `weight` `[K, N]` (burn `Linear`'s layout): burn's
/// own values and gradients, bit for bit, on the flex CPU backend (with or without autodiff)
/// without burn's zeroing and copying of each output, and burn's product elsewhere.
pub fn dense_linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    linear(x, weight, bias, Weights::All)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and all three gradients equal burn's `x·w + b` bit for bit, on shapes below and
    /// above the threshold where gemm splits over rayon's pool, and at batch 1.
    #[test]
    fn values_and_gradients_are_burns_bit_for_bit() {
        let device = Device::flex().autodiff();
        for [batch, inputs, outputs] in [[1, 7, 3], [65, 33, 17], [128, 784, 300], [768, 128, 384]]
        {
            let x = Tensor::<2>::random([batch, inputs], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<2>::random([inputs, outputs], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<1>::random([outputs], Distribution::Normal(0.0, 1.0), &device);
            let g = Tensor::<2>::random([batch, outputs], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool| {
                let (x, w, b) = (
                    x.clone().require_grad(),
                    w.clone().require_grad(),
                    b.clone().require_grad(),
                );
                let y = if ours {
                    dense_linear(x.clone(), w.clone(), Some(b.clone()))
                } else {
                    x.clone().matmul(w.clone()) + b.clone().unsqueeze()
                };
                let grads = (y.clone() * g.clone()).sum().backward();
                [
                    y.inner().into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    w.grad(&grads).unwrap().into_data(),
                    b.grad(&grads).unwrap().into_data(),
                ]
            };
            let (ours, burns) = (run(true), run(false));
            for (what, (a, b)) in ["y", "dx", "dw", "db"].iter().zip(ours.iter().zip(&burns)) {
                assert_eq!(a, b, "{what} at {batch}x{inputs}->{outputs}");
            }
        }
    }

    #[test]
    fn a_hand_worked_product_and_its_gradients() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data([[1.0, 2.0], [3.0, -1.0]], &device).require_grad();
        let w = Tensor::<2>::from_data([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]], &device).require_grad();
        let y = dense_linear(x.clone(), w.clone(), None);
        // rows: (1 - 2, 2, 2 + 1), (3 + 1, -1, 6 - 0.5)
        let values = y.clone().inner().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(values, [-1.0, 2.0, 3.0, 4.0, -1.0, 5.5]);
        let grads = y.sum().backward();
        // ∂x = 1·wᵀ: each row (1 + 0 + 2, -1 + 1 + 0.5); ∂w = xᵀ·1: row k is Σ_m x[m, k]
        let dx = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(dx, [3.0, 0.5, 3.0, 0.5]);
        let dw = w
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(dw, [4.0, 4.0, 4.0, 1.0, 1.0, 1.0]);
    }
}
