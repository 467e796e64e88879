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
pub use sparse_conv::sparse_conv2d;
pub use sparse_linear::sparse_linear;
