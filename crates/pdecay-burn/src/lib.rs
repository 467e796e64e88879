//! # pdecay-burn — p-norm decoupled weight decay for every burn optimizer
//!
//! [`Decoupled<O, R>`] wraps any `burn::optim::Optimizer` `O` with a [`DecayRule`] `R` and is
//! itself an `Optimizer`, so burn's `ModuleOptimizer`, parameter groups, records and lr
//! schedulers work unchanged. [`PWeightDecay<O>`] is pWD ([`PNorm`]) around `O`; [`padam`],
//! [`psgd`], [`prmsprop`] and [`padagrad`] build the common ones with PyTorch's defaults
//! ([`padam`] returns [`PAdam`], which fuses Adam and pWD into one pass on the CPU and falls
//! back to `PWeightDecay<Adam>` elsewhere, with the same optimizer record).
//! Baselines ([`L1Prox`], [`NaiveLp`], [`MagnitudePruning`], [`adamw_pytorch`]) share the
//! wrapper, so runs compare like with like. [`SparseOptimizer`] adds parameter groups that know
//! what decays, NaN/Inf checks that name the parameter, and sparsity probes.
//!
//! ```
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::GradientsParams;
//! use burn::tensor::{Device, Distribution, Tensor};
//! use pdecay_burn::{PNormConfig, SparseOptimizer, padam};
//!
//! let device = Device::default().autodiff();
//! let mut model: Linear = LinearConfig::new(64, 8).init(&device);
//! let mut optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1e-2))?);
//! println!("{}", optim.decay_summary(&model)); // 1 decayed tensor (weight), bias not decayed
//! for _ in 0..100 {
//!     let x = Tensor::<2>::random([32, 64], Distribution::Normal(0.0, 1.0), &device);
//!     let loss = model.forward(x).square().mean();
//!     let grads = GradientsParams::from_grads(loss.backward(), &model);
//!     model = optim.step(1e-2, model, grads)?;
//! }
//! let sparsity = optim.sparsity_report(&model, 1e-13, false).decayed().sparsity();
//! assert!(sparsity > 0.5, "{sparsity}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod flex;
#[cfg(feature = "train")]
mod metric;
mod ops;
mod optim;

#[cfg(feature = "train")]
pub use metric::{SparsityInput, SparsityMetric};

pub use flex::on_pool;
pub use ops::{
    bias_relu_max_pool_2x2, causal_attention, causal_attention_composite, causal_softmax,
    conv2d_relu_max_pool_2x2, dense_conv2d, dense_linear, gelu, layer_norm, max_pool_2x2,
    sparse_conv2d, sparse_linear,
};
pub use optim::{
    DEFAULT_MIN_RANK, DecayRule, DecaySummary, DecaysTensors, Decoupled, DecoupledL2,
    DecoupledState, Kernel, L1Prox, MagnitudePruning, MagnitudePruningConfig, Mode, NaiveLp,
    NamedValues, NoDecay, PAdam, PNorm, PNormConfig, PWeightDecay, Reference, SparseOptimizer,
    StepContext, StepError, adam_gmp, adam_l1, adam_naive_lp, adam_no_decay, adam_pytorch,
    adamw_pytorch, burn_adamw_pytorch, clip_grad_norm, first_non_finite, padagrad, padam,
    padam_with, parameter_values, prmsprop, psgd, sgd_pytorch, sparsity_report,
    trained_param_count,
};

pub use burn;
pub use pdecay;

/// The README's quick start, run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
