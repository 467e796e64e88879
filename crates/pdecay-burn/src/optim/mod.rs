//! The optimizers: [`Decoupled`] (any burn optimizer and a [`DecayRule`]), pWD's rule
//! [`PNorm`] and the fused [`PAdam`], the baselines' rules, the constructors with PyTorch's
//! defaults, and [`SparseOptimizer`] (parameter groups, NaN checks, sparsity probes).

mod baselines;
mod clip;
mod constructors;
mod padam;
mod pnorm;
mod rule;
mod sparse_optimizer;
mod state;

pub use baselines::{DecoupledL2, L1Prox, MagnitudePruning, MagnitudePruningConfig, NaiveLp};
pub use clip::clip_grad_norm;
pub use constructors::{
    PWeightDecay, adam_gmp, adam_l1, adam_naive_lp, adam_no_decay, adam_pytorch, adamw_pytorch,
    burn_adamw_pytorch, padagrad, padam, padam_with, prmsprop, psgd, sgd_pytorch,
};
pub use padam::PAdam;
pub use pnorm::{Kernel, Mode, PNorm, PNormConfig, Reference};
pub use rule::{DEFAULT_MIN_RANK, DecayRule, DecaysTensors, Decoupled, NoDecay, StepContext};
pub use sparse_optimizer::{
    DecaySummary, NamedValues, SparseOptimizer, StepError, first_non_finite, parameter_values,
    sparsity_report, trained_param_count,
};
pub use state::DecoupledState;
