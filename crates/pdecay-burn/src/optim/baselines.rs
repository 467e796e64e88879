//! Baselines run beside pWD so that runs compare like with like: each is a [`DecayRule`] around
//! the same base optimizer, with the same rank rule and record layout.
//!
//! - [`DecoupledL2`]: AdamW's decoupled weight decay `w ← w_step - η·wd·w_{t-1}`, so that
//!   AdamW decays exactly the tensors pWD decays (rank >= 2), as nanoGPT's AdamW does.
//! - [`L1Prox`]: the L1 proximal step (soft threshold) after the base step.
//! - [`NaiveLp`]: the Lp penalty's gradient added to the loss gradient. For p < 1 the gradient
//!   `p·λ·|w|^(p-1)` blows up near zero, so this can diverge: that is what pWD fixes.
//! - [`MagnitudePruning`]: gradual magnitude pruning with the cubic schedule of Zhu & Gupta
//!   (2017), masks kept in the optimizer record.

use burn::tensor::{Tensor, TensorData};
use pdecay::validate::{
    ValidationError, check_non_negative, check_p, check_steps, check_unit_interval,
};

use super::rule::{DecayRule, StepContext};

/// AdamW's decoupled L2 decay: `w_t = w_step - η·wd·w_{t-1}`; around Adam this is AdamW
/// (`w_{t-1}·(1 - η·wd) - η·u`), PyTorch's update up to float rounding order.
#[derive(Clone, Debug)]
pub struct DecoupledL2 {
    weight_decay: f64,
}

impl DecoupledL2 {
    /// Weight decay `wd` (>= 0; PyTorch's AdamW default is 1e-2).
    pub fn new(weight_decay: f64) -> Result<Self, ValidationError> {
        Ok(Self {
            weight_decay: check_non_negative("weight_decay", weight_decay)?,
        })
    }
}

impl DecayRule for DecoupledL2 {
    fn is_active(&self) -> bool {
        self.weight_decay > 0.0
    }

    fn transform_weights<const D: usize>(
        &self,
        ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let rate = ctx.lr * self.weight_decay;
        if rate == 0.0 {
            return (stepped, aux);
        }
        (stepped - ctx.before.mul_scalar(rate), aux)
    }
}

/// Adam (or any base) + L1 proximal step: `w ← sign(w)·max(|w| - η·λ, 0)` after the base step.
#[derive(Clone, Debug)]
pub struct L1Prox {
    lambda: f64,
}

impl L1Prox {
    /// L1 strength λ (>= 0).
    pub fn new(lambda: f64) -> Result<Self, ValidationError> {
        Ok(Self {
            lambda: check_non_negative("lambda", lambda)?,
        })
    }
}

impl DecayRule for L1Prox {
    fn transform_weights<const D: usize>(
        &self,
        ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let threshold = ctx.lr * self.lambda;
        let shrunk = stepped.clone().abs().sub_scalar(threshold).clamp_min(0.0);
        (stepped.sign() * shrunk, aux)
    }
}

/// The naive Lp gradient: `g ← g + p·λ·|w|^(p-1)·sign(w)` before the base step (0 at w = 0,
/// where the subgradient set contains 0).
#[derive(Clone, Debug)]
pub struct NaiveLp {
    p: f64,
    lambda: f64,
}

impl NaiveLp {
    /// Norm p (> 0) and strength λ (>= 0).
    pub fn new(p: f64, lambda: f64) -> Result<Self, ValidationError> {
        Ok(Self {
            p: check_p(p)?,
            lambda: check_non_negative("lambda", lambda)?,
        })
    }
}

impl DecayRule for NaiveLp {
    fn transform_grad<const D: usize>(&self, ctx: &StepContext<D>, grad: Tensor<D>) -> Tensor<D> {
        let w = ctx.before.clone();
        let at_zero = w.clone().equal_elem(0.0);
        let penalty = w
            .clone()
            .abs()
            .powf_scalar(self.p - 1.0)
            .mul(w.sign())
            .mul_scalar(self.p * self.lambda)
            .mask_fill(at_zero, 0.0);
        grad + penalty
    }

