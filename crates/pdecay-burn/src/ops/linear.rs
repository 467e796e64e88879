//! The linear layer `x·W + b` on burn's flex CPU backend, as one backend extension with two
//! products: the dense one (`super::dense_linear`) and the one over the weight's non-zeros
//! (`super::sparse_linear`, sparse training). Each is a [`LinearProduct`], a forward that also
//! gives what its backward step needs, and that step. Elsewhere the layer is burn's own
//! `x·W + b`.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

use super::dense_linear::DENSE;
use super::product_backward;
use super::sparse_linear::SPARSE;
use crate::flex::{all_f32, on_flex};

/// Which entries of the weight a linear layer's product runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weights {
    /// Every entry: [`super::dense_linear`].
    All,
    /// The non-zeros only: [`super::sparse_linear`].
    NonZeros,
}

/// The linear layer's product as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait LinearMatmul: Backend {
    /// `x·w` for `x` `[M, K]` and `w` `[K, N]`, over `weights` of `w`.
    fn linear_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        weights: Weights,
    ) -> FloatTensor<Self> {
        let _ = weights;
        Self::float_matmul(x, w)
    }
}

impl LinearMatmul for Flex {
    fn linear_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        weights: Weights,
    ) -> FloatTensor<Self> {
        match weights {
            Weights::All => DENSE.run_plain(x, w),
            Weights::NonZeros => SPARSE.run_plain(x, w),
        }
    }
}

/// Only flex runs these products (the dispatch reaches this impl for flex under autodiff;
/// every other device takes burn's product in [`linear`]).
impl<C: CheckpointStrategy> LinearMatmul for Autodiff<Flex, C> {
    fn linear_matmul(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        weights: Weights,
    ) -> FloatTensor<Self> {
        match weights {
            Weights::All => DENSE.run::<C>(x, w),
            Weights::NonZeros => SPARSE.run::<C>(x, w),
        }
    }
}

/// `x·weight + bias` for `x` `[M, K]` and `weight` `[K, N]` (burn `Linear`'s layout), over
/// `weights` of `weight` on the flex CPU backend (with or without autodiff), by burn's
/// product elsewhere.
pub(super) fn linear(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    weights: Weights,
) -> Tensor<2> {
    let product = if on_flex(&x.device(), true) {
        Tensor::from_dispatch(<Dispatch as LinearMatmul>::linear_matmul(
            x.into_dispatch(),
            weight.into_dispatch(),
            weights,
        ))
    } else {
        x.matmul(weight)
    };
    plus_bias(product, bias)
}

/// A linear layer's product `x·w` on flex: `forward` gives the output and what `backward`
/// needs, `backward(saved, ∂y, whether x tracks a gradient)` gives `(∂x, ∂w)`.
pub(super) struct LinearProduct<S> {
    pub(super) forward: fn(&FlexTensor, &FlexTensor) -> (FlexTensor, S),
    pub(super) backward: fn(&S, &FlexTensor, bool) -> (Option<FlexTensor>, FlexTensor),
}

impl<S> std::fmt::Debug for LinearProduct<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinearProduct")
    }
}

impl<S: Clone + Send + std::fmt::Debug + 'static> Backward<Flex, 2> for LinearProduct<S> {
    type State = S;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        product_backward(ops, grads, self.backward);
    }
}

impl<S: Clone + Send + std::fmt::Debug + 'static> LinearProduct<S> {
    /// `x·w` under autodiff on flex for f32 values, with this product's backward step
    /// recorded where either tracks a gradient; `burn`'s own `x·w` for other dtypes.
    fn run<C: CheckpointStrategy>(
        self,
        x: FloatTensor<Autodiff<Flex, C>>,
        w: FloatTensor<Autodiff<Flex, C>>,
    ) -> FloatTensor<Autodiff<Flex, C>> {
        if !all_f32(&[x.primitive(), w.primitive()]) {
            return Autodiff::<Flex, C>::float_matmul(x, w);
        }
        let forward = self.forward;
        match self
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, saved) = forward(x.primitive(), w.primitive());
                prep.finish(saved, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), w.primitive()).0),
        }
    }

    /// `x·w` on plain flex for f32 values (no backward step), `burn`'s own for other dtypes.
    fn run_plain(&self, x: FlexTensor, w: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &w]) {
            return Flex::float_matmul(x, w);
        }
        (self.forward)(&x, &w).0
    }
}

/// `[rows, cols]` of a rank-2 tensor.
pub(super) fn matrix_dims(t: &FlexTensor) -> [usize; 2] {
    let dims = t.layout().shape().to_vec();
    [dims[0], dims[1]]
}

/// `product + bias`, the bias broadcast over the rows.
fn plus_bias(product: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    match bias {
        Some(bias) => product + bias.unsqueeze(),
        None => product,
    }
}
