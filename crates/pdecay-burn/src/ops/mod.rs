//! Model operations with fast loops on the flex CPU backend (burn backend extensions with
//! their own autodiff step): 2x2 max pooling, the exact GELU, and the causal softmax of
//! attention, and the linear and convolutional layers' products over their weights' non-zeros
//! (sparse training).
//! Elsewhere each falls back to burn's composite.

mod attention;
mod gelu;
mod pool;
mod sparse_conv;
mod sparse_linear;

pub use attention::causal_softmax;
pub use gelu::gelu;
pub use pool::max_pool_2x2;
pub use sparse_conv::{dense_conv2d, sparse_conv2d};
pub use sparse_linear::sparse_linear;

use burn::backend::Flex;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::Ops;
use burn::backend::flex::FlexTensor;

/// The backward step of a product of an input `x` and a weight over the weight's non-zeros
/// (sparse training's linear and convolution): `backward(saved, ∂output, whether x tracks a
/// gradient)` gives `(∂x, ∂weight)`, each registered with the node that tracks it.
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
