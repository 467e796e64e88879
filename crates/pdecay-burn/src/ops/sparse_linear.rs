//! The linear layer's product `Y = X·W` over the weight's non-zeros, forward and backward, for
//! burn's flex CPU backend: sparse training.
//!
//! Under pWD with `p < 2` and `p·η·λ > 0` the factor at an exactly-zero weight is 0, so a zero
//! stays zero whatever its gradient (`DESIGN.md`). The gradient of a dead weight is therefore
//! never used, and a layer can run over its non-zeros only without changing the run: with `X`
//! `[M, K]` and burn's `W` `[K, N]` (`Linear`'s `[d_input, d_output]`),
//!
//! - forward `Yᵀ = Wᵀ·Xᵀ`: each row of `Yᵀ` summed over the stored weights of its column of
//!   `W` (a CSR of `Wᵀ`, sorted from `W`'s in one pass over its non-zeros);
//! - backward `∂Xᵀ = W·∂Yᵀ` (each row of `∂Xᵀ` summed over its stored weights) and
//!   `∂W = Xᵀ·∂Y` computed only at `W`'s non-zeros (a sampled product, zero elsewhere).
//!
//! Each multiply-add of the dense products that touches a zero weight is skipped, so at
//! density `d` the three products cost about `d` of theirs. The batch runs innermost, each
//! stored weight scaling one contiguous row of the transposed input (`pdecay::csr`); `Xᵀ` and
//! `∂Yᵀ` are transposed once each, and the two products write `Y` and `∂X` in burn's layout
//! directly, each tile of sums transposed while it is in cache (`Csr::matmul_rows`). The
//! weight stays an ordinary dense tensor (checkpoints, optimizer state, export and resume are
//! unchanged); the support is read from it at every call, so it is right however it shrinks.
//! Only summation order differs from the dense product (`∂W` at the zeros aside).
//!
//! The backend extension it runs through (flex gets these loops, autodiff a backward step,
//! every other device burn's own `X·W + b`) is the linear layer's, shared with the dense
//! product (`super::linear`).

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{Tensor, TensorData};
use pdecay::csr::{Csr, transpose};

use super::linear::{LinearProduct, Weights, linear, matrix_dims};

/// The transpose of a contiguous rank-2 tensor's values, `[rows, cols]` -> `[cols, rows]`
/// (`pdecay::csr::transpose`: tiles through a local buffer, bands over rayon's pool).
fn transposed(t: &FlexTensor) -> Vec<f32> {
    let [rows, cols] = matrix_dims(t);
    transpose(t.storage::<f32>(), rows, cols)
}

/// What the backward step needs of a forward product: `W`'s support with its values (a CSR
/// of `W`, read once per call in one sequential pass), and the transposed input `Xᵀ` `[K, M]`.
#[derive(Debug, Clone)]
pub(super) struct Saved {
    w: Arc<Csr>,
    x_t: Arc<Vec<f32>>,
    batch: usize,
}

/// `Yᵀ = Wᵀ·Xᵀ` over `W`'s non-zeros, and what its backward step needs.
fn forward(x: &FlexTensor, w: &FlexTensor) -> (FlexTensor, Saved) {
    let (x, w) = (x.to_contiguous(), w.to_contiguous());
    let ([batch, inputs], [_, outputs]) = (matrix_dims(&x), matrix_dims(&w));
    let support = Csr::nonzeros(w.storage::<f32>(), inputs, outputs);
    let x_t = transposed(&x);
    // gathered per output row, where scattering from `W`'s rows needs a whole output per
    // thread and a sum of them
    let mut y = vec![0.0f32; batch * outputs];
    support.transposed().matmul_rows(&x_t, batch, None, &mut y);
    let y = FlexTensor::from_data(TensorData::new(y, [batch, outputs]));
    let saved = Saved {
        w: Arc::new(support),
        x_t: Arc::new(x_t),
        batch,
    };
    (y, saved)
}

/// `∂X = ∂Y·Wᵀ` (when asked) and `∂W = Xᵀ·∂Y` at `W`'s non-zeros, zero elsewhere.
fn backward(
    saved: &Saved,
    grad: &FlexTensor,
    with_x_grad: bool,
) -> (Option<FlexTensor>, FlexTensor) {
    let Saved { w, x_t, batch } = saved;
    let (batch, inputs, outputs) = (*batch, w.rows, w.cols);
    let grad_t = transposed(&grad.to_contiguous());
    let x_grad = with_x_grad.then(|| {
        let mut x_grad = vec![0.0f32; batch * inputs];
        w.matmul_rows(&grad_t, batch, None, &mut x_grad);
        FlexTensor::from_data(TensorData::new(x_grad, [batch, inputs]))
    });
    let mut at_support = vec![0.0f32; w.nnz()];
    w.sampled_products_t(x_t, &grad_t, batch, &mut at_support);
    let w_grad = FlexTensor::from_data(TensorData::new(
        w.dense_with(&at_support),
        [inputs, outputs],
    ));
    (x_grad, w_grad)
}

/// The product and its backward step.
pub(super) const SPARSE: LinearProduct<Saved> = LinearProduct { forward, backward };

