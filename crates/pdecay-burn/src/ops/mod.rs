//! Model operations with fast loops on the flex CPU backend (burn backend extensions with
//! their own autodiff step): 2x2 max pooling, the exact GELU, and the causal softmax of
//! attention. Elsewhere each falls back to burn's composite.

mod attention;
mod gelu;
mod pool;

pub use attention::causal_softmax;
pub use gelu::gelu;
pub use pool::max_pool_2x2;
