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
mod linear;
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
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::Ops;
use burn::backend::flex::FlexTensor;

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