/// `x·weight + bias` for `x` `[M, K]` and `weight` `[K, N]` (burn `Linear`'s layout), run over
/// the weight's non-zeros on the flex CPU backend (with or without autodiff) and by burn's
/// dense product elsewhere. Values and `∂x` are the dense product's up to summation order;
/// `∂weight` is the dense one at the non-zeros and exactly zero at the zeros.
pub fn sparse_linear(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    linear(x, weight, bias, Weights::NonZeros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// A `[rows, cols]` weight with about `zeros` of its entries exactly zero, by a hash of the
    /// position (deterministic; whole rows and columns are zeroed too when asked).
    fn sparse_weight(
        rows: usize,
        cols: usize,
        zeros: f64,
        seed: u64,
        device: &Device,
    ) -> Tensor<2> {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                let u = h as f64 / (1u64 << 24) as f64;
                if u < zeros {
                    0.0
                } else {
                    (u as f32 - 0.5) * 2.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(values, [rows, cols]), device)
    }

    fn max_abs_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Forward values, `∂x` and `∂w` of the sparse op against burn's dense `x·w + b`, the
    /// dense `∂w` masked to the support; returns the largest difference seen.
    fn check(batch: usize, inputs: usize, outputs: usize, zeros: f64, seed: u64) {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::random([batch, inputs], Distribution::Normal(0.0, 1.0), &device);
        let w = sparse_weight(inputs, outputs, zeros, seed, &device);
        let b = Tensor::<1>::random([outputs], Distribution::Normal(0.0, 1.0), &device);
        // a fixed upstream gradient: the loss is Σ y ⊙ G
        let g = Tensor::<2>::random([batch, outputs], Distribution::Normal(0.0, 1.0), &device);
        let run = |sparse: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if sparse {
                sparse_linear(x.clone(), w.clone(), Some(b.clone()))
            } else {
                x.clone().matmul(w.clone()) + b.clone().unsqueeze()
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            )
        };
        let (y_s, dx_s, dw_s, db_s) = run(true);
        let (y_d, dx_d, dw_d, db_d) = run(false);
        let support = w.clone().inner().not_equal_elem(0.0);
        let dw_d = dw_d.mask_fill(support.clone().bool_not(), 0.0);
        // sums of K (or M) terms of magnitude ~1: f32 rounding of either order
        let tolerance = 1e-5 * (inputs.max(batch) as f32).sqrt() * 4.0;
        let shape = format!("{batch}x{inputs}->{outputs} at {zeros} zeros");
        assert!(max_abs_diff(y_s, y_d) <= tolerance, "values, {shape}");
        assert!(max_abs_diff(dx_s, dx_d) <= tolerance, "dx, {shape}");
        assert!(max_abs_diff(dw_s.clone(), dw_d) <= tolerance, "dw, {shape}");
        // the dead weights' gradient is exactly zero
        let dead_grad = dw_s
            .mask_fill(support, 0.0)
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(dead_grad, 0.0, "dw at the zeros, {shape}");
        assert!(
            (db_s - db_d).abs().max().into_scalar::<f32>() <= tolerance,
            "db, {shape}"
        );
    }

    #[test]
    fn values_and_gradients_match_the_dense_product() {
        for (batch, inputs, outputs, zeros) in [
            (1, 7, 3, 0.5),
            (128, 784, 300, 0.9),
            (65, 33, 17, 0.0),
            (64, 100, 10, 1.0),
            (3, 130, 1, 0.95),
            (200, 20, 70, 0.7),
        ] {
            check(
                batch,
                inputs,
                outputs,
                zeros,
                batch as u64 * 31 + inputs as u64,
            );
        }
    }

    #[test]
    fn empty_rows_and_columns_and_a_shrinking_support() {
        let device = Device::flex().autodiff();
        // input row 1 and output column 2 entirely zero
        let w = [
            [1.0, -2.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.5, 0.0, 0.0],
            [0.0, 3.0, 0.0],
        ];
        let x = Tensor::<2>::from_data([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.0]], &device);
        let w0 = Tensor::<2>::from_data(w, &device).require_grad();
        let y = sparse_linear(x.clone(), w0.clone(), None);
        // y = x·w by hand: row 0 (1 + 1.5, -2 + 12, 0), row 1 (-1, 2 + 6, 0)
        let expected = Tensor::<2>::from_data([[2.5, 10.0, 0.0], [-1.0, 8.0, 0.0]], &device);
        assert_eq!(max_abs_diff(y.clone().inner(), expected.inner()), 0.0);
        let grads = y.sum().backward();
        // ∂w[k, n] = Σ_m x[m, k] at the support: column sums of x (0, 2.5, 3, 6) where w ≠ 0
        let dw = w0.grad(&grads).unwrap();
        let expected = [
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [3.0, 0.0, 0.0],
            [0.0, 6.0, 0.0],
        ];
        assert_eq!(
            dw.to_data().try_to_vec::<f32>().unwrap(),
            expected.concat(),
            "∂w is the column sum at the support, zero elsewhere"
        );
        // the same op on a weight that lost an entry: the new zero gets no gradient
        let mut shrunk = w;
        shrunk[3][1] = 0.0;
        let w1 = Tensor::<2>::from_data(shrunk, &device).require_grad();
        let grads = sparse_linear(x, w1.clone(), None).sum().backward();
        let dw = w1
            .grad(&grads)
            .unwrap()
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(dw[3 * 3 + 1], 0.0);
        assert_eq!(dw[2 * 3], 3.0);
    }

    #[test]
    fn a_fully_zero_layer_outputs_its_bias() {
        let device = Device::flex();
        let x = Tensor::<2>::random([5, 9], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::zeros([9, 4], &device);
        let b = Tensor::<1>::from_data([1.0, 2.0, 3.0, 4.0], &device);
        let y = sparse_linear(x, w, Some(b))
            .to_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(y, [1.0, 2.0, 3.0, 4.0].repeat(5));
    }
}
