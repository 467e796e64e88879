//! Model operations with fast loops on the flex CPU backend (burn backend extensions with
//! their own autodiff step): 2x2 max pooling (alone, or with the bias and ReLU before it), the
//! exact GELU, layer normalisation, causal attention (the softmax alone, or the whole head
//! computation), the linear layer's dense product without burn's output copies, and the linear
//! and convolutional layers' products over their weights' non-zeros (sparse training).
//! Elsewhere each falls back to burn's composite.

mod attention;
mod conv_pool;
mod dense_linear;
mod gelu;
mod layer_norm;
mod pool;
mod sparse_conv;
mod sparse_linear;

pub use attention::{causal_attention, causal_attention_composite, causal_softmax};
pub use conv_pool::conv2d_relu_max_pool_2x2;
pub use dense_linear::dense_linear;
pub use gelu::gelu;
pub use layer_norm::layer_norm;
pub use pool::{bias_relu_max_pool_2x2, max_pool_2x2};
pub use sparse_conv::{dense_conv2d, sparse_conv2d};
pub use sparse_linear::sparse_linear;

use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::Tensor;

use crate::flex::all_f32;

/// The backward step of an op of an input `x` and a parameter (the linear layer's dense and
/// sparse products, the sparse convolution, the fused bias, ReLU and pooling):
/// `backward(saved, ∂output, whether x tracks a gradient)` gives `(∂x, ∂parameter)`, each
/// registered with the node that tracks it.
fn product_backward<S>(
    ops: Ops<S, 2>,
    grads: &mut Gradients,
    backward: fn(&S, &FlexTensor, bool) -> (Option<FlexTensor>, FlexTensor),
) {
    let [x_parent, w_parent] = ops.parents;
    let grad = grads.consume::<Flex>(&ops.node);
    let (x_grad, w_grad) = backward(&ops.state, &grad, x_parent.is_some());
    if let (Some(node), Some(x_grad)) = (x_parent, x_grad) {
        grads.register::<Flex>(node.id, x_grad);
    }
    if let Some(node) = w_parent {
        grads.register::<Flex>(node.id, w_grad);
    }
}

/// A linear layer's product `x·w` on flex: `forward` gives the output and what `backward`
/// needs, `backward(saved, ∂y, whether x tracks a gradient)` gives `(∂x, ∂w)`.
struct LinearProduct<S> {
    forward: fn(&FlexTensor, &FlexTensor) -> (FlexTensor, S),
    backward: fn(&S, &FlexTensor, bool) -> (Option<FlexTensor>, FlexTensor),
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

/// `product + bias`, the bias broadcast over the rows.
fn plus_bias(product: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    match bias {
        Some(bias) => product + bias.unsqueeze(),
        None => product,
    }
}

/// `[rows, cols]` of a rank-2 tensor.
fn matrix_dims(t: &FlexTensor) -> [usize; 2] {
    let dims = t.layout().shape().to_vec();
    [dims[0], dims[1]]
}

/// `ours` equals `theirs` element by element within `tolerance` relative (absolute below 1):
/// the ops' tests against burn's composites, which sum in another order.
#[cfg(test)]
fn assert_close(
    ours: burn::tensor::TensorData,
    theirs: burn::tensor::TensorData,
    tolerance: f32,
    what: &str,
) {
    let ours = ours.try_to_vec::<f32>().unwrap();
    let theirs = theirs.try_to_vec::<f32>().unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (a - b).abs() <= tolerance * b.abs().max(1.0),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}
