//! pWD, the p-norm decoupled weight decay, as a [`DecayRule`].
//!
//! After the base step, every decayed weight is multiplied by (computed as one division of the
//! stepped weight by the denominator, the more accurate form)
//!
//! ```text
//! f = 1 / (1 + η·λ₂ + p·η·λ·|w_ref|^(p-2))       (= X / (X·(1+η·λ₂) + p·η·λ), X = |w_ref|^(2-p))
//! ```
//!
//! with `w_ref = w_{t-1}` (the paper's pWD) or the stepped weight (`late`). Variants, each a
//! setting of [`PNormConfig`]: elastic net (λ₂), schedules for p and λ over the step count,
//! s-dynamics (a per-weight s moved by gradient steps, kept in the optimizer record) and
//! structured pWD (the factor from the L2 norm of an output neuron / channel, applied to all of
//! it). Results below the f32 normal range are flushed to exact 0.

use burn::tensor::{DType, Device, Tensor};
use pdecay::factor::{DecayCoefficients, S_MAX, S_MIN, SDynamics};
use pdecay::kernel::{apply_decay_in_place, apply_late_decay_in_place};
use pdecay::schedule::Schedule;
use pdecay::validate::{ValidationError, check_non_negative, check_p};

use super::rule::{DecayRule, StepContext};
use crate::flex::on_flex;

/// Which weight the factor is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reference {
    /// `w_{t-1}`, before the base step: the paper's pWD.
    #[default]
    BeforeStep,
    /// The base step's result (`late`; the paper reports it worse, kept for comparison).
    AfterStep,
}

/// How the factor is computed.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Mode {
    /// One factor per weight from `|w_ref|`.
    #[default]
    Elementwise,
    /// One factor per group from `||w_ref,g||₂`: groups are output neurons (dim 1 of burn's
    /// `[in, out]` linear weight) for rank-2 tensors and output channels (dim 0) for conv
    /// kernels; `group_dim` overrides which dimension indexes the groups.
    Structured {
        /// The dimension that indexes groups; `None` picks as above.
        group_dim: Option<usize>,
    },
    /// s-dynamics: `s` starts at 1 and takes one gradient step of rate `rate` on
    /// `Λ_p(w_{t-1}, s)` per optimizer step; the factor is `1/(1 + η·λ₂ + p·η·λ·s)`.
    SDynamics {
        /// The rate of s (the paper's slower time scale).
        rate: f64,
    },
}

/// Where the per-weight arithmetic runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kernel {
    /// The fused host kernel (`pdecay::kernel`, one pass over memory) for f32 tensors on the
    /// flex CPU backend; composite tensor ops elsewhere (GPUs).
    #[default]
    Auto,
    /// Always composite tensor ops (about 8 passes over memory, runs on any backend).
    TensorOps,
}

/// Settings of pWD. Defaults: p = 0.8 and λ = 1e-3 (the authors' reference code), λ₂ = 0,
/// factor from `w_{t-1}`, elementwise, fused kernel on CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct PNormConfig {
    /// The norm p (> 0): p < 1 the strongest sparsity, 1 < p < 2 the best generalisation,
    /// p = 2 AdamW-like, p > 2 shrinks large weights. Ignored when `p_schedule` is set.
    pub p: f64,
    /// The penalty strength λ (>= 0). Ignored when `lambda_schedule` is set.
    pub lambda: f64,
    /// Elastic-net L2 strength λ₂ (>= 0).
    pub lambda2: f64,
    /// p as a function of the step count (p-scheduling, e.g. 2.0 -> 0.8).
    pub p_schedule: Option<Schedule>,
    /// λ as a function of the step count.
    pub lambda_schedule: Option<Schedule>,
    /// Which weight the factor is computed from.
    pub reference: Reference,
    /// Elementwise, structured or s-dynamics.
    pub mode: Mode,
    /// Fused host kernel or composite tensor ops.
    pub kernel: Kernel,
}

