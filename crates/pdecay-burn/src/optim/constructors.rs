//! Ready-made optimizers: pWD around Adam, SGD, RMSProp and AdaGrad with PyTorch's defaults,
//! and the baselines around Adam.
//!
//! burn's defaults differ from PyTorch's (Adam's eps is 1e-5 in burn, 1e-8 in PyTorch; burn's
//! SGD momentum dampens by 0.1, PyTorch's does not; burn's RMSProp has momentum 0.9). The
//! paper's and the golden files' numbers come from PyTorch, so these constructors use PyTorch's.

use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaGrad, AdaGradConfig, Adam, AdamConfig, AdamW, AdamWConfig, RmsProp, RmsPropConfig, Sgd,
    SgdConfig,
};
use pdecay::validate::ValidationError;

use super::baselines::{DecoupledL2, L1Prox, MagnitudePruning, MagnitudePruningConfig, NaiveLp};
use super::padam::PAdam;
use super::pnorm::{PNorm, PNormConfig};
use super::rule::{Decoupled, NoDecay};

/// pWD around the base optimizer `O`.
pub type PWeightDecay<O> = Decoupled<O, PNorm>;

/// Adam with PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
pub fn adam_pytorch() -> AdamConfig {
    AdamConfig::new().with_epsilon(1e-8)
}

/// burn's AdamW with PyTorch's defaults (betas (0.9, 0.999), eps 1e-8) and `weight_decay`
/// (PyTorch's default is 1e-2). It decays every tensor it is given, biases included.
pub fn burn_adamw_pytorch(weight_decay: f64) -> AdamW {
    AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(weight_decay as f32)
        .build()
}

/// The AdamW baseline: Adam (PyTorch defaults) + decoupled L2 decay `weight_decay` on the same
/// tensors pWD decays (rank >= 2), as nanoGPT configures AdamW.
pub fn adamw_pytorch(weight_decay: f64) -> Result<Decoupled<Adam, DecoupledL2>, ValidationError> {
    Ok(Decoupled::new(
        adam_pytorch().build(),
        DecoupledL2::new(weight_decay)?,
    ))
}

/// SGD with PyTorch's momentum convention (no dampening; the first buffer is the gradient).
pub fn sgd_pytorch(momentum: f64, nesterov: bool) -> SgdConfig {
    let momentum = (momentum > 0.0).then_some(MomentumConfig {
        momentum,
        dampening: 0.0,
        nesterov,
    });
    SgdConfig::new().with_momentum(momentum)
}

/// pAdam: Adam (PyTorch defaults: betas (0.9, 0.999), eps 1e-8) + pWD, fused into one pass on
/// the CPU.
pub fn padam(decay: &PNormConfig) -> Result<PAdam, ValidationError> {
    padam_with(0.9, 0.999, 1e-8, decay)
}

/// pAdam with other Adam hyper-parameters.
pub fn padam_with(
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    decay: &PNormConfig,
) -> Result<PAdam, ValidationError> {
    let adam = AdamConfig::new()
        .with_beta_1(beta_1)
        .with_beta_2(beta_2)
        .with_epsilon(epsilon)
        .build();
    let composite = Decoupled::new(adam, decay.build()?);
    Ok(PAdam::new(composite, beta_1, beta_2, epsilon))
}

/// pSGD: SGD with momentum (PyTorch convention, optional Nesterov) + pWD.
pub fn psgd(
    momentum: f64,
    nesterov: bool,
    decay: &PNormConfig,
) -> Result<PWeightDecay<Sgd>, ValidationError> {
    Ok(Decoupled::new(
        sgd_pytorch(momentum, nesterov).build(),
        decay.build()?,
    ))
}

/// pRMSProp: RMSProp with PyTorch's defaults (alpha 0.99, eps 1e-8, no momentum) + pWD.
pub fn prmsprop(decay: &PNormConfig) -> Result<PWeightDecay<RmsProp>, ValidationError> {
    let base = RmsPropConfig::new()
        .with_momentum(0.0)
        .with_epsilon(1e-8)
        .build();
    Ok(Decoupled::new(base, decay.build()?))
}

/// pAdaGrad: AdaGrad with PyTorch's defaults (eps 1e-10) + pWD.
pub fn padagrad(decay: &PNormConfig) -> Result<PWeightDecay<AdaGrad>, ValidationError> {
    let base = AdaGradConfig::new().with_epsilon(1e-10).build();
    Ok(Decoupled::new(base, decay.build()?))
}

/// Adam + L1 proximal step (soft threshold) with strength `lambda`.
pub fn adam_l1(lambda: f64) -> Result<Decoupled<Adam, L1Prox>, ValidationError> {
    Ok(Decoupled::new(adam_pytorch().build(), L1Prox::new(lambda)?))
}

/// Adam on the loss plus the naive Lp penalty gradient.
pub fn adam_naive_lp(p: f64, lambda: f64) -> Result<Decoupled<Adam, NaiveLp>, ValidationError> {
    Ok(Decoupled::new(
        adam_pytorch().build(),
        NaiveLp::new(p, lambda)?,
    ))
}

/// Adam + gradual magnitude pruning.
pub fn adam_gmp(
    config: &MagnitudePruningConfig,
) -> Result<Decoupled<Adam, MagnitudePruning>, ValidationError> {
    Ok(Decoupled::new(adam_pytorch().build(), config.build()?))
}

/// Plain Adam (PyTorch defaults) with the wrapper's state layout, for no-decay groups and
/// baselines without decay.
pub fn adam_no_decay() -> Decoupled<Adam, NoDecay> {
    Decoupled::new(adam_pytorch().build(), NoDecay)
}