    fn transform_weights<const D: usize>(
        &self,
        _ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        (stepped, aux)
    }
}

/// Settings of gradual magnitude pruning. Sparsity follows
/// `s_t = s_f + (s_i - s_f)·(1 - (t - t_0)/(t_end - t_0))^3` from `begin_step` to `end_step`,
/// masks recomputed every `frequency` steps (per tensor: the smallest magnitudes are cut), and
/// applied after every step so pruned weights stay zero.
#[derive(Clone, Debug, PartialEq)]
pub struct MagnitudePruningConfig {
    /// Sparsity at `begin_step` (default 0).
    pub initial_sparsity: f64,
    /// Sparsity from `end_step` on (default 0.9).
    pub final_sparsity: f64,
    /// First pruning step (default 0).
    pub begin_step: u64,
    /// Last pruning step (default 1000).
    pub end_step: u64,
    /// Steps between mask updates (default 100).
    pub frequency: u64,
}

impl Default for MagnitudePruningConfig {
    fn default() -> Self {
        Self {
            initial_sparsity: 0.0,
            final_sparsity: 0.9,
            begin_step: 0,
            end_step: 1000,
            frequency: 100,
        }
    }
}

impl MagnitudePruningConfig {
    /// Validates and builds the rule.
    pub fn build(&self) -> Result<MagnitudePruning, ValidationError> {
        check_unit_interval("initial_sparsity", self.initial_sparsity)?;
        check_unit_interval("final_sparsity", self.final_sparsity)?;
        check_steps("frequency", self.frequency)?;
        check_steps(
            "end_step - begin_step",
            self.end_step.saturating_sub(self.begin_step),
        )?;
        Ok(MagnitudePruning {
            config: self.clone(),
        })
    }
}

/// Gradual magnitude pruning; build it with [`MagnitudePruningConfig::build`].
#[derive(Clone, Debug)]
pub struct MagnitudePruning {
    config: MagnitudePruningConfig,
}

impl MagnitudePruning {
    /// Target sparsity at `step` (the cubic schedule).
    pub fn sparsity_at(&self, step: u64) -> f64 {
        let c = &self.config;
        if step < c.begin_step {
            return 0.0;
        }
        let t = (step.min(c.end_step) - c.begin_step) as f64 / (c.end_step - c.begin_step) as f64;
        c.final_sparsity + (c.initial_sparsity - c.final_sparsity) * (1.0 - t).powi(3)
    }

    fn updates_mask_at(&self, step: u64) -> bool {
        let c = &self.config;
        (c.begin_step..=c.end_step).contains(&step)
            && (step - c.begin_step).is_multiple_of(c.frequency)
    }
}

/// A 0/1 mask that keeps all but the `sparsity` share of smallest magnitudes of `w`.
fn magnitude_mask<const D: usize>(w: &Tensor<D>, sparsity: f64) -> Tensor<D> {
    let data = w.to_data().convert::<f32>();
    let values = data.as_slice::<f32>().expect("converted to f32 above");
    let prune = ((values.len() as f64) * sparsity).floor() as usize;
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Cut exactly `prune` weights: the smallest magnitudes, ties broken by position.
    order.sort_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b)));
    let mut mask = vec![1.0f32; values.len()];
    for &i in &order[..prune] {
        mask[i] = 0.0;
    }
    Tensor::from_data(TensorData::new(mask, data.shape().clone()), &w.device())
}

impl DecayRule for MagnitudePruning {
    fn transform_weights<const D: usize>(
        &self,
        ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let mask = if self.updates_mask_at(ctx.step) {
            let sparsity = self.sparsity_at(ctx.step);
            // Weights already pruned stay pruned: rank the masked weights.
            let current = match &aux {
                Some(mask) => stepped.clone() * mask.clone(),
                None => stepped.clone(),
            };
            Some(magnitude_mask(&current, sparsity))
        } else {
            aux
        };
        match mask {
            Some(mask) => (stepped * mask.clone(), Some(mask)),
            None => (stepped, None),
        }
    }
}