impl Default for PNormConfig {
    fn default() -> Self {
        Self {
            p: 0.8,
            lambda: 1e-3,
            lambda2: 0.0,
            p_schedule: None,
            lambda_schedule: None,
            reference: Reference::BeforeStep,
            mode: Mode::Elementwise,
            kernel: Kernel::Auto,
        }
    }
}

impl PNormConfig {
    /// pWD with norm `p` and strength `lambda`, other settings at their defaults.
    pub fn new(p: f64, lambda: f64) -> Self {
        Self {
            p,
            lambda,
            ..Self::default()
        }
    }

    /// Sets the elastic-net strength λ₂.
    pub fn with_lambda2(mut self, lambda2: f64) -> Self {
        self.lambda2 = lambda2;
        self
    }

    /// Schedules p over the step count.
    pub fn with_p_schedule(mut self, schedule: Schedule) -> Self {
        self.p_schedule = Some(schedule);
        self
    }

    /// Schedules λ over the step count.
    pub fn with_lambda_schedule(mut self, schedule: Schedule) -> Self {
        self.lambda_schedule = Some(schedule);
        self
    }

    /// Computes the factor from the stepped weight (`late`).
    pub fn late(mut self) -> Self {
        self.reference = Reference::AfterStep;
        self
    }

    /// Structured (group) pWD.
    pub fn structured(mut self) -> Self {
        self.mode = Mode::Structured { group_dim: None };
        self
    }

    /// s-dynamics with rate `rate`.
    pub fn s_dynamics(mut self, rate: f64) -> Self {
        self.mode = Mode::SDynamics { rate };
        self
    }

    /// Chooses the kernel.
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Validates every setting and builds the rule.
    pub fn build(&self) -> Result<PNorm, ValidationError> {
        let p = match &self.p_schedule {
            Some(s) => {
                let (lo, hi) = s.bounds();
                check_p(lo)?;
                check_p(hi)?;
                s.clone()
            }
            None => Schedule::Constant {
                value: check_p(self.p)?,
            },
        };
        let lambda = match &self.lambda_schedule {
            Some(s) => {
                let (lo, hi) = s.bounds();
                check_non_negative("lambda", lo)?;
                check_non_negative("lambda", hi)?;
                s.clone()
            }
            None => Schedule::Constant {
                value: check_non_negative("lambda", self.lambda)?,
            },
        };
        if let Mode::SDynamics { rate } = self.mode {
            let (_, p_max) = p.bounds();
            SDynamics::new(p_max, rate)?;
        }
        Ok(PNorm {
            p,
            lambda,
            lambda2: check_non_negative("lambda2", self.lambda2)?,
            reference: self.reference,
            mode: self.mode.clone(),
            kernel: self.kernel,
        })
    }
}

/// The validated pWD rule; build it with [`PNormConfig::build`].
#[derive(Clone, Debug)]
pub struct PNorm {
    p: Schedule,
    lambda: Schedule,
    lambda2: f64,
    reference: Reference,
    mode: Mode,
    kernel: Kernel,
}

impl PNorm {
    /// p at step `step`.
    pub fn p_at(&self, step: u64) -> f64 {
        self.p.value(step)
    }

    /// λ at step `step`.
    pub fn lambda_at(&self, step: u64) -> f64 {
        self.lambda.value(step)
    }

    /// The coefficients of one step.
    ///
    /// # Panics
    /// If the learning rate is negative or not finite: the optimizer cannot return an error from
    /// inside burn's `Optimizer::step`. [`crate::SparseOptimizer`] checks the lr first and
    /// returns an error instead.
    pub fn coefficients(&self, step: u64, lr: f64) -> DecayCoefficients {
        DecayCoefficients::new(self.p_at(step), lr, self.lambda_at(step), self.lambda2)
            .unwrap_or_else(|e| panic!("pWD step {step}: {e}"))
    }
}

impl PNorm {
    /// Whether a fused host kernel may replace this rule's tensor ops: elementwise, from
    /// `w_{t-1}`, with the automatic kernel choice.
    pub(crate) fn fusable(&self) -> bool {
        self.mode == Mode::Elementwise
            && self.reference == Reference::BeforeStep
            && self.kernel == Kernel::Auto
    }
}

impl DecayRule for PNorm {
    fn transform_weights<const D: usize>(
        &self,
        ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        let c = self.coefficients(ctx.step, ctx.lr);
        match &self.mode {
            Mode::Elementwise => (self.elementwise(stepped, ctx.before, &c), None),
            Mode::Structured { group_dim } => {
                let reference = self.reference(ctx.before, &stepped);
                let dim = group_dim.unwrap_or(if D == 2 { 1 } else { 0 });
                (
                    flush_subnormals(structured(stepped, reference, dim, &c)),
                    None,
                )
            }
            Mode::SDynamics { rate } => {
                let dynamics = SDynamics::new(c.p(), *rate)
                    .unwrap_or_else(|e| panic!("pWD s-dynamics at step {}: {e}", ctx.step));
                let reference = self.reference(ctx.before, &stepped);
                let s = aux.unwrap_or_else(|| reference.ones_like());
                let s = s_dynamics_update(s, reference, &dynamics);
                let decayed = stepped / penalty_denominator(s.clone(), &c);
                (flush_subnormals(decayed), Some(s))
            }
        }
    }
}

impl PNorm {
    /// Elementwise pWD; `before` is `w_{t-1}` (unused by the `late` variant).
    fn elementwise<const D: usize>(
        &self,
        stepped: Tensor<D>,
        before: Tensor<D>,
        c: &DecayCoefficients,
    ) -> Tensor<D> {
        let device = stepped.device();
        // on flex the weights live in host memory, where the slice kernel runs without copies
        if self.kernel == Kernel::Auto && on_flex(&device, false) && stepped.dtype() == DType::F32 {
            return fused_host(stepped, before, self.reference, c, &device);
        }
        let reference = self.reference(before, &stepped);
        flush_subnormals(elementwise_tensor_ops(stepped, reference, c))
    }

    /// The weight the factor is computed from: `w_{t-1}`, or the stepped weight (`late`).
    fn reference<const D: usize>(&self, before: Tensor<D>, stepped: &Tensor<D>) -> Tensor<D> {
        match self.reference {
            Reference::BeforeStep => before,
            Reference::AfterStep => stepped.clone(),
        }
    }
}

/// The fused path: one pass of `pdecay::kernel` over the stepped weights' host buffer.
/// Both tensors are consumed, so a buffer nobody else holds is reused rather than copied.
fn fused_host<const D: usize>(
    stepped: Tensor<D>,
    before: Tensor<D>,
    which: Reference,
    c: &DecayCoefficients,
    device: &Device,
) -> Tensor<D> {
    let mut data = stepped.into_data();
    let weights = data.as_mut_slice::<f32>().expect("dtype checked to be f32");
    match which {
        Reference::AfterStep => apply_late_decay_in_place(weights, c),
        Reference::BeforeStep => {
            let before = before.into_data();
            let reference = before.as_slice::<f32>().expect("same dtype as the weights");
            apply_decay_in_place(weights, reference, c);
        }
    }
    Tensor::from_data(data, device)
}

/// `stepped / (1 + η·λ₂ + p·η·λ·|reference|^(p-2))` in tensor ops.
fn elementwise_tensor_ops<const D: usize>(
    stepped: Tensor<D>,
    reference: Tensor<D>,
    c: &DecayCoefficients,
) -> Tensor<D> {
    decay_by_magnitude(stepped, reference.abs(), c)
}

/// Structured pWD: the factor of each group from its L2 norm, broadcast over the group.
fn structured<const D: usize>(
    stepped: Tensor<D>,
    reference: Tensor<D>,
    group_dim: usize,
    c: &DecayCoefficients,
) -> Tensor<D> {
    let reduce: Vec<usize> = (0..D).filter(|&d| d != group_dim).collect();
    let norms = reference.square().sum_dims(&reduce).sqrt();
    decay_by_magnitude(stepped, norms, c)
}

/// `stepped / (1 + η·λ₂ + p·η·λ·m^(p-2))`, `m` a magnitude per weight or per group
/// (broadcast): a true division of the stepped weight, as the slice kernel does (one rounding,
/// not a factor `1/(...)` multiplied in). `m = 0` gives `m^(p-2) = inf` for p < 2, a weight of
/// exactly 0; when `p·η·λ = 0` or p = 2 the denominator is a constant and the power is never
/// taken, so `0·inf` never occurs.
fn decay_by_magnitude<const D: usize>(
    stepped: Tensor<D>,
    magnitude: Tensor<D>,
    c: &DecayCoefficients,
) -> Tensor<D> {
    let one_plus_l2 = 1.0 + c.l2_strength();
    // in f32, as the tensors hold it: a strength that rounds to 0 must not meet an inf power
    if c.lp_strength() as f32 == 0.0 {
        return stepped.div_scalar(one_plus_l2);
    }
    if c.exponent() == 0.0 {
        return stepped.div_scalar(one_plus_l2 + c.lp_strength());
    }
    stepped / penalty_denominator(magnitude.powf_scalar(c.exponent()), c)
}

/// `1 + η·λ₂ + p·η·λ·s` per element of the penalty weight `s`: the denominator of the factor
/// (the tensor twin of [`pdecay::factor::s_decay_factor`]).
fn penalty_denominator<const D: usize>(s: Tensor<D>, c: &DecayCoefficients) -> Tensor<D> {
    s.mul_scalar(c.lp_strength())
        .add_scalar(1.0 + c.l2_strength())
}

/// One gradient step of s on `Λ_p(w, s)`, clamped to `[S_MIN, S_MAX]`
/// (see [`pdecay::factor::s_dynamics_step`]).
fn s_dynamics_update<const D: usize>(s: Tensor<D>, w: Tensor<D>, d: &SDynamics) -> Tensor<D> {
    let p = d.p();
    let pull = s.clone().powf_scalar(2.0 / (p - 2.0));
    let grad = (w.square() - pull).mul_scalar(0.5 * p);
    (s - grad.mul_scalar(d.rate())).clamp(S_MIN, S_MAX)
}

/// Sets values below the f32 normal range to exact 0 (subnormals slow CPUs down; they are dead).
fn flush_subnormals<const D: usize>(w: Tensor<D>) -> Tensor<D> {
    let tiny = w.clone().abs().lower_elem(f32::MIN_POSITIVE);
    w.mask_fill(tiny, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_and_lambda_schedules_drive_the_coefficients() {
        let rule = PNormConfig::new(0.8, 0.0)
            .with_p_schedule(Schedule::linear(2.0, 0.8, 10).unwrap())
            .with_lambda_schedule(Schedule::linear(0.0, 1e-2, 4).unwrap())
            .build()
            .unwrap();
        // step 0: p = 2, λ = 0: the identity
        let c = rule.coefficients(0, 0.1);
        assert_eq!((c.p(), c.lambda()), (2.0, 0.0));
        assert!(c.is_identity());
        // step 5: p halfway (1.4), λ at its end (1e-2)
        let c = rule.coefficients(5, 0.1);
        assert!((c.p() - 1.4).abs() < 1e-12 && c.lambda() == 1e-2);
        assert_eq!(rule.coefficients(50, 0.1).p(), 0.8);
        // a λ schedule that goes negative is refused before training
        let bad =
            PNormConfig::default().with_lambda_schedule(Schedule::linear(1e-3, -1e-3, 5).unwrap());
        assert!(
            bad.build()
                .unwrap_err()
                .to_string()
                .contains("lambda = -0.001")
        );
    }

    #[test]
    fn only_the_plain_variant_fuses() {
        assert!(PNormConfig::default().build().unwrap().fusable());
        assert!(!PNormConfig::default().late().build().unwrap().fusable());
        assert!(
            !PNormConfig::default()
                .structured()
                .build()
                .unwrap()
                .fusable()
        );
        assert!(
            !PNormConfig::default()
                .s_dynamics(0.1)
                .build()
                .unwrap()
                .fusable()
        );
        let ops = PNormConfig::default().with_kernel(Kernel::TensorOps);
        assert!(!ops.build().unwrap().fusable());
    }
}
